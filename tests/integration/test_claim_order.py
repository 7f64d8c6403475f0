"""Which run ClaimRun hands out: the claimable run of highest priority, then the earliest
due; a thread's runs in creation order whatever their priorities; only the namespace
asked for. Through raw stubs, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
import time
import uuid

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

Stub = run_service_pb2_grpc.RunServiceStub


def create(stub: Stub, assistant: str, **fields: object) -> run_pb2.Run:
    return stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant, **fields))  # type: ignore[arg-type]


def claim(stub: Stub, assistant: str, namespace: str = "") -> run_pb2.Run | None:
    response = stub.ClaimRun(
        run_service_pb2.ClaimRunRequest(
            worker_id="w", assistant_ids=[assistant], namespace=namespace
        )
    )
    return response.run if response.HasField("run") else None


def complete(stub: Stub, run: run_pb2.Run) -> None:
    stub.CompleteRun(
        run_service_pb2.CompleteRunRequest(
            run_id=run.run_id, worker_id=run.worker_id, status=run_pb2.RUN_STATUS_SUCCESS
        )
    )


def claim_all(stub: Stub, assistant: str) -> list[str]:
    claimed = []
    while (run := claim(stub, assistant)) is not None:
        claimed.append(run.run_id)
    return claimed


def test_distinct_threads_are_claimed_by_priority_then_due(stub: Stub, assistant: str) -> None:
    rng = random.Random(7)
    priorities = [rng.randrange(10) for _ in range(100)]
    created = [create(stub, assistant, priority=priority) for priority in priorities]
    assert [run.priority for run in created] == priorities
    # Created one after another: creation order is due order.
    expected = [
        run.run_id
        for _, _, run in sorted((-run.priority, index, run) for index, run in enumerate(created))
    ]
    assert claim_all(stub, assistant) == expected


def test_a_thread_runs_in_creation_order_whatever_the_priorities(
    stub: Stub, assistant: str
) -> None:
    thread_id = str(uuid.uuid4())
    queued = [create(stub, assistant, thread_id=thread_id, priority=p).run_id for p in range(5)]
    order = []
    for _ in queued:
        running = claim(stub, assistant)
        assert running is not None
        assert claim(stub, assistant) is None  # its thread is busy, nothing else waits
        order.append(running.run_id)
        complete(stub, running)
    assert order == queued


def test_only_a_thread_head_competes(stub: Stub, assistant: str) -> None:
    """A high-priority run queued behind a low-priority one waits for it; another
    thread's medium-priority head goes first."""
    low = create(stub, assistant, priority=1)
    high_behind = create(stub, assistant, thread_id=low.thread_id, priority=9)
    medium = create(stub, assistant, priority=5)
    first, second = claim(stub, assistant), claim(stub, assistant)
    assert first is not None
    assert second is not None
    assert (first.run_id, second.run_id) == (medium.run_id, low.run_id)
    assert claim(stub, assistant) is None
    complete(stub, second)
    third = claim(stub, assistant)
    assert third is not None
    assert third.run_id == high_behind.run_id


def test_a_delayed_run_competes_by_priority_once_due(stub: Stub, assistant: str) -> None:
    request = run_service_pb2.CreateRunRequest(assistant_id=assistant, priority=9)
    request.start_after.FromNanoseconds(time.time_ns() + 400_000_000)
    urgent = stub.CreateRun(request)
    older, newer = create(stub, assistant, priority=5), create(stub, assistant, priority=5)
    first = claim(stub, assistant)
    assert first is not None
    assert first.run_id == older.run_id  # the urgent one is not due yet
    time.sleep(0.5)
    # Due now (and not yet moved to the ready line by a sweep, or already: either way),
    # it overtakes a run of lower priority that was due before it.
    second, third = claim(stub, assistant), claim(stub, assistant)
    assert second is not None
    assert third is not None
    assert (second.run_id, third.run_id) == (urgent.run_id, newer.run_id)


def test_a_claim_takes_only_its_namespace(stub: Stub, assistant: str) -> None:
    team_a = create(stub, assistant, namespace="team-a", priority=1)
    team_b = create(stub, assistant, namespace="team-b", priority=9)
    claimed_a = claim(stub, assistant, namespace="team-a")
    assert claimed_a is not None
    assert (claimed_a.run_id, claimed_a.namespace) == (team_a.run_id, "team-a")
    assert claim(stub, assistant, namespace="team-a") is None
    anywhere = claim(stub, assistant)  # no namespace: every namespace
    assert anywhere is not None
    assert anywhere.run_id == team_b.run_id


def test_threads_are_namespaced(stub: Stub, assistant: str) -> None:
    """One thread id in two namespaces is two threads: each runs on its own."""
    thread_id = str(uuid.uuid4())
    first = create(stub, assistant, namespace="team-a", thread_id=thread_id)
    second = create(stub, assistant, namespace="team-b", thread_id=thread_id)
    claimed = {claim(stub, assistant, namespace=ns).run_id for ns in ("team-a", "team-b")}  # type: ignore[union-attr]
    assert claimed == {first.run_id, second.run_id}


def test_a_claim_for_many_assistants_keeps_the_order(stub: Stub, assistant: str) -> None:
    """Past the assistants read one range each, one read of them all, sorted."""
    assistants = [f"{assistant}-{i}" for i in range(40)]
    low = create(stub, assistants[3], priority=2)
    high = create(stub, assistants[30], priority=8)
    request = run_service_pb2.ClaimRunRequest(worker_id="w", assistant_ids=assistants)
    claimed = [stub.ClaimRun(request).run.run_id for _ in range(2)]
    assert claimed == [high.run_id, low.run_id]
    assert not stub.ClaimRun(request).HasField("run")
