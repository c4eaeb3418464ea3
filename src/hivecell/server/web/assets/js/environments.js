// Environments: the sandboxes, and the selected one's live desktop through the VNC relay.
// Watching is a view-only connection; taking over pauses the agent and reconnects
// interactively (the relay never forwards input on a view-only connection).
import RFB from "/static/vendor/novnc/core/rfb.js";
import { api, API, onEvent, post } from "./api.js";
import { $, h, pretty, replace } from "./dom.js";
import { attempt, startShell } from "./shell.js";
import { fill } from "./stats.js";

let sandboxes = [];
let selected = new URLSearchParams(location.search).get("sandbox");
let task = null; // the task running in the selected sandbox, if any
let rfb = null;
let interactive = false;

// --- sandbox list ----------------------------------------------------------------------
function sandboxItem(sb) {
  const label = sb.spec?.name || sb.id;
  return h("li", { class: sb.id === selected ? "selected" : "", dataset: { sandbox: sb.id } },
    h("a", { href: `?sandbox=${encodeURIComponent(sb.id)}`, onclick: (e) => { e.preventDefault(); select(sb.id); } },
      h("span", { class: `dot a-${sb.activity}` }),
      h("span", { class: "sb-name" }, label),
      sb.provider === "qemu" && h("span", { class: "small muted", title: "a virtual machine" }, "VM"),
      h("span", { class: "muted sb-task" }, sb.task_id ? `task ${sb.task_id}` : sb.pool ? "warm" : sb.activity)));
}

// --- pool and capacity -----------------------------------------------------------------
const gb = (mb) => `${(mb / 1024).toFixed(1)} GB`;

async function loadPool() {
  const pool = await api("/pool");
  const { caps, used, waiting } = pool.capacity;
  $("#pool-warm").textContent = String(pool.warm);
  $("#pool-booting").textContent = String(pool.booting);
  $("#pool-size").textContent = String(pool.size);
  $("#pool-idle").textContent = `${Math.round(pool.idle_timeout_s / 60)} min`;
  $("#cap-sandboxes").textContent = `${used.sandboxes} / ${caps.max_sandboxes}`;
  $("#cap-memory").textContent = `${gb(used.memory_mb)} / ${gb(caps.max_memory_mb)}`;
  $("#cap-cpus").textContent = `${used.cpus.toFixed(2)} / ${caps.max_cpus}`;
  $("#cap-waiting").hidden = !waiting;
  $("#cap-waiting").textContent = `${waiting} task(s) waiting for room`;
}

let poolTimer = null;
function reloadPoolSoon() { // many events in a burst: one request
  if (poolTimer) return;
  poolTimer = setTimeout(() => { poolTimer = null; attempt(loadPool); }, 300);
}

async function loadSandboxes() {
  sandboxes = (await api("/sandboxes")).items;
  replace($("#sandboxes"), sandboxes.map(sandboxItem));
  $("#sandboxes-empty").hidden = sandboxes.length > 0;
  if (selected && !sandboxes.some((s) => s.id === selected)) deselect();
  else if (selected && !rfb) select(selected);
  else if (selected) await loadSelection();
  else {
    const first = sandboxes.find((s) => s.activity !== "starting");
    if (first) select(first.id);
  }
}

function select(id) {
  if (id === selected && rfb) return;
  selected = id;
  history.replaceState(null, "", `?sandbox=${encodeURIComponent(id)}`);
  for (const li of document.querySelectorAll("#sandboxes li")) li.classList.toggle("selected", li.dataset.sandbox === id);
  interactive = false;
  replace($("#activity"));
  connect();
  attempt(loadSelection);
  loadStats(id);
}

// --- live figures ----------------------------------------------------------------------
async function loadStats(id) {
  fill($("#sb-stats"), null);
  // The figures now, not at the next round; quiet on failure: the next round fills them.
  const first = await api(`/sandboxes/${encodeURIComponent(id)}/stats`).catch(() => null);
  if (first && id === selected) fill($("#sb-stats"), first);
}

function onStats(items) {
  const sample = items.find((s) => s.sandbox_id === selected);
  if (sample) fill($("#sb-stats"), sample);
}

function deselect() {
  selected = null;
  task = null;
  disconnect();
  history.replaceState(null, "", location.pathname);
  $("#selection").hidden = true;
  $("#no-selection").hidden = false;
}

async function loadSelection() {
  const sb = sandboxes.find((s) => s.id === selected);
  if (!sb) return;
  $("#selection").hidden = false;
  $("#no-selection").hidden = true;
  $("#sel-name").textContent = sb.spec?.name || sb.id;
  const previous = task?.id;
  task = sb.task_id ? await api(`/tasks/${encodeURIComponent(sb.task_id)}`) : null;
  $("#sel-task").textContent = task ? `running “${task.description.slice(0, 60)}” · ${task.status.replaceAll("_", " ")}` : "idle";
  if (task && task.id !== previous) await loadActivity();
  $("#sel-warm").hidden = !sb.pool;
  $("#shot").href = `${API}/sandboxes/${encodeURIComponent(sb.id)}/screenshot`;
  $("#shot").download = `${sb.id}.png`;
  renderToolbar();
}

function renderToolbar() {
  const paused = task?.status === "paused";
  const controllable = task && ["running", "paused", "waiting_for_user"].includes(task.status);
  const warm = sandboxes.find((s) => s.id === selected)?.pool;
  $("#takeover").hidden = interactive || Boolean(warm); // the server refuses input to warm boxes
  $("#handback").hidden = !interactive;
  $("#pause-agent").hidden = !controllable || paused || interactive;
  $("#resume-agent").hidden = !controllable || !paused || interactive;
  $("#instruct").hidden = !controllable;
  $("#remove-sandbox").hidden = Boolean(task && controllable);
}

