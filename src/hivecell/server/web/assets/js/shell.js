// What every page has: navigation, the live indicator, Stop all (button and Shift+Esc),
// toasts, and the questions/approvals banner answered in place.
import { api, connectEvents, onConnection, onEvent, post } from "./api.js";
import { $, h, replace } from "./dom.js";

export function toast(message, kind = "error") {
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  $("#toasts").append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 3500);
}

// Run an action from a control; failures become a toast instead of an unhandled rejection.
export async function attempt(action, done) {
  try {
    const result = await action();
    if (done) toast(done, "ok");
    return result;
  } catch (error) {
    toast(error.message || String(error));
    return undefined;
  }
}

function markNav() {
  const page = document.body.dataset.page;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
  }
}

function setupStopAll() {
  const dialog = $("#stop-dialog");
  const ask = () => {
    if (!dialog.open) dialog.showModal();
  };
  $("#stop-all").addEventListener("click", ask);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && event.shiftKey) {
      event.preventDefault();
      ask();
    }
  });
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "stop") return;
    const result = await attempt(() => post("/stop-all"));
    if (result) {
      const n = (result.stopped || result.cancelled || []).length;
      toast(`Stopped ${n} task${n === 1 ? "" : "s"}`, "ok");
    }
  });
}

function setupLiveIndicator() {
  onConnection((up) => {
    const live = $("#live");
    live.textContent = up ? "live" : "reconnecting…";
    live.classList.toggle("up", up);
  });
}

// --- questions and approvals -----------------------------------------------------------
const waiting = new Map(); // task id -> task (with .pending)

function attentionItem(task) {
  const p = task.pending;
  const form = h("form", { class: "answer", dataset: { task: task.id } });
  const title = h("div", { class: "attention-head" },
    h("a", { href: `/tasks/${encodeURIComponent(task.id)}` }, task.description.slice(0, 80)),
    h("span", { class: "muted" }, p.kind === "approval" ? " needs approval" : " asks"));
  if (p.kind === "approval") {
    form.append(
      h("p", { class: "question" }, `Run ${p.tool}?`),
      h("pre", { class: "args" }, JSON.stringify(p.arguments, null, 2)),
      p.reason ? h("p", { class: "reason muted" }, `Why it asks: ${p.reason}`) : null,
      p.timeout_s ? h("p", { class: "reason muted" }, `Denied automatically after ${p.timeout_s} s without an answer.`) : null,
      h("div", { class: "row" },
        h("button", { type: "button", class: "primary", onclick: () => reply(task, "approve") }, "Approve"),
        h("button", { type: "button", onclick: () => reply(task, "deny") }, "Deny")));
  } else if (p.kind === "choice" && p.options.length) {
    form.append(h("p", { class: "question" }, p.question),
      h("div", { class: "row wrap" }, p.options.map((option) =>
        h("button", { type: "button", class: "choice", onclick: () => reply(task, "answer", option) }, option))));
  } else {
    const input = h("input", { name: "answer", required: true, placeholder: "Your answer", autocomplete: "off" });
    form.append(h("p", { class: "question" }, p.question),
      h("div", { class: "row" }, input, h("button", { type: "submit", class: "primary" }, "Answer")));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      reply(task, "answer", input.value);
    });
  }
  return h("div", { class: "attention-item" }, title, form);
}

async function reply(task, action, answer) {
  const body = action === "answer" ? { answer } : undefined;
  const done = await attempt(() => post(`/tasks/${encodeURIComponent(task.id)}/${action}`, body));
  // The next request may already have arrived (and replaced this one) while the answer was
  // in flight; only the question that was answered leaves.
  if (done && waiting.get(task.id) === task) {
    waiting.delete(task.id);
    renderAttention();
  }
}

function renderAttention() {
  const tasks = [...waiting.values()].filter((t) => t.pending);
  replace($("#attention"), tasks.map(attentionItem));
}

// An older fetch for the same task that lands late must not undo a newer one.
const latest = new Map(); // task id (or "*" for all) -> number of the newest fetch

async function refreshWaiting(taskId) {
  const key = taskId || "*";
  const mine = (latest.get(key) || 0) + 1;
  latest.set(key, mine);
  if (taskId) {
    const task = await api(`/tasks/${encodeURIComponent(taskId)}`);
    if (latest.get(key) !== mine) return;
    if (task.status === "waiting_for_user" && task.pending) waiting.set(task.id, task);
    else waiting.delete(task.id);
  } else {
    const page = await api("/tasks?status=waiting_for_user&limit=50");
    if (latest.get(key) !== mine) return;
    waiting.clear();
    for (const task of page.items) if (task.pending) waiting.set(task.id, task);
  }
  renderAttention();
}

function setupAttention() {
  onEvent((event) => {
    const id = event.data?.task_id;
    if (event.type === "task.question" || event.type === "task.approval" ||
        (id && waiting.has(id) && (event.type === "task.status" || event.type === "task.finished"))) {
      attempt(() => refreshWaiting(id));
    }
  });
  onConnection((up) => up && attempt(() => refreshWaiting()));
}

export function startShell() {
  markNav();
  setupStopAll();
  setupLiveIndicator();
  setupAttention();
  connectEvents();
}
