// Dashboard: dispatch a task, watch the active ones, browse the history.
import { api, API, onEvent, post } from "./api.js";
import { $, badge, cost, duration, elapsed, h, replace, spend, when } from "./dom.js";
import { pauseNote, RETRYABLE, resumeWithMore } from "./limits.js";
import { attempt, startShell, toast } from "./shell.js";
import { brief } from "./stats.js";

const ACTIVE = ["queued", "running", "paused", "waiting_for_user"];
const LIVE = ["running", "paused", "waiting_for_user"]; // a sandbox exists to look at
const ended = new Set(); // finished tasks whose sandbox may be going away: never ask for it
const THUMB_EVERY_MS = 3000;
let active = [];
let sandboxStats = new Map(); // sandbox id -> its latest sample (sandbox.stats events)

// --- new task --------------------------------------------------------------------------
// Sandboxes a person made and left running: a task may run in one (it stays afterwards).
async function loadSandboxChoices() {
  const select = $("#sandbox-choice");
  const chosen = select.value;
  const boxes = (await api("/sandboxes")).items.filter((sb) =>
    sb.status === "running" && !sb.pool && !(sb.spec?.name || "").startsWith("task-"));
  replace(select, [h("option", { value: "" }, "a fresh one (warm pool)"),
    ...boxes.map((sb) => h("option", { value: sb.id, selected: sb.id === chosen },
      `${sb.spec?.name || sb.id}${sb.task_id ? " · busy (waits its turn)" : ""}`))]);
}

async function loadChoices() {
  attempt(loadSandboxChoices);
  const [providers, settings] = await Promise.all([api("/providers"), api("/settings")]);
  const select = $("#provider");
  replace(select, providers.items.map((p) =>
    h("option", { value: p.name, selected: p.default }, `${p.name} · ${p.model || "set a model"}`)));
  if (!providers.items.length) select.append(h("option", { value: "" }, "no provider configured"));
  $("#minutes").placeholder = String(Math.round(settings.task.timeout_s / 60));
  $("#max-steps").placeholder = String(settings.task.max_steps);
  $("#max-cost").placeholder = settings.task.max_cost_usd ? String(settings.task.max_cost_usd) : "none";
  $("#max-tokens").placeholder = settings.task.max_tokens ? String(settings.task.max_tokens) : "none";
  // The checklist starts from the Settings policy (and form.reset() returns to it).
  for (const box of $("#approve-tools").querySelectorAll("input[name=approve_tools]")) {
    box.checked = box.defaultChecked = settings.approval.tools.includes(box.value);
  }
}

function taskForm(form) {
  const data = new FormData(form);
  const body = new FormData();
  const set = (key, value) => value && body.append(key, value);
  set("description", data.get("description").trim());
  set("provider", data.get("provider"));
  set("model", data.get("model").trim());
  set("max_steps", data.get("max_steps"));
  set("max_cost_usd", data.get("max_cost_usd"));
  set("max_tokens", data.get("max_tokens"));
  if (data.get("minutes")) body.append("timeout_s", String(Number(data.get("minutes")) * 60));
  set("network", data.get("network"));
  set("desktop", data.get("desktop"));
  set("disabled_tools", data.get("disabled_tools").trim());
  set("network_allow", data.get("network_allow").trim());
  set("sandbox_id", data.get("sandbox_id"));
  set("sandbox_provider", data.get("sandbox_provider"));
  // Always sent, even empty (= ask for nothing): absent would mean the Settings default.
  body.append("approve_tools", data.getAll("approve_tools").join(" "));
  for (const file of data.getAll("files")) if (file.name) body.append("files", file, file.name);
  return body;
}

function setupForm() {
  const form = $("#new-task");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    $("#run").disabled = true;
    const task = await attempt(() => api("/tasks", { method: "POST", form: taskForm(form) }));
    $("#run").disabled = false;
    if (task) {
      form.reset();
      toast(`Task ${task.id} queued`, "ok");
      refresh();
    }
  });
}

// --- active cards ----------------------------------------------------------------------
const thumbs = new Map(); // task id -> {img, url}

function thumbnail(task) {
  let entry = thumbs.get(task.id);
  if (!entry) {
    entry = { img: h("img", { class: "thumb", alt: "live desktop" }), url: null };
    thumbs.set(task.id, entry);
  }
  if (!entry.url) attempt(() => refreshThumb(task));
  return entry.img;
}

async function refreshThumb(task) {
  const entry = thumbs.get(task.id);
  if (!entry || !task.sandbox_id || !LIVE.includes(task.status) || ended.has(task.id)) return;
  // missing_ok: the task may end and its sandbox go while this request is on its way.
  const response = await fetch(`${API}/sandboxes/${encodeURIComponent(task.sandbox_id)}/screenshot?missing_ok=true`);
  if (response.status !== 200) return; // 204: the sandbox is stopped or going away
  const url = URL.createObjectURL(await response.blob());
  entry.img.src = url;
  if (entry.url) URL.revokeObjectURL(entry.url);
  entry.url = url;
}

