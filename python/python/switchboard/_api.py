"""The pure-Python half of the API: categories, strategies, policy actions and
the decorator form of policy hooks. Everything here hands plain values to the
Rust core in ``switchboard._native``."""

from __future__ import annotations

from os import PathLike
from typing import Callable, ClassVar, Mapping, Optional, TypeVar, Union

from . import _native


class ToolCategory(str):
    """What kind of tool an agent serves. A ``str``: the built-in categories
    are constants (``ToolCategory.CODE`` is ``"code"``); any other name is a
    custom category (``ToolCategory.custom("sensitive")``, or just
    ``"sensitive"``)."""

    CODE: ClassVar["ToolCategory"]
    SEARCH: ClassVar["ToolCategory"]
    DATABASE: ClassVar["ToolCategory"]
    WEB: ClassVar["ToolCategory"]
    FILE: ClassVar["ToolCategory"]
    GIT: ClassVar["ToolCategory"]
    SHELL: ClassVar["ToolCategory"]
    EMBEDDING: ClassVar["ToolCategory"]

    __slots__ = ()

    @classmethod
    def custom(cls, name: str) -> "ToolCategory":
        """A category of your own, by name (``[A-Za-z0-9._:-]``, 1-128 chars)."""
        return cls(name)

    def __repr__(self) -> str:
        name = str(self)
        if name.upper() in _BUILTIN_CATEGORIES:
            return f"ToolCategory.{name.upper()}"
        return f"ToolCategory.custom({name!r})"


_BUILTIN_CATEGORIES = ("CODE", "SEARCH", "DATABASE", "WEB", "FILE", "GIT", "SHELL", "EMBEDDING")
for _name in _BUILTIN_CATEGORIES:
    setattr(ToolCategory, _name, ToolCategory(_name.lower()))


class RoutingStrategy(str):
    """How to choose among the healthy agents serving a category. A ``str``
    (``RoutingStrategy.LEAST_LOADED`` is ``"least_loaded"``). The default is
    round robin."""

    ROUND_ROBIN: ClassVar["RoutingStrategy"]
    RANDOM: ClassVar["RoutingStrategy"]
    LEAST_LOADED: ClassVar["RoutingStrategy"]
    PRIORITY: ClassVar["RoutingStrategy"]
    STICKY: ClassVar["RoutingStrategy"]
    FASTEST: ClassVar["RoutingStrategy"]

    __slots__ = ()

    def __repr__(self) -> str:
        return f"RoutingStrategy.{str(self).upper()}"


for _name in ("ROUND_ROBIN", "RANDOM", "LEAST_LOADED", "PRIORITY", "STICKY", "FASTEST"):
    setattr(RoutingStrategy, _name, RoutingStrategy(_name.lower()))


class PolicyAction:
    """What a policy hook decides. Return one of:

    - ``PolicyAction.ALLOW``
    - ``PolicyAction.DENY`` (reason "denied by policy") or ``PolicyAction.DENY("why")``
    - ``PolicyAction.MODIFY(new_value)``: a before-write hook stores this value
      instead; an after-read hook hands it to the reader instead
    - ``PolicyAction.LOG("note")``: allow, and record the note in the decision log
    """

    ALLOW: ClassVar["PolicyAction"]
    DENY: ClassVar["_Deny"]

    __slots__ = ("kind", "payload")

    def __init__(self, kind: str, payload: Union[str, bytes, None] = None) -> None:
        if kind not in ("allow", "deny", "modify", "log"):
            raise ValueError(f"unknown policy action {kind!r}")
        self.kind = kind
        self.payload = payload

    @staticmethod
    def MODIFY(value: Union[bytes, str]) -> "PolicyAction":  # noqa: N802 (documented name)
        if not isinstance(value, (bytes, bytearray, str)):
            raise TypeError("PolicyAction.MODIFY takes bytes or str")
        return PolicyAction("modify", bytes(value) if isinstance(value, bytearray) else value)

    @staticmethod
    def LOG(note: str) -> "PolicyAction":  # noqa: N802 (documented name)
        return PolicyAction("log", str(note))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PolicyAction)
            and self.kind == other.kind
            and self.payload == other.payload
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.payload))

    def __repr__(self) -> str:
        if self.kind == "allow":
            return "PolicyAction.ALLOW"
        if self.kind == "deny" and self.payload == _DEFAULT_DENY_REASON:
            return "PolicyAction.DENY"
        return f"PolicyAction.{self.kind.upper()}({self.payload!r})"


