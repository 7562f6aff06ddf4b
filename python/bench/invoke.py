"""invoke from Python vs from Rust, same machine, same run, same runtime.

Three sequential loops of N calls over one database, each to an in-process
agent, so the numbers isolate what the binding layer adds:

  rust      N invokes made by Rust (the core's own cost)
  python    N `await dispatcher.invoke(...)` to the same Rust echo agent
            (adds: the asyncio bridge, JSON <-> dict conversion)
  handler   N awaits to an `async def` Python agent (adds: running the
            handler coroutine on the event loop and handing its result back)

plus a concurrent round (N invokes gathered at once) for throughput.
Prints per-call latency and the ratios to the Rust baseline.

Usage: .venv/bin/python python/bench/invoke.py [N]   (default 2000, at most 20000)
"""

import asyncio
import sys
import tempfile
import time

from switchboard import Database, ToolDispatcher


async def run(n: int, data: str) -> None:
    db = Database.open(data)
    dispatcher = ToolDispatcher(db)
    dispatcher._register_rust_echo_agent("rust_echo", ["code"])

    async def echo(tool, input):
        return input

    dispatcher.register_local_agent("py_echo", handler=echo, tools=["search"])

    # Warm up every path once.
    dispatcher._bench_rust_invokes("warm", "code", 50)
    for _ in range(50):
        await dispatcher.invoke("warm", "code", {"i": 0})
        await dispatcher.invoke("warm", "search", {"i": 0})

    rust = dispatcher._bench_rust_invokes("bench", "code", n)

    started = time.perf_counter()
    for i in range(n):
        await dispatcher.invoke("bench", "code", {"i": i})
    python = time.perf_counter() - started

    started = time.perf_counter()
    for i in range(n):
        await dispatcher.invoke("bench", "search", {"i": i})
    handler = time.perf_counter() - started

    started = time.perf_counter()
    await asyncio.gather(*(dispatcher.invoke("bench", "code", {"i": i}) for i in range(n)))
    concurrent = time.perf_counter() - started

    def us(seconds: float) -> str:
        return f"{seconds / n * 1e6:8.1f} µs/call"

    print(f"N = {n} sequential invokes each (in-process agents, RocksDB in {data})")
    print(f"  rust     {us(rust)}   1.00x")
    print(f"  python   {us(python)}   {python / rust:.2f}x  (await invoke, Rust agent)")
    print(f"  handler  {us(handler)}   {handler / rust:.2f}x  (await invoke, async def agent)")
    print(f"  gathered {n / concurrent:8.0f} calls/s   (N concurrent awaits, Rust agent)")
    print(f"ratio python/rust = {python / rust:.2f}")


def main() -> None:
    n = min(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, 20000)
    with tempfile.TemporaryDirectory(prefix="switchboard_bench_") as data:
        asyncio.run(run(n, data))


if __name__ == "__main__":
    main()
