"""The documented Python listing, run as written (only the import lines are
this package's), with assertions on what each step did."""

from __future__ import annotations

import json

import pytest

from conftest import records


async def test_documented_listing(tmp_path, http_agent, monkeypatch):
    # The listing's agents listen where it says: localhost:8001 and :8002.
    monkeypatch.chdir(tmp_path)  # "./agent_data" lands in the test's directory
    code_server = http_agent("code_agent", port=8001)
    search_server = http_agent("search_agent", port=8002)

    # --- the listing, verbatim from here ---
    from switchboard import Database, ToolDispatcher, ToolCategory, RoutingStrategy
    from switchboard import PolicyEngine, PolicyAction

    db = Database.open("./agent_data")
    dispatcher = ToolDispatcher(db)            # loads persisted registrations

    dispatcher.register_agent(
        "code_agent",
        tools=[ToolCategory.CODE, ToolCategory.SHELL],
        endpoint="http://localhost:8001/invoke",
        priority=10,
    )
    dispatcher.register_agent(
        "search_agent",
        tools=[ToolCategory.SEARCH, ToolCategory.WEB],
        endpoint="http://localhost:8002/invoke",
        priority=5,
    )

    result = await dispatcher.invoke(          # keyword form
        tool="code_exec",
        category=ToolCategory.CODE,
        input={"code": "print('hello')"},
        strategy=RoutingStrategy.LEAST_LOADED,
    )
    # --- (assertions between the listing's steps) ---
    assert result.agent_id == "code_agent"
    assert result.output == {"agent": "code_agent", "tool": "code_exec",
                             "input": {"code": "print('hello')"}}
    assert result.attempts == 1
    assert result.latency_ms > 0
    assert isinstance(result.invocation_id, str) and result.invocation_id
    keyword_id = result.invocation_id

    result = await dispatcher.invoke("code_exec", ToolCategory.CODE, {"code": "1"})  # positional form
    assert result.output["input"] == {"code": "1"}
    assert result.invocation_id != keyword_id

    # sticky sessions: same session_id -> same agent
    r1 = await dispatcher.invoke(tool="chat", category=ToolCategory.CODE,
                                 input={"message": "Write a function"}, session_id="session_abc123")
    r2 = await dispatcher.invoke(tool="chat", category=ToolCategory.CODE,
                                 input={"message": "Now test it"}, session_id="session_abc123")
    assert r1.agent_id == r2.agent_id == "code_agent"
    assert json.loads(db.get("sessions/session_abc123"))["agent_id"] == "code_agent"
    assert len(code_server.calls) == 4 and search_server.calls == []
    assert code_server.calls[2]["session_id"] == "session_abc123"
    assert [r["status"] for r in records(db, "tools/code/chat/")] == ["succeeded"] * 2

    # persisted registrations: a new dispatcher (later, in another process) sees them
    dispatcher = ToolDispatcher(db)
    agents = dispatcher.list_agents()          # ["agent_001", ...]
    assert agents == ["code_agent", "search_agent"]

    dispatcher.enable_health_checks(interval_seconds=30, timeout_seconds=5, unhealthy_threshold=3)

    metrics = dispatcher.get_metrics()
    for agent_id, stats in metrics.items():
        print(stats['total'], f"{stats['success_rate']:.2%}",
              f"{stats['avg_latency_ms']:.1f}ms", stats['active_tasks'])
    assert set(metrics) == {"code_agent", "search_agent"}
    assert metrics["code_agent"]["success_rate"] == 1.0
    assert metrics["code_agent"]["active_tasks"] == 0

    async def code_executor(tool: str, input: dict) -> dict:
        return {"output": ...}

    dispatcher.register_local_agent("local_code", handler=code_executor, tools=[ToolCategory.CODE])
    assert dispatcher.list_agents() == ["code_agent", "local_code", "search_agent"]

    policy = PolicyEngine(db)

    @policy.before_write("tools/sensitive/*")
    def require_trusted_agent(key, value, context):
        if context.get("agent_id") not in ["trusted_agent_1", "trusted_agent_2"]:
            return PolicyAction.DENY
        return PolicyAction.ALLOW
    # --- end of the listing ---

    # The decorator hands the function back unchanged, and it is in force on
    # the dispatch records of the sensitive category:
    assert require_trusted_agent("k", b"", {"agent_id": "trusted_agent_1"}) is PolicyAction.ALLOW
    sensitive = ToolCategory.custom("sensitive")

    async def wipe(tool: str, input: dict) -> dict:
        return {"wiped": True}

    dispatcher.register_local_agent("someone", handler=wipe, tools=[sensitive])
    with pytest.raises(Exception) as denied:
        await dispatcher.invoke("wipe", sensitive, {})
    assert type(denied.value).__name__ == "PolicyDeniedError"
    assert "denied by policy" in str(denied.value)
    dispatcher.register_local_agent("trusted_agent_2", handler=wipe, tools=[sensitive])
    result = await dispatcher.invoke("wipe", sensitive, {})
    assert result.agent_id == "trusted_agent_2"


def test_documented_names():
    from switchboard import PolicyAction, RoutingStrategy, ToolCategory

    assert [ToolCategory.CODE, ToolCategory.SEARCH, ToolCategory.DATABASE, ToolCategory.WEB,
            ToolCategory.FILE, ToolCategory.GIT, ToolCategory.SHELL, ToolCategory.EMBEDDING] == [
        "code", "search", "database", "web", "file", "git", "shell", "embedding"]
    assert [RoutingStrategy.ROUND_ROBIN, RoutingStrategy.RANDOM, RoutingStrategy.LEAST_LOADED,
            RoutingStrategy.PRIORITY, RoutingStrategy.STICKY, RoutingStrategy.FASTEST] == [
        "round_robin", "random", "least_loaded", "priority", "sticky", "fastest"]
    assert PolicyAction.ALLOW.kind == "allow"
    assert PolicyAction.DENY.kind == "deny" and PolicyAction.DENY.payload == "denied by policy"
    assert PolicyAction.DENY("why") == PolicyAction("deny", "why")
    assert PolicyAction.MODIFY(b"x").payload == b"x"
    assert PolicyAction.LOG("note").kind == "log"
    assert repr(ToolCategory.custom("sensitive")) == "ToolCategory.custom('sensitive')"
