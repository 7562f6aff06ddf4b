// Audit: the trail through GET /v1/scan with its filters (agent, status,
// time window, caller), a page at a time with the scan's own cursor
// (`next_after`), exported as JSON lines; and one record's own page
// (/ui/record?key=…): a dispatch record's arguments as stored, attempts,
// trace id and outcome, or any other record as JSON.

import { api, withQuery } from "./api.js";
import { badge, fill, h, json, ms, notice, recordLink, section, table, when } from "./dom.js";

const STATUSES = ["succeeded", "failed", "in_flight", "interrupted", "cancelled"];
// The most records one export gathers (a thousand per request).
const EXPORT_LIMIT = 100000;

export async function render(view, { view: which, query }) {
  if (which === "record") return record(view, query.get("key") || "");
  return search(view, query);
}

// The scan query of the form's fields (times as ms since the epoch).
function scanQuery(fields) {
  const at = (text) => (text ? String(new Date(text).getTime()) : "");
  return {
    prefix: fields.prefix || "tools/",
    agent: fields.agent,
    status: fields.status,
    caller: fields.caller,
    since_ms: at(fields.since),
    until_ms: at(fields.until),
  };
}

function search(view, query) {
  const fields = Object.fromEntries(["prefix", "agent", "status", "caller", "since", "until", "limit"].map((f) => [f, query.get(f) || ""]));
  const input = (name, label, attributes = {}) =>
    h("label", {}, label, h("input", { name, id: `audit-${name}`, value: fields[name], ...attributes }));
  const form = h(
    "form",
    { class: "filters", id: "audit-form" },
    input("prefix", "Key prefix", { placeholder: "tools/", spellcheck: "false" }),
    input("agent", "Agent", { spellcheck: "false" }),
    h(
      "label",
      {},
      "Status",
      h("select", { name: "status", id: "audit-status" }, h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s, selected: s === fields.status }, s))),
    ),
    input("caller", "Caller", { placeholder: "token:… or jwt:…", spellcheck: "false" }),
    input("since", "Started at or after", { type: "datetime-local", step: "1" }),
    input("until", "Started at or before", { type: "datetime-local", step: "1" }),
    input("limit", "Per page", { type: "number", min: "1", max: "1000", placeholder: "50" }),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Search"), h("button", { type: "button", id: "audit-export" }, "Export JSON lines")),
  );
  const results = h("div", { id: "audit-results", "aria-live": "polite" });
  fill(view, h("h1", {}, "Audit"), form, results);
  const current = () => Object.fromEntries(new FormData(form).entries());
  const run = async (after) => {
    const f = current();
    history.replaceState(null, "", withQuery("/ui/audit", f));
    fill(results, h("p", {}, "Searching…"));
    try {
      const page = await api("GET", withQuery("/v1/scan", { ...scanQuery(f), limit: f.limit || 50, after }));
      drawPage(results, page, (next) => run(next), after);
    } catch (e) {
      fill(results, notice("error", e.message));
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run("");
  });
  form.querySelector("#audit-export").addEventListener("click", () => exportLines(results, current()));
  run(query.get("after") || "");
}

function drawPage(el, page, next, after) {
  const rows = page.items.map(({ key, value }) =>
    key.startsWith("tools/")
      ? [when(value.started_at_ms), h("code", {}, value.tool), value.category, value.agent_id || "—", value.caller || "(local)", status(value.status), ms(value.latency_ms), recordLink(key)]
      : [when(value.at_ms), h("code", {}, key), "", "", "", "", "", recordLink(key)],
  );
  fill(
    el,
    table("Records, oldest first", ["Started", "Tool", "Category", "Agent", "Caller", "Status", "Latency", "Record"], rows, "No record matches."),
    h(
      "div",
      { class: "buttons" },
      after ? h("button", { type: "button", onclick: () => next("") }, "First page") : null,
      page.next_after ? h("button", { type: "button", id: "audit-next", onclick: () => next(page.next_after) }, "Next page") : h("span", { class: "hint" }, "Last page."),
    ),
  );
}

function status(text) {
  return badge(text, text === "succeeded" ? "good" : text === "failed" ? "bad" : "neutral");
}

// Every record the filters match, page after page, as a .jsonl download.
async function exportLines(el, fields) {
  const lines = [];
  let after = "";
  try {
    do {
      const page = await api("GET", withQuery("/v1/scan", { ...scanQuery(fields), limit: 1000, after }));
      for (const item of page.items) lines.push(JSON.stringify(item));
      after = page.next_after || "";
    } while (after && lines.length < EXPORT_LIMIT);
  } catch (e) {
    el.prepend(notice("error", `Export stopped: ${e.message}`));
    return;
  }
  const url = URL.createObjectURL(new Blob([lines.join("\n") + (lines.length ? "\n" : "")], { type: "application/jsonl" }));
  const link = h("a", { href: url, download: "switchboard-audit.jsonl" }, "download");
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  const count = lines.length === 1 ? "1 record" : `${lines.length} records`;
  el.prepend(notice("ok", `Exported ${count}${after ? ` (stopped at ${EXPORT_LIMIT}; narrow the filters for the rest)` : ""}.`));
}

async function record(view, key) {
  fill(view, h("h1", {}, "Record"), h("p", {}, h("code", { id: "record-key" }, key)));
  const page = await api("GET", withQuery("/v1/scan", { prefix: key, limit: 1 }));
  const item = page.items.find((i) => i.key === key);
  if (!item) {
    view.append(notice("info", "No such record, or this caller may not read it."));
    return;
  }
  const r = item.value;
  if (!key.startsWith("tools/")) {
    view.append(json(r));
    return;
  }
  const field = (name, value) => [h("dt", {}, name), h("dd", {}, value ?? "—")];
  view.append(
    h(
      "dl",
      { class: "record" },
      field("Tool", h("code", {}, r.tool)),
      field("Category", r.category),
      field("Status", status(r.status)),
      field("Caller", r.caller || "(local application)"),
      field("Agent", r.agent_id),
      field("Strategy", r.strategy),
      field("Session", r.session_id),
      field("Trace id", r.trace_id),
      field("Started", when(r.started_at_ms)),
      field("Finished", when(r.finished_at_ms)),
      field("Latency", ms(r.latency_ms)),
      field("Error", r.error),
      field("Invocation id", h("code", {}, r.invocation_id)),
    ),
    section(
      "Attempts",
      table(
        "Attempts, in order",
        ["#", "Agent", "Outcome", "Latency", "Error"],
        r.attempts.map((a, i) => [String(i + 1), a.agent_id, a.outcome, ms(a.latency_ms), a.error || "—"]),
        "No agent was called.",
      ),
    ),
    section(
      "Arguments, as stored",
      r.input === undefined ? h("p", {}, "Not recorded.") : json(r.input),
      r.input_truncated ? notice("info", "Cut to the recording size cap.") : null,
    ),
    r.output === undefined ? null : section("Output, as stored", json(r.output)),
    h("details", {}, h("summary", {}, "The stored record"), json(r)),
  );
}
