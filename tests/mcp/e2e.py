"""End-to-end: the Python `mcp` SDK lists and calls tools through a real
`switchboard serve`, in the legacy (initialize + session) revision and the
stateless 2026-07-28 one; a Python MCP server (tests/mcp/upstream_server.py)
is registered as an upstream agent, over streamable HTTP and over stdio.
Run by scripts/mcp-test with the binary's path."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

TOKEN = "mcp-test-token"
UPSTREAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent(BaseHTTPRequestHandler):
    """A Switchboard HTTP agent: echoes, fails with 4xx on request."""

    seen_auth: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Agent.seen_auth.append(self.headers.get("Authorization"))
        if body["input"].get("fail"):
            self.send_response(422)
            self.end_headers()
            self.wfile.write(b"the tool refused: fail was set")
            return
        out = json.dumps({"tool": body["tool"], "echo": body["input"]}).encode()
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


def api(base: str, method: str, path: str, body=None):
    req = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status


def api_json(base: str, path: str):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_for_port(port: int, proc: subprocess.Popen) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the upstream MCP server exited early")
            time.sleep(0.05)
    raise SystemExit("the upstream MCP server did not start")


async def through_switchboard(url: str, mode: str) -> None:
    """A tool of the Python upstream, called by name through /mcp."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
    async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "forecast" in tools and "refuse" in tools, sorted(tools)
        assert "city" in tools["forecast"].input_schema["properties"], tools["forecast"]
        ok = await client.call_tool("forecast", {"city": "Oslo"})
        assert not ok.is_error, ok
        assert "sunny in Oslo" in ok.content[0].text, ok
        failed = await client.call_tool("refuse", {"reason": "no"})
        assert failed.is_error and "tool error" in failed.content[0].text, failed
    print(f"mcp e2e (python upstream over HTTP, {mode}): ok")


def upstream_over_http(base: str) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, UPSTREAM, "http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        api(base, "PUT", "/v1/agents/weather",
            {"tools": ["web"], "mcp": f"http://127.0.0.1:{port}/mcp"})
        listed = {t["name"]: t for t in api_json(base, "/v1/tools")}
        assert listed["forecast"]["agent_id"] == "weather", listed
        assert listed["forecast"]["category"] == "web", listed
        assert len(listed["forecast"]["schema_hash"]) == 64, listed
        asyncio.run(through_switchboard(base + "/mcp", "legacy"))
        asyncio.run(through_switchboard(base + "/mcp", "2026-07-28"))
        # Switchboard holds a subscriptions/listen stream open to this
        # 2026-07-28 server for its list changes, and uvicorn's graceful
        # shutdown waits for open requests: unregistering the agent closes it.
        api(base, "DELETE", "/v1/agents/weather")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def upstream_over_stdio(binary: str, data: str) -> None:
    """The Python server as a stdio agent, behind `switchboard mcp`."""
    # A stdio program runs only where it is allowed (an interpreter, here,
    # only because this is a test: docs/cluster.md says why not in production).
    allow = ["--allow-command", sys.executable]
    subprocess.run([binary, "agents", "register", "weather", "--tools", "web",
                    "--mcp-command", f"{sys.executable} {UPSTREAM} stdio", "--data", data, *allow],
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    params = StdioServerParameters(command=binary, args=["mcp", "--data", data, *allow],
                                   env=dict(os.environ, RUST_LOG="warn"))
    async with Client(params, mode="legacy") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "forecast" in names, names
        ok = await client.call_tool("forecast", {"city": "Bergen"})
        assert not ok.is_error and "sunny in Bergen" in ok.content[0].text, ok
    print("mcp e2e (python upstream over stdio, behind switchboard mcp): ok")


async def exercise(url: str, mode: str) -> None:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
    async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        listed = await client.list_tools()
        names = [t.name for t in listed.tools]
        assert names == ["code", "search"], names
        ok = await client.call_tool("code", {"tool": "code_exec", "input": {"code": "print(1)"}})
        assert not ok.is_error, ok
        assert ok.structured_content["agent_id"] == "echo", ok.structured_content
        assert ok.structured_content["output"]["echo"] == {"code": "print(1)"}
        failed = await client.call_tool("code", {"tool": "code_exec", "input": {"fail": True}})
        assert failed.is_error, failed
        text = failed.content[0].text
        assert "the tool refused" in text, text
        bad = await client.call_tool("code", {"input": {}})
        assert bad.is_error and "invalid arguments" in bad.content[0].text, bad
        version = client.protocol_version
    expected = "2026-07-28" if mode == "2026-07-28" else "2025-11-25"
    assert version == expected, (mode, version)
    print(f"mcp e2e ({mode}, protocol {version}): ok")


async def refused(url: str) -> None:
    """A missing token is 401; a foreign Host (the server's own check answers
    421 before MCP's) or a browser Origin (DNS rebinding) is refused. One connection per request: a refusal may close it."""
    base = {"Accept": "application/json, text/event-stream"}
    auth = {**base, "Authorization": f"Bearer {TOKEN}"}
    for headers, expected in [
        (base, {401}),
        ({**auth, "Host": "evil.example"}, {421}),
        ({**auth, "Origin": "http://evil.example"}, {403}),
    ]:
        async with httpx2.AsyncClient() as http:
            r = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                headers=headers)
            assert r.status_code in expected, (headers, r.status_code)


async def over_stdio(binary: str, data: str, agent_url: str) -> None:
    """`switchboard mcp` launched by the SDK as a local stdio server."""
    subprocess.run([binary, "agents", "register", "echo", "--tools", "code,search",
                    "--endpoint", agent_url, "--data", data], check=True, stdout=subprocess.DEVNULL)
    params = StdioServerParameters(command=binary, args=["mcp", "--data", data],
                                   env=dict(os.environ, RUST_LOG="warn"))
    async with Client(params, mode="legacy") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["code", "search"], names
        ok = await client.call_tool("search", {"tool": "web_search", "input": {"q": "x"}})
        assert not ok.is_error and ok.structured_content["output"]["echo"] == {"q": "x"}, ok
    print("mcp e2e (stdio, switchboard mcp): ok")


def main() -> int:
    binary = sys.argv[1]
    agent = ThreadingHTTPServer(("127.0.0.1", 0), Agent)
    threading.Thread(target=agent.serve_forever, daemon=True).start()
    agent_url = f"http://127.0.0.1:{agent.server_address[1]}/invoke"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, SWITCHBOARD_TOKEN=TOKEN, RUST_LOG="warn")
        server = subprocess.Popen(
            [binary, "serve", "--data", data, "--listen", f"127.0.0.1:{port}"], env=env)
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=1)
                    break
                except OSError:
                    if server.poll() is not None:
                        raise SystemExit("switchboard serve exited early")
                    time.sleep(0.05)
            api(base, "PUT", "/v1/agents/echo",
                {"tools": ["code", "search", "my.custom"], "endpoint": agent_url})
            asyncio.run(refused(base + "/mcp"))
            asyncio.run(exercise(base + "/mcp", "legacy"))
            asyncio.run(exercise(base + "/mcp", "2026-07-28"))
            assert all(a is None for a in Agent.seen_auth), "the caller's token reached the agent"
            upstream_over_http(base)
        finally:
            server.terminate()
            server.wait(timeout=10)
    with tempfile.TemporaryDirectory() as data:
        asyncio.run(over_stdio(binary, data, agent_url))
    with tempfile.TemporaryDirectory() as data:
        asyncio.run(upstream_over_stdio(binary, data))
    agent.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
