// Task detail: summary, outputs, exports, the step list and the screenshot replay.
import { api, API, onEvent, post } from "./api.js";
import { $, badge, duration, elapsed, h, pretty, replace, replaceIfChanged, spend, when } from "./dom.js";
import { pauseNote, RETRYABLE, resumeWithMore } from "./limits.js";
import { attempt, startShell } from "./shell.js";

const taskId = decodeURIComponent(location.pathname.split("/").pop());
const base = `/tasks/${encodeURIComponent(taskId)}`;
let frames = []; // steps with a screenshot, in order
let playing = null;

// --- head ------------------------------------------------------------------------------
function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

async function retry() {
  const again = await attempt(() => post(`${base}/retry`));
  if (again) location.href = `/tasks/${encodeURIComponent(again.id)}`;
}

function controls(task) {
  // Paused for a guest fault it resumes by itself: the button pauses it for good instead.
  const paused = task.status === "paused" && !task.fault;
  const act = (action) => () => attempt(() => post(`${base}/${action}`)).then(load);
  if (RETRYABLE.includes(task.status)) {
    return [h("button", { type: "button", id: "retry", onclick: retry }, "Retry")];
  }
  if (!["queued", "running", "paused", "waiting_for_user"].includes(task.status)) return [];
  return [
    pauseNote(task),
    resumeWithMore(task, base, load),
    task.status !== "queued" && !task.limit && h("button", { type: "button",
      onclick: act(paused ? "resume" : "pause") }, paused ? "Resume" : "Pause"),
    h("button", { type: "button", class: "danger-quiet", onclick: act("cancel") }, "Cancel"),
    task.sandbox_id && h("a", { class: "button",
      href: `/environments?sandbox=${encodeURIComponent(task.sandbox_id)}` }, "Live desktop"),
  ];
}

function renderHead(task) {
  document.title = `${task.description.slice(0, 40)} · hivecell`;
  replace($("#task-status"), badge(task.status));
  $("#task-id").textContent = task.id;
  $("#task-description").textContent = task.description;
  replaceIfChanged($("#task-controls"), controls(task));
  replace($("#task-facts"),
    fact("Model", `${task.provider || "–"} · ${task.model || "–"}`),
    fact("Started", when(task.started_at || task.created_at)),
    fact("Duration", duration(elapsed(task))),
    fact("Steps", String(task.steps)),
    fact("Spent", spend(task)),
    task.retry_of ? fact("Retry of", h("a", { href: `/tasks/${encodeURIComponent(task.retry_of)}` },
      task.retry_of)) : []);
  const summary = task.summary || task.error;
  $("#task-summary").hidden = !summary;
  $("#task-summary").classList.toggle("error", !task.summary && !!task.error);
  $("#task-summary").textContent = summary || "";
}

// What collecting the outbox left out (links, fifos, caps...): said, never hidden.
function renderLeftOut(transfer) {
  const note = $("#outputs-left-out");
  note.hidden = !transfer || transfer.skipped_count === 0;
  if (note.hidden) return;
  const shown = transfer.skipped.map((s) => `${s.path} (${s.reason})`).join(", ");
  const more = transfer.skipped_count - transfer.skipped.length;
  note.textContent = `Left out of the outbox: ${shown}${more > 0 ? ` and ${more} more` : ""}.`;
}

