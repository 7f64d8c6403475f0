"""GetRun from a replica's cache, on two real server processes over one PostgreSQL
database: the cache answers only when its watch hub is through the store's revision
as of the call, so a write acknowledged by one replica is seen at once by a GetRun on
the other; a RUNNING run is always read, its lease being renewed with no event.

Also the event loop's revision reads (`RevisionReads`) on a real database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from runplane.server.errors import StoreUnavailable
from runplane.server.store.database import Database
from runplane.server.store.revisions import RevisionReads
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


def _end_revision_sessions(other: Database) -> None:
    """End the sessions that read the store's revision, from another connection."""
    with other.engine.connect() as admin:
        admin.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE '%%SELECT revision FROM store_state'"
        )
        admin.commit()


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
