// Sessions: coding-agent terminals. The list follows session.* events live; the selected
// session is attached with xterm.js over /sessions/{name}/attach (binary frames, see
// termframe.js). Any number of pages may attach at once: each sees the same terminal, and the
// last one resized sets its size. A browser notification says when an agent starts waiting.
// Under the terminal: the session's audit log (following session.audit events) and its diff;
// in its toolbar: its model usage, Restart and Destroy.
import { FitAddon } from "/static/vendor/xterm/addon-fit.mjs";
import { Terminal } from "/static/vendor/xterm/xterm.mjs";
import { API, api, del, onConnection, onEvent, post } from "./api.js";
import { $, badge, cost, h, replace } from "./dom.js";
import { attempt, startShell, toast } from "./shell.js";
import * as frame from "./termframe.js";

const SCROLLBACK_LINES = 100000;
const REPLAY_BYTES = 4 * 1024 * 1024; // the scrollback's tail replayed on attach
const AUDIT_WINDOW = 500; // entries shown when the panel opens (the newest), and per "Earlier entries"
const AUDIT_KEEP = 2000; // rows kept while following; the oldest give way (and can be fetched again)
const DIFF_STYLED_LINES = 20000; // a longer diff is shown plain: one text node, no per-line colour
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const path = (name, rest = "") => `/sessions/${encodeURIComponent(name)}${rest}`;

let sessions = [];
let selected = new URLSearchParams(location.search).get("name");
let term = null;
let fit = null;
let socket = null;
let panel = null; // "audit", "diff" or null (hidden)
let destroying = null; // the session a Destroy is under way for: nothing more is asked about it

// --- list ------------------------------------------------------------------------------
function sessionRow(s) {
  return h("tr", { class: s.name === selected ? "selected" : "", dataset: { session: s.name, status: s.status },
    onclick: () => select(s.name) },
    h("td", {}, h("a", { href: `?name=${encodeURIComponent(s.name)}`, onclick: (e) => e.preventDefault() }, s.name)),
    h("td", {}, s.agent),
    h("td", {}, s.isolation),
    h("td", { class: "status-cell" }, badge(s.status)));
}

async function loadSessions() {
  sessions = (await api("/sessions")).items;
  replace($("#sessions"), sessions.map(sessionRow));
  $("#sessions-empty").hidden = sessions.length > 0;
  if (selected && sessions.some((s) => s.name === selected)) {
    showStatus();
    showUsage();
  } else if (selected && !$("#term-box").hidden) deselect(); // destroyed, here or elsewhere
}

const current = () => sessions.find((item) => item.name === selected);

function setStatus(name, status) {
  const s = sessions.find((item) => item.name === name);
  if (s) s.status = status;
  const row = document.querySelector(`tr[data-session="${CSS.escape(name)}"]`);
  if (row) {
    row.dataset.status = status;
    replace(row.querySelector(".status-cell"), badge(status));
  }
  if (name === selected) showStatus();
}

function showStatus() {
  const s = current();
  replace($("#term-status"), s ? badge(s.status) : null);
}

// --- model usage (the session's calls through the model proxy) -----------------------------
function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function count(n) {
  return n >= 10000 ? `${Math.round(n / 1000)}k` : String(n);
}

function showUsage() {
  const usage = current()?.usage;
  const el = $("#term-usage");
  el.hidden = !usage;
  if (!usage) return;
  const spent = cost(usage.cost_usd) + (usage.max_cost_usd ? ` of ${cost(usage.max_cost_usd)}` : "");
  const parts = [plural(usage.requests, "model call"),
    `${count(usage.prompt_tokens + usage.completion_tokens)} tokens`, spent];
  if (usage.refused) parts.push(`${usage.refused} refused`);
  if (usage.unpriced_requests) parts.push(`${usage.unpriced_requests} unpriced`);
  el.textContent = parts.join(" · ");
  el.title = `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` +
    (usage.last_model ? `; last model ${usage.last_model}` : "") +
    (usage.unpriced_requests ? "; unpriced calls are not in the cost (no known price for their model)" : "");
}

