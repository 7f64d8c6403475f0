"""Per-caller limits on a real server: open watches, request rate, streams per connection,
ping floods."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runplane.client import Client, RateLimited
from runplane.server.config import Rate, ServerConfig
from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.support.auth import Caller, write_config
from tests.support.servers import ServerThread
from tests.support.stubs import Failure, failure
from tests.support.watching import cancel

pytestmark = pytest.mark.timeout(60)

ALICE = Caller("alice", [("*", "admin")])
BOB = Caller("bob", [("*", "admin")])
Stub = run_service_pb2_grpc.RunServiceStub
WatchStream = Any  # grpc's sync streaming call: an iterator with cancel()


@pytest.fixture
def base(tmp_path: Path) -> ServerConfig:
    return ServerConfig(
        address="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path / 'runplane.db'}",
        auth_config=write_config(tmp_path / "auth.toml", [ALICE, BOB]),
    )


def serving(config: ServerConfig) -> Iterator[ServerThread]:
    server = ServerThread(config).start()
    yield server
    server.stop()


def bearer(caller: Caller) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {caller.token}"),)


def open_watch(stub: Stub, caller: Caller) -> WatchStream:
    """A watch stream that has delivered its opening bookmark."""
    stream = stub.WatchRuns(run_service_pb2.WatchRunsRequest(), metadata=bearer(caller), timeout=30)
    next(iter(stream))
    return stream


def refusal(call: Callable[[], Any]) -> Failure:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return failure(raised.value)


def ended_with(call: Callable[[], Any]) -> grpc.StatusCode:
    """The code of a call that fails without a rich status (a transport's own failure)."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert isinstance(raised.value, grpc.Call)
    return raised.value.code()


def eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def two_watches_each(base: ServerConfig) -> Iterator[ServerThread]:
    yield from serving(replace(base, max_watches_per_principal=2))


def test_one_watch_more_than_the_limit_is_refused(two_watches_each: ServerThread) -> None:
    with grpc.insecure_channel(two_watches_each.address) as channel:
        stub = Stub(channel)
        first, _second = open_watch(stub, ALICE), open_watch(stub, ALICE)
        found = refusal(lambda: open_watch(stub, ALICE))
        assert (found.code, found.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_WATCHES",
        )
        assert found.metadata == {"limit": "2"}
        watch_run = stub.WatchRun(
            run_service_pb2.WatchRunRequest(run_id="00000000-0000-0000-0000-000000000000"),
            metadata=bearer(ALICE),
        )
        assert refusal(lambda: next(iter(watch_run))).reason == "TOO_MANY_WATCHES"

        bobs = [open_watch(stub, BOB), open_watch(stub, BOB)]  # another principal's own count
        first.cancel()

        def reopened() -> bool:
            try:
                bobs.append(open_watch(stub, ALICE))
            except grpc.RpcError:
                return False
            return True

        eventually(reopened)
        for stream in bobs:
            stream.cancel()


@pytest.fixture
def rate_limited(base: ServerConfig) -> Iterator[ServerThread]:
    yield from serving(replace(base, rate_limit=Rate(per_second=1, burst=3)))


def test_calls_beyond_the_rate_are_refused_with_a_retry_delay(rate_limited: ServerThread) -> None:
    with Client(rate_limited.address, token=ALICE.token) as client:
        run = client.create_run("agent")
        client.get_run(run.run_id)
        client.get_run(run.run_id)
        with pytest.raises(RateLimited) as raised:
            client.get_run(run.run_id)
    assert raised.value.reason == "RATE_LIMITED"
    assert raised.value.retry_delay is not None
    assert 0 < raised.value.retry_delay <= 1.0
    with Client(rate_limited.address, token=BOB.token) as other:  # bob's own allowance
        assert other.get_run(run.run_id).run_id == run.run_id
    time.sleep(raised.value.retry_delay)
    with Client(rate_limited.address, token=ALICE.token) as client:
        client.get_run(run.run_id)


def test_health_checks_are_not_rate_limited(rate_limited: ServerThread) -> None:
    with grpc.insecure_channel(rate_limited.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(20):
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def two_streams_per_connection(base: ServerConfig) -> Iterator[ServerThread]:
    yield from serving(replace(base, max_streams_per_connection=2))


def test_streams_beyond_the_connection_cap_wait_for_a_free_slot(
    two_streams_per_connection: ServerThread,
) -> None:
    address = two_streams_per_connection.address
    with grpc.insecure_channel(address) as channel:
        stub = Stub(channel)
        first, second = open_watch(stub, ALICE), open_watch(stub, ALICE)
        third = stub.WatchRuns(
            run_service_pb2.WatchRunsRequest(), metadata=bearer(ALICE), timeout=30
        )
        get = run_service_pb2.GetRunRequest(run_id="00000000-0000-0000-0000-000000000000")
        # The connection is full: even a unary call waits, here past its deadline.
        waited = ended_with(lambda: stub.GetRun(get, metadata=bearer(ALICE), timeout=1))
        assert waited == grpc.StatusCode.DEADLINE_EXCEEDED
        # Other connections are not held up (a local subchannel pool: a connection of its own).
        own = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(address, options=own) as other:
            found = refusal(lambda: Stub(other).GetRun(get, metadata=bearer(ALICE), timeout=5))
            assert found.code == grpc.StatusCode.NOT_FOUND
        first.cancel()
        assert next(iter(third)).revision >= 0  # it got the freed slot
        second.cancel()
        cancel(third)


def pinging_every(milliseconds: int) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", milliseconds),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def test_a_client_pinging_no_faster_than_allowed_keeps_its_connection(
    base: ServerConfig,
) -> None:
    server = ServerThread(replace(base, min_ping_interval=0.2)).start()
    try:
        # grpc clients ping at most once a second; grpc's own server default (one ping
        # per 5 minutes) would close this connection after the third.
        with grpc.insecure_channel(server.address, options=pinging_every(1000)) as channel:
            stub = Stub(channel)
            stream = open_watch(stub, ALICE)
            time.sleep(5)
            stub.CreateRun(
                run_service_pb2.CreateRunRequest(assistant_id="agent"), metadata=bearer(ALICE)
            )
            assert len(next(iter(stream)).events) == 1
            cancel(stream)
    finally:
        server.stop()


def test_a_connection_flooding_pings_is_cut_off(base: ServerConfig) -> None:
    server = ServerThread(replace(base, min_ping_interval=5.0)).start()
    try:
        with grpc.insecure_channel(server.address, options=pinging_every(100)) as channel:
            stream = open_watch(Stub(channel), ALICE)
            with pytest.raises(grpc.RpcError) as raised:
                next(stream)
        assert isinstance(raised.value, grpc.Call)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ping" in (raised.value.details() or "").lower()
    finally:
        server.stop()
