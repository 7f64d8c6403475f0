"""--run-retention: runs that ended longer ago than the retention are deleted in the
background, each a DELETED event, and nothing else is; on SQLite and PostgreSQL.

A first server makes the runs; their end is then moved two hours back in the database
for some of them, and a second server, with a one-hour retention, deletes those.
"""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from sqlalchemy import bindparam, text

from runplane.client import Client, EventType, NotFound, RunStatus
from runplane.server.config import ServerConfig
from runplane.server.retention import BATCH_SIZE
from runplane.server.store.database import Database
from runplane.v1 import run_service_pb2
from tests.support.databases import database_url
from tests.support.servers import ServerThread
from tests.support.stubs import run_service

HOUR_US = 3600 * 10**6
EXPIRED = 2 * BATCH_SIZE + 30  # three batches


def _age(url: str, run_ids: list[str]) -> None:
    """Move the end of these runs two hours back."""
    database = Database(url)
    try:
        with database.engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE runs SET ended_at_us = ended_at_us - :hours WHERE run_id IN :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"hours": 2 * HOUR_US, "ids": run_ids},
            )
    finally:
        database.dispose()


def test_runs_that_ended_before_the_retention_are_deleted(backend: str, tmp_path: Path) -> None:
    assistant = f"agent-{uuid.uuid4()}"
    with database_url(backend, tmp_path) as url:
        first = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            with Client(first.address) as client:
                ended = [client.create_run(assistant) for _ in range(EXPIRED + 5)]
                for run in ended:
                    client.cancel_run(run.run_id, reason="done with it")
                pending = [client.create_run(assistant) for _ in range(5)]
                start = next(client.list_runs(page_size=1).pages()).revision + 1
        finally:
            first.stop()
        expired = {run.run_id for run in ended[:EXPIRED]}
        _age(url, sorted(expired))

        config = ServerConfig(
            address="127.0.0.1:0", database_url=url, run_retention=3600, retention_interval=0.05
        )
        second = ServerThread(config).start()
        try:
            with Client(second.address) as client:
                deleted = []
                for event in client.watch_runs(assistant_id=assistant, start_revision=start):
                    deleted.append(event)
                    if len(deleted) == EXPIRED:
                        break
                assert {event.type for event in deleted} == {EventType.DELETED}
                assert {event.run.run_id for event in deleted} == expired
                assert {event.run.status for event in deleted} == {RunStatus.INTERRUPTED}
                assert {event.run.cancel_reason for event in deleted} == {"done with it"}
                kept = {run.run_id for run in client.list_runs(assistant_id=assistant)}
                assert kept == {run.run_id for run in ended[EXPIRED:] + pending}
            with run_service(second.address) as stub:
                for run_id in sorted(expired)[:5]:
                    with pytest.raises(grpc.RpcError) as found:
                        stub.GetRun(run_service_pb2.GetRunRequest(run_id=run_id))
                    assert found.value.code() is grpc.StatusCode.NOT_FOUND
                # A round with nothing expired deletes nothing more.
                retention = second.running.retention
                assert retention is not None
                assert second.call(retention.delete_expired()) == 0
                listed = stub.ListRuns(
                    run_service_pb2.ListRunsRequest(
                        filter=run_service_pb2.RunFilter(assistant_id=assistant)
                    )
                )
                assert len(listed.runs) == 10
        finally:
            second.stop()


def test_retention_racing_deletes_deletes_each_run_once(backend: str, tmp_path: Path) -> None:
    """Rounds of retention on several tasks at once, while callers delete the same runs:
    every expired run goes exactly once (one DELETED event), whoever deletes it."""
    assistant = f"agent-{uuid.uuid4()}"
    with database_url(backend, tmp_path) as url:
        first = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            with Client(first.address) as client:
                ended = [client.create_run(assistant) for _ in range(EXPIRED)]
                for run in ended:
                    client.cancel_run(run.run_id)
                start = next(client.list_runs(page_size=1).pages()).revision + 1
        finally:
            first.stop()
        expired = sorted(run.run_id for run in ended)
        _age(url, expired)

        config = ServerConfig(
            address="127.0.0.1:0", database_url=url, run_retention=3600, retention_interval=3600
        )
        # PostgreSQL serves several replicas: each runs its own rounds.
        replicas = [ServerThread(config).start() for _ in range(2 if backend == "postgres" else 1)]
        try:
            with Client(replicas[-1].address) as client:

                def expire(replica: ServerThread) -> int:
                    retention = replica.running.retention
                    assert retention is not None
                    deleted = 0
                    while batch := replica.call(retention.delete_expired()):
                        deleted += batch
                    return deleted

                def delete(run_id: str) -> int:
                    try:
                        client.delete_run(run_id)
                    except NotFound:
                        return 0
                    return 1

                shuffled = random.Random(5).sample(expired, len(expired))
                with ThreadPoolExecutor(12) as pool:
                    rounds = [pool.submit(expire, replicas[i % len(replicas)]) for i in range(4)]
                    deletes = list(pool.map(delete, shuffled))
                    by_retention = sum(future.result() for future in rounds)
                # Whatever a round skipped (its thread was busy), a later one takes.
                by_retention += expire(replicas[0])
                assert by_retention + sum(deletes) == EXPIRED
                events = []
                for event in client.watch_runs(assistant_id=assistant, start_revision=start):
                    events.append(event)
                    if len(events) == EXPIRED:
                        break
                assert {event.type for event in events} == {EventType.DELETED}
                assert sorted(event.run.run_id for event in events) == expired
                assert list(client.list_runs(assistant_id=assistant)) == []
        finally:
            for replica in replicas:
                replica.stop()
