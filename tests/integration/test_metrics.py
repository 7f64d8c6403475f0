"""`/metrics` of a real server after scripted workloads: the exact counts they imply.

Each test starts its own server with `--metrics-address 127.0.0.1:0` on SQLite and on
PostgreSQL, drives it through raw stubs or the client, scrapes `/metrics` over HTTP and
reads the samples with prometheus_client's parser.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import generate_latest

from runplane.client import Client, RunStatus
from runplane.server.config import ServerConfig
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.databases import database_url
from tests.support.scrape import Samples, parse, rpc, scrape, value
from tests.support.servers import ServerThread
from tests.support.stubs import seconds
from tests.support.watching import cancel


def metered_config(url: str, **settings: Any) -> ServerConfig:
    """Metrics on, the queue gauges read from the database every 0.1 s."""
    return ServerConfig(
        address="127.0.0.1:0",
        database_url=url,
        metrics_address="127.0.0.1:0",
        stats_interval=0.1,
        **settings,
    )


@pytest.fixture
def metered(backend: str, tmp_path: Path) -> Iterator[ServerThread]:
    """A fresh server with metrics on (every count starts at zero) and max_attempts 2."""
    with database_url(backend, tmp_path) as url:
        running = ServerThread(metered_config(url, max_attempts=2)).start()
        try:
            yield running
        finally:
            running.stop()


def handled(method: str, code: str, samples: Samples) -> float:
    return rpc(samples, "grpc_server_handled_total", method, grpc_code=code)


def _metrics_address(server: ServerThread) -> str:
    endpoint = server.running.telemetry.endpoint
    assert endpoint is not None
    return endpoint.address


def _create(stub: run_service_pb2_grpc.RunServiceStub, **fields: object) -> run_pb2.Run:
    request = run_service_pb2.CreateRunRequest(assistant_id="metered", **fields)  # type: ignore[arg-type]
    run: run_pb2.Run = stub.CreateRun(request, timeout=10)
    return run


def test_grpc_series_count_every_call_with_its_code(metered: ServerThread) -> None:
    with grpc.insecure_channel(metered.address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        thread = str(uuid.uuid4())
        reject = run_pb2.MULTITASK_STRATEGY_REJECT
        busy = _create(stub, thread_id=thread, multitask_strategy=reject)
        _create(stub)
        _create(stub)
        with pytest.raises(grpc.RpcError) as refused:
            _create(stub, thread_id=thread, multitask_strategy=reject)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # THREAD_BUSY
        stub.GetRun(run_service_pb2.GetRunRequest(run_id=busy.run_id), timeout=10)
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetRun(run_service_pb2.GetRunRequest(run_id=str(uuid.uuid4())), timeout=10)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        stub.GetStats(run_service_pb2.GetStatsRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as bad:
            stub.GetStats(run_service_pb2.GetStatsRequest(namespace="Bad Name"), timeout=10)
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # A long poll cut by its deadline: the server's handler is cancelled at the deadline.
        with pytest.raises(grpc.RpcError) as late:
            stub.ClaimRun(
                run_service_pb2.ClaimRunRequest(
                    worker_id="w", assistant_ids=["nobody"], wait=seconds(30)
                ),
                timeout=0.5,
            )
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    # The client sees the deadline before the server's cancelled handler is counted.
    samples = _eventually(metered, lambda s: handled("ClaimRun", "DeadlineExceeded", s) == 1)
    assert rpc(samples, "grpc_server_started_total", "CreateRun") == 4
    assert handled("CreateRun", "OK", samples) == 3
    assert handled("CreateRun", "FailedPrecondition", samples) == 1
    assert rpc(samples, "grpc_server_msg_received_total", "CreateRun") == 4
    assert rpc(samples, "grpc_server_msg_sent_total", "CreateRun") == 3  # none for the refusal
    assert rpc(samples, "grpc_server_handling_seconds_count", "CreateRun") == 4
    assert handled("GetRun", "OK", samples) == 1
    assert handled("GetRun", "NotFound", samples) == 1
    assert handled("GetStats", "OK", samples) == 1
    assert handled("GetStats", "InvalidArgument", samples) == 1


def test_stream_series_count_messages_events_and_ends(metered: ServerThread) -> None:
    with grpc.insecure_channel(metered.address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        busy = _create(stub)
        # A WatchRun that ends by itself: the run's state, then the change that ends it.
        stream = iter(
            stub.WatchRun(run_service_pb2.WatchRunRequest(run_id=busy.run_id), timeout=10)
        )
        first = next(stream)
        stub.CancelRun(run_service_pb2.CancelRunRequest(run_id=busy.run_id), timeout=10)
        watched = [first, *stream]
        assert [len(message.events) for message in watched] == [1, 1]

        # A WatchRuns that the client cancels after the opening bookmark and two creates.
        call = stub.WatchRuns(run_service_pb2.WatchRunsRequest(), timeout=10)
        feed = iter(call)
        received = [next(feed)]
        _create(stub)
        _create(stub)
        while sum(len(message.events) for message in received) < 2:
            received.append(next(feed))
        cancel(call)

    samples = _eventually(metered, lambda s: handled("WatchRuns", "Canceled", s) == 1)
    assert handled("CancelRun", "OK", samples) == 1
    assert rpc(samples, "grpc_server_started_total", "WatchRun") == 1
    assert handled("WatchRun", "OK", samples) == 1
    assert rpc(samples, "grpc_server_msg_sent_total", "WatchRun") == len(watched)
    # Streams are timed to their first message: one observation per stream.
    assert rpc(samples, "grpc_server_handling_seconds_count", "WatchRun") == 1
    assert rpc(samples, "grpc_server_msg_sent_total", "WatchRuns") >= len(received)
    assert rpc(samples, "grpc_server_handling_seconds_count", "WatchRuns") == 1
    events = sum(len(message.events) for message in [*watched, *received])
    assert value(samples, "runplane_watch_events_sent_total") == events
    assert value(samples, "runplane_watch_streams") == 0
    assert value(samples, "runplane_store_revision") == 4  # three creates and a cancel


def test_bidi_stream_counts_each_message_both_ways(metered: ServerThread) -> None:
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="runplane.v1.RunService"),
    ]
    with grpc.insecure_channel(metered.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    assert len(responses) == 2

    samples = scrape(_metrics_address(metered))
    labels = {
        "grpc_service": "grpc.reflection.v1alpha.ServerReflection",
        "grpc_method": "ServerReflectionInfo",
        "grpc_type": "bidi_stream",
    }
    assert value(samples, "grpc_server_started_total", **labels) == 1
    assert value(samples, "grpc_server_msg_received_total", **labels) == 2
    assert value(samples, "grpc_server_msg_sent_total", **labels) == 2
    assert value(samples, "grpc_server_handled_total", grpc_code="OK", **labels) == 1


def test_watch_ended_by_shutdown_counts_unavailable(backend: str, tmp_path: Path) -> None:
    with database_url(backend, tmp_path) as url:
        config = ServerConfig(
            address="127.0.0.1:0", database_url=url, metrics_address="127.0.0.1:0"
        )
        server = ServerThread(config).start()
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = run_service_pb2_grpc.RunServiceStub(channel)
                feed = iter(stub.WatchRuns(run_service_pb2.WatchRunsRequest(), timeout=30))
                next(feed)  # the opening bookmark: the stream is open
                assert value(scrape(_metrics_address(server)), "runplane_watch_streams") == 1
                server.call(server.running.stop(grace=5))
                with pytest.raises(grpc.RpcError) as ended:
                    list(feed)
                assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
            # The endpoint closed with the server: read the registry it served.
            metrics = server.running.telemetry.metrics
            assert metrics is not None
            samples = parse(generate_latest(metrics.registry).decode())
        finally:
            server.stop()
    assert rpc(samples, "grpc_server_handled_total", "WatchRuns", grpc_code="Unavailable") == 1
    assert value(samples, "runplane_watch_streams") == 0


def test_domain_series_follow_a_scripted_lifecycle(metered: ServerThread) -> None:
    with Client(metered.address) as client:
        # A: claimed twice, its lease lapsing each time: requeued, then failed (2 attempts).
        lapsing = client.create_run("lapsing")
        assert client.claim_run("w", assistant_ids=["lapsing"], lease_duration=0.2) is not None
        _wait_for(client, lapsing.run_id, RunStatus.PENDING)
        assert client.claim_run("w", assistant_ids=["lapsing"], lease_duration=0.2) is not None
        _wait_for(client, lapsing.run_id, RunStatus.ERROR)
        # B: runs past its timeout.
        slow = client.create_run("slow", timeout=0.3)
        assert client.claim_run("w", assistant_ids=["slow"], lease_duration=60) is not None
        _wait_for(client, slow.run_id, RunStatus.TIMEOUT)
        # C: succeeds. D: interrupted before anyone claimed it.
        done = client.create_run("done")
        assert client.claim_run("w", assistant_ids=["done"]) is not None
        client.complete_run(done.run_id, "w", RunStatus.SUCCESS)
        dropped = client.create_run("dropped")
        client.cancel_run(dropped.run_id)

    samples = scrape(_metrics_address(metered))

    def transitions(status: str) -> float:
        return value(samples, "runplane_run_transitions_total", namespace="default", status=status)

    assert transitions("pending") == 5  # four creates, one requeue
    assert transitions("running") == 4  # A twice, B, C
    assert transitions("error") == 1
    assert transitions("timeout") == 1
    assert transitions("success") == 1
    assert transitions("interrupted") == 1
    for outcome in ("timeout", "requeued", "failed"):
        assert value(samples, "runplane_sweeps_total", outcome=outcome) == 1
    for status in ("error", "timeout", "success"):
        assert value(samples, "runplane_run_duration_seconds_count", status=status) == 1
    assert value(samples, "runplane_run_duration_seconds_count", status="interrupted") == 0
    # B ran from its claim until the sweeper saw it past 0.3 s.
    assert value(samples, "runplane_run_duration_seconds_sum", status="timeout") >= 0.3
    assert value(samples, "runplane_claim_wait_seconds_count") == 4
    assert value(samples, "runplane_sweeper_last_success_timestamp_seconds") > time.time() - 10
    writes = value(samples, "runplane_db_transaction_seconds_count", kind="write")
    assert writes >= 1
    assert value(samples, "runplane_db_group_commit_size_count") == writes
    # Every committed transaction is in some group: at least the changes made here.
    assert value(samples, "runplane_db_group_commit_size_sum") >= 13
    assert value(samples, "runplane_db_transaction_seconds_count", kind="read") >= 1
    # The writer ran for part of its groups' time, never longer than they took.
    cpu = value(samples, "runplane_db_writer_cpu_seconds_total")
    assert 0 < cpu <= value(samples, "runplane_db_transaction_seconds_sum", kind="write") + 0.01


QUEUE_SERIES = ("runplane_queue_depth", "runplane_queue_oldest_age_seconds", "runplane_runs")


def _queue_series(samples: Samples) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {key: found for key, found in samples.items() if key[0] in QUEUE_SERIES}


def _depths(samples: Samples) -> dict[tuple[str, ...], float]:
    """The queue depth and inflight-run series, by their label values (ages vary)."""
    return {
        (name, *(value for _, value in sorted(labels))): found
        for (name, labels), found in _queue_series(samples).items()
        if name != "runplane_queue_oldest_age_seconds"
    }


def queue_workload(client: Client) -> None:
    """Assistant A: two claimable runs, one queued behind the first. B: one RUNNING, one
    behind it. C: one not due for an hour. D: one claimable run. Namespace `lab`: one
    claimable run of A."""
    first = client.create_run("A")
    client.create_run("A", thread_id=first.thread_id)
    client.create_run("A")
    busy = client.create_run("B")
    client.create_run("B", thread_id=busy.thread_id)
    assert client.claim_run("w", assistant_ids=["B"]) is not None
    client.create_run("C", start_after=datetime.now(UTC) + timedelta(hours=1))
    client.create_run("D")
    client.create_run("A", namespace="lab")


# Label values sorted by label name: (assistant_id, namespace) and (namespace, status).
QUEUE_FIGURES = {
    ("runplane_queue_depth", "A", "default"): 2,
    ("runplane_queue_depth", "D", "default"): 1,
    ("runplane_queue_depth", "A", "lab"): 1,
    ("runplane_runs", "default", "pending"): 6,
    ("runplane_runs", "default", "running"): 1,
    ("runplane_runs", "lab", "pending"): 1,
    ("runplane_runs", "lab", "running"): 0,
}


def test_queue_gauges_are_read_from_the_database(metered: ServerThread) -> None:
    with Client(metered.address) as client:
        queue_workload(client)
    samples = _eventually(metered, lambda s: _depths(s) == QUEUE_FIGURES)
    ages = {
        labels: age
        for (name, labels), age in samples.items()
        if name == "runplane_queue_oldest_age_seconds"
    }
    assert set(ages) == {
        frozenset({("namespace", namespace), ("assistant_id", assistant)})
        for namespace, assistant in (("default", "A"), ("default", "D"), ("lab", "A"))
    }
    assert all(age > 0 for age in ages.values())

    # A and D run to their ends, the run queued behind A's included: their queues and
    # the namespace with nothing inflight left drop out; B and C remain.
    with Client(metered.address) as client:
        for namespace in ("default", "lab"):
            while run := client.claim_run("w", namespace=namespace, assistant_ids=["A", "D"]):
                client.complete_run(run.run_id, "w", RunStatus.SUCCESS)
    after = {
        ("runplane_runs", "default", "pending"): 2,
        ("runplane_runs", "default", "running"): 1,
    }
    _eventually(metered, lambda s: _depths(s) == after)


def test_queue_gauges_fold_assistants_beyond_the_limit(backend: str, tmp_path: Path) -> None:
    with database_url(backend, tmp_path) as url:
        server = ServerThread(metered_config(url, metrics_max_assistants=1)).start()
        try:
            with Client(server.address) as client:
                queue_workload(client)
            folded = {
                ("runplane_queue_depth", "A", "default"): 2,
                ("runplane_queue_depth", "other", "default"): 1,  # D
                ("runplane_queue_depth", "A", "lab"): 1,
            }
            _eventually(
                server,
                lambda s: (
                    {k: v for k, v in _depths(s).items() if k[0] != "runplane_runs"} == folded
                ),
            )
        finally:
            server.stop()


@pytest.mark.postgres
def test_replicas_sharing_postgres_report_the_same_queue_gauges(tmp_path: Path) -> None:
    """Runs made and claimed through one replica: the other, which served none of those
    calls, reports the same queue and inflight-run figures."""
    with database_url("postgres", tmp_path) as url:
        replicas = [ServerThread(metered_config(url)).start() for _ in range(2)]
        try:
            with Client(replicas[0].address) as client:
                queue_workload(client)
            seen = [_eventually(r, lambda s: _depths(s) == QUEUE_FIGURES) for r in replicas]
            assert _depths(seen[0]) == _depths(seen[1])
            assert {k for k in _queue_series(seen[0])} == {k for k in _queue_series(seen[1])}
            # Only the first replica served the creates.
            creates = [rpc(samples, "grpc_server_started_total", "CreateRun") for samples in seen]
            assert creates == [8, 0]
        finally:
            for replica in replicas:
                replica.stop()


def _wait_for(client: Client, run_id: str, status: RunStatus, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (run := client.get_run(run_id)).status is not status:
        assert time.monotonic() < deadline, f"run stayed {run.status}, never {status}"
        time.sleep(0.05)


def _eventually(
    server: ServerThread, done: Callable[[Samples], bool], timeout: float = 10
) -> Samples:
    """Scrape until `done(samples)`: a call's end may be counted after its client saw it."""
    deadline = time.monotonic() + timeout
    while not done(samples := scrape(_metrics_address(server))):
        assert time.monotonic() < deadline, "the metrics never showed the workload's end"
        time.sleep(0.05)
    return samples
