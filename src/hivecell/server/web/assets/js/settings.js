// Settings: model providers (keys are write-only) and the server's saved defaults.
import { api, post } from "./api.js";
import { $, h, replace } from "./dom.js";
import { attempt, startShell, toast } from "./shell.js";

// --- providers -------------------------------------------------------------------------
function providerRow(p) {
  const name = encodeURIComponent(p.name);
  const result = h("span", { class: "test-result muted" });
  const test = async () => {
    result.textContent = "testing…";
    const r = await attempt(() => post(`/providers/${name}/test`));
    if (!r) { result.textContent = ""; return; }
    result.className = `test-result ${r.ok ? "ok" : "error"}`;
    result.textContent = r.ok ? `ok · ${r.latency_ms} ms` : r.error.message;
  };
  const remove = async () => {
    if (!confirm(`Remove provider ${p.name}?`)) return;
    await attempt(() => api(`/providers/${name}`, { method: "DELETE" }), "Provider removed");
    await attempt(loadProviders);
  };
  // The environment's provider is read-only here: it changes where hivecell up is started.
  const actions = p.read_only
    ? [h("span", { class: "muted read-only" }, ENV_HINT)]
    : [h("button", { type: "button", class: "small", onclick: () => edit(p) }, "Edit"),
       h("button", { type: "button", class: "small danger-quiet", onclick: remove }, "Remove")];
  return h("tr", { dataset: { provider: p.name, source: p.source } },
    h("td", {}, p.name, p.default ? h("span", { class: "badge" }, "default") : null),
    h("td", { class: "source" }, p.source === "environment" ? "environment" : "config.toml"),
    h("td", { class: "kind mono" }, p.kind || "openai-chat"),
    h("td", { class: "mono" }, p.base_url || ""),
    h("td", {}, p.model || ""),
    h("td", { class: "mono" }, keyText(p)),
    h("td", { class: "row end" },
      result,
      h("button", { type: "button", class: "small", onclick: test }, "Test connection"),
      ...actions));
}

const ENV_HINT = "read-only: set OPENAI_API_KEY, OPENAI_BASE_URL, HIVECELL_MODEL "
  + "where hivecell up runs, then restart it";

function keyText(p) {
  if (p.source === "environment") return p.api_key ? `$OPENAI_API_KEY (${p.api_key})` : "none";
  return p.api_key || (p.api_key_env ? `$${p.api_key_env}` : "none");
}

async function loadProviders() {
  const listing = await api("/providers");
  replace($("#providers"), listing.items.map(providerRow));
  $("#providers-empty").hidden = listing.items.length > 0;
  $("#key-storage").textContent = listing.key_storage === "keyring"
    ? "API keys are kept in the OS keyring."
    : "No OS keyring here: API keys are kept in config.toml, readable by this user only (0600).";
}

function edit(p) {
  const form = $("#provider-form");
  form.elements.name.value = p.name;
  form.elements.name.readOnly = true;
  form.elements.kind.value = p.kind || "openai-chat";
  form.elements.base_url.value = p.base_url || "";
  form.elements.model.value = p.model || "";
  form.elements.api_key.value = "";
  form.elements.api_key_env.value = p.api_key_env || "";
  form.elements.default.checked = p.default;
  $("#provider-form-title").textContent = `Edit ${p.name}`;
  $("#provider-cancel").hidden = false;
  form.elements.base_url.focus();
}

function resetProviderForm() {
  const form = $("#provider-form");
  form.reset();
  form.elements.name.readOnly = false;
  $("#provider-form-title").textContent = "Add a provider";
  $("#provider-cancel").hidden = true;
}

function setupProviderForm() {
  const form = $("#provider-form");
  $("#provider-cancel").addEventListener("click", resetProviderForm);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = form.elements;
    const body = { name: f.name.value.trim(), kind: f.kind.value, base_url: f.base_url.value.trim(),
      model: f.model.value.trim(), default: f.default.checked };
    if (f.api_key.value) body.api_key = f.api_key.value;
    if (f.api_key_env.value.trim()) body.api_key_env = f.api_key_env.value.trim();
    if (await attempt(() => post("/providers", body), "Provider saved")) {
      resetProviderForm();
      await attempt(loadProviders);
    }
  });
}

