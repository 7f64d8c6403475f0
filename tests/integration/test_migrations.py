"""The Alembic migrations build exactly the schema the models describe, and carry the
data of older schemas forward, on both backends."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from runplane.server.config import ServerConfig
from runplane.server.store.database import Database
from runplane.server.store.dialects import lock_key, scoped_key
from runplane.server.store.migrate import upgrade
from runplane.server.store.schema import Base
from runplane.v1 import run_service_pb2
from tests.support.databases import database_url
from tests.support.hostile import struct
from tests.support.servers import ServerThread
from tests.support.stubs import run_service


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migrated_schema_matches_the_models(backend: str, tmp_path: Path) -> None:
    with database_url(backend, tmp_path) as url:
        database = Database(url)
        try:
            upgrade(database.engine)
            upgrade(database.engine)  # a second upgrade is a no-op
            with database.engine.connect() as connection:
                differences = compare_metadata(
                    MigrationContext.configure(connection), Base.metadata
                )
        finally:
            database.dispose()
    assert differences == []


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0003_puts_the_runs_of_an_0002_database_in_the_default_namespace(
    backend: str, tmp_path: Path
) -> None:
    """A run and its event written by a 0.1 server read back with the v0.2 defaults, once
    the server has migrated the database at start-up."""
    run_id, thread_id = str(uuid.uuid4()), str(uuid.uuid4())
    old_run = {
        "run_id": run_id,
        "thread_id": thread_id,
        "assistant_id": "agent",
        "status": "pending",
        "multitask_strategy": "enqueue",
        "metadata": {"team": "search"},
        "kwargs": {},
        "created_at": 1_700_000_000_000_000,
        "updated_at": 1_700_000_000_000_000,
        "revision": 1,
        "attempt": 0,
        "started_at": None,
        "ended_at": None,
        "error": "",
        "cancel_reason": "",
        "worker_id": "",
        "lease_expires_at": None,
        "timeout": None,
        "start_after": None,
        "request_id": None,
    }
    with database_url(backend, tmp_path) as url:
        database = Database(url)
        try:
            upgrade(database.engine, "0002")
            with database.engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO runs (run_id, thread_id, assistant_id, status, "
                        "multitask_strategy, metadata, kwargs, created_at_us, updated_at_us, "
                        "revision, create_revision, attempt, error, cancel_reason, worker_id) "
                        "VALUES (:run_id, :thread_id, 'agent', 'pending', 'enqueue', "
                        ":metadata, '{}', :at, :at, 1, 1, 0, '', '', '')"
                    ),
                    {
                        "run_id": run_id,
                        "thread_id": thread_id,
                        "metadata": json.dumps(old_run["metadata"]),
                        "at": old_run["created_at"],
                    },
                )
                connection.execute(
                    text(
                        "INSERT INTO run_events (revision, type, run_id, committed_at_us, run) "
                        "VALUES (1, 'created', :run_id, :at, :run)"
                    ),
                    {"run_id": run_id, "at": old_run["created_at"], "run": json.dumps(old_run)},
                )
                connection.execute(text("UPDATE store_state SET revision = 1"))
        finally:
            database.dispose()

        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            with run_service(server.address) as stub:
                stored = stub.GetRun(run_service_pb2.GetRunRequest(run_id=run_id))
                logged = (
                    next(
                        iter(
                            stub.WatchRuns(
                                run_service_pb2.WatchRunsRequest(start_revision=1), timeout=10
                            )
                        )
                    )
                    .events[0]
                    .run
                )
        finally:
            server.stop()
    for run in (stored, logged):
        assert (run.run_id, run.thread_id, dict(run.metadata)) == (
            run_id,
            thread_id,
            {"team": "search"},
        )
        assert (run.namespace, run.created_by, run.priority) == ("default", "anonymous", 5)
        assert not run.HasField("retry_policy")
        assert not run.HasField("result")
        assert dict(run.trace_context) == {}
    assert stored == logged


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0005_keeps_the_runs_and_makes_request_ids_per_namespace(
    backend: str, tmp_path: Path
) -> None:
    """A run with a request_id, written before 0005, survives it (SQLite rebuilds the
    table) and keeps its key in its namespace; another namespace may use the key."""
    run_id, thread_id = str(uuid.uuid4()), str(uuid.uuid4())
    with database_url(backend, tmp_path) as url:
        database = Database(url)
        try:
            upgrade(database.engine, "0004")
            with database.engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO runs (run_id, thread_id, assistant_id, status, "
                        "multitask_strategy, metadata, kwargs, created_at_us, updated_at_us, "
                        "revision, create_revision, attempt, error, cancel_reason, worker_id, "
                        "request_id) VALUES (:run_id, :thread_id, 'agent', 'pending', "
                        "'enqueue', '{}', '{}', 1, 1, 1, 1, 0, '', '', '', 'order-1')"
                    ),
                    {"run_id": run_id, "thread_id": thread_id},
                )
                connection.execute(text("UPDATE store_state SET revision = 1"))
        finally:
            database.dispose()

        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            with run_service(server.address) as stub:

                def create(namespace: str) -> str:
                    request = run_service_pb2.CreateRunRequest(
                        assistant_id="agent", request_id="order-1", namespace=namespace
                    )
                    return str(stub.CreateRun(request).run_id)

                assert create("default") == run_id
                assert create("team-b") not in (run_id, "")
                stored = stub.GetRun(run_service_pb2.GetRunRequest(run_id=run_id))
        finally:
            server.stop()
    assert (stored.thread_id, stored.namespace) == (thread_id, "default")


def test_0006_finds_the_head_of_every_thread_of_an_0005_database(
    backend: str, tmp_path: Path
) -> None:
    now = time.time_ns() // 1000
    hour = 3600 * 10**6
    # (namespace, thread): [(run, status, start_after, started_at, timeout)], oldest first;
    # the same thread_id in another namespace is another thread, with a head of its own.
    threads: dict[tuple[str, str], list[tuple[str, str, int | None, int | None, int | None]]] = {
        ("ns", "busy"): [("a", "running", None, now, hour), ("b", "pending", None, None, None)],
        ("ns", "later"): [("c", "pending", now + hour, None, None)],
        ("ns", "next"): [("d", "success", None, now, None), ("e", "pending", None, None, None)],
        ("ns", "done"): [("f", "interrupted", None, None, None)],
        ("other", "busy"): [("g", "pending", None, None, None)],
    }
    with database_url(backend, tmp_path) as url:
        database = Database(url)
        try:
            upgrade(database.engine, "0005")
            with database.engine.begin() as connection:
                revision = 0
                for (namespace, thread), runs in threads.items():
                    for run, status, start_after, started_at, timeout in runs:
                        revision += 1
                        connection.execute(
                            text(
                                "INSERT INTO runs (run_id, thread_id, assistant_id, status, "
                                "multitask_strategy, metadata, kwargs, created_at_us, "
                                "updated_at_us, revision, create_revision, attempt, error, "
                                "cancel_reason, worker_id, start_after_us, started_at_us, "
                                "timeout_us, lease_expires_at_us, namespace, priority) "
                                "VALUES (:run, :thread, 'agent', :status, 'enqueue', '{}', "
                                "'{}', :at, :at, :rev, :rev, 0, '', '', '', :start_after, "
                                ":started_at, :timeout, :lease, :namespace, 7)"
                            ),
                            {
                                "run": run,
                                "thread": thread,
                                "namespace": namespace,
                                "status": status,
                                "at": now - hour + revision,
                                "rev": revision,
                                "start_after": start_after,
                                "started_at": started_at,
                                "timeout": timeout,
                                "lease": now + hour if status == "running" else None,
                            },
                        )
            upgrade(database.engine)
            with database.engine.connect() as connection:
                heads = {
                    (row.namespace, row.thread_id): (row.run_id, row.state, row.queue, row.priority)
                    for row in connection.execute(text("SELECT * FROM thread_heads"))
                }
                timeouts: dict[str, int] = dict(
                    connection.execute(
                        text(
                            "SELECT run_id, timeout_at_us FROM runs WHERE timeout_at_us IS NOT NULL"
                        )
                    ).all()
                )
        finally:
            database.dispose()
    assert heads == {
        ("ns", "busy"): ("a", "running", "ns/agent", 7),
        ("ns", "later"): ("c", "delayed", "ns/agent", 7),
        ("ns", "next"): ("e", "ready", "ns/agent", 7),
        ("other", "busy"): ("g", "ready", "other/agent", 7),
    }
    assert timeouts == {"a": now + hour}


def test_0008_indexes_the_metadata_of_every_run_of_an_0007_database(
    backend: str, tmp_path: Path
) -> None:
    """Runs written before the metadata index are found by metadata filters once the
    server has migrated (more runs than one batch of the migration)."""
    metadata: dict[str, dict[str, Any]] = {
        "special-1": {'a"b': "x", "n": 1.0, "nested": {"k": [1.0, True, None]}},
        "special-2": {'a"b': "x", "n": 2.5},
        "special-3": {"n": 1.0, "": ""},
    }
    runs: list[tuple[str, dict[str, Any]]] = [
        (f"run-{i:05}", {"i": float(i % 7)}) for i in range(6000)
    ]
    runs += list(metadata.items())
    runs.append(("bare", {}))
    cast = "CAST(:metadata AS jsonb)" if backend == "postgres" else ":metadata"
    with database_url(backend, tmp_path) as url:
        database = Database(url)
        try:
            upgrade(database.engine, "0007")
            with database.engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO runs (run_id, thread_id, assistant_id, status, "
                        "multitask_strategy, metadata, kwargs, created_at_us, updated_at_us, "
                        "revision, create_revision, attempt, error, cancel_reason, worker_id) "
                        f"VALUES (:run_id, :run_id, 'agent', 'success', 'enqueue', {cast}, "
                        "'{}', :at, :at, :at, :at, 0, '', '', '')"
                    ),
                    [
                        {"run_id": run_id, "metadata": json.dumps(document), "at": at}
                        for at, (run_id, document) in enumerate(runs, start=1)
                    ],
                )
                connection.execute(text(f"UPDATE store_state SET revision = {len(runs)}"))
        finally:
            database.dispose()

        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            with run_service(server.address) as stub:

                def listed(**wanted: Any) -> list[str]:
                    request = run_service_pb2.ListRunsRequest(
                        filter=run_service_pb2.RunFilter(metadata=struct(wanted)),
                        page_size=1000,
                    )
                    return sorted(run.run_id for run in stub.ListRuns(request).runs)

                assert listed(**{'a"b': "x"}) == ["special-1", "special-2"]
                assert listed(n=1) == ["special-1", "special-3"]
                assert listed(nested={"k": [1, True, None]}) == ["special-1"]
                assert listed(**{"": ""}) == ["special-3"]
                assert listed(i=6) == [f"run-{i:05}" for i in range(6, 6000, 7)][:1000]
                assert len(listed(i=0)) == len(range(0, 6000, 7))
        finally:
            server.stop()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0011_gives_every_head_of_an_0010_database_its_lock_key(
    backend: str, tmp_path: Path
) -> None:
    """More heads than one batch of the migration; afterwards a worker claims them in
    claim order (on PostgreSQL, through the keys)."""
    threads = [f"thread-{i:05}" for i in range(6000)]
    with database_url(backend, tmp_path) as url:
        database = Database(url)
        try:
            upgrade(database.engine, "0010")
            with database.engine.begin() as connection:
                rows = [
                    {"n": n, "thread": thread, "run": f"run-{thread}"}
                    for n, thread in enumerate(threads, start=1)
                ]
                connection.execute(
                    text(
                        "INSERT INTO runs (run_id, thread_id, assistant_id, status, "
                        "multitask_strategy, metadata, kwargs, created_at_us, updated_at_us, "
                        "revision, create_revision, attempt, error, cancel_reason, worker_id, "
                        "namespace, priority) VALUES ('run-' || :thread, :thread, 'agent', "
                        "'pending', 'enqueue', '{}', '{}', :n, :n, :n, :n, 0, '', '', '', "
                        "'ns', 5)"
                    ),
                    rows,
                )
                connection.execute(
                    text(
                        "INSERT INTO thread_heads (namespace, thread_id, run_id, assistant_id, "
                        "queue, priority, due_us, state) VALUES ('ns', :thread, :run, 'agent', "
                        "'ns/agent', 5, :n, 'ready')"
                    ),
                    rows,
                )
                connection.execute(text(f"UPDATE store_state SET revision = {len(threads)}"))
            upgrade(database.engine)
            with database.engine.connect() as connection:
                keys: dict[str, int] = dict(
                    connection.execute(text("SELECT thread_id, lock_key FROM thread_heads")).all()
                )
        finally:
            database.dispose()
        assert keys == {thread: lock_key(scoped_key("ns", thread)) for thread in threads}

        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            with run_service(server.address) as stub:
                claimed = [
                    stub.ClaimRun(
                        run_service_pb2.ClaimRunRequest(worker_id="w", namespace="ns")
                    ).run.run_id
                    for _ in range(3)
                ]
        finally:
            server.stop()
    assert claimed == ["run-thread-00000", "run-thread-00001", "run-thread-00002"]
