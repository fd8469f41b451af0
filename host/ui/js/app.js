// The console's frame: the page named by the URL's fragment (`#/saga/<id>`), the admin token
// form, the host's status line and keyboard navigation. Each page module exports
// `mount(main, route)` and may answer a function that stops what it started (streams, timers).

import { adminToken, get } from "./api.js";
import { typing } from "./dom.js";
import * as aggregate from "./aggregate.js";
import * as components from "./components.js";
import * as log from "./log.js";
import * as routing from "./routing.js";
import * as saga from "./saga.js";
import * as send from "./send.js";

const PAGES = { log, aggregate, saga, send, components, routing };
const ORDER = ["log", "aggregate", "saga", "send", "components", "routing"];

let unmount = null;

/** `#/aggregate/account/101?version=3` → `{page, parts: ["account", "101"], params}`. */
export function parseRoute(hash) {
  const text = hash.replace(/^#\/?/, "");
  const [pathPart, search = ""] = text.split("?", 2);
  const decode = (part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part; // A hand-typed `%` that is not an escape stays as typed.
    }
  };
  const [page, ...parts] = pathPart.split("/").filter((p) => p !== "").map(decode);
  return { page: PAGES[page] ? page : "log", parts, params: new URLSearchParams(search) };
}

let shown = 0;

async function show() {
  const route = parseRoute(location.hash);
  const generation = ++shown;
  if (unmount) {
    try {
      unmount();
    } catch (failure) {
      console.warn("a page did not stop cleanly", failure);
    }
    unmount = null;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === route.page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.dataset.page = route.page;
  // Each page draws into a view of its own: a page still loading when the person moves on
  // writes into a view that is no longer on screen.
  const view = document.createElement("div");
  view.className = `page page-${route.page}`;
  main.replaceChildren(view);
  const cleanup = await PAGES[route.page].mount(view, route);
  if (generation === shown) {
    unmount = typeof cleanup === "function" ? cleanup : null;
  } else if (typeof cleanup === "function") {
    cleanup();
  }
}

function showTokenState() {
  const state = document.getElementById("token-state");
  const kept = adminToken.get() !== "";
  state.textContent = kept ? "kept for this tab" : "admin actions will be refused";
  state.className = `token-state ${kept ? "kept" : "missing"}`;
  document.getElementById("admin-token").placeholder = kept ? "•••••• (kept)" : "not set";
}

function setUpToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("admin-token");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim() !== "") adminToken.set(input.value.trim());
    input.value = "";
    showTokenState();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    adminToken.clear();
    input.value = "";
    showTokenState();
  });
  showTokenState();
}

async function pollHost() {
  const status = document.getElementById("host-status");
  try {
    const health = await get("/healthz");
    const cluster = health.node === undefined ? "" : ` · node ${health.node} of ${health.nodes_alive} alive`;
    status.textContent = `host up${cluster} · head position ${health.head_position} · ${health.live_actors} live actors`;
    status.className = "up";
  } catch (failure) {
    status.textContent = `host unreachable: ${failure.message}`;
    status.className = "down";
  }
}

function setUpKeys() {
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    const index = Number.parseInt(event.key, 10);
    if (index >= 1 && index <= ORDER.length) {
      location.hash = `#/${ORDER[index - 1]}`;
      event.preventDefault();
    } else if (event.key === "/") {
      const first = document.querySelector("#main input, #main select, #main textarea");
      if (first) {
        first.focus();
        event.preventDefault();
      }
    }
  });
  document.getElementById("skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    document.getElementById("main").focus();
  });
}

setUpToken();
setUpKeys();
window.addEventListener("hashchange", show);
show();
pollHost();
setInterval(pollHost, 5000);
// A command sent from the console moves the head at once; show it without waiting.
window.addEventListener("cairn:committed", pollHost);
