// Crews: start one goal for several agents, and the list of crews (live on crew.* events).
import { api, onEvent } from "./api.js";
import { $, badge, cost, h, replace, when } from "./dom.js";
import { attempt, startShell } from "./shell.js";

async function loadProviders() {
  const providers = await api("/providers");
  const select = $("#provider");
  replace(select, providers.items.map((p) =>
    h("option", { value: p.name, selected: p.default }, `${p.name} · ${p.model || "set a model"}`)));
  if (!providers.items.length) select.append(h("option", { value: "" }, "no provider configured"));
}

function crewForm(form) {
  const data = new FormData(form);
  const body = new FormData();
  const set = (key, value) => value && body.append(key, value);
  set("goal", data.get("goal").trim());
  set("agents", data.get("agents"));
  set("max_cost_usd", data.get("max_cost_usd"));
  set("provider", data.get("provider"));
  set("model", data.get("model").trim());
  body.append("review_plan", data.get("review_plan") ? "true" : "false");
  for (const file of data.getAll("files")) if (file.name) body.append("files", file, file.name);
  return body;
}

function setupForm() {
  const form = $("#new-crew");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    $("#start-crew").disabled = true;
    const crew = await attempt(() => api("/crews", { method: "POST", form: crewForm(form) }));
    $("#start-crew").disabled = false;
    if (crew) location.href = `/crews/${encodeURIComponent(crew.id)}`;
  });
}

function doneCount(crew) {
  const done = crew.todos.filter((t) => t.status === "done").length;
  return crew.todos.length ? `${done} / ${crew.todos.length}` : "–";
}

function crewRow(crew) {
  const href = `/crews/${encodeURIComponent(crew.id)}`;
  return h("tr", { dataset: { crew: crew.id } },
    h("td", { class: "desc-cell" }, h("a", { href }, crew.goal)),
    h("td", {}, badge(crew.waiting_to_start && crew.todos.length ? "waiting_for_review" : crew.status)),
    h("td", {}, String(crew.agents)),
    h("td", {}, doneCount(crew)),
    h("td", {}, cost(crew.cost_usd)),
    h("td", { title: crew.created_at }, when(crew.created_at)));
}

async function loadCrews() {
  const page = await api("/crews?limit=100");
  replace($("#crews"), page.items.map(crewRow));
  $("#crews-empty").hidden = page.items.length > 0;
}

// Events come in bursts (one TODO is several): one reload per burst.
let pending = null;
function refresh() {
  if (pending) return;
  pending = setTimeout(() => {
    pending = null;
    attempt(loadCrews);
  }, 200);
}

startShell();
setupForm();
attempt(loadProviders);
attempt(loadCrews);
onEvent((event) => event.type.startsWith("crew.") && refresh());
