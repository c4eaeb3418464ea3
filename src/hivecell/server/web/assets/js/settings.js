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
  return h("tr", { dataset: { provider: p.name } },
    h("td", {}, p.name, p.default ? h("span", { class: "badge" }, "default") : null),
    h("td", { class: "mono" }, p.base_url || ""),
    h("td", {}, p.model || ""),
    h("td", { class: "mono" }, p.api_key || (p.api_key_env ? `$${p.api_key_env}` : "none")),
    h("td", { class: "row end" },
      result,
      h("button", { type: "button", class: "small", onclick: test }, "Test connection"),
      h("button", { type: "button", class: "small", onclick: () => edit(p) }, "Edit"),
      h("button", { type: "button", class: "small danger-quiet", onclick: remove }, "Remove")));
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
    const body = { name: f.name.value.trim(), base_url: f.base_url.value.trim(), model: f.model.value.trim(),
      default: f.default.checked };
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
  f["sandbox.memory_mb"].value = prefs.sandbox.memory_mb ?? "";
  f["task.timeout_min"].value = prefs.task.timeout_s / 60;
  f["task.max_steps"].value = prefs.task.max_steps;
  f["task.limits_final"].checked = !!prefs.task.limits_final;
  f.max_concurrent.value = prefs.max_concurrent;
  f.output_dir.value = prefs.output_dir ?? "";
}

function readPrefs() {
  const f = $("#prefs").elements;
  const memory = f["sandbox.memory_mb"].value;
  return {
    sandbox: { width: Number(f["sandbox.width"].value), height: Number(f["sandbox.height"].value),
      network: f["sandbox.network"].value, memory_mb: memory ? Number(memory) : null },
    task: { timeout_s: Number(f["task.timeout_min"].value) * 60, max_steps: Number(f["task.max_steps"].value),
      limits_final: f["task.limits_final"].checked },
    max_concurrent: Number(f.max_concurrent.value),
    output_dir: f.output_dir.value.trim() || null,
  };
}

function setupPrefs() {
  $("#prefs").addEventListener("submit", async (event) => {
    event.preventDefault();
    const saved = await attempt(() => api("/settings", { method: "PUT", json: readPrefs() }), "Defaults saved");
    if (saved) fillPrefs(saved);
  });
}

startShell();
setupProviderForm();
setupPrefs();
attempt(loadProviders);
attempt(async () => fillPrefs(await api("/settings")));
if (!window.isSecureContext && location.hostname !== "127.0.0.1" && location.hostname !== "localhost") {
  toast("This page is not served over HTTPS: API keys you type travel in clear text.", "warn");
}
