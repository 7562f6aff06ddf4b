"""Shared fixtures: a real RocksDB in a temporary directory, real HTTP agents
on 127.0.0.1 (standard library only), and `async def` tests run on a fresh
asyncio event loop each."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from switchboard import Database

REPO = Path(__file__).resolve().parents[2]


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Optional[bool]:
    """Runs `async def` tests with asyncio.run (no plugin needed)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database.open(tmp_path / "db")


class HttpAgent:
    """An HTTP agent speaking the wire protocol, on its own thread.

    `answer(call) -> (status, body)` decides each reply; by default 200 with
    `{"agent": name, "tool": ..., "input": ...}`. `calls` records every call."""

    def __init__(self, name: str, port: int = 0,
                 answer: Optional[Callable[[dict], tuple[int, Any]]] = None) -> None:
        self.name = name
        self.calls: list[dict] = []
        self.healthy = True
        self.delay = 0.0
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(200 if agent.healthy else 503, {"ok": agent.healthy})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                call = json.loads(self.rfile.read(length))
                agent.calls.append(call)
                if agent.delay:
                    time.sleep(agent.delay)
                if answer is not None:
                    status, body = answer(call)
                else:
                    status, body = 200, {"agent": agent.name, "tool": call["tool"],
                                         "input": call["input"]}
                self._reply(status, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/invoke"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def http_agent() -> Iterator[Callable[..., HttpAgent]]:
    """Starts HTTP agents; stops every one at the end of the test."""
    started: list[HttpAgent] = []

    def start(name: str, **kwargs: Any) -> HttpAgent:
        agent = HttpAgent(name, **kwargs)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


async def eventually(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Waits (bounded) for something that happens on another thread."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        await asyncio.sleep(0.01)


def records(db: Database, prefix: str) -> list[dict]:
    """The dispatch records under `prefix`, oldest first."""
    return [json.loads(value) for _, value in db.scan(prefix)]
