#!/usr/bin/env python3
"""An HTTP agent for Switchboard, Python standard library only.

It speaks the agent protocol of docs/routing.md: Switchboard POSTs
{"invocation_id", "tool", "category", "input", "session_id"} to /invoke and
takes a 2xx JSON body as the call's output; GET /health answers 200 while the
agent is up. This one echoes the call back, so a first `switchboard invoke`
has something to succeed against:

    python3 examples/echo_agent.py &        # http://127.0.0.1:8001/invoke
    python3 examples/echo_agent.py --port 0 # any free port (printed)

Replace `answer` with real work.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer(call: dict) -> dict:
    return {
        "agent": "echo_agent.py",
        "tool": call.get("tool"),
        "category": call.get("category"),
        "echo": call.get("input"),
        "invocation_id": call.get("invocation_id"),
    }


class Handler(BaseHTTPRequestHandler):
    # Keep-alive: Switchboard pools its connections to agents.
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": "GET /health or POST /invoke"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path != "/invoke":
            self._send(404, {"error": "POST /invoke"})
            return
        try:
            call = json.loads(raw)
        except ValueError as e:
            # A non-2xx answer is a failed attempt: Switchboard records the body.
            self._send(400, {"error": f"the body is not JSON: {e}"})
            return
        self._send(200, answer(call))

    def log_message(self, format: str, *args) -> None:
        # One line per request on stderr, as http.server does, without the date.
        sys.stderr.write("echo_agent: %s\n" % (format % args))


def main() -> None:
    parser = argparse.ArgumentParser(description="An echo agent for Switchboard")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    host, port = server.server_address[:2]
    # Flushed at once: a script (or a test) waits for this line to know the port.
    print(f"echo agent listening on http://{host}:{port}/invoke", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
