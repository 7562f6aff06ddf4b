"""End-to-end traces: a real `switchboard serve` exports to an OTLP/HTTP
receiver built on the official protobufs (tests/otel/receiver.py, PyPI
`opentelemetry-proto`), and this checks the spans of
  - an HTTP dispatch that fails over (`broken` answers 500, `traced` answers),
    continuing the caller's `traceparent`, which the agent then sees;
  - a dispatch a Rego policy denies;
  - a `tools/call` through /mcp by the Python `mcp` SDK, with the trace in
    `params._meta`, to a Python MCP agent (tests/mcp/upstream_server.py)
    that answers with the `traceparent` it was sent;
  - the same through `switchboard mcp` on stdio, which exports too;
and that the dispatch record carries the trace id. Run by scripts/otel-test
with the binary's path."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

HERE = os.path.dirname(os.path.abspath(__file__))
RECEIVER = os.path.join(HERE, "receiver.py")
UPSTREAM = os.path.join(HERE, "..", "mcp", "upstream_server.py")

# The callers' traces: one for the HTTP API, one for /mcp.
HTTP_TRACE, HTTP_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
MCP_TRACE, MCP_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
STDIO_TRACE, STDIO_SPAN = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"

GATE_POLICY = """# scope: tools/**
package switchboard.gate

import rego.v1

deny contains "gated takes no calls" if {
\tinput.context.action == "dispatch"
\tinput.context.agent_id == "gated"
}
"""

# The attribute keys each kind of span must carry (docs/observability.md).
CALL_KEYS = {"gen_ai.operation.name", "gen_ai.tool.name", "gen_ai.tool.call.id",
             "gen_ai.tool.type", "switchboard.category", "switchboard.strategy",
             "switchboard.attempts"}
ATTEMPT_KEYS = {"switchboard.agent.id", "switchboard.attempt.number",
                "switchboard.attempt.outcome"}
COMMIT_KEYS = {"db.system.name", "switchboard.commit.record", "switchboard.commit.outcome"}
POLICY_KEYS = {"switchboard.policy.hook", "switchboard.policy.module", "switchboard.policy.scope",
               "switchboard.policy.phase", "switchboard.policy.operation",
               "switchboard.policy.decision"}
MCP_SERVER_KEYS = {"mcp.method.name", "mcp.protocol.version", "mcp.session.id",
                   "jsonrpc.request.id", "gen_ai.tool.name", "gen_ai.operation.name",
                   "network.transport", "network.protocol.name"}
MCP_CLIENT_KEYS = {"mcp.method.name", "gen_ai.tool.name", "gen_ai.operation.name",
                   "server.address", "server.port", "network.transport"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited early")
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


class Agents(BaseHTTPRequestHandler):
    """Switchboard HTTP agents on one server, by path: /broken answers 500,
    /traced and /gated echo; each call's traceparent header is kept."""

    seen: dict = {}

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        Agents.seen.setdefault(self.path, []).append(self.headers.get("traceparent"))
        if self.path == "/broken":
            self.send_response(500)
            self.end_headers()
            return
        out = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def request(base: str, method: str, path: str, body=None, headers=None):
    req = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Trace:
    """The spans the receiver wrote so far."""

    def __init__(self, path: str):
        self.path = path

    def spans(self) -> list:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def wait(self, what: str, found) -> list:
        """The spans once `found(spans)` holds (30 s at most; exports are batched every 100 ms)."""
        deadline = time.time() + 30
        while True:
            spans = self.spans()
            if found(spans):
                return spans
            if time.time() > deadline:
                raise AssertionError(f"no {what} in 30 s; received:\n" + "\n".join(map(json.dumps, spans)))
            time.sleep(0.1)


def one(spans: list, **match) -> dict:
    hits = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, (match, hits)
    return hits[0]


def children(spans: list, parent: dict, name_prefix: str = "") -> list:
    return [s for s in spans
            if s["parent_span_id"] == parent["span_id"] and s["name"].startswith(name_prefix)]


def has_keys(span: dict, keys: set) -> None:
    missing = keys - span["attributes"].keys()
    assert not missing, f"{span['name']} lacks {sorted(missing)}: {span}"


