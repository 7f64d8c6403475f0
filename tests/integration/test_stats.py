"""GetStats on a real server, on SQLite and PostgreSQL, through the client and raw stubs.

Each test works in a namespace of its own, so the module's shared server holds the
runs of other tests elsewhere; the figures of that namespace are then exact.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from runplane.client import (
    AsyncClient,
    Client,
    InvalidArgument,
    MultitaskStrategy,
    QueueStats,
    RunCount,
    RunStatus,
    Stats,
)
from runplane.server.config import ServerConfig
from runplane.v1 import run_pb2, run_service_pb2
from tests.support.auth import Caller
from tests.support.databases import database_url
from tests.support.servers import ServerThread
from tests.support.stubs import failure, run_service
from tests.support.tenants import OPERATOR, TEAM_A, TEAM_B, Tenants, secured_server
from tests.support.watching import cancel

READER_A = Caller("reader-a", [(TEAM_A, "reader")])


@pytest.fixture
def namespace() -> str:
    return f"stats-{uuid.uuid4().hex[:8]}"


def scripted_workload(client: Client) -> None:
    """In the client's namespace: assistant `a` has two claimable runs (the heads of two
    threads) and one queued behind the first; `b` has a RUNNING run and one queued behind
    it (nothing claimable); `c` one run not due for an hour; `d` one that was cancelled.
    So: queue a depth 2, runs 5 PENDING and 1 RUNNING."""
    first = client.create_run("a")
    client.create_run("a", thread_id=first.thread_id)
    client.create_run("a")
    busy = client.create_run("b")
    client.create_run("b", thread_id=busy.thread_id)
    claimed = client.claim_run("w", assistant_ids=["b"])
    assert claimed is not None
    assert claimed.run_id == busy.run_id
    client.create_run("c", start_after=datetime.now(UTC) + timedelta(hours=1))
    client.cancel_run(client.create_run("d").run_id)


def test_stats_count_the_claimable_queues_and_the_inflight_runs(
    server_address: str, namespace: str
) -> None:
    with Client(server_address, namespace=namespace) as client:
        started = time.monotonic()
        scripted_workload(client)
        stats = client.stats()
        waited = time.monotonic() - started
        revision = client.get_run(client.create_run("e").run_id).revision

    [queue] = stats.queues
    assert (queue.namespace, queue.assistant_id, queue.depth) == (namespace, "a", 2)
    assert timedelta(0) < queue.oldest_age <= timedelta(seconds=waited)
    assert stats.runs == [
        RunCount(namespace, RunStatus.PENDING, 5),
        RunCount(namespace, RunStatus.RUNNING, 1),
    ]
    assert 0 < stats.revision < revision
    assert stats.compact_revision == 0


def test_a_claim_takes_a_run_off_its_queue_and_an_end_hands_over_the_thread(
    server_address: str, namespace: str
) -> None:
    with Client(server_address, namespace=namespace) as client:
        first = client.create_run("a")
        client.create_run("a", thread_id=first.thread_id)
        assert [q.depth for q in client.stats().queues] == [1]  # the second waits its turn
        assert client.claim_run("w", assistant_ids=["a"]) is not None
        assert client.stats().queues == []
        client.complete_run(first.run_id, "w", RunStatus.SUCCESS)
        stats = client.stats()
    assert [(q.assistant_id, q.depth) for q in stats.queues] == [("a", 1)]
    assert stats.runs == [RunCount(namespace, RunStatus.PENDING, 1)]


def test_raw_stubs_get_the_same_figures(server_address: str, namespace: str) -> None:
    with Client(server_address, namespace=namespace) as client:
        scripted_workload(client)
    with run_service(server_address) as stub:
        response = stub.GetStats(run_service_pb2.GetStatsRequest(namespace=namespace), timeout=10)
        everywhere = stub.GetStats(run_service_pb2.GetStatsRequest(), timeout=10)
    assert [(q.namespace, q.assistant_id, q.depth) for q in response.queues] == [
        (namespace, "a", 2)
    ]
    assert response.queues[0].oldest_age.ToNanoseconds() > 0
    assert [(c.namespace, c.status, c.count) for c in response.runs] == [
        (namespace, run_pb2.RUN_STATUS_PENDING, 5),
        (namespace, run_pb2.RUN_STATUS_RUNNING, 1),
    ]
    # Every namespace (the anonymous admin reads them all): this one's figures among them.
    [again] = [q for q in everywhere.queues if q.namespace == namespace]
    assert (again.assistant_id, again.depth) == ("a", 2)
    assert again.oldest_age.ToNanoseconds() >= response.queues[0].oldest_age.ToNanoseconds()
    assert [c for c in everywhere.runs if c.namespace == namespace] == list(response.runs)
    assert everywhere.revision >= response.revision > 0


def test_the_async_client_reads_them_too(server_address: str, namespace: str) -> None:
    async def scenario() -> Stats:
        async with AsyncClient(server_address, namespace=namespace) as client:
            await client.create_run("a", multitask_strategy=MultitaskStrategy.REJECT)
            return await client.stats()

    stats = asyncio.run(scenario())
    assert [(q.namespace, q.assistant_id, q.depth) for q in stats.queues] == [(namespace, "a", 1)]
    assert isinstance(stats.queues[0], QueueStats)
    assert stats.runs == [RunCount(namespace, RunStatus.PENDING, 1)]


def test_open_watches_are_the_answering_servers(server_address: str, namespace: str) -> None:
    with Client(server_address, namespace=namespace) as client, run_service(server_address) as stub:
        before = client.stats().open_watches
        streams = [
            stub.WatchRuns(
                run_service_pb2.WatchRunsRequest(filter=run_service_pb2.RunFilter(namespace=ns)),
                timeout=30,
            )
            for ns in (namespace, namespace, "elsewhere")
        ]
        try:
            for stream in streams:
                next(iter(stream))  # the opening bookmark: the stream is open
            assert client.stats().open_watches == before + 3
        finally:
            for stream in streams:
                cancel(stream)


def test_a_malformed_namespace_is_invalid_argument(server_address: str) -> None:
    with run_service(server_address) as stub, pytest.raises(grpc.RpcError) as refused:
        stub.GetStats(run_service_pb2.GetStatsRequest(namespace="Not_A_Label"), timeout=10)
    found = failure(refused.value)
    assert found.code is grpc.StatusCode.INVALID_ARGUMENT
    assert list(found.violations) == ["namespace"]
    with Client(server_address) as client, pytest.raises(InvalidArgument):
        client.stats(namespace="Not_A_Label")


# -- tenants ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    folder: Path = tmp_path_factory.mktemp("stats-tenants")
    with secured_server(backend, folder, [READER_A]) as tenants:
        yield tenants


def test_a_reader_of_one_namespace_sees_nothing_of_another(tenants: Tenants) -> None:
    for namespace, depth in ((TEAM_A, 1), (TEAM_B, 2)):
        for _ in range(depth):
            tenants.create(namespace, assistant_id=f"agent-{namespace}")
    tenants.claim("w", f"agent-{TEAM_B}")

    def stats(caller: Caller, namespace: str = "") -> run_service_pb2.GetStatsResponse:
        request = run_service_pb2.GetStatsRequest(namespace=namespace)
        response: run_service_pb2.GetStatsResponse = tenants.call(caller, "GetStats", request)
        return response

    def figures(response: run_service_pb2.GetStatsResponse) -> set[tuple[str, str, int]]:
        queues = {(q.namespace, q.assistant_id, q.depth) for q in response.queues}
        runs = {(c.namespace, run_pb2.RunStatus.Name(c.status), c.count) for c in response.runs}
        return queues | runs

    team_a = {(TEAM_A, f"agent-{TEAM_A}", 1), (TEAM_A, "RUN_STATUS_PENDING", 1)}
    team_b = {
        (TEAM_B, f"agent-{TEAM_B}", 1),
        (TEAM_B, "RUN_STATUS_PENDING", 1),
        (TEAM_B, "RUN_STATUS_RUNNING", 1),
    }
    assert figures(stats(OPERATOR)) == team_a | team_b
    assert figures(stats(READER_A)) == team_a
    assert figures(stats(READER_A, TEAM_A)) == team_a
    # Named, a namespace it holds no role in looks empty, as if nothing ran there.
    assert figures(stats(READER_A, TEAM_B)) == set()

    with Client(tenants.address, token=READER_A.token) as client:
        assert {(q.namespace, q.depth) for q in client.stats().queues} == {(TEAM_A, 1)}
        assert client.stats(namespace=TEAM_B).runs == []

    with pytest.raises(grpc.RpcError) as anonymous:
        tenants.stub.GetStats(run_service_pb2.GetStatsRequest(), timeout=10)
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def server_with_stats(backend: str, tmp_path: Path) -> Iterator[str]:
    """A server of the test's own (empty store): the figures of every namespace are exact."""
    with database_url(backend, tmp_path) as url:
        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            yield server.address
        finally:
            server.stop()


def test_an_empty_store_has_no_queues_and_no_runs(server_with_stats: str) -> None:
    with Client(server_with_stats) as client:
        stats = client.stats()
    assert (stats.queues, stats.runs, stats.open_watches, stats.revision) == ([], [], 0, 0)
