"""The watch guarantees under load, in the style of etcd's robustness tests.

Writers record the revision of every change they make, streams record every message,
and `tests.support.watching` checks the record: ordered, unique, atomic, bookmarkable,
reliable, resumable. Each test runs on SQLite and PostgreSQL, against servers set up
for it (a tiny retention, a small per-watcher queue) and driven from this process.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from runplane.server.config import ServerConfig
from runplane.server.watch.hub import WatchHub
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.databases import database_url
from tests.support.servers import ServerThread
from tests.support.stubs import failure, run_service
from tests.support.watching import (
    Collector,
    Message,
    cancel,
    check_ended_by_shutdown,
    check_resumable,
    check_stream,
    live_events,
    message,
    watch_from,
)

pb = run_service_pb2
REPO_ROOT = Path(__file__).resolve().parents[2]
WATCH_BUFFER = 32
"""Events a watcher may queue here before it must catch up from the log."""


@pytest.fixture(scope="module")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server with a 1 s retention whose compaction the tests trigger themselves."""
    with database_url(backend, tmp_path_factory.mktemp(backend)) as url:
        config = ServerConfig(
            address="127.0.0.1:0",
            database_url=url,
            event_retention=1.0,
            compaction_interval=3600,
            watch_buffer=WATCH_BUFFER,
            # The burst test opens 2000 streams as one (anonymous) caller.
            max_watches_per_principal=10_000,
        )
        running = ServerThread(config).start()
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[run_service_pb2_grpc.RunServiceStub]:
    with run_service(server.address) as stub:
        yield stub


def current_revision(stub: run_service_pb2_grpc.RunServiceStub) -> int:
    return stub.ListRuns(pb.ListRunsRequest(page_size=1)).revision


def compact(server: ServerThread) -> int:
    """Compact now; the log's new lower bound."""
    state = server.call(server.running.compactor.compact_now())
    assert state is not None
    return state.compact_revision


def wait_for_watchers(hub: WatchHub, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while hub.watcher_count != count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hub.watcher_count == count


@contextlib.contextmanager
def stalled_stream(
    address: str, stub: run_service_pb2_grpc.RunServiceStub, start: int, writes: int
) -> Iterator[tuple[Iterator[pb.WatchRunsResponse], list[Message]]]:
    """A stream from `start` whose reader stops after its first message while `writes`
    large runs are created: its flow-control window fills and the server's send blocks.

    Yields the stream's remaining responses and the messages read so far.
    """
    # No BDP probing and a small window: the stream's flow control fills quickly.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)]
    with grpc.insecure_channel(address, options=options) as channel:
        slow = run_service_pb2_grpc.RunServiceStub(channel)
        call = slow.WatchRuns(pb.WatchRunsRequest(start_revision=start), timeout=60)
        responses = iter(call)
        stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
        first = [message(next(responses))]  # the stream is up
        metadata = struct_pb2.Struct()
        metadata.update({"padding": "x" * 2000})
        for _ in range(writes):
            stub.CreateRun(pb.CreateRunRequest(assistant_id="agent", metadata=metadata))
        try:
            yield responses, first
        finally:
            cancel(call)


class Writers:
    """Threads that create, update, cancel and delete runs on their own threads until
    stopped, each on its own channel, recording the revision of every write.
    """

    def __init__(self, address: str, count: int, writes_each: int) -> None:
        self.revisions: list[int] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._write, args=(address, writes_each, seed))
            for seed in range(count)
        ]

    def _write(self, address: str, writes: int, seed: int) -> None:
        rng = random.Random(seed)
        try:
            with run_service(address) as stub:
                thread_id = str(uuid.uuid4())
                for _ in range(writes):
                    self._one(stub, rng, thread_id)
        except BaseException as error:
            self.errors.append(error)

    def _one(
        self, stub: run_service_pb2_grpc.RunServiceStub, rng: random.Random, thread_id: str
    ) -> None:
        run = stub.CreateRun(
            pb.CreateRunRequest(
                assistant_id="agent",
                thread_id=thread_id,
                multitask_strategy=rng.choice(
                    [run_pb2.MULTITASK_STRATEGY_INTERRUPT, run_pb2.MULTITASK_STRATEGY_ROLLBACK]
                ),
            )
        )
        revisions = [run.revision]
        action = rng.random()
        if action < 0.4:
            metadata = struct_pb2.Struct()
            metadata.update({"n": rng.randint(0, 9)})
            updated = stub.UpdateRun(
                pb.UpdateRunRequest(
                    run=run_pb2.Run(run_id=run.run_id, metadata=metadata),
                    update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
                )
            )
            revisions.append(updated.revision)
        elif action < 0.6:
            revisions.append(stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id)).revision)
        with self._lock:
            self.revisions.extend(revisions)

    def run(self) -> list[int]:
        for thread in self._threads:
            thread.start()
        for thread in self._threads:
            thread.join(60)
        assert not self.errors, self.errors
        return sorted(self.revisions)


def test_concurrent_writers_every_stream_sees_every_revision_once_in_order(
    server: ServerThread, stub: run_service_pb2_grpc.RunServiceStub
) -> None:
    start = current_revision(stub) + 1
    unfiltered = [
        Collector(stub.WatchRuns(pb.WatchRunsRequest(start_revision=start), timeout=60))
        for _ in range(3)
    ]
    written = Writers(server.address, count=6, writes_each=25).run()
    last = current_revision(stub)

    for stream in unfiltered:
        messages = stream.wait_for(last)
        stream.cancel()
        check_stream(messages, start, last)
        # Every write's own revision is in the stream, as the change it made.
        delivered = {event.revision for event in live_events(messages)}
        assert set(written) <= delivered

    # Resumable from every revision a client could have seen (every 3rd, for time).
    check_resumable(stub, messages, range(start - 1, last, 3), last)


