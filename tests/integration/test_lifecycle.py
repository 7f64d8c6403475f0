"""Drain and failure: health during shutdown, in-flight calls, a database that goes away."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from runplane.server.config import ServerConfig
from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.support.databases import fresh_postgres_database, postgres_admin_url
from tests.support.servers import ServerThread
from tests.support.stubs import failure

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[ServerThread]:
    config = ServerConfig(address="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'r.db'}")
    server = ServerThread(config).start()
    yield server
    server.stop()


@pytest.mark.timeout(60)
def test_drain_reports_not_serving_and_lets_inflight_calls_finish(
    sqlite_server: ServerThread,
) -> None:
    address = sqlite_server.address
    statuses: list[int] = []
    claim_outcome: list[object] = []
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""))

        def watch_health() -> None:
            try:
                for answer in stream:
                    statuses.append(answer.status)
            except grpc.RpcError:
                pass

        def long_poll() -> None:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            request = run_service_pb2.ClaimRunRequest(
                worker_id="w", assistant_ids=["nobody"], wait=duration_pb2.Duration(seconds=1)
            )
            claim_outcome.append(stub.ClaimRun(request, timeout=10))

        watcher = threading.Thread(target=watch_health)
        poller = threading.Thread(target=long_poll)
        watcher.start()
        poller.start()
        time.sleep(0.3)
        sqlite_server.call(sqlite_server.running.stop(grace=5))
        poller.join(10)
        watcher.join(10)
        stream.cancel()
    assert statuses[0] == SERVING
    assert NOT_SERVING in statuses
    # The long poll was in flight when the drain began: it ran to its end, empty and OK.
    assert len(claim_outcome) == 1
    assert isinstance(claim_outcome[0], run_service_pb2.ClaimRunResponse)
    assert not claim_outcome[0].HasField("run")


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_lost_database_connections_are_unavailable_then_recover(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="runplane.server.store.database")
    with fresh_postgres_database() as url:
        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = run_service_pb2_grpc.RunServiceStub(channel)
                run = stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id="a"))
                get = run_service_pb2.GetRunRequest(run_id=run.run_id)
                assert stub.GetRun(get) == run

                # Cut every connection the server holds, as a database restart would.
                name = make_url(url).database
                admin = make_url(postgres_admin_url()).set(drivername="postgresql")
                with psycopg.connect(
                    admin.render_as_string(hide_password=False), autocommit=True
                ) as connection:
                    connection.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    )

                codes = []
                for _ in range(5):
                    try:
                        stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id="a"))
                        assert stub.GetRun(get) == run
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as error:
                        found = failure(error)
                        assert "SELECT" not in found.message
                        assert "INSERT" not in found.message
                        assert "Traceback" not in found.message
                        codes.append(found.code)
                assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
                # The first caller to meet a dead connection sees UNAVAILABLE (the writer's,
                # which the first create goes to), unless the watch hub's tailer got there
                # first: it polls the event log. Reads on the event loop notice a
                # connection lost while idle, and reconnect for the next call.
                assert grpc.StatusCode.UNAVAILABLE in codes or any(
                    record.getMessage() == "database unreachable" for record in caplog.records
                )
                assert codes[-1] == grpc.StatusCode.OK  # the server keeps serving
        finally:
            server.stop()