// --- live desktop ----------------------------------------------------------------------
function connect() {
  disconnect();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}${API}/sandboxes/${encodeURIComponent(selected)}/vnc?view_only=${!interactive}`;
  const screen = $("#screen");
  screen.classList.toggle("interactive", interactive);
  const current = new RFB(screen, url, { wsProtocols: ["binary"], shared: true });
  current.viewOnly = !interactive;
  current.scaleViewport = true;
  current.background = "#1d232b";
  current.addEventListener("connect", () => {
    setVncState(interactive ? "you are in control" : "watching");
    if (interactive) current.focus();
  });
  current.addEventListener("disconnect", (e) => {
    if (rfb === current) {
      rfb = null;
      setVncState(e.detail.clean ? "disconnected" : "connection lost");
    }
  });
  rfb = current;
  setVncState("connecting…");
}

function disconnect() {
  const old = rfb;
  rfb = null;
  if (old) old.disconnect();
}

function setVncState(text) {
  $("#vnc-state").textContent = `· ${text}`;
  $("#screen").dataset.state = text;
}

async function takeOver() {
  if (task && ["running", "paused", "waiting_for_user"].includes(task.status)) {
    const done = await attempt(() => post(`/tasks/${encodeURIComponent(task.id)}/takeover`));
    if (!done) return;
    task = done;
  }
  interactive = true;
  connect();
  renderToolbar();
}

async function handBack() {
  if (task?.taken_over) {
    const done = await attempt(() => post(`/tasks/${encodeURIComponent(task.id)}/handback`));
    if (!done) return;
    task = done;
  }
  interactive = false;
  connect();
  renderToolbar();
}

// --- activity --------------------------------------------------------------------------
function activityItem(step) {
  const what = step.kind === "intervention"
    ? `${step.action} by ${step.by?.kind || "someone"} ${step.arguments ? compact(step.arguments) : ""}`
    : step.tool ? `${step.tool} ${step.arguments ? compact(step.arguments) : ""}` : step.text || step.kind;
  return h("li", { class: `k-${step.kind}` },
    h("span", { class: "muted" }, new Date(step.ts || Date.now()).toLocaleTimeString()), " ",
    h("strong", {}, `#${step.step} `), what,
    step.reasoning ? h("div", { class: "reasoning" }, step.reasoning) : null,
    step.error ? h("div", { class: "error" }, step.error) : null);
}

function compact(args) {
  const text = pretty(args).replace(/\s+/g, " ");
  return text.length > 120 ? `${text.slice(0, 117)}…` : text;
}

async function loadActivity() {
  const trace = await api(`/tasks/${encodeURIComponent(task.id)}/trace`);
  replace($("#activity"), trace.steps.slice(-50).map(activityItem));
  scrollActivity();
}

function scrollActivity() {
  const list = $("#activity");
  list.scrollTop = list.scrollHeight;
}

function onTaskStep(step) {
  $("#activity").append(activityItem(step));
  scrollActivity();
}

// --- wiring ----------------------------------------------------------------------------
function setupToolbar() {
  $("#takeover").addEventListener("click", takeOver);
  $("#handback").addEventListener("click", handBack);
  const act = (action) => async () => {
    const done = await attempt(() => post(`/tasks/${encodeURIComponent(task.id)}/${action}`));
    if (done) { task = done; renderToolbar(); }
  };
  $("#pause-agent").addEventListener("click", act("pause"));
  $("#resume-agent").addEventListener("click", act("resume"));
  $("#fullscreen").addEventListener("click", () => $("#screen").requestFullscreen());
  const create = (json) => async () => {
    const sb = await attempt(() => api("/sandboxes", { method: "POST", json }), "Sandbox ready");
    if (sb) { await attempt(loadSandboxes); select(sb.id); }
  };
  $("#new-sandbox").addEventListener("click", create({}));
  $("#new-vm").addEventListener("click", create({ provider: "qemu" }));
  $("#remove-sandbox").addEventListener("click", async () => {
    const id = selected;
    deselect();
    await attempt(() => api(`/sandboxes/${encodeURIComponent(id)}`, { method: "DELETE" }), "Sandbox removed");
    await attempt(loadSandboxes);
  });
  $("#instruct").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = event.target.elements.text;
    const done = await attempt(() => post(`/tasks/${encodeURIComponent(task.id)}/instruct`, { text: input.value }), "Sent");
    if (done) input.value = "";
  });
}

function onLiveEvent(event) {
  if (event.type === "sandbox.stats") { reloadPoolSoon(); return onStats(event.data.items); }
  if (event.type === "pool.changed") { reloadPoolSoon(); return undefined; }
  if (event.type.startsWith("sandbox.")) { reloadPoolSoon(); return attempt(loadSandboxes); }
  if (event.type === "task.waiting") reloadPoolSoon();
  if (!task || event.data?.task_id !== task.id) {
    if (event.type === "task.created" || event.type === "task.finished") attempt(loadSandboxes);
    return undefined;
  }
  if (event.type === "task.step") onTaskStep(event.data);
  else attempt(loadSelection);
  return undefined;
}

startShell();
setupToolbar();
attempt(loadSandboxes);
attempt(loadPool);
onEvent(onLiveEvent);
