"""Every RPC x every role x own / other / `*` namespace, against a real secured server:
the exact code the roles table gives, written out here independently of the server.

Each principal holds one role in `team-a` (own) or in `*`, or that role in `team-a` and
reader everywhere (so it may read `team-b` but not act there), or reader in a third
namespace only (no role at all in either), or nothing. Each call acts on a fresh run in
`team-a` or `team-b`, made by the operator.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from runplane.v1 import run_pb2, run_service_pb2
from tests.support.auth import Caller
from tests.support.stubs import failure
from tests.support.tenants import OPERATOR, TEAM_A, TEAM_B, Tenants, bearer, secured_server
from tests.support.watching import cancel

pytestmark = pytest.mark.timeout(120)

READS = {"GetRun", "ListRuns", "WatchRuns", "WatchRun", "GetStats"}
CONTRACT = {
    "reader": READS,
    "writer": READS | {"CreateRun", "UpdateRun", "CancelRun", "CancelRuns", "DeleteRun"},
    "worker": READS | {"ClaimRun", "HeartbeatRun", "CompleteRun"},
    "admin": READS
    | {"CreateRun", "UpdateRun", "CancelRun", "CancelRuns", "DeleteRun", "DeleteRun force"}
    | {"ClaimRun", "HeartbeatRun", "CompleteRun"},
}
"""The contract's roles table: what each role may call."""
ROLES = ("reader", "writer", "worker", "admin")
NEEDED = {
    method: next(role for role in ROLES if method in CONTRACT[role]) for method in CONTRACT["admin"]
}
"""The role a PERMISSION_DENIED names for each call: the first that allows it."""
PRINCIPALS = {
    **{f"{role}@own": Caller(f"{role}-own", [(TEAM_A, role)]) for role in ROLES},
    **{f"{role}@*": Caller(f"{role}-all", [("*", role)]) for role in ROLES},
    **{
        f"{role}@own+reader@*": Caller(f"{role}-own-reads-all", [(TEAM_A, role), ("*", "reader")])
        for role in ("writer", "worker", "admin")
    },
    "reader@elsewhere": Caller("stranger", [("team-c", "reader")]),
    "nothing": Caller("nobody", []),
}


@dataclass(frozen=True)
class Outcome:
    code: str
    shown: bool | None = None
    """For a call over many runs (list, watch, claim): whether the run was among them."""
    namespace: str | None = None
    """For PERMISSION_DENIED: the namespace in its metadata (None: it names none)."""
    role_needed: str | None = None


OK = Outcome("OK")
SHOWN, ABSENT = Outcome("OK", shown=True), Outcome("OK", shown=False)


@dataclass(frozen=True)
class Call:
    method: str
    """The contract's name for what is called ("DeleteRun force" for DeleteRun with force)."""
    many: bool = False
    """Over many runs: shown or absent rather than found or NOT_FOUND."""
    names_namespace: bool = False
    """The request names the run's namespace (a filter, a claim's namespace, a create)."""


def expected(call: Call, grants: list[tuple[str, str]], namespace: str) -> Outcome:
    """What the contract says `call` on a run in `namespace` answers to a principal with
    `grants`."""
    may = [role for _, role in grants if call.method in CONTRACT[role]]
    if not may:  # the role is held nowhere: refused before the run is looked at
        return Outcome("PERMISSION_DENIED", role_needed=NEEDED[call.method])
    here = [role for where, role in grants if where in (namespace, "*")]
    if any(call.method in CONTRACT[role] for role in here):
        return SHOWN if call.many else OK
    denied = Outcome("PERMISSION_DENIED", namespace=namespace, role_needed=NEEDED[call.method])
    if call.method == "CreateRun":
        return denied
    if call.many:
        return denied if call.names_namespace and here else ABSENT
    return denied if here else Outcome("NOT_FOUND")


# -- the calls -----------------------------------------------------------------------------


def outcome(action: Callable[[], Outcome]) -> Outcome:
    try:
        return action()
    except grpc.RpcError as error:
        found = failure(error)
        if found.code != grpc.StatusCode.PERMISSION_DENIED:
            return Outcome(found.code.name)
        return Outcome(
            found.code.name,
            namespace=found.metadata.get("namespace"),
            role_needed=found.metadata.get("role_needed"),
        )


Perform = Callable[[Tenants, Caller, str], Outcome]