// The view of one session, for what the list does not refresh on its own (usage grows with
// every model call, each of which is an audit entry).
const refreshView = serial(async () => {
  const name = selected;
  if (!name || !current()?.proxy || destroying === name) return;
  const view = await api(path(name));
  const s = sessions.find((item) => item.name === view.name);
  if (!s) return;
  Object.assign(s, { usage: view.usage, branch: view.branch, cwd: view.cwd });
  if (name === selected) showUsage();
});

// Run fn one call at a time: a call made while one runs asks for one more run after it
// (events come faster than answers, and an answer must never be overtaken by an older one).
function serial(fn) {
  let running = null;
  let again = false;
  return () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await attempt(fn);
        } while (again);
      } finally {
        running = null;
      }
    })();
    return running;
  };
}

// --- audit panel --------------------------------------------------------------------------
// from: the shown entries are those after seq `from`; last: the newest shown; gen: which
// selection they belong to (an answer for an earlier one is dropped).
let audit = { from: 0, last: 0, loaded: false, gen: 0 };

function resetAudit() {
  audit = { from: 0, last: 0, loaded: false, gen: audit.gen + 1 };
  replace($("#audit-list"));
  $("#audit-older").hidden = true;
  $("#audit-empty").hidden = true;
  $("#audit-count").textContent = "";
}