_DEFAULT_DENY_REASON = "denied by policy"


class _Deny(PolicyAction):
    """``PolicyAction.DENY``: a Deny by itself, and callable for a reason."""

    __slots__ = ()

    def __call__(self, reason: str) -> PolicyAction:
        return PolicyAction("deny", str(reason))


PolicyAction.ALLOW = PolicyAction("allow")
PolicyAction.DENY = _Deny("deny", _DEFAULT_DENY_REASON)

Hook = Callable[[str, bytes, Mapping[str, str]], PolicyAction]
H = TypeVar("H", bound=Hook)


class PolicyEngine:
    """A handle on a database's policy chain. Every engine made from the same
    database adds to the same chain.

    Hooks are called as ``hook(key: str, value: bytes, context)`` where
    ``context`` is a dict of strings (``context.get("agent_id")``); the
    dispatcher sets ``agent_id``, ``tool``, ``category``, ``session_id``,
    ``invocation_id``, ``strategy`` and ``action``. A hook that raises, or
    returns anything but a ``PolicyAction``, denies (fail closed).
    """

    __slots__ = ("_native",)

    def __init__(self, db: "_native.Database") -> None:
        self._native = _native.PolicyEngine(db)

    def _hook(self, point: str, scope: str, hook: Optional[H]) -> Union[H, Callable[[H], H]]:
        def register(fn: H) -> H:
            self._native.add_hook(point, scope, fn)
            return fn

        return register if hook is None else register(hook)

    def before_write(self, scope: str, hook: Optional[H] = None):  # type: ignore[no-untyped-def]
        """Before every put under the glob ``scope``: may allow, deny or rewrite.
        Use as ``@policy.before_write("tools/sensitive/*")`` or call with the hook."""
        return self._hook("before_write", scope, hook)

    def after_write(self, scope: str, hook: Optional[H] = None):  # type: ignore[no-untyped-def]
        """After every committed put under ``scope`` (cannot undo it)."""
        return self._hook("after_write", scope, hook)

    def before_delete(self, scope: str, hook: Optional[H] = None):  # type: ignore[no-untyped-def]
        """Before every delete under ``scope`` (value is empty)."""
        return self._hook("before_delete", scope, hook)

    def after_delete(self, scope: str, hook: Optional[H] = None):  # type: ignore[no-untyped-def]
        """After every committed delete under ``scope``."""
        return self._hook("after_delete", scope, hook)

    def before_read(self, scope: str, hook: Optional[H] = None):  # type: ignore[no-untyped-def]
        """Before every get (and each key of a scan) under ``scope``: a Deny
        refuses the read (a scan skips the key)."""
        return self._hook("before_read", scope, hook)

    def after_read(self, scope: str, hook: Optional[H] = None):  # type: ignore[no-untyped-def]
        """On every value read under ``scope``: MODIFY redacts what the reader
        gets, DENY hides the value."""
        return self._hook("after_read", scope, hook)

    def add_rego(self, scope: str, source: str) -> None:
        """Compiles a Rego module judging puts and deletes under ``scope``.
        Malformed Rego raises ``PolicyLoadError``; loaded policies stay."""
        self._native.add_rego(scope, source)

    def load_dir(self, path: Union[str, "PathLike[str]"]) -> list[str]:
        """Loads every ``*.rego`` file of ``path`` (each declares its scope in a
        ``# scope: ...`` comment); all or none. Returns the module names."""
        return self._native.load_dir(path)

    def rego_modules(self) -> list[tuple[str, str]]:
        """``(module name, scope)`` for each loaded Rego module scope."""
        return self._native.rego_modules()

    def add_rate_limit(
        self, op: str, max: int, window_seconds: float = 60.0, per: str = "global"
    ) -> None:
        """At most ``max`` operations ``op`` (``put``, ``delete``, ``get``,
        ``dispatch``) per window, counted ``per`` ``global``, ``agent``,
        ``session`` or ``tool``. Over the limit: ``RateLimitedError``."""
        self._native.add_rate_limit(op, max, window_seconds, per)
