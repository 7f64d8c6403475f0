"""Faults: a full disk, database connections killed mid-write, kill -9 mid-burst, and the
races of a shutdown. Each asserts that nothing acknowledged is lost, that callers only
ever see the retryable UNAVAILABLE, and that a retry with the same request_id makes
one run, never two.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import grpc
import psycopg
import pytest
from google.protobuf import duration_pb2
from sqlalchemy.engine import make_url

from runplane.server.config import ServerConfig
from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.support.databases import database_url, fresh_postgres_database, postgres_admin_url
from tests.support.hostile import serving, struct
from tests.support.mounts import resize, tmpfs, used_kib
from tests.support.serve_process import ServeProcess, free_port
from tests.support.servers import ServerThread

pb = run_service_pb2
Stub = run_service_pb2_grpc.RunServiceStub
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


class Writes:
    """Creates with request ids: which were acknowledged, and what the others got."""

    def __init__(self) -> None:
        self.acknowledged: dict[str, str] = {}  # request_id -> run_id
        self.refused: dict[str, grpc.StatusCode] = {}
        self.messages: list[str] = []
        self._lock = threading.Lock()

    def create(self, stub: Stub, **fields: object) -> bool:
        request_id = uuid.uuid4().hex
        try:
            run = stub.CreateRun(
                pb.CreateRunRequest(assistant_id="agent", request_id=request_id, **fields),  # type: ignore[arg-type]
                timeout=20,
            )
        except grpc.RpcError as error:
            call = cast(grpc.Call, error)
            with self._lock:
                self.refused[request_id] = call.code()
                self.messages.append(call.details() or "")
            return False
        with self._lock:
            self.acknowledged[request_id] = run.run_id
        return True

    def check(self, stub: Stub) -> None:
        """Only UNAVAILABLE was refused; every acknowledged run is stored; retrying each
        refused request makes its run once."""
        assert set(self.refused.values()) <= {UNAVAILABLE}, self.messages
        for message in self.messages:
            assert "Traceback" not in message
            assert "INSERT" not in message
        for request_id, run_id in self.acknowledged.items():
            stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)
            again = pb.CreateRunRequest(assistant_id="agent", request_id=request_id)
            assert stub.CreateRun(again, timeout=10).run_id == run_id
        for request_id in self.refused:
            again = pb.CreateRunRequest(assistant_id="agent", request_id=request_id)
            first = stub.CreateRun(again, timeout=10)
            assert stub.CreateRun(again, timeout=10).run_id == first.run_id


def random_document(size: int) -> dict[str, str]:
    """A document that no storage compresses much."""
    return {"blob": os.urandom(size // 2).hex()}


# -- Disk full -----------------------------------------------------------------------------------


@contextmanager
def postgres_on_small_disk(where: Path) -> Iterator[str]:
    """A fresh PostgreSQL database whose tables live on a tmpfs at `where` (a tablespace);
    everything is dropped and unmounted afterwards."""
    admin = make_url(postgres_admin_url())
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"runplane_full_{uuid.uuid4().hex[:8]}"
    with (
        tmpfs(where, "64m", owner="postgres:postgres") as space,
        psycopg.connect(conninfo, autocommit=True) as connection,
    ):
        connection.execute(f"CREATE TABLESPACE {name} LOCATION '{space}'")
        try:
            connection.execute(f'CREATE DATABASE "{name}" TABLESPACE {name}')
            try:
                yield admin.set(database=name).render_as_string(hide_password=False)
            finally:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            connection.execute(f"DROP TABLESPACE IF EXISTS {name}")


@contextmanager
def small_disk(backend: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A database URL on a small filesystem with 2 to 3 MiB free, and its mount point."""
    if backend == "sqlite":
        with tmpfs(tmp_path / "disk", "3m") as disk:
            yield f"sqlite:///{disk / 'r.db'}", disk
        return
    # PostgreSQL runs as its own user: the mount goes where it can reach it.
    where = Path("/tmp") / f"runplane-pgspace-{uuid.uuid4().hex[:8]}"
    try:
        with postgres_on_small_disk(where) as url:
            resize(where, f"{used_kib(where) + 3 * 1024}k")
            yield url, where
    finally:
        where.rmdir()


