// One crew: its goal and status, the whiteboard (TODOs, notes) a person may edit while the
// crew is live, and a grid of the agents' live desktops (view-only VNC, a click opens the
// full view with takeover). Every crew.* event about this crew reloads it from the API.
import RFB from "/static/vendor/novnc/core/rfb.js";
import { initLogging } from "/static/vendor/novnc/core/util/logging.js";
import { api, API, onConnection, onEvent, post } from "./api.js";
import { $, badge, cost, h, pretty, replace, replaceIfChanged, when } from "./dom.js";
import { attempt, startShell } from "./shell.js";

const crewId = decodeURIComponent(location.pathname.split("/").pop());
const base = `/crews/${encodeURIComponent(crewId)}`;
const ACTIVITY_KEPT = 30;
let crew = null;
const tiles = new Map(); // agent name -> {el, screen, state, activity, rfb, sandbox, task}
const closed = new Set(); // sandbox ids destroyed or dropped: never connect to them again
let alive = new Set(); // sandbox ids the server listed at the last load
const editForms = new Map(); // TODO id -> its open edit form (kept across re-renders)

// A desktop closing under a tile is normal here (an agent ends, the crew ends); the tile
// says so, and noVNC's console errors about it would only be noise.
initLogging("none");

const taskHref = (id) => `/tasks/${encodeURIComponent(id)}`;
const patchTodo = (id, json) =>
  api(`${base}/todos/${encodeURIComponent(id)}`, { method: "PATCH", json });

// --- head ------------------------------------------------------------------------------
function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

// A reviewed crew waits for Start from its creation; it is the person's turn once planned.
const reviewing = (c) => c.waiting_to_start && c.todos.length > 0;

function shownStatus(c) {
  return reviewing(c) ? "waiting_for_review" : c.status;
}

function controls(c) {
  if (!c.live) return [];
  return [
    reviewing(c) && h("button", { type: "button", class: "primary", id: "start",
      onclick: () => attempt(() => post(`${base}/start`)).then(show) }, "Start"),
    h("button", { type: "button", class: "danger-quiet", id: "cancel-crew",
      onclick: () => attempt(() => post(`${base}/cancel`)).then(show) }, "Cancel crew"),
  ];
}

function renderHead(c) {
  document.title = `${c.goal.slice(0, 40)} · crew · hivecell`;
  replace($("#crew-status"), badge(shownStatus(c)));
  $("#crew-id").textContent = c.id;
  $("#crew-goal").textContent = c.goal;
  replaceIfChanged($("#crew-controls"), controls(c));
  replace($("#crew-facts"),
    fact("Agents", String(c.agents)),
    fact("Model", `${c.provider || "–"} · ${c.model || "–"}`),
    fact("Cost", h("span", { id: "crew-cost" })),
    fact("Started", when(c.created_at)),
    fact("Inputs", c.files.length ? c.files.join(", ") : "none"),
    fact("Outputs", h("code", { id: "outputs-dir" }, c.outputs_dir)));
  $("#crew-error").hidden = !c.error;
  $("#crew-error").textContent = c.error || "";
  const ended = !c.live && !!c.summary;
  $("#crew-summary").hidden = !ended;
  $("#crew-summary").textContent = ended ? c.summary : "";
}

