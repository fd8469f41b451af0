// Routing and views: every subscriber's and projection's cursor, lag and health, the dead
// letters with retry and discard (admin), and a browser over each projection's documents.
// The figures refresh every few seconds while the page is open.

import { get, path, query, request } from "./api.js";
import { clock, errorBox, fill, h, jsonBlock, notice } from "./dom.js";
import { streamLink, typeChip } from "./events.js";

const REFRESH_MS = 3000;

export async function mount(view, route) {
  const subscribers = h("div", { id: "subscribers" });
  const projections = h("div", { id: "projections" });
  const letters = h("div", { id: "dead-letters" });
  const result = h("div", { id: "routing-result", "aria-live": "polite" });
  const documents = h("div", { id: "view-browser" });
  fill(view,
    h("div", { class: "page-head" }, h("h1", {}, "Routing & views")),
    result,
    h("section", { class: "card" }, h("h2", {}, "Subscribers (sagas)"), subscribers),
    h("section", { class: "card" }, h("h2", {}, "Dead letters"), letters),
    h("section", { class: "card" }, h("h2", {}, "Projections (read models)"), projections),
    h("section", { class: "card" }, h("h2", {}, "View documents"), documents));

  const act = async (label, url) => {
    try {
      const answer = await request("POST", url, { admin: true });
      fill(result, notice(`${label}: ${JSON.stringify(answer.body)}`, "success"));
      await refresh();
    } catch (failure) {
      fill(result, errorBox(failure));
    }
  };
  const refresh = async () => {
    try {
      const [routing, views, parked] = await Promise.all([
        get("/routing"), get("/views"), get(`/routing/dead-letters${query({ limit: 200 })}`),
      ]);
      redraw(subscribers, routing.subscribers, () => subscriberTable(routing.subscribers));
      redraw(projections, views.projections, () => projectionTable(views.projections, act));
      redraw(letters, parked, () => deadLetterTable(parked, act));
      if (!documents.dataset.ready) {
        documents.dataset.ready = "yes";
        fill(documents, viewBrowser(views.projections.map((p) => p.name), route.params.get("view")));
      }
    } catch (failure) {
      fill(subscribers, errorBox(failure));
    }
  };
  await refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => clearInterval(timer);
}

const NUMERIC = new Set(["Cursor", "Head", "Lag", "In flight", "Commands sent", "Parked streams", "Restarts", "Version", "Documents", "Attempts"]);
const headings = (titles) => h("thead", {}, h("tr", {}, titles.map((t) => h("th", { scope: "col", class: NUMERIC.has(t) ? "num" : null }, t))));
const none = () => h("span", { class: "muted" }, "—");

/** Redraw a section only when its figures changed, so a refresh does not take the keyboard
 * focus (or a half-confirmed discard) away from the person using it. */
const drawn = new WeakMap();
function redraw(section, figures, draw) {
  const text = JSON.stringify(figures);
  if (drawn.get(section) === text) return;
  drawn.set(section, text);
  fill(section, draw());
}

const lagCell = (lag) => h("td", { class: `num ${lag > 0 ? "behind" : "caught-up"}` }, lag);

function subscriberTable(subscribers) {
  if (subscribers.length === 0) return notice("No component subscribes to other aggregates' events.");
  return h("table", { class: "figures", id: "subscriber-table" },
    headings(["Subscriber", "Reacts to", "Cursor", "Head", "Lag", "In flight", "Commands sent", "Parked streams", "Restarts", "Last error"]),
    h("tbody", {}, subscribers.map((s) => h("tr", { dataset: { subscriber: s.name } },
      h("th", { scope: "row" }, s.name),
      h("td", {}, s.subscriptions.map((sub) => h("div", { class: "subscription" },
        h("span", { class: "muted" }, `${sub.source_type}: `), sub.event_types.map((t) => typeChip(t))))),
      h("td", { class: "num" }, s.cursor),
      h("td", { class: "num" }, s.head_position),
      lagCell(s.lag),
      h("td", { class: "num" }, s.in_flight),
      h("td", { class: "num" }, s.delivered_commands),
      h("td", { class: `num ${s.parked_streams > 0 ? "behind" : ""}` }, s.parked_streams),
      h("td", { class: "num" }, s.restarts),
      h("td", { class: "error-text" }, s.last_error ? [s.last_error, " ", s.last_error_at ? clock(s.last_error_at) : null] : none())))));
}

function projectionTable(projections, act) {
  if (projections.length === 0) return notice("No projection is deployed.");
  return h("table", { class: "figures", id: "projection-table" },
    headings(["Projection", "Version", "Status", "Cursor", "Head", "Lag", "Documents", "Last error", ""]),
    h("tbody", {}, projections.map((p) => h("tr", { dataset: { projection: p.name } },
      h("th", { scope: "row" }, p.name),
      h("td", { class: "num" }, `v${p.version}`),
      h("td", {}, h("span", { class: `badge status-${p.status}` }, p.status,
        typeof p.progress === "number" ? ` ${Math.round(p.progress * 100)}%` : "")),
      h("td", { class: "num" }, p.cursor),
      h("td", { class: "num" }, p.head_position),
      lagCell(p.lag),
      h("td", { class: "num" }, p.documents),
      h("td", { class: "error-text" }, p.last_error ?? none()),
      h("td", {}, h("button", { type: "button", onclick: () => act(`Rebuild of ${p.name}`, `/views/${path`${p.name}`}/rebuild`) }, "Rebuild"))))));
}

