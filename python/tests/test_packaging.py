"""The installed package carries its type information."""

from pathlib import Path

import switchboard


def test_typed_package():
    here = Path(switchboard.__file__).parent
    assert (here / "py.typed").exists()
    stub = (here / "_native.pyi").read_text()
    for name in ("class ToolDispatcher", "def invoke", "class PolicyDeniedError",
                 "def register_local_agent", "class Transaction"):
        assert name in stub
    assert set(switchboard.__all__) >= {
        "Database", "ToolDispatcher", "ToolCategory", "RoutingStrategy", "PolicyEngine",
        "PolicyAction", "SwitchboardError", "RetryableToolError"}
