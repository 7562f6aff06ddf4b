// Policies: the stored policies (GET /v1/policies, admin scope), each
// viewed and edited at /ui/policies/{name}, where saving first checks the
// module (POST /v1/policies/{name}/check: it compiles as PUT would store
// it, and the optional Rego tests run against it) and stores it only if
// that passes (PUT /v1/policies/{name}); and the decision log (the
// `policy_log/` records through GET /v1/scan, audit scope), newest first.

import { api, ApiError, session, withQuery } from "./api.js";
import { badge, fill, h, notice, recordLink, section, table, when } from "./dom.js";

// Pages of the decision log read for one view (a thousand entries each).
const LOG_PAGES = 5;

export async function render(view, { rest, query, go }) {
  if (rest) return editor(view, rest);
  fill(view, h("h1", {}, "Policies"));
  if (session.has("admin")) view.append(await storedPolicies(go));
  if (session.has("audit")) view.append(decisionLog(query));
}

async function storedPolicies(go) {
  const policies = await api("GET", "/v1/policies");
  const name = h("input", { id: "new-policy-name", name: "name", required: true, pattern: "[A-Za-z0-9_.:-]+", spellcheck: "false" });
  return section(
    "Stored policies",
    table(
      "Stored policies",
      ["Name", "Package", "Revision", "Guards", "Operations", "Stored"],
      policies.map((p) => [
        h("a", { href: `/ui/policies/${encodeURIComponent(p.name)}` }, p.name),
        h("code", {}, p.package),
        String(p.revision),
        p.scopes.join(", "),
        p.ops.join(", "),
        when(p.updated_at_ms),
      ]),
      "No policy is stored.",
    ),
    h(
      "form",
      {
        class: "inline",
        onsubmit: (event) => {
          event.preventDefault();
          go(`/ui/policies/${encodeURIComponent(name.value)}`);
        },
      },
      h("label", { for: "new-policy-name" }, "New policy named "),
      name,
      h("button", { type: "submit" }, "Write it"),
    ),
  );
}

