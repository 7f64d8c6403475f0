"""GetRun from a replica's cache, on two real server processes over one PostgreSQL
database: the cache answers only when its watch hub is through the store's revision
as of the call, so a write acknowledged by one replica is seen at once by a GetRun on
the other; a RUNNING run is always read, its lease being renewed with no event.

Also what replicas read on the event loop (`LoopSession`) on a real database: the store's
revision (`RevisionReads`) and runs by id (`RunsOnLoop`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from runplane.server.errors import StoreUnavailable
from runplane.server.records import (
    Change,
    ChangeType,
    MultitaskStrategy,
    RetryPolicy,
    Run,
    RunStatus,
    now_us,
)
from runplane.server.store import lookups
from runplane.server.store.database import Database
from runplane.server.store.lookups import RunsOnLoop
from runplane.server.store.migrate import upgrade
from runplane.server.store.revisions import RevisionReads
from runplane.server.store.unit_of_work import UnitOfWork
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.databases import fresh_postgres_database, postgres_replicas
from tests.support.serve_process import ServeProcess
from tests.support.stubs import run_service, seconds

pytestmark = pytest.mark.postgres

WRITES = 100


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The addresses of two `runplane serve` processes on one fresh database."""
    workdir: Path = tmp_path_factory.mktemp("replicas")
    with (
        fresh_postgres_database() as url,
        ServeProcess("127.0.0.1:0", url, workdir) as first,
        ServeProcess("127.0.0.1:0", url, workdir) as second,
    ):
        yield first.address, second.address


def _metadata(n: int) -> struct_pb2.Struct:
    document = struct_pb2.Struct()
    document.update({"n": n})
    return document


def test_a_write_on_one_replica_is_seen_by_the_next_get_on_the_other(
    replicas: tuple[str, str],
) -> None:
    writer_address, reader_address = replicas
    with run_service(writer_address) as writer, run_service(reader_address) as reader:
        run = writer.CreateRun(run_service_pb2.CreateRunRequest(assistant_id="agent"))
        assert reader.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id)) == run
        stale = []
        for n in range(1, WRITES + 1):
            written = writer.UpdateRun(
                run_service_pb2.UpdateRunRequest(
                    run=run_pb2.Run(run_id=run.run_id, metadata=_metadata(n)),
                    update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
                )
            )
            read = reader.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id))
            if read.revision < written.revision:
                stale.append((n, read.revision, written.revision))
            else:
                assert read.metadata["n"] == n
        assert stale == []

        writer.DeleteRun(run_service_pb2.DeleteRunRequest(run_id=run.run_id, force=True))
        with pytest.raises(grpc.RpcError) as raised:
            reader.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id))
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_running_runs_lease_renewed_on_one_replica_is_current_on_the_other(
    replicas: tuple[str, str],
) -> None:
    worker_address, reader_address = replicas
    assistant = f"lease-{uuid.uuid4()}"
    with run_service(worker_address) as worker, run_service(reader_address) as reader:
        created = worker.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant))
        claimed = worker.ClaimRun(
            run_service_pb2.ClaimRunRequest(
                worker_id="w", assistant_ids=[assistant], lease_duration=seconds(30)
            )
        ).run
        assert claimed.run_id == created.run_id
        # The reader's hub publishes the claim (and its lease) like any change.
        assert _get(reader, claimed.run_id).lease_expires_at == claimed.lease_expires_at
        renewed = worker.HeartbeatRun(
            run_service_pb2.HeartbeatRunRequest(
                run_id=claimed.run_id, worker_id="w", lease_duration=seconds(300)
            )
        )
        assert renewed.revision == claimed.revision  # no new revision, no event
        assert renewed.lease_expires_at != claimed.lease_expires_at
        assert _get(reader, claimed.run_id).lease_expires_at == renewed.lease_expires_at


def _get(stub: run_service_pb2_grpc.RunServiceStub, run_id: str) -> run_pb2.Run:
    return stub.GetRun(run_service_pb2.GetRunRequest(run_id=run_id))


def test_revision_reads_share_reads_and_see_every_earlier_commit() -> None:
    with postgres_replicas() as (this, _other):

        async def scenario() -> tuple[list[int], int]:
            reads = RevisionReads(this.url)
            try:
                before = await reads.read()
                await this.write(lambda unit: unit.log.reserve(1))
                burst = await asyncio.gather(*(reads.read() for _ in range(50)))
                return [before, *burst], before
            finally:
                reads.close()

        revisions, before = asyncio.run(scenario())
        assert revisions[1:] == [before + 1] * 50


def _end_sessions(other: Database, last_statement: str) -> None:
    """End the sessions whose last statement ends with `last_statement`, from another
    connection."""
    with other.engine.connect() as admin:
        admin.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE '%%' || %(statement)s",
            {"statement": last_statement},
        )
        admin.commit()


def _end_revision_sessions(other: Database) -> None:
    """End the sessions that read the store's revision, from another connection."""
    _end_sessions(other, "SELECT revision FROM store_state")


