"""Python policy hooks on the Rust hook chain, Rego files, fail-closed rules."""

from __future__ import annotations

import json
import threading

import pytest

from conftest import REPO, records
from switchboard import (
    PolicyAction,
    PolicyDeniedError,
    PolicyEngine,
    PolicyLoadError,
    RateLimitedError,
    ToolCategory,
    ToolDispatcher,
)


def test_every_action(db):
    policy = PolicyEngine(db)

    @policy.before_write("notes/*")
    def judge(key, value, context):
        if value == b"deny":
            return PolicyAction.DENY
        if value == b"why":
            return PolicyAction.DENY("no reason to")
        if value == b"shout":
            return PolicyAction.MODIFY(value.upper())
        if value == b"log":
            return PolicyAction.LOG("a note for the log")
        return PolicyAction.ALLOW

    db.put("notes/a", b"fine")
    assert db.get("notes/a") == b"fine"
    with pytest.raises(PolicyDeniedError) as e:
        db.put("notes/a", b"deny")
    assert e.value.key == "notes/a" and e.value.reason == "denied by policy"
    with pytest.raises(PolicyDeniedError) as e:
        db.put("notes/a", "why")
    assert e.value.reason == "no reason to"
    assert db.get("notes/a") == b"fine"
    db.put("notes/b", b"shout")
    assert db.get("notes/b") == b"SHOUT"
    db.put("notes/c", b"log")
    notes = [json.loads(v) for _, v in db.scan("policy_log/")]
    assert any(n["reason"] == "a note for the log" and n["key"] == "notes/c" for n in notes)
    db.put("elsewhere/x", b"deny")  # outside the scope


def test_a_hook_that_raises_denies(db):
    policy = PolicyEngine(db)

    @policy.before_write("notes/**")
    def broken(key, value, context):
        raise RuntimeError("hook bug")

    with pytest.raises(PolicyDeniedError) as e:
        db.put("notes/a/b", b"1")
    assert "RuntimeError: hook bug" in e.value.reason and "fail closed" in e.value.reason
    assert db.get("notes/a/b") is None


def test_a_hook_returning_something_else_denies(db):
    policy = PolicyEngine(db)
    policy.before_write("notes/*", lambda key, value, context: None)
    with pytest.raises(PolicyDeniedError, match="not a PolicyAction"):
        db.put("notes/a", b"1")


async def test_a_raising_hook_during_invoke_denies_every_candidate(db):
    dispatcher = ToolDispatcher(db)
    dispatcher.register_local_agent("a", handler=lambda t, i: {}, tools=["code"])
    policy = PolicyEngine(db)

    @policy.before_write("tools/**")
    def broken(key, value, context):
        raise ValueError("boom")

    with pytest.raises(PolicyDeniedError, match="boom"):
        await dispatcher.invoke("t", "code")


async def test_hooks_run_on_storage_threads_during_invoke(db):
    """Hooks of dispatch writes run on tokio threads and take the GIL there,
    while the event loop's thread keeps running (invoke releases the GIL)."""
    dispatcher = ToolDispatcher(db)
    seen = []

    async def handler(tool, input):
        return {}

    dispatcher.register_local_agent("a", handler=handler, tools=["code"])
    policy = PolicyEngine(db)

    @policy.before_write("tools/**")
    def watch(key, value, context):
        seen.append((threading.get_ident(), context.get("agent_id"), context.get("tool")))
        return PolicyAction.ALLOW

    import asyncio
    await asyncio.gather(*(dispatcher.invoke("t", "code") for _ in range(50)))
    # Each call's intent; its outcome is bookkeeping that before-hooks do not judge.
    assert len(seen) == 50
    assert {agent for _, agent, _ in seen} == {"a"}
    assert any(ident != threading.get_ident() for ident, _, _ in seen)


def test_after_write_and_delete_hooks(db):
    policy = PolicyEngine(db)
    written, deleted = [], []
    policy.after_write("notes/*", lambda k, v, c: written.append((k, v, dict(c))) or PolicyAction.ALLOW)
    policy.after_delete("notes/*", lambda k, v, c: deleted.append(k) or PolicyAction.ALLOW)
    policy.before_delete("notes/keep", lambda k, v, c: PolicyAction.DENY("kept"))
    db.put("notes/a", b"1", context={"agent_id": "x"})
    assert written == [("notes/a", b"1", {"agent_id": "x"})]
    db.delete("notes/a")
    assert deleted == ["notes/a"]
    db.put("notes/keep", b"1")
    with pytest.raises(PolicyDeniedError, match="kept"):
        db.delete("notes/keep")


