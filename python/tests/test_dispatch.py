"""invoke from asyncio: local handlers, HTTP agents, failover, errors,
cancellation and concurrency, all through the Rust core."""

from __future__ import annotations

import asyncio
import threading

import pytest

from conftest import eventually, records
from switchboard import (
    AgentFailedError,
    AgentTimeoutError,
    InvalidInputError,
    NoAgentAvailableError,
    PolicyDeniedError,
    RetryableToolError,
    RoutingStrategy,
    SwitchboardError,
    ToolCategory,
    ToolDispatcher,
    ToolFailedError,
    UnknownAgentError,
)


async def test_local_handler_runs_on_the_registering_loop(db):
    dispatcher = ToolDispatcher(db)
    seen = []

    async def handler(tool: str, input: dict) -> dict:
        seen.append((asyncio.get_running_loop(), threading.get_ident()))
        await asyncio.sleep(0)
        return {"tool": tool, "echo": input}

    dispatcher.register_local_agent("local", handler=handler, tools=[ToolCategory.CODE])
    result = await dispatcher.invoke("code_exec", ToolCategory.CODE, {"n": [1, 2.5, None, True]})
    assert result.agent_id == "local"
    assert result.output == {"tool": "code_exec", "echo": {"n": [1, 2.5, None, True]}}
    assert result.output is result.output  # built once
    assert result.attempts == 1
    assert seen == [(asyncio.get_running_loop(), threading.get_ident())]
    [record] = records(db, "tools/code/code_exec/")
    assert record["status"] == "succeeded" and record["agent_id"] == "local"
    assert record["invocation_id"] == result.invocation_id


def test_handler_registered_outside_a_loop_runs_on_the_invoking_loop(db):
    dispatcher = ToolDispatcher(db)
    loops = []

    async def handler(tool, input):
        loops.append(asyncio.get_running_loop())
        return {"ok": True}

    dispatcher.register_local_agent("local", handler=handler, tools=["code"])

    async def main():
        r = await dispatcher.invoke("t", "code")
        return r, asyncio.get_running_loop()

    for _ in range(2):  # two loops one after the other
        r, loop = asyncio.run(main())
        assert r.output == {"ok": True} and loops[-1] is loop


async def test_plain_function_handler(db):
    dispatcher = ToolDispatcher(db)
    dispatcher.register_local_agent("sync", handler=lambda tool, input: {"len": len(input)},
                                    tools=["code"])
    assert (await dispatcher.invoke("t", "code", {"a": 1, "b": 2})).output == {"len": 2}


async def test_handler_exception_is_a_tool_error_and_not_retried(db):
    dispatcher = ToolDispatcher(db)
    calls = []

    async def broken(tool, input):
        calls.append("broken")
        raise ValueError("the input makes no sense")

    async def fine(tool, input):
        calls.append("fine")
        return {}

    dispatcher.register_local_agent("a_broken", handler=broken, tools=["code"], priority=10)
    dispatcher.register_local_agent("b_fine", handler=fine, tools=["code"], priority=1)
    with pytest.raises(ToolFailedError) as e:
        await dispatcher.invoke("t", "code", {}, strategy=RoutingStrategy.PRIORITY)
    assert e.value.agent_id == "a_broken"
    assert e.value.message == "the input makes no sense"
    assert isinstance(e.value, SwitchboardError)
    assert calls == ["broken"]
    [record] = records(db, "tools/code/t/")
    assert record["status"] == "failed"
    assert "the input makes no sense" in record["error"]
    assert dispatcher.get_metrics()["a_broken"]["failures"] == 1


async def test_retryable_tool_error_fails_over(db):
    dispatcher = ToolDispatcher(db)

    async def overloaded(tool, input):
        raise RetryableToolError("try someone else")

    async def fine(tool, input):
        return {"by": "fine"}

    dispatcher.register_local_agent("a_overloaded", handler=overloaded, tools=["code"], priority=10)
    dispatcher.register_local_agent("b_fine", handler=fine, tools=["code"], priority=1)
    result = await dispatcher.invoke("t", "code", {}, strategy=RoutingStrategy.PRIORITY)
    assert result.agent_id == "b_fine" and result.attempts == 2
    [record] = records(db, "tools/code/t/")
    assert [a["agent_id"] for a in record["attempts"]] == ["a_overloaded", "b_fine"]
    assert record["attempts"][0]["error"] == "try someone else"


