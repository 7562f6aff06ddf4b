"""Switchboard's MCP client under the conformance suite's client scenarios.

`conformance client --command "python conformance_client.py BIN"` runs this
with the scenario's server URL as the last argument (and, for the auth
scenarios, `MCP_CONFORMANCE_CONTEXT` holding the client's credentials). It
starts `switchboard serve` (the test build's binary BIN) on a fresh database,
registers that URL as an MCP agent (with OAuth client credentials when the
context has them: a secret, or a private key for `private_key_jwt`, by
reference, `${VAR}`), and calls the tools
the agent lists through `POST /v1/invoke`, so the scenario sees
Switchboard's upstream client: discovery, initialisation, token requests and
calls. Exits non-zero if registration or a call fails.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# Arguments the scenarios' tools are called with, by tool name.
ARGUMENTS = {"add_numbers": {"a": 5, "b": 3}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main() -> int:
    binary, url = sys.argv[1], sys.argv[-1]
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, SWITCHBOARD_TOKEN="", RUST_LOG="warn")
    mcp = {"url": url}
    if context.get("client_id"):
        oauth = {"client_id": context["client_id"]}
        if context.get("private_key_pem"):
            # private_key_jwt: the key by reference too, its algorithm as
            # the scenario names it.
            env["CONFORMANCE_PRIVATE_KEY"] = context["private_key_pem"]
            oauth["private_key"] = "${CONFORMANCE_PRIVATE_KEY}"
            if context.get("signing_algorithm"):
                oauth["signing_algorithm"] = context["signing_algorithm"]
        else:
            env["CONFORMANCE_CLIENT_SECRET"] = context.get("client_secret", "")
            oauth["client_secret"] = "${CONFORMANCE_CLIENT_SECRET}"
        mcp["oauth"] = oauth
    registration = {"tools": ["code"], "mcp": mcp, "timeout_ms": 10000}
    with tempfile.TemporaryDirectory() as data:
        serve = subprocess.Popen(
            [binary, "serve", "--data", os.path.join(data, "db"), "--listen", f"127.0.0.1:{port}"],
            env=env,
            stdout=sys.stderr,
            stderr=sys.stderr,
        )
        try:
            for _ in range(200):
                try:
                    if api(base, "GET", "/healthz")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.05)
            else:
                print("switchboard serve did not start", file=sys.stderr)
                return 1
            status, answer = api(base, "PUT", "/v1/agents/upstream", registration)
            if status >= 300:
                print(f"registering {url}: {status} {answer}", file=sys.stderr)
                return 1
            # Registration answers within 5 s even if the listing takes
            # longer (the suite runs every scenario at once, each with a
            # `serve` of its own): wait a little more for the tools. An
            # upstream that never lets itself be listed is not waited for
            # past the suite's 30 s per scenario.
            for _ in range(150):
                status, tools = api(base, "GET", "/v1/tools")
                if status == 200 and (tools if isinstance(tools, list) else tools.get("tools")):
                    break
                time.sleep(0.1)
            failed = 0
            for tool in tools if isinstance(tools, list) else tools.get("tools", []):
                name = tool["exposed_name"]
                call = {
                    "tool": name,
                    "category": tool["category"],
                    "input": ARGUMENTS.get(tool["name"], {}),
                }
                status, answer = api(base, "POST", "/v1/invoke", call)
                print(f"{name}: {status} {json.dumps(answer)[:300]}", file=sys.stderr)
                failed += status >= 300
            return 1 if failed else 0
        finally:
            serve.terminate()
            try:
                serve.wait(timeout=10)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()


if __name__ == "__main__":
    sys.exit(main())
