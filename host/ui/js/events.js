// How one event looks everywhere in the console: its type as a coloured chip (the colour says
// the outcome when the name tells it, else a stable hue per type), its stream and saga as links.

import { path } from "./api.js";
import { clock, h, jsonBlock } from "./dom.js";

const FAILURE = /(Failed|Rejected|Refused|Cancelled|Canceled|Closed|Insufficient|Denied|Error)/;
const SUCCESS = /(Completed|Approved|Succeeded|Confirmed|Credited|Reserved|Released)$/;
const START = /(Created|Opened|Started|Registered|Placed)$/;

/** The tone of an event type: `failure`, `success`, `start`, or `other`. */
export function tone(eventType) {
  if (FAILURE.test(eventType)) return "failure";
  if (SUCCESS.test(eventType)) return "success";
  if (START.test(eventType)) return "start";
  return "other";
}

/** A stable hue for a name, so each event type and stream keeps its colour. */
export function hue(name) {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return hash % 360;
}

export function typeChip(eventType) {
  const chip = h("span", { class: `chip tone-${tone(eventType)}`, title: eventType }, eventType);
  chip.style.setProperty("--hue", hue(eventType));
  return chip;
}

/** `account/101` → `["account", "101"]` (ids may contain slashes). */
export function splitStream(stream) {
  const slash = stream.indexOf("/");
  return [stream.slice(0, slash), stream.slice(slash + 1)];
}

export function aggregateHref(stream, version) {
  const [type, id] = splitStream(stream);
  return `#/aggregate/${path`${type}`}/${path`${id}`}${version ? `?version=${version}` : ""}`;
}

export const sagaHref = (correlationId) => `#/saga/${path`${correlationId}`}`;

export function streamLink(stream, version) {
  return h("a", { href: aggregateHref(stream, version), class: "stream", title: `Open ${stream}` }, stream);
}

export function sagaLink(correlationId, text) {
  if (!correlationId) return h("span", { class: "muted" }, "—");
  return h("a", { href: sagaHref(correlationId), class: "correlation", title: `The saga ${correlationId}` },
    text ?? correlationId);
}

/** One row of an event table: position, time, stream, version, type, saga, and its data. */
export function eventRow(event, { showStream = true } = {}) {
  const data = h("details", { class: "data" }, h("summary", {}, summarize(event.data)), jsonBlock(event.data));
  return h("tr", { class: `event tone-row-${tone(event.type)}`, dataset: { position: event.position, type: event.type } },
    h("td", { class: "num" }, event.position),
    h("td", { class: "time" }, clock(event.recorded_at)),
    showStream ? h("td", {}, streamLink(event.stream, event.version)) : null,
    h("td", { class: "num" }, event.version),
    h("td", {}, typeChip(event.type)),
    h("td", {}, sagaLink(event.correlation_id, shorten(event.correlation_id))),
    h("td", { class: "payload" }, data));
}

export function eventTable(events, { showStream = true } = {}) {
  return h("table", { class: "events" },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "num" }, "Position"),
      h("th", { scope: "col" }, "Recorded"),
      showStream ? h("th", { scope: "col" }, "Stream") : null,
      h("th", { scope: "col", class: "num" }, "Version"),
      h("th", { scope: "col" }, "Type"),
      h("th", { scope: "col" }, "Saga"),
      h("th", { scope: "col" }, "Data"))),
    h("tbody", {}, events.map((event) => eventRow(event, { showStream }))));
}

/** `amount: 500, to_account_id: "202"` — the first fields of an event's data on one line. */
export function summarize(data) {
  if (data === null || typeof data !== "object") return JSON.stringify(data);
  const entries = Object.entries(data);
  if (entries.length === 0) return "{}";
  const text = entries.slice(0, 4).map(([k, v]) => `${k}: ${typeof v === "object" ? "…" : JSON.stringify(v)}`).join(", ");
  return entries.length > 4 ? `${text}, …` : text;
}

export function shorten(text, length = 13) {
  if (!text) return text;
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}