// --- defaults --------------------------------------------------------------------------
function fillPrefs(prefs) {
  const f = $("#prefs").elements;
  f["sandbox.width"].value = prefs.sandbox.width;
  f["sandbox.height"].value = prefs.sandbox.height;
  f["sandbox.network"].value = prefs.sandbox.network;
  f["sandbox.desktop"].value = prefs.sandbox.desktop;
  f["sandbox.memory_mb"].value = prefs.sandbox.memory_mb ?? "";
  f["sandbox.cpus"].value = prefs.sandbox.cpus ?? "";
  f["sandbox.disk_mb"].value = prefs.sandbox.disk_mb ?? "";
  f["pool.size"].value = prefs.pool.size;
  f["pool.idle_min"].value = prefs.pool.idle_timeout_s / 60;
  for (const name of ["max_sandboxes", "max_memory_mb", "max_cpus"]) {
    f[`capacity.${name}`].value = prefs.capacity[name] ?? "";
  }
  attempt(showDerivedCaps);
  f["task.timeout_min"].value = prefs.task.timeout_s / 60;
  f["task.max_steps"].value = prefs.task.max_steps;
  f["task.limits_final"].checked = !!prefs.task.limits_final;
  f["task.max_cost_usd"].value = prefs.task.max_cost_usd ?? "";
  f["task.max_tokens"].value = prefs.task.max_tokens ?? "";
  f.max_concurrent.value = prefs.max_concurrent;
  f.output_dir.value = prefs.output_dir ?? "";
}

function readPrefs() {
  const f = $("#prefs").elements;
  const memory = f["sandbox.memory_mb"].value;
  const optional = (name) => (f[name].value ? Number(f[name].value) : null);
  return {
    sandbox: { width: Number(f["sandbox.width"].value), height: Number(f["sandbox.height"].value),
      network: f["sandbox.network"].value, desktop: f["sandbox.desktop"].value, memory_mb: memory ? Number(memory) : null,
      cpus: optional("sandbox.cpus"), disk_mb: optional("sandbox.disk_mb") },
    pool: { size: Number(f["pool.size"].value), idle_timeout_s: Number(f["pool.idle_min"].value) * 60 },
    capacity: { max_sandboxes: optional("capacity.max_sandboxes"),
      max_memory_mb: optional("capacity.max_memory_mb"), max_cpus: optional("capacity.max_cpus") },
    task: { timeout_s: Number(f["task.timeout_min"].value) * 60, max_steps: Number(f["task.max_steps"].value),
      limits_final: f["task.limits_final"].checked,
      max_cost_usd: optional("task.max_cost_usd"), max_tokens: optional("task.max_tokens") },
    max_concurrent: Number(f.max_concurrent.value),
    output_dir: f.output_dir.value.trim() || null,
  };
}

// Empty caps are derived from the host: show what they come to as the placeholder.
async function showDerivedCaps() {
  const { caps } = (await api("/pool")).capacity;
  for (const input of $("#capacity").querySelectorAll("input[data-auto]")) {
    input.placeholder = `auto: ${caps[input.dataset.auto]}`;
  }
}

function setupPrefs() {
  $("#prefs").addEventListener("submit", async (event) => {
    event.preventDefault();
    const saved = await attempt(() => api("/settings", { method: "PUT", json: readPrefs() }), "Defaults saved");
    if (saved) fillPrefs(saved);
  });
}

// --- model prices ----------------------------------------------------------------------
function priceRow(model, price) {
  const remove = async () => {
    const saved = await attempt(() => api("/settings", { method: "PUT", json: { prices: { [model]: null } } }),
      "Price removed");
    if (saved) fillPrices(saved);
  };
  return h("tr", { dataset: { model } },
    h("td", { class: "mono" }, model),
    h("td", {}, `$${price.input}`),
    h("td", {}, `$${price.output}`),
    h("td", {}, price.cached_input === null || price.cached_input === undefined ? "–" : `$${price.cached_input}`),
    h("td", { class: "row end" }, h("button", { type: "button", class: "small danger-quiet", onclick: remove }, "Remove")));
}

