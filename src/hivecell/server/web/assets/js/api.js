// The REST API and the live event stream. The session cookie rides along on every request.

export const API = "/api/v1";

export class ApiError extends Error {
  // detail: the body's {code, op, context} when the server sent its error shape, so a page
  // can tell one refusal from another without matching the message's words.
  constructor(status, message, detail = {}) {
    super(message);
    this.status = status;
    this.code = detail.code;
    this.op = detail.op;
    this.context = detail.context;
  }
}

export async function api(path, { method = "GET", json, form } = {}) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const response = await fetch(API + path, init);
  if (response.status === 401) {
    location.assign("/login");
    throw new ApiError(401, "logged out");
  }
  const body = response.status === 204 ? null : await readBody(response);
  if (!response.ok) {
    const detail = body && typeof body === "object" && typeof body.error === "object" ? body.error : {};
    throw new ApiError(response.status, errorText(body, response), detail || {});
  }
  return body;
}

async function readBody(response) {
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

function errorText(body, response) {
  if (body && typeof body === "object") {
    const detail = body.error?.message || body.detail || body.message;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return JSON.stringify(body);
  }
  return body || `${response.status} ${response.statusText}`;
}

export const post = (path, json) => api(path, { method: "POST", json });
export const del = (path) => api(path, { method: "DELETE" });

// One WebSocket per page, reconnecting with backoff; listeners get every event ({type, data}).
const listeners = new Set();
const statusListeners = new Set();

export function onEvent(fn) {
  listeners.add(fn);
}

export function onConnection(fn) {
  statusListeners.add(fn);
}

export function connectEvents() {
  let delay = 500;
  const open = () => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}${API}/events`);
    ws.addEventListener("open", () => {
      delay = 500;
      statusListeners.forEach((fn) => fn(true));
    });
    ws.addEventListener("message", (message) => {
      const event = JSON.parse(message.data);
      listeners.forEach((fn) => fn(event));
    });
    ws.addEventListener("close", () => {
      statusListeners.forEach((fn) => fn(false));
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    });
  };
  open();
}