def test_stalled_consumer_stays_bounded_then_catches_up_from_the_log(
    server: ServerThread, stub: run_service_pb2_grpc.RunServiceStub
) -> None:
    """A consumer that stops reading costs at most WATCH_BUFFER queued events (plus
    gRPC's flow-control window); once it reads again, it gets everything, in order.
    """
    start = current_revision(stub) + 1
    with stalled_stream(server.address, stub, start, writes=400) as (responses, first):
        last = current_revision(stub)

        hub = server.running.hub
        deadline = time.monotonic() + 10
        while hub.live_count == hub.watcher_count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.live_count < hub.watcher_count, "the stalled watcher was never dropped"
        assert hub.watcher_count == 1
        assert hub.largest_queue() <= WATCH_BUFFER

        messages = first
        for response in responses:
            messages.append(message(response))
            if messages[-1].revision >= last:
                break
        check_stream(messages, start, last)
        assert hub.live_count == 1  # rejoined


def test_compaction_while_watching_spares_live_streams_and_stops_stalled_ones(
    server: ServerThread, stub: run_service_pb2_grpc.RunServiceStub
) -> None:
    start = current_revision(stub) + 1
    live = Collector(stub.WatchRuns(pb.WatchRunsRequest(start_revision=start), timeout=60))
    with stalled_stream(server.address, stub, start, writes=300) as (responses, messages):
        last = current_revision(stub)
        live_messages = live.wait_for(last)
        time.sleep(1.1)  # everything is now older than the retention
        assert compact(server) == last

        def read_to_the_end() -> None:
            for response in responses:  # what was in flight, then the error
                messages.append(message(response))

        with pytest.raises(grpc.RpcError) as raised:
            read_to_the_end()
        found = failure(raised.value)
        assert found.code == grpc.StatusCode.OUT_OF_RANGE
        assert found.reason == "REVISION_COMPACTED"
        assert int(found.metadata["compact_revision"]) == last
        assert int(found.metadata["current_revision"]) >= last
        # What it did get before the error was still without gaps or repeats.
        check_stream(messages, start, messages[-1].revision)

    # The live stream never noticed, and goes on.
    later = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
    live_messages = live.wait_for(later.revision)
    live.cancel()
    check_stream(live_messages, start, later.revision)


def test_start_below_the_compacted_revision_is_out_of_range(
    server: ServerThread, stub: run_service_pb2_grpc.RunServiceStub
) -> None:
    run = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
    time.sleep(1.1)
    compacted = compact(server)
    assert compacted >= run.revision
    for call in (
        stub.WatchRuns(pb.WatchRunsRequest(start_revision=compacted), timeout=10),
        stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id, start_revision=1), timeout=10),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(call))
        found = failure(raised.value)
        assert found.code == grpc.StatusCode.OUT_OF_RANGE
        assert found.reason == "REVISION_COMPACTED"
        assert found.metadata["compact_revision"] == str(compacted)
        assert int(found.metadata["current_revision"]) >= compacted
    # Right after the compacted revision is still served.
    later = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
    events = live_events(watch_from(stub, compacted + 1, later.revision))
    assert events[-1].revision == later.revision


def test_compaction_never_removes_events_inside_the_retention(
    server: ServerThread, stub: run_service_pb2_grpc.RunServiceStub
) -> None:
    old = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
    time.sleep(1.1)
    recent = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
    assert compact(server) == recent.revision - 1 >= old.revision
    events = live_events(watch_from(stub, recent.revision, recent.revision))
    assert [event.revision for event in events] == [recent.revision]


def test_a_burst_of_two_thousand_streams_all_get_the_next_change_and_leave_no_watcher(
    server: ServerThread, stub: run_service_pb2_grpc.RunServiceStub
) -> None:
    streams = 2000
    hub = server.running.hub
    wait_for_watchers(hub, 0)  # the streams of earlier tests are gone

    burst = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.support.burst"),
            *("--address", server.address, "--streams", str(streams)),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_watchers(hub, streams, timeout=30)
        created = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
        output, _ = burst.communicate(timeout=60)
    finally:
        burst.kill()
        burst.communicate()
    assert json.loads(output) == [created.revision] * streams
    wait_for_watchers(hub, 0)  # every cancelled stream left the hub


def test_stop_ends_every_watch_with_a_last_bookmark_then_unavailable(
    backend: str, tmp_path: Path
) -> None:
    with database_url(backend, tmp_path) as url:
        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        with run_service(server.address) as stub:
            run = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
            streams = [
                Collector(stub.WatchRuns(pb.WatchRunsRequest(), timeout=30)),
                Collector(stub.WatchRuns(pb.WatchRunsRequest(start_revision=1), timeout=30)),
                Collector(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=30)),
            ]
            streams[1].wait_for(run.revision)
            streams[2].wait_for(run.revision)
            time.sleep(0.2)
            started = time.monotonic()
            server.stop(grace=5)
            assert time.monotonic() - started < 3
            for stream in streams:
                check_ended_by_shutdown(stream, run.revision)
