// A saga: every event of one correlation id as a timeline. Each stream it touched is a lane,
// time runs down the page in global order, and an arrow goes from each event to the events it
// caused (their `causation_id` is its position). The page follows the saga live.

import { ApiError, follow, get, path, query } from "./api.js";
import { clock, errorBox, field, fill, h, jsonBlock, notice } from "./dom.js";
import { aggregateHref, hue, typeChip } from "./events.js";

const LANE = 290;
const ROW = 78;
const CARD_WIDTH = 262;
const CARD_HEIGHT = 58;
const HEAD = 44;
const PAGE = 1000;
const SVG = "http://www.w3.org/2000/svg";
// Where a trace id opens: any OTLP backend's trace page, `{trace_id}` replaced. Kept in
// this browser; Jaeger's local UI until changed.
const TRACE_VIEWER_KEY = "cairn.traceViewer";
const DEFAULT_TRACE_VIEWER = "http://localhost:16686/trace/{trace_id}";

function traceViewer() {
  const saved = localStorage.getItem(TRACE_VIEWER_KEY) ?? "";
  return /^https?:\/\//.test(saved) && saved.includes("{trace_id}") ? saved : DEFAULT_TRACE_VIEWER;
}

function traceHref(traceId) {
  return traceViewer().replaceAll("{trace_id}", encodeURIComponent(traceId));
}

function traceLink(traceId) {
  return h("a", { href: traceHref(traceId), target: "_blank", rel: "noopener noreferrer", class: "trace", dataset: { trace: traceId } },
    h("code", {}, traceId));
}

/** The traces the saga's events were caused in (one when it started with a traceparent). */
function traces(events) {
  const ids = [...new Set(events.map((e) => e.trace_id).filter(Boolean))];
  if (ids.length === 0) return null;
  return h("p", { id: "saga-trace" }, ids.length === 1 ? "Trace " : "Traces ",
    ids.flatMap((id, i) => (i === 0 ? [traceLink(id)] : [", ", traceLink(id)])));
}

export async function mount(view, route) {
  const correlationId = route.parts.join("/");
  const form = h("form", { class: "filters", id: "saga-lookup" },
    field("Correlation id", h("input", { name: "correlation", id: "saga-id", value: correlationId, required: true, size: 40 })),
    field("Trace viewer", h("input", { name: "viewer", id: "saga-trace-viewer", value: traceViewer(), size: 40 }),
      "A trace id opens here; {trace_id} is replaced"),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Open")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/saga/${path`${form.elements.correlation.value.trim()}`}`;
  });
  form.elements.viewer.addEventListener("change", () => {
    const viewer = form.elements.viewer.value.trim();
    if (viewer === DEFAULT_TRACE_VIEWER || viewer === "") localStorage.removeItem(TRACE_VIEWER_KEY);
    else localStorage.setItem(TRACE_VIEWER_KEY, viewer);
    for (const link of document.querySelectorAll("a.trace")) link.href = traceHref(link.dataset.trace);
  });
  if (!correlationId) {
    fill(view, h("div", { class: "page-head" }, h("h1", {}, "Sagas")), form,
      h("p", { class: "muted" }, "Every command carries a correlation id, and every event it causes, directly or through other aggregates, carries it too. Open one to see the chain; the send-command page and the live log link here."));
    return;
  }
  const body = h("div", { id: "saga" });
  fill(view, h("div", { class: "page-head" }, h("h1", {}, "Saga ", h("code", {}, correlationId))), form, body);

  let events = [];
  try {
    for (let after = 0; ; ) {
      const page = await get(`/sagas/${path`${correlationId}`}${query({ after, limit: PAGE })}`);
      events = events.concat(page.events);
      if (page.events.length < PAGE) break;
      after = page.events.at(-1).position;
    }
  } catch (failure) {
    if (!(failure instanceof ApiError && failure.status === 404)) {
      fill(body, errorBox(failure));
      return;
    }
  }
  const draw = () => fill(body, events.length === 0
    ? notice("No event carries this correlation id yet. The page shows the saga as soon as one does.")
    : [traces(events), timeline(events)]);
  draw();
  const seen = new Set(events.map((e) => e.position));
  let timer = null;
  const stop = follow({
    after: events.at(-1)?.position ?? 0,
    filters: { correlation_id: correlationId },
    onEvent: (event) => {
      if (seen.has(event.position)) return;
      seen.add(event.position);
      events.push(event);
      clearTimeout(timer);
      timer = setTimeout(draw, 50);
    },
  });
  return () => {
    clearTimeout(timer);
    stop();
  };
}