def test_read_hooks(db):
    db.put("secrets/a", b"s3cret")
    db.put("secrets/b", b"public")
    policy = PolicyEngine(db)

    @policy.before_read("secrets/a")
    def only_admins(key, value, context):
        return PolicyAction.ALLOW if context.get("role") == "admin" else PolicyAction.DENY("admins only")

    @policy.after_read("secrets/*")
    def redact(key, value, context):
        return PolicyAction.MODIFY(b"***") if value == b"s3cret" else PolicyAction.ALLOW

    with pytest.raises(PolicyDeniedError, match="admins only"):
        db.get("secrets/a")
    assert db.get("secrets/a", context={"role": "admin"}) == b"***"
    assert list(db.scan("secrets/")) == [("secrets/b", b"public")]
    assert list(db.scan("secrets/", context={"role": "admin"})) == [
        ("secrets/a", b"***"), ("secrets/b", b"public")]


async def test_the_shipped_rego_policy_from_policies_dir(db):
    policy = PolicyEngine(db)
    assert sorted(policy.load_dir(REPO / "policies")) == [
        "switchboard.sensitive_tools", "switchboard.shell_guard"]
    dispatcher = ToolDispatcher(db)
    dispatcher.register_local_agent("untrusted", handler=lambda t, i: {"by": "untrusted"},
                                    tools=["sensitive"], priority=10)
    with pytest.raises(PolicyDeniedError, match="not trusted"):
        await dispatcher.invoke("wipe", ToolCategory.custom("sensitive"))
    dispatcher.register_local_agent("trusted_agent_1", handler=lambda t, i: {"by": "trusted"},
                                    tools=["sensitive"], priority=1)
    result = await dispatcher.invoke("wipe", "sensitive", strategy="priority")
    assert result.agent_id == "trusted_agent_1" and result.output == {"by": "trusted"}


def test_add_rego_and_malformed_rego(db):
    policy = PolicyEngine(db)
    policy.add_rego("notes/**", """
package notes
import rego.v1
deny contains "no empty notes" if { input.op == "put"; input.value == {} }
""")
    with pytest.raises(PolicyDeniedError, match="no empty notes"):
        db.put("notes/a", b"{}")
    db.put("notes/a", b'{"v": 1}')
    with pytest.raises(PolicyLoadError):
        policy.add_rego("notes/**", "package broken\nthis is not rego")
    db.put("notes/b", b'{"v": 2}')  # the loaded module still judges
    with pytest.raises(PolicyDeniedError):
        db.put("notes/c", b"{}")
    assert [name for name, _ in policy.rego_modules()] == ["notes"]


def test_rate_limit(db):
    policy = PolicyEngine(db)
    policy.add_rate_limit("put", 2, window_seconds=3600)
    db.put("a/1", b"1")
    db.put("a/2", b"1")
    with pytest.raises(RateLimitedError) as e:
        db.put("a/3", b"1")
    assert e.value.retry_after_seconds > 0


async def test_documented_sensitive_scope_protects_dispatch_records(db):
    """The documentation's policy, scope `tools/sensitive/*`, must protect the
    dispatch records of the sensitive category (tools/sensitive/{tool}/{id})."""
    dispatcher = ToolDispatcher(db)
    dispatcher.register_local_agent("intruder", handler=lambda t, i: {"by": "intruder"},
                                    tools=[ToolCategory.custom("sensitive")])
    policy = PolicyEngine(db)

    @policy.before_write("tools/sensitive/*")
    def require_trusted_agent(key, value, context):
        if context.get("agent_id") not in ["trusted_agent_1", "trusted_agent_2"]:
            return PolicyAction.DENY
        return PolicyAction.ALLOW

    with pytest.raises(PolicyDeniedError):
        await dispatcher.invoke("wipe", ToolCategory.custom("sensitive"))
    assert all(r.get("status") != "succeeded" for r in records(db, "tools/sensitive/"))
