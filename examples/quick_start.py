"""Switchboard's Python quick start, end to end: a real HTTP agent on
127.0.0.1, a local async agent, health checks, a policy, a sticky
least-loaded call, and the audit scan.

Run with `.venv/bin/python examples/quick_start.py` after `make python`.
"""

import asyncio
import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from switchboard import (
    Database,
    PolicyAction,
    PolicyDeniedError,
    PolicyEngine,
    RoutingStrategy,
    ToolCategory,
    ToolDispatcher,
)


class CodeAgent(BaseHTTPRequestHandler):
    """An HTTP agent speaking the wire protocol: POST the call, GET /health."""

    def do_POST(self):
        call = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.reply({"ran": call["tool"], "with": call["input"], "by": "code_agent"})

    def do_GET(self):
        self.reply({"ok": True})

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


async def main(data_dir: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), CodeAgent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/invoke"

    db = Database.open(data_dir)
    dispatcher = ToolDispatcher(db)  # loads persisted registrations
    dispatcher.register_agent(
        "code_agent",
        tools=[ToolCategory.CODE, ToolCategory.SHELL],
        endpoint=endpoint,
        priority=10,
    )

    async def local_code(tool: str, input: dict) -> dict:
        return {"tool": tool, "echo": input}

    dispatcher.register_local_agent("local_code", handler=local_code, tools=[ToolCategory.CODE])
    dispatcher.enable_health_checks(interval_seconds=30, timeout_seconds=5, unhealthy_threshold=3)

    policy = PolicyEngine(db)

    @policy.before_write("tools/sensitive/**")
    def require_trusted_agent(key, value, context):
        if context.get("agent_id") not in ["trusted_agent_1", "trusted_agent_2"]:
            return PolicyAction.DENY("untrusted agent")
        return PolicyAction.ALLOW

    for _ in range(3):
        r = await dispatcher.invoke(
            tool="code_exec",
            category=ToolCategory.CODE,
            input={"code": "print('hello')"},
            strategy=RoutingStrategy.LEAST_LOADED,
            session_id="session_abc123",
        )
        print(f"{r.agent_id} -> {r.output}  (invocation {r.invocation_id})")

    dispatcher.register_local_agent("helper", handler=local_code,
                                    tools=[ToolCategory.custom("sensitive")])
    try:
        await dispatcher.invoke("wipe_disk", ToolCategory.custom("sensitive"), {})
    except PolicyDeniedError as denied:
        print(f"denied: {denied.reason}")

    for agent_id, stats in dispatcher.get_metrics().items():
        print(agent_id, stats["total"], f"{stats['success_rate']:.2%}",
              f"{stats['avg_latency_ms']:.1f}ms", stats["active_tasks"])

    for key, value in db.scan("tools/code/code_exec/"):  # the audit trail, oldest first
        record = json.loads(value)
        print(key, record["status"], record["agent_id"])

    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="switchboard_quick_start_") as data:
        asyncio.run(main(data))