async def test_every_agent_failing_retryably_raises_agent_failed(db):
    dispatcher = ToolDispatcher(db)

    async def overloaded(tool, input):
        raise RetryableToolError("busy")

    dispatcher.register_local_agent("only", handler=overloaded, tools=["code"])
    with pytest.raises(AgentFailedError) as e:
        await dispatcher.invoke("t", "code")
    assert e.value.agent_id == "only"


async def test_handler_returning_non_json_is_a_tool_error(db):
    dispatcher = ToolDispatcher(db)

    async def weird(tool, input):
        return {"output": ...}

    dispatcher.register_local_agent("weird", handler=weird, tools=["code"])
    with pytest.raises(ToolFailedError, match="not JSON"):
        await dispatcher.invoke("t", "code")


async def test_local_agent_timeout(db):
    dispatcher = ToolDispatcher(db)
    cancelled = asyncio.Event()

    async def hangs(tool, input):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    dispatcher.register_local_agent("hangs", handler=hangs, tools=["code"], timeout_seconds=0.05)
    with pytest.raises(AgentTimeoutError) as e:
        await dispatcher.invoke("t", "code")
    assert e.value.agent_id == "hangs" and e.value.timeout_seconds == pytest.approx(0.05)
    # The handler's coroutine is cancelled when the core stops waiting for it.
    await asyncio.wait_for(cancelled.wait(), 10)


async def _start_hanging_call(db):
    dispatcher = ToolDispatcher(db)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hangs(tool, input):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    dispatcher.register_local_agent("hangs", handler=hangs, tools=["code"])
    task = asyncio.create_task(dispatcher.invoke("slow_tool", "code", {}))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return dispatcher, cancelled


async def test_cancelling_invoke_drops_the_call_and_cancels_the_handler(db):
    dispatcher, cancelled = await _start_hanging_call(db)
    await asyncio.wait_for(cancelled.wait(), 10)
    await eventually(lambda: dispatcher.get_metrics()["hangs"]["active_tasks"] == 0,
                     "the dropped call to release its agent")


async def test_a_cancelled_invoke_is_recorded_as_cancelled(db):
    await _start_hanging_call(db)
    await eventually(lambda: [r["status"] for r in records(db, "tools/code/slow_tool/")] != ["in_flight"],
                     "the record to leave in_flight", seconds=5)
    [record] = records(db, "tools/code/slow_tool/")
    assert record["status"] == "cancelled"


async def test_a_thousand_concurrent_invokes(db):
    dispatcher = ToolDispatcher(db)
    running = 0
    peak = 0

    async def handler(tool, input):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1
        return {"i": input["i"]}

    dispatcher.register_local_agent("a", handler=handler, tools=["code"])
    dispatcher.register_local_agent("b", handler=handler, tools=["code"])
    results = await asyncio.gather(*(dispatcher.invoke("t", "code", {"i": i}) for i in range(1000)))
    assert [r.output["i"] for r in results] == list(range(1000))
    assert len({r.invocation_id for r in results}) == 1000
    assert peak > 1  # they really ran concurrently
    metrics = dispatcher.get_metrics()
    assert metrics["a"]["total"] + metrics["b"]["total"] == 1000
    assert metrics["a"]["total"] == metrics["b"]["total"] == 500  # round robin
    assert len(records(db, "tools/code/t/")) == 1000


async def test_http_agents_failover_and_timeouts(db, http_agent):
    down = http_agent("down", answer=lambda call: (500, {"error": "boom"}))
    up = http_agent("up")
    slow = http_agent("slow")
    slow.delay = 1.0
    dispatcher = ToolDispatcher(db)
    dispatcher.register_agent("a_down", tools=["web"], endpoint=down.endpoint, priority=10)
    dispatcher.register_agent("b_up", tools=["web"], endpoint=up.endpoint, priority=5,
                              health_url=f"http://127.0.0.1:{up.port}/health",
                              max_concurrency=4)
    result = await dispatcher.invoke("fetch", ToolCategory.WEB, {"url": "x"},
                                     strategy=RoutingStrategy.PRIORITY)
    assert result.agent_id == "b_up" and result.attempts == 2
    assert result.output == {"agent": "up", "tool": "fetch", "input": {"url": "x"}}
    assert len(down.calls) == 1 and down.calls[0]["category"] == "web"

    dispatcher.register_agent("slow", tools=["git"], endpoint=slow.endpoint, timeout_seconds=0.05)
    with pytest.raises(AgentTimeoutError):
        await dispatcher.invoke("clone", ToolCategory.GIT, max_attempts=1)


