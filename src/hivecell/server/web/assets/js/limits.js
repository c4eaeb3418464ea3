// A task paused at a limit: why, and "Resume with more" (minutes / steps / $ / tokens) — or cancel.
import { post } from "./api.js";
import { h, usedTokens } from "./dom.js";
import { attempt } from "./shell.js";

export const RETRYABLE = ["interrupted", "failed", "cancelled", "guest_lost"];

// Prefilled with a sensible amount of what it ran out of, so one click resumes.
const PREFILL = { timed_out: { minutes: 10 }, max_steps_reached: { steps: 10 } };

// At a budget: more of each budget used up (the server refuses a resume without it).
function budgetPrefill(task) {
  const budget = task.budget || {};
  const fill = {};
  if (budget.max_cost_usd && (task.cost_usd || 0) > budget.max_cost_usd) fill.usd = 1;
  if (budget.max_tokens && usedTokens(task) > budget.max_tokens) fill.tokens = budget.max_tokens;
  return fill;
}

// Why a paused task is paused, in words; the raw reason follows.
function pauseLabel(task) {
  if (task.limit) return "Paused at its limit";
  if (task.fault === "guest_unreachable") return "Sandbox unreachable, reconnecting (resumes by itself)";
  return "Paused";
}

export function pauseNote(task) {
  if (task.status !== "paused" || !task.pause_reason) return null;
  return h("span", { class: "pause-reason muted", dataset: { limit: task.limit || "", fault: task.fault || "" } },
    `${pauseLabel(task)}: ${task.pause_reason}`);
}

function extension(form) {
  const data = new FormData(form);
  const body = {};
  const num = (name) => Number(data.get(name) || 0);
  if (num("minutes") > 0) body.extra_time_s = num("minutes") * 60;
  if (num("steps") > 0) body.extra_steps = Math.round(num("steps"));
  if (num("usd") > 0) body.extra_cost_usd = num("usd");
  if (num("tokens") > 0) body.extra_tokens = Math.round(num("tokens"));
  return body;
}

// `path` is the task's API path; `after` runs once the resume was accepted (a reload).
export function resumeWithMore(task, path, after) {
  if (task.status !== "paused" || !task.limit) return null;
  const fill = task.limit === "budget_exceeded" ? budgetPrefill(task) : PREFILL[task.limit] || {};
  const budget = task.budget || {};
  const input = (name, label, step) => h("label", { class: "inline" }, `${label} `,
    h("input", { name, type: "number", min: "0", step, value: fill[name] ?? "", class: "narrow" }));
  const form = h("form", { class: "row resume-more" },
    input("minutes", "+ minutes", "any"), input("steps", "+ steps", "1"),
    budget.max_cost_usd ? input("usd", "+ $", "any") : null,
    budget.max_tokens ? input("tokens", "+ tokens", "1") : null,
    h("button", { type: "submit", class: "small" }, "Resume with more"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(() => post(`${path}/resume`, extension(form))).then(after);
  });
  return form;
}
