// Building the page. Everything a host sends is put in as text (never as markup), so an
// event's data cannot inject anything into the console.

import { adminToken } from "./api.js";

/** `h("a", {href: "#/log", class: "x"}, "text", child)`: an element with attributes and children. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** An error of the host (or the network) as a person should read it. */
export function errorBox(error) {
  const code = error.code ?? "error";
  return h("div", { class: "notice error", role: "alert" },
    h("strong", {}, error.status ? `${error.status} ${code}` : code), " ", error.message,
    // Only admin calls are refused with 401: say what to do about the token.
    error.status === 401
      ? h("span", { class: "hint" },
        adminToken.get() ? " The kept admin token is not the host's." : " Enter the admin token at the top of the page.")
      : null);
}

export function notice(text, kind = "info") {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** JSON, indented, as a block a person can read and select. */
export function jsonBlock(value, attributes = {}) {
  return h("pre", { class: "json", ...attributes }, JSON.stringify(value, null, 2));
}

/** `12:04:05.123` in local time, with the full timestamp as its title. */
export function clock(rfc3339) {
  const date = new Date(rfc3339);
  const text = Number.isNaN(date.getTime())
    ? rfc3339
    : `${date.toLocaleTimeString([], { hour12: false })}.${String(date.getMilliseconds()).padStart(3, "0")}`;
  return h("time", { datetime: rfc3339, title: rfc3339 }, text);
}

/** `24 Nov 2026, 03:44:57`: a date and time in the person's locale. */
export function dateTime(rfc3339) {
  const date = new Date(rfc3339);
  const text = Number.isNaN(date.getTime())
    ? rfc3339
    : date.toLocaleString([], { dateStyle: "medium", timeStyle: "medium", hour12: false });
  return h("time", { datetime: rfc3339, title: rfc3339 }, text);
}

export const shortDigest = (digest) => digest.replace(/^sha256:/, "").slice(0, 12);

/** A labelled field: `<label>text <input ...></label>`. */
export function field(label, control, hint) {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), control,
    hint ? h("span", { class: "hint" }, hint) : null);
}

/** A `<select>` of `options` (strings), with `selected` chosen and an optional empty entry. */
export function select(attributes, options, selected, emptyLabel) {
  return h("select", attributes,
    emptyLabel !== undefined ? h("option", { value: "" }, emptyLabel) : null,
    options.map((option) => h("option", { value: option, selected: option === selected }, option)));
}

/** Whether a key press is someone typing into a field (and so not a shortcut). */
export function typing(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}