def test_revision_reads_go_on_after_the_connection_is_lost() -> None:
    with postgres_replicas() as (this, other):

        async def scenario() -> tuple[int, int]:
            reads = RevisionReads(this.url)
            try:
                first = await reads.read()
                _end_revision_sessions(other)  # the loop does not run: the read finds out
                with pytest.raises(StoreUnavailable):
                    await reads.read()
                return first, await reads.read()  # on a new connection
            finally:
                reads.close()

        first, again = asyncio.run(scenario())
        assert again == first


def test_revision_reads_notice_a_connection_lost_while_idle() -> None:
    """The loop watches the connection between reads: when the server ends it, the next
    call's read goes to a new connection and does not fail."""
    with postgres_replicas() as (this, other):

        async def scenario() -> tuple[int, int]:
            reads = RevisionReads(this.url)
            try:
                first = await reads.read()
                _end_revision_sessions(other)
                await asyncio.sleep(0.5)
                return first, await reads.read()
            finally:
                reads.close()

        first, again = asyncio.run(scenario())
        assert again == first


def _stored(run: Run) -> Callable[[UnitOfWork], Run]:
    return lambda unit: unit.apply([Change(ChangeType.CREATED, run)])[0]


def _run(**fields: object) -> Run:
    now = now_us()
    base = {"status": RunStatus.PENDING, "multitask_strategy": MultitaskStrategy.ENQUEUE}
    return Run(
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        "agent",
        created_at=now,
        updated_at=now,
        **{**base, **fields},  # type: ignore[arg-type]
    )


def _read_by_store(database: Database, run_id: str) -> Run | None:
    return asyncio.run(database.read(lambda unit: unit.runs.get(run_id)))


def test_runs_read_on_the_loop_are_the_runs_the_store_reads() -> None:
    """Every field comes back as the store's own read gives it, one run or several."""
    full = _run(
        status=RunStatus.RUNNING,
        multitask_strategy=MultitaskStrategy.ROLLBACK,
        metadata={"team": "a", "nested": {"list": [1, 2.5, None, True, "x"]}},
        kwargs={"input": "é" * 10, "n": 12345678901234},
        attempt=2,
        started_at=now_us(),
        error="it failed",
        cancel_reason="why",
        worker_id="worker-1",
        lease_expires_at=now_us() + 10**7,
        timeout=10**8,
        start_after=now_us() + 10**6,
        request_id="request-1",
        namespace="team-a",
        created_by="alice",
        trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        result={"answer": 42},
        retry_policy=RetryPolicy(3, 10**6, 2.0, 10**7),
        priority=9,
    )
    plain = _run()
    with postgres_replicas() as (this, _other):
        stored = [asyncio.run(this.write(_stored(run))) for run in (full, plain)]
        by_store = [_read_by_store(this, run.run_id) for run in stored]

        async def scenario() -> tuple[list[Run], list[Run], list[Run]]:
            reads = RunsOnLoop(this.url)
            try:
                one = await reads([full.run_id])
                several = await reads([plain.run_id, "missing", full.run_id])
                return one, several, await reads(["missing"])
            finally:
                reads.close()

        one, several, missing = asyncio.run(scenario())
    assert None not in by_store
    assert one == [by_store[0]]
    assert one[0].retry_policy == full.retry_policy
    assert one[0].metadata == full.metadata
    assert sorted(several, key=lambda run: run.run_id) == sorted(
        by_store, key=lambda run: run.run_id if run else ""
    )
    assert missing == []


def test_runs_read_on_the_loop_go_on_after_the_connection_is_lost() -> None:
    with postgres_replicas() as (this, other):
        run = asyncio.run(this.write(_stored(_run())))

        async def scenario() -> list[Run]:
            reads = RunsOnLoop(this.url)
            try:
                assert await reads([run.run_id]) == [run]
                _end_sessions(other, "WHERE run_id = $1")  # its last statement
                with pytest.raises(StoreUnavailable):
                    await reads([run.run_id])
                return await reads([run.run_id])  # on a new connection
            finally:
                reads.close()

        assert asyncio.run(scenario()) == [run]


def test_a_run_read_on_the_loop_is_found_by_its_key_whatever_the_table_held() -> None:
    """The statement that reads one run is prepared once per connection, so PostgreSQL
    may keep a generic plan made while the table was empty and never analyzed: it must
    still be the primary key's index. Several runs are read by a statement planned each
    time, whose generic plan here would scan."""
    with fresh_postgres_database() as url:
        database = Database(url)
        try:
            upgrade(database.engine)
            with database.engine.connect() as connection:
                connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")

                def generic_plan(sql: str, value: str) -> str:
                    name = f"plan_{abs(hash(sql))}"
                    connection.exec_driver_sql(f"PREPARE {name} AS {sql}")
                    rows = connection.exec_driver_sql(f"EXPLAIN EXECUTE {name}('{value}')")
                    return "\n".join(row[0] for row in rows)

                assert "Index Scan using runs_pkey" in generic_plan(lookups.RUN_BY_ID, "a")
                assert "Seq Scan" in generic_plan(lookups.RUNS_BY_ID, "{a,b}")
        finally:
            database.dispose()