// --- whiteboard ------------------------------------------------------------------------
function ids(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

function editForm(todo) {
  let form = editForms.get(todo.id);
  if (form) return form;
  const title = h("input", { name: "title", required: true, maxlength: 300, value: todo.title, autocomplete: "off" });
  const detail = h("textarea", { name: "detail", rows: 2, maxlength: 4000 });
  detail.value = todo.detail;
  const after = h("input", { name: "depends_on", value: todo.depends_on.join(", "), autocomplete: "off" });
  form = h("form", { class: "todo-form", dataset: { todo: todo.id } },
    h("label", {}, "Title", title), h("label", {}, "Detail", detail),
    h("label", {}, "After (TODO ids)", after),
    h("div", { class: "row end" },
      h("button", { type: "button", onclick: () => closeEdit(todo.id) }, "Close"),
      h("button", { type: "submit", class: "primary" }, "Save")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { title: title.value.trim(), detail: detail.value, depends_on: ids(after.value) };
    if (await attempt(() => patchTodo(todo.id, body), "TODO saved")) closeEdit(todo.id);
  });
  editForms.set(todo.id, form);
  return form;
}

function closeEdit(id) {
  editForms.delete(id);
  show();
}

function todoActions(c, todo, index) {
  if (!c.live || !["pending", "running"].includes(todo.status)) return [];
  const act = (json) => () => attempt(() => patchTodo(todo.id, json)).then(show);
  const pending = todo.status === "pending";
  return h("div", { class: "row todo-actions" },
    pending && h("button", { type: "button", class: "small", title: "Edit",
      onclick: () => { editForm(todo); show(); } }, "Edit"),
    pending && index > 0 && h("button", { type: "button", class: "small", "aria-label": "Move up",
      onclick: act({ position: index - 1 }) }, "↑"),
    pending && index < c.todos.length - 1 && h("button", { type: "button", class: "small",
      "aria-label": "Move down", onclick: act({ position: index + 1 }) }, "↓"),
    h("button", { type: "button", class: "small danger-quiet", "aria-label": "Cancel this TODO",
      onclick: act({ cancel: true }) }, "Cancel"));
}

function todoRows(c, todo, index) {
  const row = h("tr", { class: "todo", dataset: { todo: todo.id, status: todo.status } },
    h("td", { class: "muted" }, String(index + 1)),
    h("td", { class: "todo-main" },
      h("div", { class: "todo-title" }, todo.title),
      h("div", { class: "muted todo-meta" }, todo.id,
        todo.depends_on.length ? ` · after ${todo.depends_on.join(", ")}` : ""),
      todo.detail ? h("div", { class: "todo-detail" }, todo.detail) : null),
    h("td", {}, badge(todo.status)),
    h("td", { class: "todo-agent" }, todo.agent || "–"),
    h("td", { class: "todo-result" }, todo.result,
      todo.task_id ? h("div", {}, h("a", { class: "todo-task", href: taskHref(todo.task_id) }, "task")) : null),
    h("td", {}, todoActions(c, todo, index)));
  const form = editForms.get(todo.id);
  if (!form || todo.status !== "pending" || !c.live) return [row];
  return [row, h("tr", { class: "todo-edit" }, h("td", { colspan: 6 }, form))];
}

// Re-rendering moves an open edit form, which takes the focus away from a field being typed
// in: a live event mid-typing would send the next keystrokes nowhere. Put it back.
function typingIn() {
  const field = document.activeElement;
  if (!field || !field.closest || !field.closest("form.todo-form")) return null;
  return { field, start: field.selectionStart, end: field.selectionEnd };
}

function keepTyping(was) {
  if (!was || !was.field.isConnected || document.activeElement === was.field) return;
  was.field.focus();
  if (was.start !== null && was.start !== undefined) was.field.setSelectionRange(was.start, was.end);
}

function renderWhiteboard(c) {
  for (const id of editForms.keys()) {
    const todo = c.todos.find((t) => t.id === id);
    if (!todo || todo.status !== "pending" || !c.live) editForms.delete(id);
  }
  const typing = typingIn();
  replace($("#todos"), c.todos.map((todo, index) => todoRows(c, todo, index)));
  keepTyping(typing);
  $("#todos-empty").hidden = c.todos.length > 0 || !c.live;
  $("#review-note").hidden = !reviewing(c);
  $("#add-todo-box").hidden = !c.live || !c.todos.length;
  $("#add-note").hidden = !c.live;
  replace($("#notes"), c.notes.map((n) => h("li", { class: "note" },
    h("strong", { class: "note-by" }, n.by), " ", h("span", { class: "note-text" }, n.text),
    h("span", { class: "muted" }, ` · ${new Date(n.ts).toLocaleTimeString()}`))));
  $("#notes-empty").hidden = c.notes.length > 0;
}

function freshId() {
  const taken = new Set(crew.todos.map((t) => t.id));
  let n = crew.todos.length + 1;
  while (taken.has(`p${n}`)) n += 1;
  return `p${n}`;
}

function setupForms() {
  $("#add-todo").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const data = new FormData(form);
    const body = { id: freshId(), title: data.get("title").trim(), detail: data.get("detail"),
      depends_on: ids(data.get("depends_on")) };
    if (await attempt(() => post(`${base}/todos`, body), "TODO added")) {
      form.reset();
      show();
    }
  });
  $("#add-note").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = event.target.elements.text;
    if (await attempt(() => post(`${base}/notes`, { text: input.value }))) {
      input.value = "";
      show();
    }
  });
}