function controls(task) {
  const id = encodeURIComponent(task.id);
  // Paused for a guest fault it resumes by itself: the button pauses it for good instead.
  const paused = task.status === "paused" && !task.fault;
  return h("div", { class: "row" },
    resumeWithMore(task, `/tasks/${id}`, refresh),
    task.status !== "queued" && !task.limit && h("button", {
      type: "button", class: "small",
      onclick: () => attempt(() => post(`/tasks/${id}/${paused ? "resume" : "pause"}`)).then(refresh),
    }, paused ? "Resume" : "Pause"),
    h("button", { type: "button", class: "small danger-quiet",
      onclick: () => attempt(() => post(`/tasks/${id}/cancel`)).then(refresh) }, "Cancel"),
    task.sandbox_id && h("a", { class: "small button",
      href: `/environments?sandbox=${encodeURIComponent(task.sandbox_id)}` }, "Watch"));
}

function card(task) {
  return h("article", { class: "task-card", dataset: { task: task.id, status: task.status } },
    h("a", { class: "thumb-wrap", href: `/tasks/${encodeURIComponent(task.id)}` }, thumbnail(task)),
    h("div", { class: "card-body" },
      h("div", { class: "row" }, badge(task.status),
        task.queue_position ? h("span", { class: "muted" }, `#${task.queue_position} in queue`) : null,
        h("span", { class: "spacer" }),
        h("span", { class: "elapsed muted", dataset: { started: task.started_at || "" } },
          duration(elapsed(task)))),
      h("a", { class: "desc", href: `/tasks/${encodeURIComponent(task.id)}` }, task.description),
      h("div", { class: "stats muted" }, `${task.steps} steps · `, spend(task)),
      task.sandbox_id && LIVE.includes(task.status) && h("div", { class: "stats muted sb-stats",
        dataset: { sandbox: task.sandbox_id } }, brief(sandboxStats.get(task.sandbox_id))),
      task.waiting_for && h("div", { class: "note waiting" }, `Waiting for room: ${task.waiting_for}`),
      pauseNote(task),
      controls(task)));
}

function renderActive() {
  const ids = new Set(active.map((t) => t.id));
  for (const [id, entry] of thumbs) {
    if (!ids.has(id)) {
      if (entry.url) URL.revokeObjectURL(entry.url);
      thumbs.delete(id);
    }
  }
  replace($("#active"), active.map(card));
  $("#active-empty").hidden = active.length > 0;
  $("#active-count").textContent = active.length ? String(active.length) : "";
}

// --- history ---------------------------------------------------------------------------
function historyRow(task) {
  return h("tr", { dataset: { task: task.id } },
    h("td", { class: "desc-cell" }, h("a", { href: `/tasks/${encodeURIComponent(task.id)}` }, task.description)),
    h("td", {}, badge(task.status)),
    h("td", {}, String(task.steps)),
    h("td", {}, cost(task.cost_usd)),
    h("td", {}, duration(elapsed(task))),
    h("td", { title: task.created_at }, when(task.started_at || task.created_at)),
    h("td", {}, RETRYABLE.includes(task.status) ? h("button", { type: "button", class: "small retry",
      onclick: () => attempt(() => post(`/tasks/${encodeURIComponent(task.id)}/retry`)).then(refresh) },
    "Retry") : null));
}

async function loadHistory() {
  const params = new URLSearchParams({ limit: "100" });
  const search = $("#search").value.trim();
  const status = $("#status-filter").value;
  if (search) params.set("search", search);
  for (const s of status ? [status] : ["completed", "failed", "cancelled", "timed_out",
    "max_steps_reached", "budget_exceeded", "interrupted", "guest_lost"]) params.append("status", s);
  const page = await api(`/tasks?${params}`);
  replace($("#history"), page.items.map(historyRow));
  $("#history-empty").hidden = page.items.length > 0;
}

async function loadActive() {
  const params = new URLSearchParams({ limit: "100" });
  ACTIVE.forEach((s) => params.append("status", s));
  active = (await api(`/tasks?${params}`)).items.filter((t) => !ended.has(t.id));
  renderActive();
}

// Events arrive in bursts (a step is several events): coalesce into one reload.
let pending = null;
function refresh() {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    await attempt(() => Promise.all([loadActive(), loadHistory()]));
  }, 150);
}

// Each round replaces the figures: sandboxes left out of it are gone or stopped.
function showStats(items) {
  sandboxStats = new Map(items.map((s) => [s.sandbox_id, s]));
  for (const el of document.querySelectorAll(".task-card .sb-stats")) {
    el.textContent = brief(sandboxStats.get(el.dataset.sandbox));
  }
}

function tick() {
  for (const el of document.querySelectorAll(".task-card .elapsed")) {
    const task = active.find((t) => t.id === el.closest(".task-card").dataset.task);
    if (task) el.textContent = duration(elapsed(task));
  }
}

function start() {
  startShell();
  setupForm();
  attempt(loadChoices);
  refresh();
  let searchTimer = null;
  $("#search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => attempt(loadHistory), 250);
  });
  $("#status-filter").addEventListener("change", () => attempt(loadHistory));
  onEvent((event) => {
    if (event.type === "sandbox.stats") { showStats(event.data.items); return; }
    if (event.type === "sandbox.created" || event.type === "sandbox.destroyed") {
      attempt(loadSandboxChoices);
      return;
    }
    if (!event.type.startsWith("task.")) return;
    if (event.type === "task.finished") ended.add(event.data.task_id);
    refresh();
  });
  setInterval(tick, 1000);
  setInterval(() => active.forEach((t) => attempt(() => refreshThumb(t))), THUMB_EVERY_MS);
}

start();
