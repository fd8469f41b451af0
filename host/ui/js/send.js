// Send a command to any aggregate type and see the host's answer: the events it stored, or
// the error in the host's own words. Every command carries a correlation id (a fresh one
// unless the person types their own), so the answer links to the saga it started.

import { componentNames, newCorrelationId, path, request } from "./api.js";
import { errorBox, field, fill, h, jsonBlock, notice, select } from "./dom.js";
import { aggregateHref, eventTable, sagaHref } from "./events.js";

/** Commands of the bundled examples, to start from; any other type starts from an empty body. */
const EXAMPLES = {
  account: [
    ["OpenAccount", { initial_balance: 25000 }],
    ["CreditAccount", { amount: 1000, transaction_id: "t-1" }],
    ["DebitAccount", { amount: 500, transaction_id: "t-2" }],
    ["CloseAccount", null],
  ],
  "money-transfer": [["CreateMoneyTransfer", { from_account_id: "101", to_account_id: "202", amount: 5500 }]],
  customer: [["CreateCustomer", { name: "Fred", credit_limit: 200000 }]],
  order: [["CreateOrder", { customer_id: "c1", order_total: 123400 }], ["CancelOrder", null]],
};

export async function mount(view, route) {
  let types = [];
  try {
    types = (await componentNames()).aggregates;
  } catch (failure) {
    view.append(errorBox(failure));
  }
  const chosenType = route.params.get("type") ?? types[0] ?? "";
  const typeSelect = select({ name: "type", id: "send-type", required: true }, types, chosenType);
  const id = h("input", { name: "id", id: "send-id", value: route.params.get("id") ?? "", placeholder: "empty: the host picks a new id", spellcheck: "false" });
  const commandType = h("input", { name: "command", id: "send-command-type", required: true, placeholder: "OpenAccount", spellcheck: "false" });
  const data = h("textarea", { name: "data", id: "send-data", rows: 6, spellcheck: "false", placeholder: '{"initial_balance": 25000}' });
  const correlation = h("input", { name: "correlation", id: "send-correlation", value: newCorrelationId(), spellcheck: "false", size: 38 });
  const ifMatch = h("input", { name: "if_match", id: "send-if-match", inputmode: "numeric", placeholder: "any version" });
  const idempotencyKey = h("input", { name: "idempotency_key", id: "send-idempotency-key", placeholder: "none" });
  const examples = h("div", { class: "examples", id: "send-examples" });
  const answer = h("div", { id: "send-answer", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary", id: "send-submit" }, "Send");

  const showExamples = () => fill(examples, (EXAMPLES[typeSelect.value] ?? []).map(([name, body]) =>
    h("button", { type: "button", class: "link", onclick: () => {
      commandType.value = name;
      data.value = body === null ? "" : JSON.stringify(body, null, 2);
    } }, name)));
  typeSelect.addEventListener("change", showExamples);
  showExamples();

  const form = h("form", { class: "card send", id: "send-form" },
    h("div", { class: "row" }, field("Aggregate type", typeSelect), field("Id", id)),
    h("div", { class: "row" }, field("Command type", commandType), h("div", { class: "field" }, h("span", { class: "label" }, "Examples"), examples)),
    field("Data (JSON object, may be empty)", data),
    h("div", { class: "row" },
      field("Correlation id", correlation, "carried by every event this command causes"),
      field("If-Match version", ifMatch),
      field("Idempotency key", idempotencyKey)),
    h("div", { class: "buttons" }, submit));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let body;
    try {
      body = data.value.trim() === "" ? undefined : JSON.parse(data.value);
    } catch (failure) {
      fill(answer, notice(`The data is not JSON: ${failure.message}`, "error"));
      return;
    }
    const headers = { "X-Correlation-Id": correlation.value.trim() || newCorrelationId() };
    if (ifMatch.value.trim()) headers["If-Match"] = `"${ifMatch.value.trim()}"`;
    if (idempotencyKey.value.trim()) headers["Idempotency-Key"] = idempotencyKey.value.trim();
    const target = id.value.trim()
      ? `/aggregates/${path`${typeSelect.value}`}/${path`${id.value.trim()}`}/commands`
      : `/aggregates/${path`${typeSelect.value}`}/commands`;
    const command = body === undefined ? { type: commandType.value.trim() } : { type: commandType.value.trim(), data: body };
    submit.disabled = true;
    try {
      const sent = await request("POST", target, { json: command, headers });
      fill(answer, accepted(sent.body, headers["X-Correlation-Id"]));
      window.dispatchEvent(new Event("cairn:committed"));
      // The next command starts a new saga unless the person chooses otherwise.
      correlation.value = newCorrelationId();
    } catch (failure) {
      fill(answer, h("div", { id: "send-error" }, errorBox(failure), refusalNote(failure)));
    } finally {
      submit.disabled = false;
    }
  });

  fill(view, h("div", { class: "page-head" }, h("h1", {}, "Send a command")), form, answer);
}

/** A line on what a refusal means for the person who sent it, where the code alone does not say. */
function refusalNote(failure) {
  if (failure.status === 422) {
    return h("p", { class: "muted" }, "The aggregate refused the command; nothing was stored.");
  }
  if (failure.code === "internal_command") {
    return h("p", { class: "muted" }, "This command is one of a saga's own steps: only the host's reactions may send it.");
  }
  return null;
}

function accepted(answer, correlationId) {
  const stream = `${answer.type}/${answer.id}`;
  return h("section", { class: "card", id: "send-accepted" },
    h("div", { class: "notice success", role: "status" },
      h("strong", {}, `Accepted: ${stream} is at version ${answer.version}`),
      answer.events.length === 0 ? " (the command changed nothing)." : ` with ${answer.events.length} new event${answer.events.length === 1 ? "" : "s"}.`),
    h("p", { class: "links" },
      h("a", { href: aggregateHref(stream), class: "button", id: "send-open-aggregate" }, `Open ${stream}`),
      h("a", { href: sagaHref(correlationId), class: "button", id: "send-open-saga" }, `Open the saga ${correlationId}`)),
    answer.events.length ? eventTable(answer.events) : null,
    h("details", {}, h("summary", {}, "The answer as JSON"), jsonBlock(answer)));
}
