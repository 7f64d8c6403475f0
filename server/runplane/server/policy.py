"""Who may call what, where: the roles table and the questions asked of it.

Roles are granted per namespace (`*` grants it in every namespace):

    reader   GetRun, ListRuns, WatchRuns, WatchRun, GetStats
    writer   reader + CreateRun, UpdateRun, CancelRun, CancelRuns, DeleteRun (not force)
    worker   reader + ClaimRun, HeartbeatRun, CompleteRun
    admin    everything, DeleteRun with force included

The guard asks the coarse question before a call runs (does the caller hold the role
the call needs anywhere at all?); the per-namespace ones (`verdict`) are asked through
the call's `access.Access` once the rules know the run's namespace, or need the
namespaces a listing, watch or claim may cover. Nothing here knows gRPC or the database.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

EVERY_NAMESPACE = "*"
NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A DNS label, as Kubernetes names namespaces."""


class Role(enum.Enum):
    READER = "reader"
    WRITER = "writer"
    WORKER = "worker"
    ADMIN = "admin"

    def includes(self, needed: Role) -> bool:
        """Whether holding this role allows what `needed` allows."""
        return self is needed or self is Role.ADMIN or needed is Role.READER


@dataclass(frozen=True, slots=True)
class Grant:
    namespace: str
    """A namespace name, or `*` for every namespace."""
    role: Role


def parse_grant(namespace: str, role: str) -> Grant:
    """A grant from its two strings, checked: a namespace name or `*`, and a known role.
    Raises ValueError saying what is wrong."""
    if namespace != EVERY_NAMESPACE and not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} is neither '*' nor a DNS label (lowercase letters, "
            "digits and '-', at most 63)"
        )
    try:
        return Grant(namespace, Role(role))
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise ValueError(f"role {role!r} is not one of {known}") from None


@dataclass(frozen=True, slots=True)
class Namespaces:
    """The namespaces a principal holds some role in: every one, or the names listed."""

    everywhere: bool = False
    names: frozenset[str] = frozenset()

    def __contains__(self, namespace: object) -> bool:
        return self.everywhere or namespace in self.names

    def __bool__(self) -> bool:
        return self.everywhere or bool(self.names)


NOWHERE = Namespaces()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its name (audit lines, Run.created_by) and its grants."""

    name: str
    grants: tuple[Grant, ...] = ()
    _scopes: dict[Role, Namespaces] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Worked out once per principal, so a call asks a dictionary, not the grants.
        object.__setattr__(self, "_scopes", {role: _scope(self.grants, role) for role in Role})

    def namespaces(self, role: Role) -> Namespaces:
        """Where this principal may do what `role` allows."""
        return self._scopes[role]


def _scope(grants: Iterable[Grant], role: Role) -> Namespaces:
    held = [grant.namespace for grant in grants if grant.role.includes(role)]
    if EVERY_NAMESPACE in held:
        return Namespaces(everywhere=True)
    return Namespaces(names=frozenset(held))


ANONYMOUS = Principal("anonymous", (Grant(EVERY_NAMESPACE, Role.ADMIN),))
"""Every caller when authentication is off: loopback development, as before auth existed."""


@dataclass(frozen=True, slots=True)
class Rule:
    """What one RunService method needs."""

    role: Role
    mutating: bool = False
    """Changes runs: each call gets an audit line."""
    watch: bool = False
    """Opens a watch stream: counted against the caller's watch limit."""
    escalates: Callable[[Any], bool] | None = None
    """Given the request, whether this call needs admin instead (DeleteRun with force)."""

    def role_needed(self, request: Any) -> Role:
        if self.escalates is not None and request is not None and self.escalates(request):
            return Role.ADMIN
        return self.role


def _forced(request: Any) -> bool:
    return bool(request.force)


RULES: dict[str, Rule] = {
    "GetRun": Rule(Role.READER),
    "ListRuns": Rule(Role.READER),
    "WatchRuns": Rule(Role.READER, watch=True),
    "WatchRun": Rule(Role.READER, watch=True),
    "GetStats": Rule(Role.READER),
    "CreateRun": Rule(Role.WRITER, mutating=True),
    "UpdateRun": Rule(Role.WRITER, mutating=True),
    "CancelRun": Rule(Role.WRITER, mutating=True),
    "CancelRuns": Rule(Role.WRITER, mutating=True),
    "DeleteRun": Rule(Role.WRITER, mutating=True, escalates=_forced),
    "ClaimRun": Rule(Role.WORKER, mutating=True),
    # A heartbeat keeps a lease alive in place: no revision, no event (like an etcd
    # keep-alive), and a worker pool sends thousands a second. Not an audited change.
    "HeartbeatRun": Rule(Role.WORKER),
    "CompleteRun": Rule(Role.WORKER, mutating=True),
}
"""Every RunService method, by its short name."""


class Verdict(enum.Enum):
    """The answer for one call on one namespace."""

    ALLOWED = "allowed"
    DENIED = "denied"
    """The caller may read the namespace but lacks the role: PERMISSION_DENIED."""
    HIDDEN = "hidden"
    """The caller holds no role there: the run must look missing (NOT_FOUND, absent)."""


def verdict(principal: Principal, role: Role, namespace: str) -> Verdict:
    """May `principal` do what `role` allows in `namespace`, and if not, what it may know."""
    if namespace in principal.namespaces(role):
        return Verdict.ALLOWED
    if namespace in principal.namespaces(Role.READER):
        return Verdict.DENIED
    return Verdict.HIDDEN
