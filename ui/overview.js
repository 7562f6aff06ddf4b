// Overview: the agents the caller may see (GET /v1/agents), their load,
// success rate and latency (GET /v1/metrics, audit scope) with a chart of
// the p50/p99 samples taken while the UI is open, what each serves
// (categories, and MCP tools from GET /v1/tools), and the cluster's nodes
// (GET /v1/cluster).

import { api, ApiError, session } from "./api.js";
import { badge, fill, h, ms, notice, section, table, when } from "./dom.js";

// How often the page asks again, and how many samples a chart keeps.
const REFRESH_MS = 2000;
const SAMPLES = 60;
// Per agent: [{p50, p99}], kept across visits to the page.
const history = new Map();

export async function render(view) {
  const agents = h("div", { id: "agents" });
  const cluster = h("div", { id: "cluster" });
  fill(view, h("h1", {}, "Overview"), section("Agents", agents), section("Cluster", cluster));
  let timer = null;
  let left = false;
  const refresh = async () => {
    try {
      await draw(agents, cluster);
    } catch (e) {
      fill(agents, notice("error", e.message));
    }
    if (!left) timer = setTimeout(refresh, REFRESH_MS);
  };
  await refresh();
  return () => {
    left = true;
    clearTimeout(timer);
  };
}

// An answer, or the refusal's message when the caller may not have it.
async function optional(path) {
  try {
    return { value: await api("GET", path) };
  } catch (e) {
    if (e instanceof ApiError && (e.status === 403 || e.status === 429)) return { refused: e.message };
    throw e;
  }
}

async function draw(agentsEl, clusterEl) {
  const [records, metrics, tools, cluster] = await Promise.all([
    api("GET", "/v1/agents"),
    session.has("audit") ? optional("/v1/metrics") : Promise.resolve({ refused: "load and latency need the audit scope" }),
    optional("/v1/tools"),
    optional("/v1/cluster"),
  ]);
  const byAgent = metrics.value || {};
  for (const [id, m] of Object.entries(byAgent)) {
    const samples = history.get(id) || [];
    samples.push({ p50: m.p50_latency_ms, p99: m.p99_latency_ms });
    if (samples.length > SAMPLES) samples.shift();
    history.set(id, samples);
  }
  const mcpTools = new Map();
  for (const tool of tools.value || []) {
    mcpTools.set(tool.agent_id, [...(mcpTools.get(tool.agent_id) || []), tool.exposed_name]);
  }
  const rows = records.map((agent) => {
    const m = byAgent[agent.agent_id];
    // Before its first call an agent has no rate or latency to speak of.
    const called = m && m.total > 0;
    const ejected = agent.status !== "healthy" || (m && !m.healthy);
    return [
      h("span", { class: "agent-id" }, agent.agent_id),
      h(
        "span",
        {},
        ejected ? badge("ejected", "bad") : badge("healthy", "good"),
        agent.status_reason ? h("span", { class: "reason" }, ` ${agent.status_reason}`) : null,
      ),
      m ? `${m.active_tasks}${agent.max_concurrency ? ` / ${agent.max_concurrency}` : ""}` : "—",
      called ? `${(m.success_rate * 100).toFixed(1)}% of ${m.total}` : "no calls yet",
      called ? `${ms(m.p50_latency_ms)} / ${ms(m.p99_latency_ms)}` : "—",
      called ? chart(agent.agent_id, history.get(agent.agent_id) || []) : "—",
      serves(agent, mcpTools.get(agent.agent_id)),
    ];
  });
  fill(
    agentsEl,
    table("Agents", ["Agent", "Health", "Load", "Success", "p50 / p99", "Recent latency", "Serves"], rows, "No agents are registered (or none this caller may see)."),
    metrics.refused ? notice("info", `Load, success and latency: ${metrics.refused}.`) : null,
  );
  drawCluster(clusterEl, cluster);
}

function serves(agent, mcpNames) {
  const kind = { http: "HTTP", mcp: "MCP", local: "in-process" }[agent.transport.kind] || agent.transport.kind;
  return h(
    "span",
    {},
    h("span", { class: "kind" }, kind),
    " ",
    agent.tools.join(", "),
    mcpNames && mcpNames.length ? h("span", { class: "mcp-tools" }, ` · tools: ${mcpNames.join(", ")}`) : null,
  );
}

// p50 (solid) and p99 (dashed) over the samples, on one scale.
function chart(id, samples) {
  const width = 160;
  const height = 36;
  const top = Math.max(1, ...samples.map((s) => s.p99));
  const points = (field) =>
    samples
      .map((s, i) => {
        const x = samples.length === 1 ? width : (i / (samples.length - 1)) * width;
        const y = height - 2 - (s[field] / top) * (height - 4);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      })
      .join(" ");
  const last = samples[samples.length - 1] || { p50: 0, p99: 0 };
  return h(
    "svg",
    { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${id}: p50 ${ms(last.p50)}, p99 ${ms(last.p99)}, over the last ${samples.length} samples` },
    h("title", {}, `p50 (solid) and p99 (dashed), up to ${ms(top)}`),
    h("polyline", { class: "p99", points: points("p99") }),
    h("polyline", { class: "p50", points: points("p50") }),
  );
}

function drawCluster(el, cluster) {
  if (cluster.refused) {
    fill(el, notice("info", cluster.refused));
    return;
  }
  const status = cluster.value;
  if (status.mode !== "cluster") {
    fill(el, h("p", {}, "Single node: this server is not in cluster mode."));
    return;
  }
  fill(
    el,
    h(
      "p",
      {},
      `This node: ${status.node_id}. Policies: `,
      status.policies_agree ? badge("every node agrees", "good") : badge("nodes disagree", "bad"),
    ),
    table(
      "Nodes",
      ["Node", "Address", "Policy revision", "Agents it ejects", "Up since"],
      status.nodes.map((node) => [
        node.node_id,
        node.url || node.listen || "—",
        node.policy_revision || "—",
        (node.unhealthy_agents || []).join(", ") || "none",
        when(node.started_at_ms),
      ]),
    ),
  );
}