function fillPrices(prefs) {
  const entries = Object.entries(prefs.prices || {});
  replace($("#prices"), entries.map(([model, price]) => priceRow(model, price)));
  $("#prices-empty").hidden = entries.length > 0;
}

function setupPrices() {
  const form = $("#price-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = form.elements;
    const price = { input: Number(f.input.value), output: Number(f.output.value) };
    if (f.cached_input.value) price.cached_input = Number(f.cached_input.value);
    const body = { prices: { [f.model.value.trim()]: price } };
    const saved = await attempt(() => api("/settings", { method: "PUT", json: body }), "Price saved");
    if (saved) {
      form.reset();
      fillPrices(saved);
    }
  });
}

// --- approvals -------------------------------------------------------------------------
// Mirrors hivecell.agent.approval (DEFAULT_TOOLS, SHELL_RULES); docs/tools.md lists them.
const APPROVAL_TOOLS = {
  delete_file: "delete_file",
  move_file: "move_file",
  write_file: "write_file onto an existing file",
  run_shell: "run_shell matching a rule on the right",
};
const SHELL_RULES = {
  recursive_rm: "rm -r / -rf / --recursive",
  dd: "dd",
  mkfs: "mkfs, mkfs.*",
  chmod_recursive: "chmod -R",
  chown_recursive: "chown -R",
  download_to_shell: "download piped into a shell (curl … | sh)",
  power: "shutdown, reboot, poweroff, halt",
  kill_all: "kill -9 -1",
  any: "every command",
};

function checklist(fieldset, name, labels, chosen) {
  // Names saved earlier that this page does not know are kept as extra boxes.
  const names = [...new Set([...Object.keys(labels), ...chosen])];
  replace(fieldset, [h("legend", {}, fieldset.querySelector("legend").textContent),
    ...names.map((value) => h("label", { class: "inline" },
      h("input", { type: "checkbox", name, value, checked: chosen.includes(value) }),
      ` ${labels[value] || value}`))]);
}

function fillApproval(prefs) {
  checklist($("#approval-tools"), "tools", APPROVAL_TOOLS, prefs.approval.tools);
  checklist($("#approval-rules"), "shell_rules", SHELL_RULES, prefs.approval.shell_rules);
  $("#approval-prefs").elements.approval_timeout_s.value = prefs.approval.timeout_s ?? "";
}

function readApproval() {
  const form = $("#approval-prefs");
  const checked = (name) => [...form.querySelectorAll(`input[name=${name}]:checked`)].map((b) => b.value);
  const timeout = form.elements.approval_timeout_s.value;
  return { tools: checked("tools"), shell_rules: checked("shell_rules"), timeout_s: timeout ? Number(timeout) : null };
}

function setupApproval() {
  $("#approval-prefs").addEventListener("submit", async (event) => {
    event.preventDefault();
    const saved = await attempt(() => api("/settings", { method: "PUT", json: { approval: readApproval() } }),
      "Approvals saved");
    if (saved) fillApproval(saved);
  });
}

startShell();
setupProviderForm();
setupPrefs();
setupApproval();
setupPrices();
attempt(loadProviders);
// The defaults forms stay inert until they show the saved settings: an edit made earlier
// would be overwritten by the load, and a save would store the page's placeholders over them.
attempt(async () => {
  const prefs = await api("/settings");
  fillPrefs(prefs);
  fillApproval(prefs);
  fillPrices(prefs);
  for (const form of [$("#prefs"), $("#approval-prefs")]) {
    form.inert = false;
    form.removeAttribute("aria-busy");
  }
});
if (!window.isSecureContext && location.hostname !== "127.0.0.1" && location.hostname !== "localhost") {
  toast("This page is not served over HTTPS: API keys you type travel in clear text.", "warn");
}