// The decision log between the form's times, by the form's filters:
// caller and time on the server (the scan's own filters), the kind of
// decision and the key on this page.
function decisionLog(query) {
  const dayAgo = new Date(Date.now() - 24 * 3600 * 1000);
  const local = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  const fields = {
    since: query.get("since") || local(dayAgo),
    until: query.get("until") || "",
    caller: query.get("caller") || "",
    decision: query.get("decision") || "",
    key: query.get("key") || "",
  };
  const results = h("div", { id: "decision-results", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "filters", id: "decision-form" },
    h("label", {}, "At or after", h("input", { type: "datetime-local", step: "1", name: "since", value: fields.since })),
    h("label", {}, "At or before", h("input", { type: "datetime-local", step: "1", name: "until", value: fields.until })),
    h("label", {}, "Caller", h("input", { name: "caller", value: fields.caller, spellcheck: "false" })),
    h(
      "label",
      {},
      "Decision",
      h("select", { name: "decision", id: "decision-kind" }, ["", "deny", "modify", "log"].map((d) => h("option", { value: d, selected: d === fields.decision }, d || "any"))),
    ),
    h("label", {}, "Key contains", h("input", { name: "key", id: "decision-key", value: fields.key, spellcheck: "false" })),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Show")),
  );
  const run = async () => {
    const f = Object.fromEntries(new FormData(form).entries());
    history.replaceState(null, "", withQuery(location.pathname, f));
    fill(results, h("p", {}, "Reading…"));
    try {
      const { entries, more } = await readLog(f);
      fill(
        results,
        table(
          "Decisions, newest first",
          ["At", "Decision", "Operation", "Key", "By", "Reason", "Caller", ""],
          entries.map(({ key, value: d }) => [
            when(d.at_ms),
            badge(d.decision, d.decision === "deny" ? "bad" : "neutral"),
            `${d.op} ${d.phase}`,
            h("code", {}, d.key),
            d.by,
            d.reason,
            (d.context && d.context.caller) || "(local)",
            recordLink(key),
          ]),
          "No decision matches.",
        ),
        more ? notice("info", `Only the first ${LOG_PAGES * 1000} entries of the window were read: narrow it to see later ones.`) : null,
      );
    } catch (e) {
      fill(results, notice("error", e.message));
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  run();
  return section("Decision log", form, results);
}

async function readLog(f) {
  const at = (text) => (text ? String(new Date(text).getTime()) : "");
  const entries = [];
  let after = "";
  let pages = 0;
  do {
    const page = await api(
      "GET",
      withQuery("/v1/scan", { prefix: "policy_log/", limit: 1000, after, caller: f.caller, since_ms: at(f.since), until_ms: at(f.until) }),
    );
    entries.push(...page.items);
    after = page.next_after || "";
    pages += 1;
  } while (after && pages < LOG_PAGES);
  const kept = entries.filter(({ value }) => (!f.decision || value.decision === f.decision) && (!f.key || value.key.includes(f.key)));
  return { entries: kept.reverse(), more: Boolean(after) };
}

async function editor(view, name) {
  fill(view, h("h1", {}, "Policy ", h("code", {}, name)));
  let policy = null;
  try {
    policy = await api("GET", `/v1/policies/${encodeURIComponent(name)}`);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
  }
  const source = h("textarea", { id: "policy-source", name: "source", rows: "14", spellcheck: "false", "aria-describedby": "policy-source-hint" }, policy ? policy.source : NEW_POLICY);
  const scopes = h("input", { id: "policy-scopes", name: "scopes", spellcheck: "false", placeholder: "from the source's # scope: lines" });
  const tests = h("textarea", { id: "policy-tests", name: "tests", rows: "7", spellcheck: "false", placeholder: "package switchboard.my_policy_test\n\ntest_… if { … }" });
  const result = h("div", { id: "policy-result", "aria-live": "polite" });
  const body = () => {
    const globs = scopes.value.split(",").map((s) => s.trim()).filter(Boolean);
    return { source: source.value, ...(globs.length ? { scopes: globs } : {}) };
  };
  const check = async () => {
    const outcome = await api("POST", `/v1/policies/${encodeURIComponent(name)}/check`, { ...body(), tests: tests.value });
    fill(result, checked(outcome));
    return outcome;
  };
  const guarded = (action) => async () => {
    try {
      await action();
    } catch (e) {
      fill(result, notice("error", e instanceof ApiError ? `${e.message} (${e.code})` : String(e)));
    }
  };
  const save = async () => {
    const outcome = await check();
    if (!outcome.passed) {
      result.append(notice("error", "Not saved: a test failed."));
      return;
    }
    const stored = await api("PUT", `/v1/policies/${encodeURIComponent(name)}`, body());
    result.append(notice("ok", `Saved: revision ${stored.revision} (${stored.change}).`));
    drawFacts(facts, stored);
  };
  const facts = h("div", {});
  if (policy) drawFacts(facts, policy);
  else facts.append(notice("info", "No policy is stored under this name yet: saving creates it."));
  view.append(
    facts,
    h(
      "form",
      { class: "editor", onsubmit: (event) => event.preventDefault() },
      h("label", { for: "policy-source" }, "Rego source"),
      h("p", { class: "hint", id: "policy-source-hint" }, "Header lines `# scope: GLOB` and `# ops: put, delete, get` say what it guards."),
      source,
      h("label", { for: "policy-scopes" }, "Key globs instead of the header's (comma-separated, optional)"),
      scopes,
      h("label", { for: "policy-tests" }, "Rego tests run against it before saving (optional)"),
      tests,
      h(
        "div",
        { class: "buttons" },
        h("button", { type: "button", id: "policy-check", onclick: guarded(check) }, "Check"),
        h("button", { type: "button", id: "policy-save", onclick: guarded(save) }, "Check and save"),
      ),
    ),
    result,
    section("Changes", h("p", {}, h("a", { href: withQuery("/ui/policies", { key: `policies/${name}` }) }, "This policy's changes in the decision log"))),
  );
}

function drawFacts(el, p) {
  fill(
    el,
    h(
      "dl",
      { class: "record" },
      h("dt", {}, "Revision"),
      h("dd", { id: "policy-revision" }, String(p.revision)),
      h("dt", {}, "Package"),
      h("dd", {}, h("code", {}, p.package)),
      h("dt", {}, "Guards"),
      h("dd", {}, p.scopes.join(", ")),
      h("dt", {}, "Operations"),
      h("dd", {}, p.ops.join(", ")),
      h("dt", {}, "Stored"),
      h("dd", {}, when(p.updated_at_ms)),
    ),
  );
}

function checked(outcome) {
  const tests = outcome.tests.length
    ? table(
        "Test results",
        ["Test", "Result", "Detail"],
        outcome.tests.map((t) => [h("code", {}, t.name), t.passed ? badge("passed", "good") : badge("failed", "bad"), t.detail || ""]),
      )
    : h("p", {}, "No tests given.");
  return h(
    "div",
    {},
    notice(outcome.passed ? "ok" : "error", `Compiles: package ${outcome.package}, guarding ${outcome.scopes.join(", ")} on ${outcome.ops.join(", ")}.${outcome.passed ? "" : " A test failed."}`),
    tests,
  );
}

const NEW_POLICY = `# scope: tools/**
# ops: put
package switchboard.my_policy

import rego.v1

deny contains msg if {
\tinput.context.caller == "token:example"
\tmsg := "example: this caller may not call tools"
}
`;
