// One aggregate: its state and version, its events, and its state at any earlier version
// (`?version=N`, a temporal read). The page follows the stream live, so a command sent
// elsewhere shows up here at once.

import { ApiError, componentNames, follow, get, path, query } from "./api.js";
import { errorBox, field, fill, h, jsonBlock, notice, select } from "./dom.js";
import { aggregateHref, eventTable, sagaLink, typeChip } from "./events.js";

const PAGE = 1000;
/** How far back the lookup page looks for recently written streams. */
const RECENT_EVENTS = 200;

export async function mount(view, route) {
  const [type, ...rest] = route.parts;
  const id = rest.join("/");
  let types = [];
  try {
    types = (await componentNames()).aggregates;
  } catch (failure) {
    view.append(errorBox(failure));
  }
  const lookup = lookupForm(types, type, id);
  if (!type || !id) {
    const recent = h("section", { class: "card", id: "recent-streams" }, h("h2", {}, "Recently written"));
    fill(view, h("div", { class: "page-head" }, h("h1", {}, "Aggregates")), lookup,
      h("p", { class: "muted" }, "Open an aggregate by its type and id, or click a stream anywhere in the console."),
      recent);
    await listRecent(recent);
    return;
  }
  const stream = `${type}/${id}`;
  const picked = route.params.get("version");
  const body = h("div", { id: "aggregate" });
  fill(view, h("div", { class: "page-head" }, h("h1", {}, h("span", { class: "muted" }, `${type}/`), id)), lookup, body);

  const resource = `/aggregates/${path`${type}`}/${path`${id}`}`;
  const render = async () => {
    let latest;
    let state;
    let version;
    let events = [];
    try {
      latest = await get(resource);
      for (let from = 1; ; from += PAGE) {
        const page = await get(`${resource}/events${query({ from, limit: PAGE })}`);
        events = events.concat(page.events);
        if (page.events.length < PAGE) break;
      }
      version = clampVersion(picked, latest.version);
      state = version === latest.version
        ? latest
        : await get(`${resource}${query({ version })}`);
    } catch (failure) {
      fill(body, failure instanceof ApiError && failure.status === 404
        ? notice(`${stream} has no events. It comes into being with its first accepted command.`, "info")
        : errorBox(failure),
      h("p", {}, h("a", { href: `#/send${query({ type, id })}`, class: "button" }, `Send a command to ${stream}`)));
      return;
    }
    fill(body,
      h("div", { class: "summary" },
        h("div", { class: "stat" }, h("span", { class: "label" }, "Version"), h("strong", { id: "aggregate-version" }, latest.version)),
        h("div", { class: "stat" }, h("span", { class: "label" }, "Events"), h("strong", {}, events.length)),
        h("div", { class: "stat" }, h("span", { class: "label" }, "Last saga"),
          sagaLink(events.at(-1)?.correlation_id)),
        h("a", { href: `#/send${query({ type, id })}`, class: "button" }, "Send a command")),
      versionPicker(type, id, version, latest.version),
      h("section", { class: "card" },
        h("h2", {}, version === latest.version ? "State" : `State after version ${version}`,
          version === latest.version ? null : h("span", { class: "badge past" }, "the past")),
        jsonBlock(state.state, { id: "aggregate-state" })),
      h("section", { class: "card" }, h("h2", {}, "Events"), markPicked(eventTable(events, { showStream: false }), type, id, version)));
  };
  await render();
  // Follow the stream from now on; each new event redraws the page.
  let timer = null;
  const stop = follow({
    filters: { stream },
    onEvent: () => {
      clearTimeout(timer);
      timer = setTimeout(render, 100);
    },
  });
  return () => {
    clearTimeout(timer);
    stop();
  };
}

/** The streams written last (from the tail of the global log), newest first. */
async function listRecent(section) {
  try {
    const head = (await get("/healthz")).head_position;
    const page = await get(`/events${query({ after: Math.max(0, head - RECENT_EVENTS), limit: RECENT_EVENTS })}`);
    const latest = new Map();
    for (const event of page.events) latest.set(event.stream, event);
    const streams = [...latest.values()].reverse();
    section.append(streams.length === 0
      ? h("p", { class: "muted" }, "Nothing yet.")
      : h("ul", { class: "recent" }, streams.map((event) => h("li", {},
        h("a", { href: aggregateHref(event.stream), class: "stream" }, event.stream),
        h("span", { class: "muted" }, ` v${event.version} · `), typeChip(event.type)))));
  } catch (failure) {
    section.append(errorBox(failure));
  }
}

function clampVersion(picked, latest) {
  const asked = Number.parseInt(picked ?? "", 10);
  return Number.isInteger(asked) && asked >= 1 && asked <= latest ? asked : latest;
}

function lookupForm(types, type, id) {
  const form = h("form", { class: "filters", id: "aggregate-lookup" },
    field("Type", select({ name: "type", id: "lookup-type", required: true }, types, type)),
    field("Id", h("input", { name: "id", id: "lookup-id", value: id ?? "", required: true, placeholder: "101" })),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Open")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = aggregateHref(`${form.elements.type.value}/${form.elements.id.value.trim()}`);
  });
  return form;
}

/** A slider and a number over 1..latest; moving either shows the state at that version. */
function versionPicker(type, id, version, latest) {
  const go = (value) => {
    const chosen = clampVersion(String(value), latest);
    location.hash = aggregateHref(`${type}/${id}`, chosen === latest ? undefined : chosen);
  };
  const slider = h("input", { type: "range", min: 1, max: latest, value: version, id: "version-slider", "aria-label": "Version" });
  const number = h("input", { type: "number", min: 1, max: latest, value: version, id: "version-number", "aria-label": "Version number" });
  slider.addEventListener("input", () => { number.value = slider.value; });
  slider.addEventListener("change", () => go(slider.value));
  number.addEventListener("change", () => go(number.value));
  return h("div", { class: "version-picker" },
    h("span", { class: "label" }, "State at version"), slider, number, h("span", { class: "muted" }, `of ${latest}`),
    version === latest ? null : h("button", { type: "button", onclick: () => go(latest) }, "Latest"));
}

/** Dim the events after the picked version, so the table reads as "what had happened then",
 * and make each version a link to the state after it. */
function markPicked(table, type, id, version) {
  for (const row of table.tBodies[0].rows) {
    const cell = row.cells[2];
    const eventVersion = Number(cell.textContent);
    if (eventVersion > version) row.classList.add("after-picked");
    fill(cell, h("a", { href: aggregateHref(`${type}/${id}`, eventVersion),
      title: `The state after version ${eventVersion}` }, eventVersion));
  }
  return table;
}
