// Tools: every tool a call can be routed to. Categories come from the
// registrations the caller may see (GET /v1/agents: any tool name in a
// category goes to its agents); named MCP tools from GET /v1/tools, with
// their schema; their history from the discovery records under mcp_tools/
// (GET /v1/scan, audit scope): when first seen, the description and schema
// they had before the last change, and whether the server withdrew them.

import { api, ApiError, session, withQuery } from "./api.js";
import { fill, h, json, notice, section, table, when } from "./dom.js";

export async function render(view) {
  const [agents, tools] = await Promise.all([api("GET", "/v1/agents"), api("GET", "/v1/tools")]);
  const history = await discoveryRecords();
  const categories = new Map();
  for (const agent of agents) {
    for (const category of agent.tools) {
      categories.set(category, [...(categories.get(category) || []), agent.agent_id]);
    }
  }
  fill(
    view,
    h("h1", {}, "Tools"),
    section(
      "Categories",
      h("p", { class: "hint" }, "A call names a tool and its category; the category's agents serve any tool name."),
      table(
        "Categories",
        ["Category", "Served by"],
        [...categories.entries()].sort().map(([category, ids]) => [h("code", {}, category), ids.join(", ")]),
        "No category is served by an agent this caller may see.",
      ),
    ),
    section(
      "MCP tools",
      table(
        "MCP tools",
        ["Name", "Agent", "Category", "Description", "Schema", "History"],
        tools.map((tool) => [
          h("code", {}, tool.exposed_name),
          tool.agent_id,
          tool.category,
          tool.description || "—",
          h("details", {}, h("summary", {}, `schema ${tool.schema_hash.slice(0, 12)}`), json(tool.input_schema)),
          changes(history.records.get(`mcp_tools/${tool.agent_id}/${tool.name}`)),
        ]),
        "No MCP agent serves named tools that this caller may see.",
      ),
      history.refused ? notice("info", `History: ${history.refused}`) : null,
      withdrawn(history.records),
    ),
  );
}

// The discovery records by key, or why they cannot be read.
async function discoveryRecords() {
  const records = new Map();
  if (!session.has("audit")) return { records, refused: "it needs the audit scope." };
  try {
    let after = "";
    do {
      const page = await api("GET", withQuery("/v1/scan", { prefix: "mcp_tools/", limit: 1000, after }));
      for (const item of page.items) records.set(item.key, item.value);
      after = page.next_after || "";
    } while (after);
    return { records };
  } catch (e) {
    if (e instanceof ApiError && (e.status === 403 || e.status === 429)) return { records, refused: e.message };
    throw e;
  }
}

function changes(record) {
  if (!record) return "—";
  const lines = [h("div", {}, `first seen ${when(record.discovered_at_ms)}`)];
  if (record.previous) {
    lines.push(
      h(
        "div",
        { class: "changed" },
        "changed; before: ",
        h("q", {}, record.previous.description || "(no description)"),
        ` (schema ${record.previous.schema_hash.slice(0, 12)})`,
      ),
    );
  }
  return h("div", {}, lines);
}

function withdrawn(records) {
  const gone = [...records.values()].filter((r) => r.withdrawn_at_ms);
  if (gone.length === 0) return null;
  return table(
    "Withdrawn MCP tools",
    ["Name", "Agent", "Last description", "Withdrawn"],
    gone.map((r) => [h("code", {}, r.name), r.agent_id, r.description || "—", when(r.withdrawn_at_ms)]),
  );
}