def on_pending(method: str, request: Callable[[run_pb2.Run], object]) -> Perform:
    """A call on a fresh PENDING run of the namespace."""

    def perform(tenants: Tenants, caller: Caller, namespace: str) -> Outcome:
        run = tenants.create(namespace)
        return outcome(lambda: (tenants.call(caller, method, request(run)), OK)[1])

    return perform


def on_running(method: str, request: Callable[[run_pb2.Run], object]) -> Perform:
    """A call on a fresh run the operator claimed, as its worker."""

    def perform(tenants: Tenants, caller: Caller, namespace: str) -> Outcome:
        assistant = f"a-{uuid.uuid4().hex[:8]}"
        tenants.create(namespace, assistant_id=assistant)
        run = tenants.claim("w1", assistant)
        return outcome(lambda: (tenants.call(caller, method, request(run)), OK)[1])

    return perform


def delete_ended(tenants: Tenants, caller: Caller, namespace: str) -> Outcome:
    run = tenants.cancel_run(tenants.create(namespace).run_id)
    request = run_service_pb2.DeleteRunRequest(run_id=run.run_id)
    return outcome(lambda: (tenants.call(caller, "DeleteRun", request), OK)[1])


def create(tenants: Tenants, caller: Caller, namespace: str) -> Outcome:
    return outcome(lambda: (tenants.create(namespace, caller), OK)[1])


def shown_by(read: Callable[..., list[run_pb2.Run]], named: bool) -> Perform:
    """A listing or a watch's initial state (`read`, a `Tenants` method), of the run's
    thread, in the run's namespace or in every one."""

    def perform(tenants: Tenants, caller: Caller, namespace: str) -> Outcome:
        run = tenants.create(namespace)

        def shown() -> Outcome:
            found = read(tenants, caller, namespace if named else "", thread_id=run.thread_id)
            return Outcome("OK", shown=[r.run_id for r in found] == [run.run_id])

        return outcome(shown)

    return perform


def watch_run(tenants: Tenants, caller: Caller, namespace: str) -> Outcome:
    run = tenants.create(namespace)

    def first() -> Outcome:
        request = run_service_pb2.WatchRunRequest(run_id=run.run_id)
        stream = tenants.stub.WatchRun(request, metadata=bearer(caller), timeout=10)
        try:
            assert next(iter(stream)).events[0].run.run_id == run.run_id
        finally:
            cancel(stream)
        return OK

    return outcome(first)


def claim(named: bool) -> Perform:
    def perform(tenants: Tenants, caller: Caller, namespace: str) -> Outcome:
        assistant = f"a-{uuid.uuid4().hex[:8]}"
        run = tenants.create(namespace, assistant_id=assistant)
        request = run_service_pb2.ClaimRunRequest(
            worker_id="w2", assistant_ids=[assistant], namespace=namespace if named else ""
        )

        def shown() -> Outcome:
            claimed = tenants.call(caller, "ClaimRun", request)
            return Outcome("OK", shown=claimed.run.run_id == run.run_id)

        return outcome(shown)

    return perform


def stats(named: bool) -> Perform:
    """GetStats, in the run's namespace or in every one: whether the queue of the run's
    (fresh) assistant is among its figures."""

    def perform(tenants: Tenants, caller: Caller, namespace: str) -> Outcome:
        assistant = f"a-{uuid.uuid4().hex[:8]}"
        tenants.create(namespace, assistant_id=assistant)
        request = run_service_pb2.GetStatsRequest(namespace=namespace if named else "")

        def shown() -> Outcome:
            figures = tenants.call(caller, "GetStats", request)
            queues = [(q.namespace, q.assistant_id, q.depth) for q in figures.queues]
            if (namespace, assistant, 1) in queues:
                return SHOWN
            assert all(q.assistant_id != assistant for q in figures.queues)
            return ABSENT

        return outcome(shown)

    return perform


def cancel_runs(named: bool) -> Perform:
    """CancelRuns of the run's thread, in the run's namespace or in every one: shown if
    it cancelled the run."""

    def perform(tenants: Tenants, caller: Caller, namespace: str) -> Outcome:
        run = tenants.create(namespace)
        run_filter = run_service_pb2.RunFilter(
            thread_id=run.thread_id, namespace=namespace if named else ""
        )

        def shown() -> Outcome:
            done = tenants.call(
                caller, "CancelRuns", run_service_pb2.CancelRunsRequest(filter=run_filter)
            )
            return Outcome("OK", shown=done.count == 1)

        return outcome(shown)

    return perform