async def test_tool_error_from_http_4xx(db, http_agent):
    agent = http_agent("picky", answer=lambda call: (422, {"error": "bad input"}))
    dispatcher = ToolDispatcher(db)
    dispatcher.register_agent("picky", tools=["code"], endpoint=agent.endpoint)
    with pytest.raises(ToolFailedError):
        await dispatcher.invoke("t", "code")


async def test_health_checks_mark_a_dead_agent_unhealthy(db, http_agent):
    agent = http_agent("flaky")
    dispatcher = ToolDispatcher(db)
    dispatcher.register_agent("flaky", tools=["code"], endpoint=agent.endpoint)
    # Panic routing off: an ejected agent gets no calls, even as the last one.
    dispatcher.enable_health_checks(interval_seconds=0.02, timeout_seconds=1, unhealthy_threshold=1,
                                    panic_threshold=1.0)
    assert dispatcher.get_metrics()["flaky"]["healthy"] is True
    agent.healthy = False
    await eventually(lambda: dispatcher.get_metrics()["flaky"]["healthy"] is False,
                     "the probe to mark the agent unhealthy")
    with pytest.raises(NoAgentAvailableError):
        await dispatcher.invoke("t", "code")
    dispatcher.disable_health_checks()


async def test_custom_categories(db):
    dispatcher = ToolDispatcher(db)

    async def handler(tool, input):
        return {"tool": tool}

    dispatcher.register_local_agent("s", handler=handler, tools=[ToolCategory.custom("sensitive")])
    r1 = await dispatcher.invoke("t", ToolCategory.custom("sensitive"))
    r2 = await dispatcher.invoke("t", "sensitive")
    assert r1.agent_id == r2.agent_id == "s"
    assert len(records(db, "tools/sensitive/t/")) == 2


async def test_errors(db):
    dispatcher = ToolDispatcher(db)
    with pytest.raises(NoAgentAvailableError) as e:
        await dispatcher.invoke("t", "code")
    assert e.value.category == "code"
    with pytest.raises(InvalidInputError):
        await dispatcher.invoke("bad tool name!", "code")
    with pytest.raises(InvalidInputError):
        await dispatcher.invoke("t", "code", strategy="sideways")
    with pytest.raises(InvalidInputError):
        await dispatcher.invoke("t", "code", strategy=RoutingStrategy.STICKY)  # needs a session
    with pytest.raises(InvalidInputError):
        await dispatcher.invoke("t", "code", {"x": object()})
    with pytest.raises(UnknownAgentError) as e:
        dispatcher.unregister_agent("ghost")
    assert e.value.agent_id == "ghost"
    with pytest.raises(InvalidInputError):
        dispatcher.register_agent("x", tools=["code"], endpoint="not a url")
    for cls in (InvalidInputError, NoAgentAvailableError, PolicyDeniedError, UnknownAgentError,
                ToolFailedError, AgentFailedError, AgentTimeoutError):
        assert issubclass(cls, SwitchboardError)
    assert not issubclass(RetryableToolError, SwitchboardError)


async def test_register_list_unregister(db):
    dispatcher = ToolDispatcher(db)
    dispatcher.register_agent("b", tools=["code"], endpoint="http://127.0.0.1:9/invoke")
    dispatcher.register_local_agent("a", handler=lambda t, i: {}, tools=["code"])
    assert dispatcher.list_agents() == ["a", "b"]
    assert ToolDispatcher(db).list_agents() == ["a", "b"]  # both persisted
    dispatcher.unregister_agent("b")
    assert dispatcher.list_agents() == ["a"]
    assert db.get("agents/b") is None


async def test_sticky_sessions_and_select_agent(db):
    dispatcher = ToolDispatcher(db)
    for name in ("a", "b", "c"):
        dispatcher.register_local_agent(name, handler=lambda t, i: {}, tools=["code"])
    first = await dispatcher.invoke("chat", "code", session_id="s1", strategy=RoutingStrategy.STICKY)
    for _ in range(5):
        again = await dispatcher.invoke("chat", "code", session_id="s1")
        assert again.agent_id == first.agent_id
    assert dispatcher.select_agent("code", session_id="s1") == first.agent_id