function timeline(events) {
  const lanes = [];
  for (const event of events) if (!lanes.includes(event.stream)) lanes.push(event.stream);
  const byPosition = new Map(events.map((event, row) => [String(event.position), { event, row }]));
  const width = lanes.length * LANE;
  const height = HEAD + events.length * ROW;
  const start = new Date(events[0].recorded_at).getTime();
  const detail = h("div", { class: "saga-detail", id: "saga-detail" },
    h("p", { class: "muted" }, "Select an event to see its data."));

  const board = h("div", { class: "timeline", id: "saga-timeline", role: "list", "aria-label": "Events of the saga in order" });
  board.style.width = `${width}px`;
  board.style.height = `${height}px`;
  const arrows = document.createElementNS(SVG, "svg");
  arrows.setAttribute("class", "arrows");
  arrows.setAttribute("width", width);
  arrows.setAttribute("height", height);
  arrows.setAttribute("aria-hidden", "true");
  arrows.append(marker());
  board.append(arrows);

  lanes.forEach((stream, lane) => {
    const line = h("div", { class: "lane-line" });
    line.style.left = `${lane * LANE + LANE / 2}px`;
    line.style.height = `${height - HEAD}px`;
    line.style.top = `${HEAD}px`;
    const title = h("a", { class: "lane-head", href: aggregateHref(stream), title: `Open ${stream}` }, stream);
    title.style.left = `${lane * LANE}px`;
    title.style.width = `${LANE - 12}px`;
    title.style.setProperty("--hue", hue(stream.split("/")[0]));
    board.append(line, title);
  });

  const centre = (row, lane) => ({ x: lane * LANE + LANE / 2, y: HEAD + row * ROW + CARD_HEIGHT / 2 + 6 });
  events.forEach((event, row) => {
    const lane = lanes.indexOf(event.stream);
    const offset = new Date(event.recorded_at).getTime() - start;
    const card = h("button", {
      type: "button", class: "saga-event", role: "listitem",
      dataset: { stream: event.stream, position: event.position, type: event.type },
      "aria-label": `${event.type} on ${event.stream}, version ${event.version}, position ${event.position}`,
    },
    typeChip(event.type),
    h("span", { class: "meta" }, `v${event.version} · #${event.position} · +${offset} ms`));
    card.style.left = `${lane * LANE + (LANE - CARD_WIDTH) / 2}px`;
    card.style.top = `${HEAD + row * ROW + 6}px`;
    card.style.width = `${CARD_WIDTH}px`;
    card.style.height = `${CARD_HEIGHT}px`;
    card.addEventListener("click", () => {
      for (const other of board.querySelectorAll(".saga-event.selected")) other.classList.remove("selected");
      card.classList.add("selected");
      fill(detail,
        h("h3", {}, event.type, " ", h("span", { class: "muted" }, `on ${event.stream}`)),
        h("dl", { class: "facts" },
          h("dt", {}, "Position"), h("dd", {}, event.position),
          h("dt", {}, "Version"), h("dd", {}, h("a", { href: aggregateHref(event.stream, event.version) }, `${event.version} (state after it)`)),
          h("dt", {}, "Recorded"), h("dd", {}, clock(event.recorded_at)),
          h("dt", {}, "Caused by"), h("dd", {}, event.causation_id
            ? describeCause(byPosition.get(event.causation_id), event.causation_id)
            : "the command that started the saga"),
          h("dt", {}, "Component version"), h("dd", {}, event.component_version),
          event.trace_id ? [h("dt", {}, "Trace"), h("dd", {}, traceLink(event.trace_id))] : null),
        jsonBlock(event.data));
    });
    board.append(card);

    const cause = event.causation_id ? byPosition.get(event.causation_id) : undefined;
    if (cause) {
      const from = centre(cause.row, lanes.indexOf(cause.event.stream));
      const to = centre(row, lane);
      arrows.append(arrow(from, to, `${cause.event.position}->${event.position}`));
    }
  });

  const streams = lanes.length;
  const last = events.at(-1);
  return h("div", {},
    h("p", { class: "saga-summary", id: "saga-summary" },
      `${events.length} events across ${streams} stream${streams === 1 ? "" : "s"}; the latest is `,
      typeChip(last.type), ` on ${last.stream}.`),
    h("div", { class: "timeline-scroll" }, board),
    detail);
}

function describeCause(cause, position) {
  if (!cause) return `position ${position} (outside this saga)`;
  return `${cause.event.type} on ${cause.event.stream} (position ${position})`;
}

function marker() {
  const defs = document.createElementNS(SVG, "defs");
  const head = document.createElementNS(SVG, "marker");
  for (const [name, value] of Object.entries({ id: "arrowhead", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" })) {
    head.setAttribute(name, value);
  }
  const shape = document.createElementNS(SVG, "path");
  shape.setAttribute("d", "M 0 0 L 10 5 L 0 10 z");
  head.append(shape);
  defs.append(head);
  return defs;
}

/** A curve from the bottom of the cause's card to the top of the caused one. */
function arrow(from, to, label) {
  const start = { x: from.x, y: from.y + CARD_HEIGHT / 2 };
  const end = { x: to.x, y: to.y - CARD_HEIGHT / 2 - 2 };
  const bend = Math.max(20, (end.y - start.y) / 2);
  const line = document.createElementNS(SVG, "path");
  line.setAttribute("d", `M ${start.x} ${start.y} C ${start.x} ${start.y + bend}, ${end.x} ${end.y - bend}, ${end.x} ${end.y}`);
  line.setAttribute("class", "causation");
  line.setAttribute("marker-end", "url(#arrowhead)");
  line.dataset.link = label;
  return line;
}

