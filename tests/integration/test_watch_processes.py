"""Watches across real `runplane serve` processes: kill -9 and restart, replicas, SIGTERM."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from runplane.client import Client, RunEvent
from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.support.databases import database_url, fresh_postgres_database
from tests.support.serve_process import ServeProcess, free_port
from tests.support.stubs import run_service
from tests.support.watching import Collector, check_ended_by_shutdown, check_stream

pb = run_service_pb2


class EventLog:
    """Reads `Client.watch_runs` on a thread until the client is closed."""

    def __init__(self, client: Client, start_revision: int) -> None:
        self.events: list[RunEvent] = []
        self.error: BaseException | None = None
        self._client = client
        self._start = start_revision
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._client.watch_runs(start_revision=self._start):
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        except BaseException as error:
            self.error = error
            with self._changed:
                self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 20) -> list[RunEvent]:
        with self._changed:
            self._changed.wait_for(
                lambda: len(self.events) >= count or self.error is not None, timeout
            )
            assert self.error is None, self.error
            assert len(self.events) >= count, f"{len(self.events)} of {count} events"
            return list(self.events)


@pytest.mark.timeout(90)
def test_client_watch_resumes_after_kill_9_and_restart_with_no_gap_or_duplicate(
    backend: str, tmp_path: Path
) -> None:
    with database_url(backend, tmp_path) as url:
        address = f"127.0.0.1:{free_port()}"
        server = ServeProcess(address, url, tmp_path)
        try:
            with Client(address) as client:
                log = EventLog(client, start_revision=1)
                before = [client.create_run("agent").revision for _ in range(15)]
                log.wait_for(15)
                server.kill()  # mid-stream: the watch is open, nothing is said
                server = ServeProcess(address, url, tmp_path)
                # Writes on a channel of its own (not one in reconnect backoff); the
                # watching one reconnects by itself.
                fresh = [("grpc.use_local_subchannel_pool", 1)]
                with Client(address, channel_options=fresh) as writer:
                    after = [writer.create_run("agent").revision for _ in range(15)]
                events = log.wait_for(30)
        finally:
            server.kill()
    assert [event.revision for event in events] == before + after == list(range(1, 31))


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_two_replicas_deliver_every_change_made_on_either_to_watchers_on_both(
    tmp_path: Path,
) -> None:
    with (
        fresh_postgres_database() as url,
        ServeProcess("127.0.0.1:0", url, tmp_path) as first,
        ServeProcess("127.0.0.1:0", url, tmp_path) as second,
    ):
        streams = []
        for replica in (first, second):
            channel = grpc.insecure_channel(replica.address)
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            streams.append(Collector(stub.WatchRuns(pb.WatchRunsRequest(start_revision=1))))

        def write(address: str) -> None:
            with run_service(address) as stub:
                for _ in range(20):
                    run = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
                    stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))

        writers = [
            threading.Thread(target=write, args=(replica.address,))
            for replica in (first, second, first, second)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
        last = 4 * 20 * 2
        for stream in streams:
            check_stream(stream.wait_for(last), 1, last)

        # A change made through one replica reaches the other's watcher promptly.
        with run_service(first.address) as stub:
            started = time.monotonic()
            run = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
            streams[1].wait_for(run.revision)
            assert time.monotonic() - started < 1.0
        for stream in streams:
            stream.cancel()


@pytest.mark.timeout(60)
def test_sigterm_ends_open_watches_with_unavailable_and_exits_0_within_grace(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'runplane.db'}"
    with (
        ServeProcess("127.0.0.1:0", url, tmp_path, "--shutdown-grace", "10s") as server,
        run_service(server.address) as stub,
    ):
        run = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
        streams = [
            Collector(stub.WatchRuns(pb.WatchRunsRequest(start_revision=1))) for _ in range(20)
        ] + [Collector(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id)))]
        for stream in streams:
            stream.wait_for(run.revision)
        started = time.monotonic()
        assert server.terminate() == 0
        assert time.monotonic() - started < 5
        for stream in streams:
            check_ended_by_shutdown(stream, run.revision)
    assert "msg=stopped" in "\n".join(server.logs)
