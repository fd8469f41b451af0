// The host's HTTP API, as the console uses it. Every failure becomes an ApiError carrying the
// host's own error code and sentence, so pages can show exactly what the host said.

const TOKEN_KEY = "cairn.admin-token";

/** The admin token lives in this tab's session storage only: never in a URL or a cookie. */
export const adminToken = {
  get: () => sessionStorage.getItem(TOKEN_KEY) ?? "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * One request. `json` is sent as JSON; `bytes` as-is with `contentType`; `admin` adds the
 * admin token when one is kept. Answers `{status, headers, body}` for 2xx, throws ApiError
 * otherwise.
 */
export async function request(method, path, { json, bytes, contentType, headers = {}, admin = false } = {}) {
  const sent = new Headers(headers);
  let body;
  if (json !== undefined) {
    sent.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  } else if (bytes !== undefined) {
    sent.set("Content-Type", contentType ?? "application/octet-stream");
    body = bytes;
  }
  if (admin && adminToken.get()) {
    sent.set("Authorization", `Bearer ${adminToken.get()}`);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body });
  } catch (failure) {
    throw new ApiError(0, "host_unreachable", `The host did not answer (${failure.message}).`);
  }
  const text = await response.text();
  let answer = null;
  if (text) {
    try {
      answer = JSON.parse(text);
    } catch {
      answer = text;
    }
  }
  if (!response.ok) {
    const error = answer && typeof answer === "object" ? answer.error : null;
    throw new ApiError(
      response.status,
      error?.code ?? `http_${response.status}`,
      error?.message ?? `The host answered ${response.status}.`,
    );
  }
  return { status: response.status, headers: response.headers, body: answer };
}

export const get = async (path) => (await request("GET", path)).body;

/** `encodeURIComponent` for each part of a path: ids may hold any character. */
export const path = (strings, ...parts) =>
  strings.reduce((whole, text, i) => whole + text + (i < parts.length ? encodeURIComponent(parts[i]) : ""), "");

/** A query string of the parameters that have a value. */
export function query(parameters) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(parameters)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** The aggregate types and projections the host has components for. */
export async function componentNames() {
  const components = await get("/components");
  return {
    aggregates: components.filter((c) => c.kind === "aggregate").map((c) => c.name),
    projections: components.filter((c) => c.kind === "projection").map((c) => c.name),
    all: components,
  };
}

/** A random UUID (v4) that also works outside secure contexts, where randomUUID is absent. */
export function newCorrelationId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Follow `/events/stream` with `filters`, from `after`. Calls `onEvent(event)` for each event
 * and `onState(text)` as the connection changes. Reopens after the host's `end` event (it says
 * where to resume) and lets the browser reconnect by itself after a network error
 * (`Last-Event-ID`). Answers a function that closes it and returns the last position seen.
 */
export function follow({ after, filters = {}, onEvent, onState = () => {} }) {
  let last = after;
  let source = null;
  let closed = false;
  const open = () => {
    source = new EventSource(`/events/stream${query({ ...filters, after: last })}`);
    source.onopen = () => onState("live");
    source.onmessage = (message) => {
      const event = JSON.parse(message.data);
      last = Math.max(last ?? 0, event.position);
      onEvent(event);
    };
    source.addEventListener("end", (message) => {
      const end = JSON.parse(message.data);
      source.close();
      last = end.resume_after;
      onState(`reconnecting (${end.reason})`);
      if (!closed) setTimeout(() => !closed && open(), 500);
    });
    source.onerror = () => {
      if (closed) return;
      onState("reconnecting");
      // The browser retries a dropped connection by itself, but gives up on an HTTP error
      // (the host's limit on open streams, a restart): then try again a little later.
      if (source.readyState === EventSource.CLOSED) setTimeout(() => !closed && open(), 3000);
    };
  };
  open();
  return () => {
    closed = true;
    source?.close();
    return last;
  };
}