// --- the agents' desktops --------------------------------------------------------------
function tile(member) {
  let entry = tiles.get(member.name);
  if (entry) return entry;
  const screen = h("div", { class: "screen agent-screen" });
  const state = h("span", { class: "muted vnc-state" }, "no desktop yet");
  const full = h("a", { class: "screen-link", title: "Full view and takeover" });
  entry = {
    el: null, screen, state, full, rfb: null, sandbox: null, task: null,
    head: h("div", { class: "row agent-head" }), links: h("div", { class: "row agent-links" }),
    activity: h("ol", { class: "activity-list agent-activity" }),
    cost: h("span", { class: "agent-cost" }), spent: 0, running: 0, runningTask: null, costTimer: null,
  };
  entry.el = h("article", { class: "agent-tile", dataset: { agent: member.name } },
    entry.head, h("div", { class: "screen-wrap" }, screen, full), entry.links, entry.activity);
  tiles.set(member.name, entry);
  return entry;
}

function connect(entry, sandboxId) {
  disconnect(entry);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}${API}/sandboxes/${encodeURIComponent(sandboxId)}/vnc?view_only=true`;
  const rfb = new RFB(entry.screen, url, { wsProtocols: ["binary"], shared: true });
  rfb.viewOnly = true;
  rfb.scaleViewport = true;
  rfb.background = "#1d232b";
  rfb.addEventListener("connect", () => setState(entry, "watching"));
  rfb.addEventListener("disconnect", () => {
    if (entry.rfb !== rfb) return;
    entry.rfb = null;
    closed.add(sandboxId);
    setState(entry, "desktop closed");
  });
  entry.rfb = rfb;
  entry.sandbox = sandboxId;
  setState(entry, "connecting…");
}

function disconnect(entry) {
  const old = entry.rfb;
  entry.rfb = null;
  if (old) old.disconnect();
}

function setState(entry, text) {
  entry.state.textContent = text;
  entry.screen.dataset.state = text;
}

function renderTile(c, member) {
  const entry = tile(member);
  const todo = member.todo ? c.todos.find((t) => t.id === member.todo) : null;
  const task = member.task_ids.at(-1) || null;
  entry.spent = member.cost_usd;
  // A task counts as running while it is its TODO's: once ended, member.cost_usd has it.
  entry.runningTask = todo && todo.task_id === task ? task : null;
  if (!entry.runningTask) entry.running = 0;
  replace(entry.head, h("strong", {}, member.name),
    h("span", { class: "muted agent-todo" }, todo ? todo.title : "idle"),
    h("span", { class: "spacer" }), entry.state,
    entry.cost);
  const sandbox = member.sandbox_id;
  // A member keeps its sandbox id after its desktop closed: only an open desktop the server
  // still lists is watched (one closing is listed until it is gone), and one that dropped its
  // connection is not asked again.
  const watchable = c.live && c.status === "running" && sandbox && member.desktop_open
    && alive.has(sandbox) && !closed.has(sandbox);
  if (watchable && entry.sandbox !== sandbox) connect(entry, sandbox);
  if (!watchable && entry.rfb) disconnect(entry);
  if (!watchable && sandbox) setState(entry, "desktop closed");
  entry.el.dataset.sandbox = sandbox || "";
  entry.full.hidden = !watchable;
  if (watchable) entry.full.href = `/environments?sandbox=${encodeURIComponent(sandbox)}`;
  replace(entry.links,
    watchable && h("a", { class: "small button", href: entry.full.href }, "Full view"),
    member.task_ids.map((id, i) => h("a", { class: "small button agent-task", href: taskHref(id) },
      `task ${i + 1}`)));
  if (task && task !== entry.task) {
    entry.task = task;
    entry.running = 0;
    attempt(() => loadActivity(entry, task));
  }
  if (entry.runningTask) costSoon(entry);
  return entry.el;
}

function renderAgents(c) {
  replace($("#agents"), c.members.map((member) => renderTile(c, member)));
  $("#agents-empty").hidden = c.members.length > 0;
}

// --- costs: what ended TODOs cost (the crew's figures) plus what running tasks spent so far
function showCosts() {
  if (!crew) return;
  let running = 0;
  for (const entry of tiles.values()) {
    entry.cost.textContent = cost(entry.spent + entry.running);
    running += entry.running;
  }
  const total = cost(crew.cost_usd + running);
  $("#crew-cost").textContent = crew.max_cost_usd ? `${total} of ${cost(crew.max_cost_usd)}` : total;
}

function costSoon(entry) { // a burst of steps: one request
  if (entry.costTimer) return;
  entry.costTimer = setTimeout(async () => {
    entry.costTimer = null;
    const taskId = entry.runningTask;
    if (!taskId) return;
    const task = await api(taskHref(taskId)).catch(() => null);
    if (!task || taskId !== entry.runningTask) return;
    entry.running = task.cost_usd || 0;
    showCosts();
  }, 300);
}

// --- each agent's activity (its current task's steps) ------------------------------------
function activityItem(step) {
  const what = step.tool ? `${step.tool} ${compact(step.arguments)}` : step.text || step.kind;
  return h("li", { class: `k-${step.kind}` }, h("strong", {}, `#${step.step} `), what,
    step.reasoning ? h("div", { class: "reasoning" }, step.reasoning) : null);
}