@pytest.mark.timeout(120)
def test_a_full_disk_is_unavailable_and_writes_resume_when_space_returns(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runplane")
    with small_disk(backend, tmp_path) as (url, disk):
        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = run_service_pb2_grpc.RunServiceStub(channel)
                writes = Writes()
                for _ in range(200):
                    if not writes.create(stub, metadata=struct(random_document(120_000))):
                        break
                assert writes.refused, "the disk never filled"
                assert writes.acknowledged
                for _ in range(10):  # every call meanwhile: UNAVAILABLE, and one log line
                    writes.create(stub, metadata=struct(random_document(120_000)))
                assert "out of disk space" in writes.messages[0]
                assert serving(channel)
                resize(disk, "256m")
                writes.check(stub)
        finally:
            server.stop()
    faults = [r for r in caplog.records if r.name == "runplane.server.store.database"]
    assert [r.getMessage() for r in faults][:1] == ["database out of disk space"]
    assert len(faults) <= 2  # a line per kind of fault (the writer may also see an I/O error)
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"


# -- Connections killed mid-write ----------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_connections_killed_mid_write_lose_nothing_acknowledged() -> None:
    with fresh_postgres_database() as url:
        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        admin = make_url(postgres_admin_url()).set(drivername="postgresql")
        name = make_url(url).database
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = run_service_pb2_grpc.RunServiceStub(channel)
                writes = Writes()
                done = threading.Event()

                def write() -> None:
                    while not done.is_set():
                        writes.create(stub, kwargs=struct({"n": 1}))

                writers = [threading.Thread(target=write) for _ in range(8)]
                for writer in writers:
                    writer.start()
                killed = 0
                with psycopg.connect(
                    admin.render_as_string(hide_password=False), autocommit=True
                ) as connection:
                    for _ in range(15):
                        time.sleep(0.1)
                        found = connection.execute(
                            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                            "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                            (name,),
                        ).fetchone()
                        killed += found[0] if found else 0
                done.set()
                for writer in writers:
                    writer.join(30)
                # A group whose connection died is retried member by member on fresh
                # connections, so writers may never notice; reads may see UNAVAILABLE.
                assert killed > 15
                assert len(writes.acknowledged) > 20
                assert serving(channel)
                writes.check(stub)
        finally:
            server.stop()


# -- kill -9 mid-burst ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_kill_9_mid_burst_loses_nothing_acknowledged(backend: str, tmp_path: Path) -> None:
    with database_url(backend, tmp_path) as url:
        address = f"127.0.0.1:{free_port()}"
        server = ServeProcess(address, url, tmp_path)
        try:
            writes = Writes()
            with grpc.insecure_channel(address) as channel:
                stub = run_service_pb2_grpc.RunServiceStub(channel)
                done = threading.Event()

                def write() -> None:
                    while not done.is_set() and writes.create(stub):
                        pass

                writers = [threading.Thread(target=write) for _ in range(6)]
                for writer in writers:
                    writer.start()
                time.sleep(1.0)
                server.kill()
                done.set()
                for writer in writers:
                    writer.join(30)
            server = ServeProcess(address, url, tmp_path)
            with grpc.insecure_channel(address) as channel:
                assert writes.acknowledged
                writes.check(run_service_pb2_grpc.RunServiceStub(channel))
        finally:
            server.kill()


# -- Shutdown races ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_shutdown_refuses_new_calls_as_unavailable_and_ends_long_polls_at_once(
    backend: str, tmp_path: Path
) -> None:
    with database_url(backend, tmp_path) as url:
        config = ServerConfig(address=f"127.0.0.1:{free_port()}", database_url=url)
        server = ServerThread(config).start()
        writes = Writes()
        claim: list[tuple[float, object]] = []
        with grpc.insecure_channel(config.address) as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            done = threading.Event()

            def write() -> None:
                while not done.is_set() and writes.create(stub):
                    pass

            def long_poll() -> None:
                request = pb.ClaimRunRequest(
                    worker_id="w", assistant_ids=["nobody"], wait=duration_pb2.Duration(seconds=60)
                )
                try:
                    outcome: object = stub.ClaimRun(request, timeout=90)
                except grpc.RpcError as error:
                    outcome = cast(grpc.Call, error).code()
                claim.append((time.monotonic(), outcome))

            poller = threading.Thread(target=long_poll)
            poller.start()
            writers = [threading.Thread(target=write) for _ in range(8)]
            for writer in writers:
                writer.start()
            time.sleep(0.5)
            stopping_at = time.monotonic()
            server.stop(grace=30)
            stopped_at = time.monotonic()
            done.set()
            for thread in (*writers, poller):
                thread.join(30)
        # The long poll (60 s) returned, empty, as the drain began: it held nothing up.
        ((returned_at, outcome),) = claim
        assert isinstance(outcome, pb.ClaimRunResponse)
        assert not outcome.HasField("run")
        assert returned_at - stopping_at < 10
        assert stopped_at - stopping_at < 20
        assert writes.acknowledged
        assert writes.refused, "no call met the drain"
        server = ServerThread(config).start()
        try:
            with grpc.insecure_channel(config.address) as channel:
                writes.check(run_service_pb2_grpc.RunServiceStub(channel))
        finally:
            server.stop()
