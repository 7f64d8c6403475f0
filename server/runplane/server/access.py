"""What one call may reach: the per-namespace rule of the roles table, in one place.

The guard has already admitted the caller and checked that it holds the role its call
needs somewhere. Which runs the call may touch is known only once the rules read
them, so the servicer makes one `Access` per call (`Access.of`) and passes it inside
the request dataclass; the rules then ask it, and nothing else decides:

- a call on one run, once the run is read by its id: `access.found(run_id, run)` gives
  the run back, or raises RunNotFound where the caller holds no role at all (the run
  must look exactly like a missing one) and PermissionDenied where it may read but
  lacks the role the call needs (`found_in` asks the same of a run's namespace alone);
- a call that names where it writes (CreateRun): `access.require(namespace)`;
- a call over many runs (ListRuns, WatchRuns, ClaimRun, CancelRuns, GetStats):
  `access.namespaces(requested)`, the namespaces to filter on, from the one the request
  names (None: every namespace the caller holds the role in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runplane.server import policy
from runplane.server.errors import PermissionDenied, RunNotFound
from runplane.server.policy import Principal, Role, Verdict
from runplane.server.records import NamespaceSet, Run


@dataclass(frozen=True, slots=True)
class Access:
    principal: Principal
    role: Role
    """The role this call needs (DeleteRun with force: admin)."""

    @classmethod
    def of(cls, principal: Principal, method: str, request: Any) -> Access:
        """The access of `principal` calling RunService `method` with `request`."""
        return cls(principal, policy.RULES[method].role_needed(request))

    @property
    def caller(self) -> str:
        """The principal's name: audit lines and `Run.created_by`."""
        return self.principal.name

    def verdict(self, namespace: str) -> Verdict:
        return policy.verdict(self.principal, self.role, namespace)

    def found(self, run_id: str, run: Run | None) -> Run:
        """`run`, read by `run_id` (None: there is none), if this call may act on it."""
        if run is None:
            raise RunNotFound(run_id)
        self.found_in(run.namespace, run_id)
        return run

    def found_in(self, namespace: str | None, run_id: str) -> str:
        """`found` of a run known by its namespace only (None: there is none), for a
        batch that reads no more of its runs before it writes (heartbeats)."""
        if namespace is not None:
            verdict = self.verdict(namespace)
            if verdict is Verdict.ALLOWED:
                return namespace
            if verdict is Verdict.DENIED:
                raise PermissionDenied(self.caller, self.role.value, namespace)
        raise RunNotFound(run_id)

    def require(self, namespace: str) -> None:
        """PermissionDenied unless this call's role is held in `namespace`. For a call that
        names the namespace itself: nothing there is revealed by refusing it."""
        if self.verdict(namespace) is not Verdict.ALLOWED:
            raise PermissionDenied(self.caller, self.role.value, namespace)

    def namespaces(self, requested: str | None) -> NamespaceSet:
        """Where a call over many runs may look: the namespace the request names, or every
        one the caller holds the role in (None: every namespace there is). A named
        namespace the caller holds no role in is searched and found empty, as if it were;
        one it may only read is PermissionDenied.
        """
        if requested is None:
            held = self.principal.namespaces(self.role)
            return None if held.everywhere else held.names
        verdict = self.verdict(requested)
        if verdict is Verdict.DENIED:
            raise PermissionDenied(self.caller, self.role.value, requested)
        return frozenset({requested}) if verdict is Verdict.ALLOWED else frozenset()