/** One row per parked sequence (subscriber and stream), its letters in order, and the actions. */
function deadLetterTable(parked, act) {
  if (parked.dead_letters.length === 0) return notice("No dead letters: every subscriber is delivering.", "success");
  const sequences = new Map();
  for (const letter of parked.dead_letters) {
    const key = `${letter.subscriber}\u0000${letter.stream}`;
    if (!sequences.has(key)) sequences.set(key, []);
    sequences.get(key).push(letter);
  }
  return h("table", { class: "figures", id: "dead-letter-table" },
    headings(["Subscriber", "Stream", "Parked events", "Error", "Attempts", "Parked at", ""]),
    h("tbody", {}, [...sequences.values()].map((sequence) => {
      const first = sequence[0];
      const scope = query({ subscriber: first.subscriber, stream: first.stream });
      return h("tr", { dataset: { subscriber: first.subscriber, stream: first.stream } },
        h("th", { scope: "row" }, first.subscriber),
        h("td", {}, streamLink(first.stream)),
        h("td", {}, sequence.map((l) => h("div", {}, `#${l.position} `, typeChip(l.event_type), l.waiting_behind ? h("span", { class: "muted" }, " (waiting behind)") : null))),
        h("td", { class: "error-text" }, first.error ?? none()),
        h("td", { class: "num" }, first.attempts),
        h("td", {}, clock(first.parked_at)),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "retry", onclick: () => act("Retried", `/routing/dead-letters/retry${scope}`) }, "Retry"),
          confirmButton(scope, "Discard", "Really discard?", () => act("Discarded", `/routing/dead-letters/discard${scope}`))));
    })),
    parked.next_after ? h("caption", {}, "Showing the first 200 dead letters.") : null);
}

/** When each armed discard stops waiting for its second click, by the sequence it drops. */
const armedUntil = new Map();
const ARMED_MS = 5000;

/** A destructive button that asks once more in place (no modal dialog to trap the keyboard);
 * the question outlives a redraw of the table. */
function confirmButton(key, label, question, action) {
  const armed = () => (armedUntil.get(key) ?? 0) > Date.now();
  const button = h("button", { type: "button", class: "danger" }, armed() ? question : label);
  button.addEventListener("click", () => {
    if (armed()) {
      armedUntil.delete(key);
      action();
      return;
    }
    armedUntil.set(key, Date.now() + ARMED_MS);
    button.textContent = question;
    setTimeout(() => {
      if (!armed()) button.textContent = label;
    }, ARMED_MS + 50);
  });
  return button;
}

function viewBrowser(projections, chosen) {
  if (projections.length === 0) return notice("No projection is deployed.");
  const keys = h("ul", { class: "keys-list", id: "view-keys" });
  const documentBox = h("div", { id: "view-document" });
  const open = async (projection, after) => {
    try {
      const page = await get(`/views/${path`${projection}`}${query({ after, limit: 50 })}`);
      const list = page.keys ?? [];
      if (!after) keys.replaceChildren();
      for (const key of list) {
        keys.append(h("li", {}, h("button", { type: "button", class: "link", onclick: () => show(projection, key) }, key)));
      }
      if (list.length === 0 && !after) keys.append(h("li", { class: "muted" }, "No documents yet."));
      if (page.next_after) keys.append(h("li", {}, h("button", { type: "button", class: "link", onclick: (event) => { event.target.closest("li").remove(); open(projection, page.next_after); } }, "more…")));
    } catch (failure) {
      fill(keys, h("li", {}, errorBox(failure)));
    }
  };
  const show = async (projection, key) => {
    try {
      const answer = await request("GET", `/views/${path`${projection}`}/${path`${key}`}`);
      fill(documentBox, h("h3", {}, `${projection}/${key}`, " ",
        h("span", { class: "muted" }, `at position ${answer.headers.get("X-Cairn-Position")}`)), jsonBlock(answer.body));
    } catch (failure) {
      fill(documentBox, errorBox(failure));
    }
  };
  const picker = h("div", { class: "tabs", role: "tablist" }, projections.map((name) =>
    h("button", { type: "button", role: "tab", dataset: { view: name }, onclick: (event) => {
      for (const tab of picker.children) tab.setAttribute("aria-selected", "false");
      event.currentTarget.setAttribute("aria-selected", "true");
      fill(documentBox);
      open(name);
    } }, name)));
  const initial = projections.includes(chosen) ? chosen : projections[0];
  queueMicrotask(() => picker.querySelector(`[data-view="${CSS.escape(initial)}"]`)?.click());
  return h("div", { class: "view-browser" }, picker, h("div", { class: "split" }, keys, documentBox));
}
