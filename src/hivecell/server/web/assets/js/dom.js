// Building DOM without HTML strings: every value becomes a text node or a property, so text
// from the API (task descriptions, tool results) can never become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// Like replace, but leaves the element alone when the new children would render the same
// markup: controls re-rendered on every step event otherwise swapped a button out from
// under a click in progress (the click was lost) and wiped what was typed into a field.
export function replaceIfChanged(el, ...children) {
  const next = el.cloneNode(false);
  append(next, children);
  if (next.innerHTML !== el.innerHTML) el.replaceChildren(...next.childNodes);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function badge(status) {
  return h("span", { class: `badge s-${status}` }, String(status).replaceAll("_", " "));
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

export function elapsed(task, now = Date.now()) {
  if (!task.started_at) return null;
  const end = task.finished_at ? Date.parse(task.finished_at) : now;
  return (end - Date.parse(task.started_at)) / 1000;
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function usedTokens(task) {
  return (task.prompt_tokens || 0) + (task.completion_tokens || 0);
}

export function tokens(task) {
  const n = usedTokens(task);
  return n >= 10000 ? `${(n / 1000).toFixed(0)}k tok` : `${n} tok`;
}

export function cost(usd) {
  return usd ? `$${usd < 0.01 ? usd.toFixed(4) : usd.toFixed(2)}` : "$0";
}

// What a task has spent against its budgets: "$0.0300 of $0.05" with a meter, live while it
// runs (the view carries the running task's budget, grown by any resume with more).
export function spend(task) {
  const budget = task.budget || {};
  const part = (label, value, max, unit) => h("span", { class: `spend ${unit}`, dataset: { unit } },
    max ? `${label} of ${unit === "usd" ? cost(max) : `${max} tok`}` : label,
    max ? h("meter", { min: 0, max, value: Math.min(value, max), high: max * 0.8, optimum: 0,
      title: `${Math.round((100 * value) / max)}% of the ${unit === "usd" ? "cost" : "token"} budget` }) : null);
  return [part(tokens(task), usedTokens(task), budget.max_tokens, "tokens"), " · ",
    part(cost(task.cost_usd), task.cost_usd || 0, budget.max_cost_usd, "usd")];
}

export function pretty(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}
