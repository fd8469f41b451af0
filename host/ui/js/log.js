// The landing page: the global log, live. It opens `/events/stream` a little behind the head
// so the page starts with recent history, lets the host filter (stream type, stream, event
// type, correlation id), and pauses by closing the stream: resuming reopens it right after the
// last event shown, so nothing is skipped or shown twice.

import { componentNames, follow, get } from "./api.js";
import { errorBox, field, fill, h, select, typing } from "./dom.js";
import { eventRow, eventTable } from "./events.js";

/** How far back the page starts, in positions (further with a filter, which the host applies
 * while it catches up), and how many rows it keeps. */
const HISTORY = 100;
const FILTERED_HISTORY = 10000;
const MAX_ROWS = 500;

const FILTERS = ["stream_type", "stream", "event_type", "correlation_id"];

export async function mount(view, route) {
  const filters = Object.fromEntries(FILTERS.map((name) => [name, route.params.get(name) ?? ""]));
  let types = [];
  try {
    types = (await componentNames()).aggregates;
  } catch {
    // The filter still takes a typed name.
  }
  const status = h("span", { class: "stream-state", id: "log-state", "aria-live": "polite" }, "connecting…");
  const count = h("span", { class: "muted", id: "log-count" }, "");
  const pause = h("button", { type: "button", id: "log-pause", "aria-pressed": "false" }, "Pause");
  // The same table as every other event list, filled as events arrive.
  const table = eventTable([]);
  table.classList.add("live");
  const rows = table.tBodies[0];
  rows.id = "log-rows";
  const filtered = FILTERS.some((name) => filters[name]);
  const empty = h("p", { class: "muted empty", id: "log-empty" }, filtered
    ? `No matching event in the last ${FILTERED_HISTORY} positions of the log; new ones appear here as they are committed.`
    : "No events yet. Send a command and it appears here as soon as it is committed.");
  const form = h("form", { class: "filters", id: "log-filters", role: "search" },
    field("Stream type", select({ name: "stream_type", id: "filter-stream-type" }, types, filters.stream_type, "any")),
    field("Stream", h("input", { name: "stream", id: "filter-stream", value: filters.stream, placeholder: "account/101" })),
    field("Event type", h("input", { name: "event_type", id: "filter-event-type", value: filters.event_type, placeholder: "AccountDebited" })),
    field("Correlation id", h("input", { name: "correlation_id", id: "filter-correlation", value: filters.correlation_id })),
    h("div", { class: "buttons" },
      h("button", { type: "submit", class: "primary" }, "Filter"),
      h("a", { href: "#/log", class: "button" }, "Clear")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) chosen.set(name, value);
    }
    const search = chosen.toString();
    location.hash = `#/log${search ? `?${search}` : ""}`;
  });

  fill(view,
    h("div", { class: "page-head" },
      h("h1", {}, "Live log"),
      h("div", { class: "live-controls" }, status, count, pause)),
    form,
    table,
    empty);

  let head = 0;
  try {
    head = (await get("/healthz")).head_position;
  } catch (failure) {
    view.prepend(errorBox(failure));
  }
  let shown = 0;
  const onEvent = (event) => {
    const row = eventRow(event);
    // Highlight what is new since the page opened, not the history it starts with.
    if (event.position > head) row.classList.add("arrived");
    rows.prepend(row);
    shown += 1;
    empty.hidden = true;
    while (rows.rows.length > MAX_ROWS) rows.lastElementChild.remove();
    count.textContent = `${shown} event${shown === 1 ? "" : "s"}`;
  };
  const onState = (state) => {
    status.textContent = state;
    status.dataset.state = state.split(" ")[0];
  };
  const active = Object.fromEntries(Object.entries(filters).filter(([, v]) => v));
  const history = filtered ? FILTERED_HISTORY : HISTORY;
  let stop = follow({ after: Math.max(0, head - history), filters: active, onEvent, onState });
  let last = null;

  const toggle = () => {
    if (stop) {
      last = stop();
      stop = null;
      pause.textContent = "Resume";
      pause.setAttribute("aria-pressed", "true");
      onState("paused");
    } else {
      stop = follow({ after: last, filters: active, onEvent, onState });
      pause.textContent = "Pause";
      pause.setAttribute("aria-pressed", "false");
    }
  };
  pause.addEventListener("click", toggle);
  const onKey = (event) => {
    if (event.key === "p" && !typing(event.target) && !event.ctrlKey && !event.metaKey && !event.altKey) toggle();
  };
  document.addEventListener("keydown", onKey);
  return () => {
    document.removeEventListener("keydown", onKey);
    if (stop) stop();
  };
}