def check_failover(spans: list, traced_saw: list) -> None:
    trace = [s for s in spans if s["trace_id"] == HTTP_TRACE]
    call = one(trace, name="execute_tool run")
    assert call["parent_span_id"] == HTTP_SPAN, "the caller's span is the call's parent"
    assert call["kind"] == "SPAN_KIND_INTERNAL" and call["status"] == "STATUS_CODE_OK", call
    assert call["service"] == "switchboard-e2e", call
    has_keys(call, CALL_KEYS)
    assert call["attributes"]["switchboard.agent.id"] == "traced", call
    assert call["attributes"]["switchboard.attempts"] == 2, call
    broken = one(trace, name="attempt broken")
    answered = one(trace, name="attempt traced")
    for attempt in (broken, answered):
        assert attempt["parent_span_id"] == call["span_id"], attempt
        assert attempt["kind"] == "SPAN_KIND_CLIENT", attempt
        has_keys(attempt, ATTEMPT_KEYS | {"server.address", "server.port"})
        # Numbers are ints (AnyValue.int_value), as the conventions type them.
        assert isinstance(attempt["attributes"]["server.port"], int), attempt
        assert isinstance(attempt["attributes"]["switchboard.attempt.number"], int), attempt
        [commit] = children(trace, attempt, "commit intent")
        has_keys(commit, COMMIT_KEYS)
        assert commit["attributes"]["switchboard.commit.outcome"] == "committed", commit
        [policy] = children(trace, commit, "policy ")
        has_keys(policy, POLICY_KEYS)
        assert policy["attributes"]["switchboard.policy.decision"] == "allow", policy
    assert broken["attributes"]["switchboard.attempt.outcome"] == "failed", broken
    assert "500" in broken["attributes"]["switchboard.failover.reason"], broken
    assert broken["attributes"]["error.type"] == "failed", broken
    assert broken["status"] == "STATUS_CODE_ERROR", broken
    [outcome] = children(trace, call, "commit outcome")
    assert outcome["attributes"]["switchboard.commit.record"] == "outcome", outcome
    # The agent that answered continued the trace from its attempt.
    assert traced_saw == [f"00-{HTTP_TRACE}-{answered['span_id']}-01"], traced_saw


def check_denial(spans: list) -> None:
    call = one(spans, name="execute_tool wipe")
    assert call["parent_span_id"] == "", "a call without a traceparent starts a trace"
    assert call["attributes"]["error.type"] == "policy_denied", call
    assert call["attributes"]["switchboard.policy.denials"] == 1, call
    [attempt] = children(spans, call, "attempt gated")
    assert attempt["attributes"]["switchboard.attempt.outcome"] == "denied", attempt
    assert "gated takes no calls" in attempt["status_message"], attempt
    [commit] = children(spans, attempt, "commit intent")
    assert commit["attributes"]["switchboard.commit.outcome"] == "policy_denied", commit
    [policy] = children(spans, commit, "policy ")
    assert policy["attributes"]["switchboard.policy.decision"] == "deny", policy
    assert policy["attributes"]["switchboard.policy.hook"] == "rego", policy
    assert policy["name"] == f"policy {policy['attributes']['switchboard.policy.module']}", policy


def check_mcp(spans: list, agent_saw: str, trace_id: str = MCP_TRACE,
              parent: str = MCP_SPAN, transport: str = "tcp") -> None:
    trace = [s for s in spans if s["trace_id"] == trace_id]
    server = one(trace, kind="SPAN_KIND_SERVER", name="tools/call traceparent")
    assert server["parent_span_id"] == parent, "the _meta traceparent is its parent"
    # Over stdio there is no HTTP and no session id.
    keys = MCP_SERVER_KEYS if transport == "tcp" else \
        MCP_SERVER_KEYS - {"mcp.session.id", "network.protocol.name"}
    has_keys(server, keys)
    assert server["attributes"]["mcp.method.name"] == "tools/call", server
    assert server["attributes"]["network.transport"] == transport, server
    [call] = children(trace, server, "execute_tool traceparent")
    has_keys(call, CALL_KEYS)
    [attempt] = children(trace, call, "attempt weather")
    client = one(trace, kind="SPAN_KIND_CLIENT", parent_span_id=attempt["span_id"])
    assert client["name"] == "tools/call traceparent", client
    has_keys(client, MCP_CLIENT_KEYS)
    # The MCP agent was sent the client span as its parent, in _meta.
    assert agent_saw == f"00-{trace_id}-{client['span_id']}-01", (agent_saw, client)


async def through_mcp(transport, trace_id: str, span_id: str) -> str:
    async with Client(transport, mode="legacy") as client:
        deadline = time.time() + 30
        while "traceparent" not in [t.name for t in (await client.list_tools()).tools]:
            assert time.time() < deadline, "the MCP agent's tools were never listed"
            await asyncio.sleep(0.1)
        result = await client.call_tool(
            "traceparent", {}, meta={"traceparent": f"00-{trace_id}-{span_id}-01"})
        assert not result.is_error, result
        return result.content[0].text


