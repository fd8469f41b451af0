// Components: each one's versions, which is active, and what its deploy's replay check found.
// Deploy, rollback and activate are admin actions: they carry the token kept for this tab, and
// without it the host refuses them and the page says so.

import { get, path, query, request } from "./api.js";
import { dateTime, errorBox, field, fill, h, jsonBlock, notice, shortDigest } from "./dom.js";

export async function mount(view) {
  const list = h("div", { id: "component-list" });
  const result = h("div", { id: "deploy-result", "aria-live": "polite" });
  const refresh = async () => {
    try {
      const components = await get("/components");
      fill(list, components.length === 0 ? notice("No components are deployed.") : components.map((c) => card(c, result, refresh)));
      names.replaceChildren(...components.map((c) => h("option", { value: c.name })));
    } catch (failure) {
      fill(list, errorBox(failure));
    }
  };
  const names = h("datalist", { id: "component-names" });
  fill(view,
    h("div", { class: "page-head" }, h("h1", {}, "Components")),
    deployForm(result, refresh, names),
    result,
    list);
  await refresh();
}

function deployForm(result, refresh, names) {
  const file = h("input", { type: "file", name: "file", id: "deploy-file", accept: ".wasm,application/wasm", required: true });
  const name = h("input", { name: "name", id: "deploy-name", list: "component-names", placeholder: "from the file name", spellcheck: "false" });
  file.addEventListener("change", () => {
    if (!name.value && file.files[0]) name.value = file.files[0].name.replace(/\.wasm$/, "").replaceAll("_", "-");
  });
  const dryRun = h("input", { type: "checkbox", name: "dry_run", id: "deploy-dry-run" });
  const fromBeginning = h("input", { type: "checkbox", name: "react_from", id: "deploy-react-from" });
  const submit = h("button", { type: "submit", class: "primary", id: "deploy-submit" }, "Deploy");
  const form = h("form", { class: "card deploy", id: "deploy-form" },
    h("h2", {}, "Deploy a version"),
    h("div", { class: "row" },
      field("Component file (.wasm)", file),
      field("Name", name, "kebab-case; an existing name adds a version"),
      h("label", { class: "check" }, dryRun, " Dry run (check only)"),
      h("label", { class: "check" }, fromBeginning, " React to the whole log")),
    h("div", { class: "buttons" }, submit, names));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    const target = name.value.trim() || chosen?.name.replace(/\.wasm$/, "");
    if (!chosen || !target) return;
    submit.disabled = true;
    fill(result, notice(`Deploying ${target}…`));
    try {
      const answer = await request("PUT", `/components/${path`${target}`}${query({
        dry_run: dryRun.checked ? "true" : undefined,
        react_from: fromBeginning.checked ? "beginning" : undefined,
      })}`, { bytes: await chosen.arrayBuffer(), contentType: "application/wasm", admin: true });
      fill(result, deployReport(answer.body, dryRun.checked));
      await refresh();
    } catch (failure) {
      fill(result, refusal(failure));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function deployReport(report, dryRun) {
  const replay = report.replay;
  const example = replay?.example;
  return h("div", { class: "notice success", role: "status", id: "deploy-report" },
    h("strong", {}, dryRun ? `${report.name}: the check passed; nothing was activated.` : `${report.name} version ${report.version} is active.`),
    " ", `${report.kind}, ${shortDigest(report.digest)}.`,
    replay ? ` Replay check: ${replay.streams} streams rebuilt, ${replay.changed} with a different state.` : "",
    example
      ? h("details", {}, h("summary", {}, `How ${example.stream} changes`),
        h("div", { class: "before-after" },
          h("div", {}, h("span", { class: "label" }, "running version"), jsonBlock(example.before)),
          h("div", {}, h("span", { class: "label" }, "new version"), jsonBlock(example.after))))
      : null);
}

/** The host's refusal, where the test and the person look for it. */
function refusal(failure) {
  const box = errorBox(failure);
  box.id = "admin-refusal";
  return box;
}

function card(component, result, refresh) {
  const admin = async (label, method, url) => {
    try {
      const answer = await request(method, url, { admin: true });
      fill(result, notice(`${label}: ${component.name} version ${answer.body?.active_version ?? answer.body?.version ?? "?"} is active.`, "success"));
      await refresh();
    } catch (failure) {
      fill(result, refusal(failure));
    }
  };
  const versions = [...component.versions].sort((a, b) => b.version - a.version);
  return h("section", { class: "card component", dataset: { component: component.name } },
    h("div", { class: "component-head" },
      h("h2", {}, component.name),
      h("span", { class: `badge kind-${component.kind}` }, component.kind),
      h("span", { class: "active-version" }, "active: ", h("strong", { class: "active-number" }, `v${component.active_version}`)),
      versions.length > 1
        ? h("button", { type: "button", class: "rollback", onclick: () => admin("Rolled back", "POST", `/components/${path`${component.name}`}/rollback`) }, "Roll back")
        : null),
    h("table", { class: "versions" },
      h("thead", {}, h("tr", {}, ["Version", "Digest", "Size", "Deployed", "Replay check", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, versions.map((v) => h("tr", { class: v.active ? "active" : null, dataset: { version: v.version } },
        h("td", {}, `v${v.version}`, v.active ? h("span", { class: "badge active" }, "active") : null),
        h("td", {}, h("code", { title: v.digest }, shortDigest(v.digest))),
        h("td", { class: "num" }, `${(v.size / 1024).toFixed(0)} KiB`),
        h("td", {}, dateTime(v.deployed_at)),
        h("td", {}, v.replay ? `${v.replay.streams} streams, ${v.replay.changed} changed` : "—"),
        h("td", {}, v.active ? null : h("button", {
          type: "button", class: "activate",
          onclick: () => admin("Activated", "POST", `/components/${path`${component.name}`}/activate${query({ version: v.version })}`),
        }, `Activate v${v.version}`)))))));
}