function renderFiles(items) {
  replace($("#outputs"), items.map((file) =>
    h("li", {}, h("a", { href: `${API}${base}/artifacts/${file.name.split("/").map(encodeURIComponent).join("/")}`,
      download: file.name.split("/").pop() }, file.name), h("span", { class: "muted" }, ` ${size(file.size)}`))));
  $("#outputs-empty").hidden = items.length > 0;
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// [format, label, tooltip]: md embeds its screenshots; zip adds outputs; mp4 is the replay.
const EXPORTS = [
  ["json", "JSON", "every step as JSON"],
  ["md", "Markdown", "one Markdown file, screenshots embedded"],
  ["html", "HTML", "one HTML page, screenshots embedded"],
  ["zip", "ZIP", "trace, screenshots, conversation, network log and outputs"],
  ["mp4", "Video", "the replay as an MP4 video, one second per screenshot"],
];

function renderExports() {
  replace($("#exports"), EXPORTS.map(([format, label, title]) =>
    h("a", { class: "button small", href: `${API}${base}/export?format=${format}`, download: "",
      title, "data-export": format }, label)));
}

// --- network ---------------------------------------------------------------------------
function connectionRow(c) {
  return h("tr", { class: `v-${c.verdict}` },
    h("td", {}, new Date(c.time * 1000).toLocaleTimeString()),
    h("td", {}, h("span", { class: `badge ${c.verdict === "allowed" ? "s-completed" : "s-failed"}` }, c.verdict)),
    h("td", {}, c.proto),
    h("td", {}, c.host || "–"),
    h("td", {}, c.ip || "–"),
    h("td", {}, String(c.port)),
    h("td", {}, size(c.sent)),
    h("td", {}, size(c.received)),
    h("td", { class: "muted" }, c.detail || ""));
}

function renderNetwork(task, log) {
  const nat = task.settings?.network === "nat" || log.items.length > 0;
  $("#network-card").hidden = !nat;
  if (!nat) return;
  const allow = task.settings?.network_allow || [];
  const denied = log.items.filter((c) => c.verdict === "denied").length;
  $("#network-caption").textContent =
    `${allow.length ? `allowlist: ${allow.join(", ")}` : "public internet"} · ` +
    `${log.items.length} recorded, ${denied} denied${log.source === "live" ? " · live" : ""}`;
  replace($("#network"), log.items.slice().reverse().map(connectionRow));
  $("#network-empty").hidden = log.items.length > 0;
}

// --- steps -----------------------------------------------------------------------------
// An intervention reads "takeover by dashboard (127.0.0.1)": what was done, and by whom.
function actor(by) {
  return by ? `${by.kind}${by.address ? ` (${by.address})` : ""}` : "someone";
}

function stepTitle(step) {
  if (step.kind === "intervention") return `${step.action} by ${actor(step.by)}`;
  return step.tool || step.kind;
}

function stepItem(step, index) {
  const title = stepTitle(step);
  const frame = frames.findIndex((f) => f.index === index);
  return h("li", { class: `step k-${step.kind}`, dataset: { index: String(index) } },
    h("div", { class: "row step-head" },
      h("span", { class: "step-no" }, `#${step.step}`),
      step.kind === "intervention" ? h("span", { class: "badge intervention" }, "person") : null,
      h("strong", {}, title),
      step.error ? h("span", { class: "badge s-failed" }, "error") : null,
      h("span", { class: "spacer" }),
      frame >= 0 ? h("button", { type: "button", class: "small link", onclick: () => show(frame) }, "show screen") : null,
      h("span", { class: "muted" }, new Date(step.ts).toLocaleTimeString())),
    step.reasoning ? h("p", { class: "reasoning" }, step.reasoning) : null,
    step.text ? h("p", { class: "text" }, step.text) : null,
    step.arguments ? h("details", {}, h("summary", {}, "arguments"), h("pre", {}, pretty(step.arguments))) : null,
    step.result !== undefined && step.result !== null
      ? h("details", {}, h("summary", {}, "result"), h("pre", {}, pretty(step.result))) : null,
    step.error ? h("pre", { class: "error" }, step.error) : null);
}

function renderSteps(steps) {
  frames = steps.map((s, index) => ({ ...s, index })).filter((s) => s.screenshot);
  replace($("#steps"), steps.map(stepItem));
  $("#steps-empty").hidden = steps.length > 0;
  const scrubber = $("#replay-scrubber");
  const atEnd = Number(scrubber.value) >= Number(scrubber.max);
  scrubber.max = String(Math.max(0, frames.length - 1));
  $("#replay-empty").hidden = frames.length > 0;
  $("#replay-image").hidden = frames.length === 0;
  if (frames.length) show(atEnd ? frames.length - 1 : Number(scrubber.value));
}

// --- replay ----------------------------------------------------------------------------
function show(i) {
  if (!frames.length) return;
  const index = Math.max(0, Math.min(frames.length - 1, i));
  const frame = frames[index];
  $("#replay-scrubber").value = String(index);
  const src = `${API}${base}/screenshots/${encodeURIComponent(frame.screenshot)}`;
  const img = $("#replay-image");
  if (img.getAttribute("src") !== src) img.src = src;
  $("#replay-caption").textContent =
    `${index + 1} / ${frames.length} · step ${frame.step} · ${frame.tool || frame.kind}`;
  for (const el of document.querySelectorAll(".step.current")) el.classList.remove("current");
  document.querySelector(`.step[data-index="${frame.index}"]`)?.classList.add("current");
}

function togglePlay() {
  if (playing) {
    clearInterval(playing);
    playing = null;
  } else {
    if (Number($("#replay-scrubber").value) >= frames.length - 1) show(0);
    playing = setInterval(() => {
      const next = Number($("#replay-scrubber").value) + 1;
      if (next >= frames.length) togglePlay();
      else show(next);
    }, 800);
  }
  $("#replay-play").textContent = playing ? "Pause" : "Play";
}

function setupReplay() {
  $("#replay-scrubber").addEventListener("input", (e) => show(Number(e.target.value)));
  $("#replay-prev").addEventListener("click", () => show(Number($("#replay-scrubber").value) - 1));
  $("#replay-next").addEventListener("click", () => show(Number($("#replay-scrubber").value) + 1));
  $("#replay-play").addEventListener("click", togglePlay);
}

// --- loading ---------------------------------------------------------------------------
async function load() {
  const [task, trace, files, network] = await Promise.all([
    api(base), api(`${base}/trace`), api(`${base}/artifacts`), api(`${base}/network`)]);
  renderHead(task);
  renderSteps(trace.steps);
  renderFiles(files.items);
  renderLeftOut(files.transfer);
  renderNetwork(task, network);
}

let pending = null;
function refresh() {
  if (pending) return;
  pending = setTimeout(() => {
    pending = null;
    attempt(load);
  }, 200);
}

startShell();
setupReplay();
renderExports();
attempt(load);
onEvent((event) => event.data?.task_id === taskId && refresh());