function clock(iso) {
  const d = new Date(iso);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  return d.toDateString() === new Date().toDateString() ? time
    : `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function detailText(detail) {
  if (!detail) return "";
  return Object.entries(detail)
    .map(([key, value]) => `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`)
    .join("  ");
}

function auditRow(entry) {
  const flagged = entry.outcome !== "allowed";
  return h("tr", { class: flagged ? `flagged o-${entry.outcome}` : "",
    dataset: { seq: entry.seq, action: entry.action, outcome: entry.outcome } },
    h("td", { class: "mono when", title: entry.timestamp }, clock(entry.timestamp)),
    h("td", { class: "mono" }, entry.action),
    h("td", {}, flagged ? h("span", { class: `badge o-${entry.outcome}` }, entry.outcome)
      : h("span", { class: "muted" }, entry.outcome)),
    h("td", { class: "mono target" }, entry.target ?? ""),
    h("td", { class: "mono detail" }, detailText(entry.detail)));
}

function showAuditCount() {
  const rows = $("#audit-list").children.length;
  $("#audit-empty").hidden = rows > 0;
  $("#audit-older").hidden = audit.from === 0;
  $("#audit-count").textContent = rows ? `${rows} ${rows === 1 ? "entry" : "entries"}` +
    (audit.from ? ` (after #${audit.from})` : "") : "";
}

function atBottom(el) {
  return el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
}

// Newer entries, oldest first, appended at the bottom; the view follows them while the
// person has not scrolled up to read.
const followAudit = serial(async () => {
  const name = selected;
  const gen = audit.gen;
  if (!name || panel !== "audit" || destroying === name || !current()) return;
  if (!audit.loaded) {
    const view = await api(path(name)); // its newest entries say where the log ends
    if (gen !== audit.gen) return;
    audit.from = audit.last = Math.max(0, (view.audit?.at(-1)?.seq ?? 0) - AUDIT_WINDOW);
    audit.loaded = true;
  }
  const scroller = $("#audit-scroll");
  const follow = atBottom(scroller) || $("#audit-list").children.length === 0;
  for (;;) {
    const page = await api(path(name, `/audit?after=${audit.last}&limit=1000`));
    if (gen !== audit.gen) return;
    $("#audit-list").append(...page.items.map(auditRow));
    audit.last = page.next_after;
    if (!page.more) break;
  }
  const list = $("#audit-list");
  while (list.children.length > AUDIT_KEEP) {
    list.firstElementChild.remove();
    audit.from = Number(list.firstElementChild.dataset.seq) - 1;
  }
  showAuditCount();
  if (follow) scroller.scrollTop = scroller.scrollHeight;
});

async function olderAudit() {
  const name = selected;
  const gen = audit.gen;
  const before = audit.from + 1; // the shown entries start after audit.from
  const after = Math.max(0, audit.from - AUDIT_WINDOW);
  const page = await api(path(name, `/audit?after=${after}&limit=${Math.max(1, before - 1 - after)}`));
  if (gen !== audit.gen) return;
  const scroller = $("#audit-scroll");
  const height = scroller.scrollHeight;
  $("#audit-list").prepend(...page.items.filter((e) => e.seq < before).map(auditRow));
  audit.from = after;
  scroller.scrollTop += scroller.scrollHeight - height; // the rows read before stay in place
  showAuditCount();
}

// --- diff panel ---------------------------------------------------------------------------
function diffClass(line) {
  if (line.startsWith("diff --git") || line.startsWith("+++ ") || line.startsWith("--- ")) return "d-file";
  if (line.startsWith("@@")) return "d-hunk";
  if (line.startsWith("+")) return "d-add";
  if (line.startsWith("-")) return "d-del";
  return null;
}

function diffBody(text) {
  const lines = text.split("\n");
  if (lines.length > DIFF_STYLED_LINES) return text;
  return lines.map((line, i) => {
    const shown = i < lines.length - 1 ? `${line}\n` : line;
    const kind = diffClass(line);
    return kind ? h("span", { class: kind }, shown) : shown;
  });
}

function clearDiff() {
  replace($("#diff-files"));
  replace($("#diff-text"));
  $("#diff-text").hidden = true;
}

let diffOf = null; // the session whose diff is shown: another's is cleared, not left under "Loading…"

const loadDiff = serial(async () => {
  const s = current();
  if (!s || panel !== "diff") return;
  const summary = $("#diff-summary");
  summary.classList.remove("error");
  if (diffOf !== s.name) clearDiff();
  diffOf = s.name;
  if (!s.branch) {
    summary.textContent = `${s.name} has no branch of its own (isolation ${s.isolation}): its work is in ${s.cwd} itself.`;
    clearDiff();
    return;
  }
  summary.textContent = "Loading…";
  let diff;
  try {
    diff = await api(path(s.name, "/diff"));
  } catch (error) {
    if (s.name !== selected) return;
    summary.textContent = error.message;
    summary.classList.add("error");
    clearDiff();
    return;
  }
  if (s.name !== selected) return;
  summary.textContent = `${plural(diff.files.length, "file")} changed on ${diff.branch} since ${diff.base.slice(0, 12)}` +
    " (uncommitted work included)";
  replace($("#diff-files"), diff.files.map((f) =>
    h("li", { dataset: { status: f.status } }, h("span", { class: "mono d-status" }, f.status), " ", h("span", { class: "mono" }, f.path))));
  $("#diff-text").hidden = false;
  replace($("#diff-text"), diff.diff ? diffBody(diff.diff) : h("span", { class: "muted" }, "No changes."));
});

// --- the panel's tabs -------------------------------------------------------------------------
function showPanel(which) {
  panel = which;
  for (const tab of ["audit", "diff"]) {
    $(`#tab-${tab}`).setAttribute("aria-selected", String(which === tab));
    $(`#${tab}-panel`).hidden = which !== tab;
  }
  $("#panel-close").hidden = !which;
  $("#term-box").classList.toggle("panel-open", Boolean(which));
  if (which === "audit") followAudit();
  else if (which === "diff") loadDiff();
}

function setupPanel() {
  $("#tab-audit").addEventListener("click", () => showPanel(panel === "audit" ? null : "audit"));
  $("#tab-diff").addEventListener("click", () => showPanel(panel === "diff" ? null : "diff"));
  $("#panel-close").addEventListener("click", () => showPanel(null));
  $("#audit-refresh").addEventListener("click", () => followAudit());
  $("#audit-older").addEventListener("click", () => attempt(olderAudit));
  $("#diff-refresh").addEventListener("click", () => loadDiff());
}

// --- restart and destroy ----------------------------------------------------------------------
async function restart() {
  const name = selected;
  $("#restart").disabled = true;
  const view = await attempt(() => post(path(name, "/restart")), `Session ${name} restarted`);
  $("#restart").disabled = false;
  if (!view) return;
  await attempt(loadSessions);
  if (selected === name) attach(name); // the scrollback, the old agent's end and the new one's start
}

// The server refuses to drop a worktree's uncommitted work unless forced (its _check_clean).
function refusedForWork(error) {
  return error.op === "session_destroy" && error.code === "conflict";
}

function askDestroy() {
  const dialog = $("#destroy-dialog");
  dialog.dataset.session = selected;
  $("#destroy-name").textContent = selected;
  $("#destroy-refused").hidden = true;
  $("#destroy-confirm").hidden = false;
  $("#destroy-force").hidden = true;
  dialog.showModal();
}

async function destroy(force) {
  const dialog = $("#destroy-dialog");
  const name = dialog.dataset.session;
  const buttons = [$("#destroy-confirm"), $("#destroy-force")];
  buttons.forEach((b) => { b.disabled = true; });
  destroying = name;
  try {
    const result = await del(path(name, `?force=${force}`));
    dialog.close();
    toast(`Session ${name} destroyed${result.message ? `; ${result.message}` : ""}`, "ok");
    if (selected === name) deselect();
    await attempt(loadSessions);
  } catch (error) {
    // Shown in the dialog: a toast would sit under its backdrop.
    const offerForce = !force && refusedForWork(error);
    const refused = $("#destroy-refused");
    refused.textContent = offerForce
      ? `${error.message}. Destroy anyway drops those changes; the branch keeps only its commits.`
      : error.message;
    refused.hidden = false;
    $("#destroy-confirm").hidden = offerForce;
    $("#destroy-force").hidden = !offerForce;
  } finally {
    destroying = null;
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function setupActions() {
  $("#restart").addEventListener("click", () => selected && restart());
  $("#destroy").addEventListener("click", () => selected && askDestroy());
  $("#destroy-confirm").addEventListener("click", () => destroy(false));
  $("#destroy-force").addEventListener("click", () => destroy(true));
}

// --- notifications -----------------------------------------------------------------------
function setupNotify() {
  const button = $("#notify");
  const show = () => {
    const state = "Notification" in window ? Notification.permission : "unsupported";
    button.textContent = state === "granted" ? "Notifying" : "Notify me";
    button.disabled = state !== "default";
    button.title = state === "denied" ? "Notifications are blocked for this site in the browser's settings"
      : state === "unsupported" ? "This browser has no notifications" : button.title;
  };
  // Browsers ask for permission only from a user gesture: this click.
  button.addEventListener("click", async () => {
    await Notification.requestPermission();
    show();
  });
  show();
}

function announceWaiting(event) {
  const { name, agent } = event.data;
  toast(`${name} (${agent}) is waiting for you`, "ok");
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const note = new Notification(`${name} is waiting for you`, { body: `${agent} needs an answer`, tag: `session-${name}` });
  note.addEventListener("click", () => {
    window.focus();
    select(name);
  });
}

// --- terminal ----------------------------------------------------------------------------
function ensureTerminal() {
  if (term) return;
  term = new Terminal({ scrollback: SCROLLBACK_LINES, cursorBlink: true, convertEol: false,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace', fontSize: 13 });
  fit = new FitAddon();
  term.loadAddon(fit);
  term.open($("#terminal"));
  $("#terminal").xterm = term; // for the page's tests: what the buffer holds, not just what shows
  term.onData((data) => send(frame.encode(frame.STDIN, encoder.encode(data))));
  term.onBinary((data) => send(frame.encode(frame.STDIN, Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff))));
  term.onResize(({ cols, rows }) => {
    showSize();
    send(frame.resize(cols, rows));
  });
  new ResizeObserver(() => refit()).observe($("#terminal"));
}

function refit() {
  if (!term || $("#term-box").hidden) return;
  fit.fit();
  showSize();
}

function showSize() {
  $("#term-size").textContent = `${term.cols}×${term.rows}`;
  $("#terminal").dataset.cols = String(term.cols);
  $("#terminal").dataset.rows = String(term.rows);
}

function send(bytes) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(bytes);
}

function setState(text) {
  $("#term-state").textContent = text;
  $("#terminal").dataset.state = text;
}

function attach(name) {
  detach();
  ensureTerminal();
  term.reset();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const path = `${API}/sessions/${encodeURIComponent(name)}/attach?tail=${REPLAY_BYTES}`;
  const ws = new WebSocket(`${scheme}://${location.host}${path}`);
  ws.binaryType = "arraybuffer";
  socket = ws;
  setState("connecting…");
  $("#reattach").hidden = true;
  ws.addEventListener("open", () => {
    setState("attached");
    refit();
    send(frame.resize(term.cols, term.rows)); // this viewer's size, even if fit changed nothing
    term.focus();
  });
  ws.addEventListener("message", (message) => onFrame(frame.decode(message.data)));
  ws.addEventListener("close", (event) => {
    if (socket !== ws) return; // replaced by a newer attach
    socket = null;
    setState(event.reason ? `detached: ${event.reason}` : "detached");
    $("#reattach").hidden = false;
  });
}

function onFrame(f) {
  if (!f) return;
  if (f.type === frame.STDOUT || f.type === frame.STDERR) term.write(f.payload.slice());
  else if (f.type === frame.CONTROL) {
    const message = JSON.parse(decoder.decode(f.payload));
    if (message.op === "exited") setStatus(selected, "exited");
  }
}

function detach() {
  const ws = socket;
  socket = null;
  if (ws) ws.close(1000);
}

function select(name) {
  selected = name;
  resetAudit();
  history.replaceState(null, "", `?name=${encodeURIComponent(name)}`);
  for (const row of document.querySelectorAll("tr[data-session]")) {
    row.classList.toggle("selected", row.dataset.session === name);
  }
  $("#term-none").hidden = true;
  $("#term-box").hidden = false;
  $("#term-name").textContent = name;
  showStatus();
  showUsage();
  attach(name);
  if (panel === "audit") followAudit();
  else if (panel === "diff") loadDiff();
}

function deselect() {
  selected = null;
  detach();
  resetAudit();
  history.replaceState(null, "", location.pathname);
  for (const row of document.querySelectorAll("tr[data-session].selected")) row.classList.remove("selected");
  $("#term-box").hidden = true;
  $("#term-none").hidden = false;
}

// --- create ------------------------------------------------------------------------------
function setupForm() {
  const form = $("#new-session");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = { name: data.get("name").trim(), agent: data.get("agent").trim(), repo: data.get("repo").trim() };
    if (data.get("isolation")) body.isolation = data.get("isolation");
    if (data.get("auto_answer")) body.auto_answer = true;
    if (term) Object.assign(body, { cols: term.cols, rows: term.rows });
    $("#create-session").disabled = true;
    const made = await attempt(() => post("/sessions", body), `Session ${body.name} started`);
    $("#create-session").disabled = false;
    if (!made) return;
    form.reset();
    await attempt(loadSessions);
    select(made.name);
  });
}

// --- live --------------------------------------------------------------------------------
let reloading = null;
function reloadSoon() {
  if (reloading) return;
  reloading = setTimeout(() => { reloading = null; attempt(loadSessions); }, 200);
}

startShell();
setupForm();
setupNotify();
setupPanel();
setupActions();
$("#reattach").addEventListener("click", () => selected && attach(selected));
onEvent((event) => {
  if (event.type === "session.status") {
    if (!sessions.some((s) => s.name === event.data.name)) reloadSoon();
    setStatus(event.data.name, event.data.status);
    if (event.data.status === "waiting" && event.data.previous !== "waiting") announceWaiting(event);
  } else if (event.type === "session.audit") {
    if (event.data.name !== selected) return;
    refreshView();
    if (panel === "audit") followAudit();
  } else if (event.type === "session.created" || event.type === "session.destroyed") reloadSoon();
});
// Events missed while the socket was down: fetch what they would have announced.
onConnection((up) => {
  if (!up || !selected) return;
  refreshView();
  if (panel === "audit") followAudit();
});
await attempt(loadSessions);
if (selected && sessions.some((s) => s.name === selected)) select(selected);
else selected = null;
