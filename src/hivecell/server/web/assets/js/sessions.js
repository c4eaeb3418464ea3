// Sessions: coding-agent terminals. The list follows session.* events live; the selected
// session is attached with xterm.js over /sessions/{name}/attach (binary frames, see
// termframe.js). Any number of pages may attach at once: each sees the same terminal, and the
// last one resized sets its size. A browser notification says when an agent starts waiting.
import { FitAddon } from "/static/vendor/xterm/addon-fit.mjs";
import { Terminal } from "/static/vendor/xterm/xterm.mjs";
import { API, api, onEvent, post } from "./api.js";
import { $, badge, h, replace } from "./dom.js";
import { attempt, startShell, toast } from "./shell.js";
import * as frame from "./termframe.js";

const SCROLLBACK_LINES = 100000;
const REPLAY_BYTES = 4 * 1024 * 1024; // the scrollback's tail replayed on attach
const encoder = new TextEncoder();
const decoder = new TextDecoder();

let sessions = [];
let selected = new URLSearchParams(location.search).get("name");
let term = null;
let fit = null;
let socket = null;

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
  if (selected && sessions.some((s) => s.name === selected)) showStatus();
}

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
  const s = sessions.find((item) => item.name === selected);
  replace($("#term-status"), s ? badge(s.status) : null);
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
  history.replaceState(null, "", `?name=${encodeURIComponent(name)}`);
  for (const row of document.querySelectorAll("tr[data-session]")) {
    row.classList.toggle("selected", row.dataset.session === name);
  }
  $("#term-none").hidden = true;
  $("#term-box").hidden = false;
  $("#term-name").textContent = name;
  showStatus();
  attach(name);
}

// --- create ------------------------------------------------------------------------------
function setupForm() {
  const form = $("#new-session");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = { name: data.get("name").trim(), agent: data.get("agent").trim(), repo: data.get("repo").trim() };
    if (data.get("isolation")) body.isolation = data.get("isolation");
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
$("#reattach").addEventListener("click", () => selected && attach(selected));
onEvent((event) => {
  if (event.type === "session.status") {
    if (!sessions.some((s) => s.name === event.data.name)) reloadSoon();
    setStatus(event.data.name, event.data.status);
    if (event.data.status === "waiting" && event.data.previous !== "waiting") announceWaiting(event);
  } else if (event.type === "session.created" || event.type === "session.destroyed") reloadSoon();
});
await attempt(loadSessions);
if (selected && sessions.some((s) => s.name === selected)) select(selected);
