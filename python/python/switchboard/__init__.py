"""Switchboard routes tool invocations across AI agents, over a policy-checked,
transactional RocksDB store. This package runs the Rust core in-process.

Everything is synchronous except ``await dispatcher.invoke(...)``.
"""

from ._api import PolicyAction, PolicyEngine, RoutingStrategy, ToolCategory
from ._native import (
    AgentFailedError,
    AgentTimeoutError,
    Database,
    InvalidInputError,
    InvocationResult,
    NoAgentAvailableError,
    PolicyDeniedError,
    PolicyLoadError,
    RateLimitedError,
    RetryableToolError,
    Scan,
    StorageError,
    SwitchboardError,
    ToolDispatcher,
    ToolFailedError,
    Transaction,
    UnknownAgentError,
    __version__,
)

# The documentation's other name for a database handle.
Connection = Database

__all__ = [
    "AgentFailedError",
    "AgentTimeoutError",
    "Connection",
    "Database",
    "InvalidInputError",
    "InvocationResult",
    "NoAgentAvailableError",
    "PolicyAction",
    "PolicyDeniedError",
    "PolicyEngine",
    "PolicyLoadError",
    "RateLimitedError",
    "RetryableToolError",
    "RoutingStrategy",
    "Scan",
    "StorageError",
    "SwitchboardError",
    "ToolCategory",
    "ToolDispatcher",
    "ToolFailedError",
    "Transaction",
    "UnknownAgentError",
    "__version__",
]