MASK = field_mask_pb2.FieldMask(paths=["metadata"])
CALLS: dict[str, tuple[Call, Perform]] = {
    "GetRun": (
        Call("GetRun"),
        on_pending("GetRun", lambda run: run_service_pb2.GetRunRequest(run_id=run.run_id)),
    ),
    "ListRuns": (Call("ListRuns", many=True), shown_by(Tenants.listed, named=False)),
    "ListRuns in the namespace": (
        Call("ListRuns", many=True, names_namespace=True),
        shown_by(Tenants.listed, named=True),
    ),
    "WatchRuns": (Call("WatchRuns", many=True), shown_by(Tenants.initial, named=False)),
    "WatchRuns in the namespace": (
        Call("WatchRuns", many=True, names_namespace=True),
        shown_by(Tenants.initial, named=True),
    ),
    "WatchRun": (Call("WatchRun"), watch_run),
    "CreateRun": (Call("CreateRun", names_namespace=True), create),
    "UpdateRun": (
        Call("UpdateRun"),
        on_pending(
            "UpdateRun",
            lambda run: run_service_pb2.UpdateRunRequest(
                run=run_pb2.Run(run_id=run.run_id), update_mask=MASK
            ),
        ),
    ),
    "CancelRun": (
        Call("CancelRun"),
        on_pending("CancelRun", lambda run: run_service_pb2.CancelRunRequest(run_id=run.run_id)),
    ),
    "CancelRuns": (Call("CancelRuns", many=True), cancel_runs(named=False)),
    "CancelRuns in the namespace": (
        Call("CancelRuns", many=True, names_namespace=True),
        cancel_runs(named=True),
    ),
    "DeleteRun": (Call("DeleteRun"), delete_ended),
    "DeleteRun force": (
        Call("DeleteRun force"),
        on_pending(
            "DeleteRun", lambda run: run_service_pb2.DeleteRunRequest(run_id=run.run_id, force=True)
        ),
    ),
    "GetStats": (Call("GetStats", many=True), stats(named=False)),
    "GetStats in the namespace": (
        Call("GetStats", many=True, names_namespace=True),
        stats(named=True),
    ),
    "ClaimRun": (Call("ClaimRun", many=True), claim(named=False)),
    "ClaimRun in the namespace": (
        Call("ClaimRun", many=True, names_namespace=True),
        claim(named=True),
    ),
    "HeartbeatRun": (
        Call("HeartbeatRun"),
        on_running(
            "HeartbeatRun",
            lambda run: run_service_pb2.HeartbeatRunRequest(run_id=run.run_id, worker_id="w1"),
        ),
    ),
    "CompleteRun": (
        Call("CompleteRun"),
        on_running(
            "CompleteRun",
            lambda run: run_service_pb2.CompleteRunRequest(
                run_id=run.run_id, worker_id="w1", status=run_pb2.RUN_STATUS_SUCCESS
            ),
        ),
    ),
}


@pytest.fixture(scope="module")
def tenants(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    folder: Path = tmp_path_factory.mktemp("roles")
    with secured_server(backend, folder, list(PRINCIPALS.values())) as tenants:
        yield tenants


def test_the_matrix_covers_every_call_of_the_table() -> None:
    assert {call.method for call, _ in CALLS.values()} == set(CONTRACT["admin"])


@pytest.mark.parametrize(
    ("call", "principal", "where"),
    list(itertools.product(CALLS, PRINCIPALS, ("own", "other"))),
)
def test_each_call_answers_as_the_roles_table_says(
    tenants: Tenants, call: str, principal: str, where: str
) -> None:
    described, perform = CALLS[call]
    caller = PRINCIPALS[principal]
    namespace = TEAM_A if where == "own" else TEAM_B
    assert perform(tenants, caller, namespace) == expected(described, caller.grants, namespace)


def test_the_operator_sets_up_in_every_namespace(tenants: Tenants) -> None:
    for namespace in (TEAM_A, TEAM_B):
        run = tenants.create(namespace)
        assert (run.namespace, run.created_by) == (namespace, OPERATOR.name)