def main() -> int:
    binary = sys.argv[1]
    work = tempfile.mkdtemp(prefix="otel-e2e-")
    spans_file = os.path.join(work, "spans.jsonl")
    procs = []
    agents = ThreadingHTTPServer(("127.0.0.1", 0), Agents)
    threading.Thread(target=agents.serve_forever, daemon=True).start()
    agents_url = f"http://127.0.0.1:{agents.server_address[1]}"
    try:
        receiver_port = free_port()
        receiver = subprocess.Popen([sys.executable, RECEIVER, str(receiver_port), spans_file])
        procs.append(receiver)
        wait_for_port(receiver_port, receiver, "the OTLP receiver")
        upstream_port = free_port()
        upstream = subprocess.Popen([sys.executable, UPSTREAM, "http", str(upstream_port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(upstream)
        wait_for_port(upstream_port, upstream, "the upstream MCP server")

        policies = os.path.join(work, "policies")
        os.makedirs(policies)
        with open(os.path.join(policies, "gate.rego"), "w", encoding="utf-8") as f:
            f.write(GATE_POLICY)
        port = free_port()
        config = os.path.join(work, "switchboard.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(f'listen = "127.0.0.1:{port}"\ndata_dir = "{work}/data"\n'
                    f'policies_dir = "{policies}"\n')
        env = dict(os.environ, SWITCHBOARD_TOKEN="", RUST_LOG="error",
                   OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver_port}",
                   OTEL_SERVICE_NAME="switchboard-e2e", OTEL_BSP_SCHEDULE_DELAY="100")
        serve = subprocess.Popen([binary, "serve", "--config", config], env=env)
        procs.append(serve)
        wait_for_port(port, serve, "switchboard serve")
        base = f"http://127.0.0.1:{port}"

        for agent_id, body in [
            ("broken", {"tools": ["code"], "endpoint": f"{agents_url}/broken", "priority": 1}),
            ("traced", {"tools": ["code"], "endpoint": f"{agents_url}/traced", "priority": 0}),
            ("gated", {"tools": ["database"], "endpoint": f"{agents_url}/gated"}),
            ("weather", {"tools": ["web"], "mcp": f"http://127.0.0.1:{upstream_port}/mcp"}),
        ]:
            status, answer = request(base, "PUT", f"/v1/agents/{agent_id}", body)
            assert status in (200, 201), (agent_id, status, answer)

        status, answer = request(
            base, "POST", "/v1/invoke",
            {"tool": "run", "category": "code", "strategy": "priority", "input": {}},
            {"traceparent": f"00-{HTTP_TRACE}-{HTTP_SPAN}-01"})
        answer = json.loads(answer)
        assert status == 200 and answer["agent_id"] == "traced", (status, answer)
        status, answer = request(base, "POST", "/v1/invoke",
                                 {"tool": "wipe", "category": "database", "input": {}})
        assert status == 403, (status, answer)
        assert "/gated" not in Agents.seen, "a denied agent is not called"
        agent_saw = asyncio.run(
            through_mcp(streamable_http_client(base + "/mcp"), MCP_TRACE, MCP_SPAN))

        # `switchboard mcp` on stdio, on a database of its own, exports as serve does.
        stdio_data = os.path.join(work, "stdio-data")
        subprocess.run([binary, "agents", "register", "weather", "--tools", "web",
                        "--mcp", f"http://127.0.0.1:{upstream_port}/mcp", "--data", stdio_data],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        stdio = StdioServerParameters(command=binary, args=["mcp", "--data", stdio_data], env=env)
        stdio_saw = asyncio.run(through_mcp(stdio, STDIO_TRACE, STDIO_SPAN))

        trace = Trace(spans_file)
        spans = trace.wait("complete span trees", lambda spans: (
            sum(s["trace_id"] == HTTP_TRACE for s in spans) >= 8
            and any(s["name"] == "execute_tool wipe" for s in spans)
            and sum(s["name"].startswith("policy ") for s in spans) >= 3
            and any(s["trace_id"] == MCP_TRACE and s["kind"] == "SPAN_KIND_CLIENT" for s in spans)
            and any(s["trace_id"] == MCP_TRACE and s["kind"] == "SPAN_KIND_SERVER" for s in spans)
            and any(s["trace_id"] == STDIO_TRACE and s["kind"] == "SPAN_KIND_CLIENT" for s in spans)))
        check_failover(spans, Agents.seen["/traced"])
        check_denial(spans)
        check_mcp(spans, agent_saw)
        check_mcp(spans, stdio_saw, STDIO_TRACE, STDIO_SPAN, "pipe")

        # The dispatch record carries the trace id.
        status, page = request(base, "GET", "/v1/scan?prefix=tools/code/run/")
        page = json.loads(page)
        assert status == 200 and page["items"][0]["value"]["trace_id"] == HTTP_TRACE, page
        print(f"otel e2e: ok ({len(spans)} spans decoded by opentelemetry-proto)")
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        agents.shutdown()


if __name__ == "__main__":
    sys.exit(main())