function compact(args) {
  if (args === null || args === undefined) return "";
  const text = pretty(args).replace(/\s+/g, " ");
  return text.length > 100 ? `${text.slice(0, 97)}…` : text;
}

async function loadActivity(entry, taskId) {
  const trace = await api(`${taskHref(taskId)}/trace`);
  if (entry.task !== taskId) return;
  replace(entry.activity, trace.steps.slice(-ACTIVITY_KEPT).map(activityItem));
  entry.activity.scrollTop = entry.activity.scrollHeight;
}

function onStep(step) {
  for (const entry of tiles.values()) {
    if (entry.task !== step.task_id) continue;
    entry.activity.append(activityItem(step));
    if (entry.runningTask === step.task_id) costSoon(entry);
    while (entry.activity.children.length > ACTIVITY_KEPT) entry.activity.firstChild.remove();
    entry.activity.scrollTop = entry.activity.scrollHeight;
  }
}

// --- loading ---------------------------------------------------------------------------
let latest = 0;
async function load() {
  const mine = ++latest;
  const fresh = await api(base);
  const boxes = fresh.live && fresh.status === "running" ? (await api("/sandboxes")).items : [];
  if (mine !== latest) return; // a newer load is on its way
  crew = fresh;
  alive = new Set(boxes.map((sb) => sb.id));
  renderHead(crew);
  renderWhiteboard(crew);
  renderAgents(crew);
  showCosts();
}

function show() {
  return attempt(load);
}

let pending = null;
function refresh() {
  if (pending) return;
  pending = setTimeout(() => {
    pending = null;
    show();
  }, 150);
}

function onLiveEvent(event) {
  const data = event.data || {};
  if (event.type === "task.step") return onStep(data);
  if (event.type === "sandbox.destroyed" && data.sandbox_id) {
    closed.add(data.sandbox_id);
    for (const entry of tiles.values()) {
      if (entry.sandbox === data.sandbox_id) { disconnect(entry); setState(entry, "desktop closed"); }
    }
    return undefined;
  }
  if (event.type.startsWith("crew.") && data.crew_id === crewId) refresh();
  return undefined;
}

startShell();
document.querySelector("[data-nav=crews]")?.setAttribute("aria-current", "page");
setupForms();
show();
onEvent(onLiveEvent);
onConnection((up) => up && refresh()); // events missed while away
