"""WatchRuns and WatchRun through raw stubs, on SQLite and PostgreSQL (contract 3 and 5)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.servers import ServerThread
from tests.support.stubs import failure, run_service
from tests.support.watching import (
    Collector,
    cancel,
    check_stream,
    live_events,
    reached,
    read_until,
    watch_from,
)
from tests.support.watching import message as to_message

pb = run_service_pb2
INITIAL, CREATED, UPDATED, DELETED = (
    run_pb2.EVENT_TYPE_INITIAL,
    run_pb2.EVENT_TYPE_CREATED,
    run_pb2.EVENT_TYPE_UPDATED,
    run_pb2.EVENT_TYPE_DELETED,
)


@pytest.fixture(scope="module")
def stub(server_address: str) -> Iterator[run_service_pb2_grpc.RunServiceStub]:
    with run_service(server_address) as stub:
        yield stub


def current_revision(stub: run_service_pb2_grpc.RunServiceStub) -> int:
    return stub.ListRuns(pb.ListRunsRequest(page_size=1)).revision


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def create(stub: run_service_pb2_grpc.RunServiceStub, **fields: object) -> run_pb2.Run:
    fields.setdefault("assistant_id", "agent")
    return stub.CreateRun(pb.CreateRunRequest(**fields))  # type: ignore[arg-type]


# -- WatchRuns ------------------------------------------------------------------------------


def test_watch_from_a_revision_replays_every_change_after_it(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    start = current_revision(stub) + 1
    first = create(stub)
    stub.UpdateRun(
        pb.UpdateRunRequest(
            run=run_pb2.Run(run_id=first.run_id, metadata=struct(step=2)),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        )
    )
    stub.CancelRun(pb.CancelRunRequest(run_id=first.run_id))
    stub.DeleteRun(pb.DeleteRunRequest(run_id=first.run_id))
    last = current_revision(stub)

    messages = watch_from(stub, start, last)

    check_stream(messages, start, last)
    events = live_events(messages)
    assert [event.type for event in events] == [CREATED, UPDATED, UPDATED, DELETED]
    assert {event.run_id for event in events} == {first.run_id}
    assert events[2].status == run_pb2.RUN_STATUS_INTERRUPTED
    assert events[3].status == run_pb2.RUN_STATUS_INTERRUPTED  # the last state


def test_watch_from_now_sees_only_later_changes(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    earlier = create(stub)
    stream = Collector(stub.WatchRuns(pb.WatchRunsRequest(), timeout=20))
    opening = stream.wait_until(lambda messages: len(messages) == 1)[0]
    later = create(stub)
    messages = stream.wait_for(later.revision)
    stream.cancel()
    assert opening.is_bookmark
    assert opening.revision >= earlier.revision
    assert [(e.type, e.revision) for e in live_events(messages)] == [(CREATED, later.revision)]


def test_rollback_create_delivers_its_deletes_and_create_in_commit_order(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    thread_id = str(uuid.uuid4())
    old = create(stub, thread_id=thread_id)
    new = create(stub, thread_id=thread_id, multitask_strategy=run_pb2.MULTITASK_STRATEGY_ROLLBACK)
    messages = watch_from(stub, old.revision, new.revision)
    assert [(e.type, e.run_id) for e in live_events(messages)] == [
        (CREATED, old.run_id),
        (DELETED, old.run_id),
        (CREATED, new.run_id),
    ]


def test_filter_matches_the_run_before_or_after_each_change(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    tag = uuid.uuid4().hex
    start = current_revision(stub) + 1
    watched = create(stub, metadata=struct(tag=tag, stage="draft"))
    create(stub, metadata=struct(tag="other", stage="draft"))

    def set_stage(stage: str) -> run_pb2.Run:
        return stub.UpdateRun(
            pb.UpdateRunRequest(
                run=run_pb2.Run(run_id=watched.run_id, metadata=struct(tag=tag, stage=stage)),
                update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
            )
        )

    set_stage("review")  # leaves the filter: still sent, it matched before
    set_stage("final")  # matches neither before nor after: not sent
    back = set_stage("draft")  # enters again
    run_filter = pb.RunFilter(metadata=struct(tag=tag, stage="draft"))

    messages = watch_from(stub, start, back.revision, run_filter=run_filter)

    events = live_events(messages)
    assert [(e.type, e.revision) for e in events] == [
        (CREATED, watched.revision),
        (UPDATED, watched.revision + 2),
        (UPDATED, back.revision),
    ]


def test_filter_by_thread_assistant_and_status(stub: run_service_pb2_grpc.RunServiceStub) -> None:
    thread_id = str(uuid.uuid4())
    start = current_revision(stub) + 1
    mine = create(stub, thread_id=thread_id)
    create(stub)  # another thread
    create(stub, thread_id=thread_id, assistant_id="other")
    cancelled = stub.CancelRun(pb.CancelRunRequest(run_id=mine.run_id))
    run_filter = pb.RunFilter(
        thread_id=thread_id, assistant_id="agent", statuses=[run_pb2.RUN_STATUS_PENDING]
    )
    messages = watch_from(stub, start, cancelled.revision, run_filter=run_filter)
    assert [(e.type, e.run_id, e.status) for e in live_events(messages)] == [
        (CREATED, mine.run_id, run_pb2.RUN_STATUS_PENDING),
        (UPDATED, mine.run_id, run_pb2.RUN_STATUS_INTERRUPTED),
    ]


def test_include_initial_sends_state_at_one_revision_then_a_marker_then_live_changes(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    thread_id = str(uuid.uuid4())
    existing = [create(stub, thread_id=thread_id) for _ in range(3)]
    stream = Collector(
        stub.WatchRuns(
            pb.WatchRunsRequest(filter=pb.RunFilter(thread_id=thread_id), include_initial=True),
            timeout=20,
        )
    )
    # The initial events, then the end-of-initial bookmark.
    marker = stream.wait_until(lambda messages: len(messages) == 2)[1]
    later = create(stub, thread_id=thread_id)
    messages = stream.wait_for(later.revision)
    stream.cancel()

    initial, end, *rest = messages
    assert {e.run_id for e in initial.events} == {run.run_id for run in existing}
    assert {e.type for e in initial.events} == {INITIAL}
    assert {e.revision for e in initial.events} == {initial.revision}
    assert end.is_bookmark
    assert end.revision == initial.revision == marker.revision
    assert initial.revision >= existing[-1].revision
    assert [(e.type, e.run_id) for e in live_events(rest)] == [(CREATED, later.run_id)]


def test_include_initial_with_nothing_matching_sends_just_the_marker(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    call = stub.WatchRuns(
        pb.WatchRunsRequest(filter=pb.RunFilter(thread_id=str(uuid.uuid4())), include_initial=True),
        timeout=10,
    )
    first = to_message(next(iter(call)))
    cancel(call)
    assert first.is_bookmark
    assert first.revision >= current_revision(stub) - 1 > 0


def test_quiet_stream_gets_bookmarks_at_the_progress_interval(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    revision = create(stub).revision
    call = stub.WatchRuns(
        pb.WatchRunsRequest(
            filter=pb.RunFilter(thread_id=str(uuid.uuid4())),
            progress_interval=duration_pb2.Duration(nanos=1),  # clamped to 1 s
        ),
        timeout=10,
    )
    started = time.monotonic()
    # The opening bookmark (where "now" was), then one per second.
    bookmarks = read_until(call, lambda messages: len(messages) == 3)
    elapsed = time.monotonic() - started
    cancel(call)
    assert all(m.is_bookmark for m in bookmarks)
    assert bookmarks[0].revision >= revision
    assert 1.8 < elapsed < 4, elapsed


def test_bookmark_after_filtered_out_changes_covers_them(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    stream = Collector(
        stub.WatchRuns(
            pb.WatchRunsRequest(
                filter=pb.RunFilter(thread_id=str(uuid.uuid4())),
                progress_interval=duration_pb2.Duration(seconds=1),
            ),
            timeout=20,
        )
    )
    time.sleep(0.2)
    unrelated = create(stub)
    messages = stream.wait_for(unrelated.revision)
    stream.cancel()
    assert all(m.is_bookmark for m in messages)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"start_revision": -1}, "start_revision"),
        ({"start_revision": 3, "include_initial": True}, "include_initial"),
        ({"filter": pb.RunFilter(thread_id="nope")}, "filter.thread_id"),
        ({"progress_interval": duration_pb2.Duration(seconds=-1)}, "progress_interval"),
    ],
)
def test_watch_runs_rejects_bad_requests(
    stub: run_service_pb2_grpc.RunServiceStub, request_fields: dict[str, object], field: str
) -> None:
    call = stub.WatchRuns(pb.WatchRunsRequest(**request_fields), timeout=10)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(call))
    found = failure(raised.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in found.violations


def test_watch_from_a_future_revision_waits_for_it(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    future = current_revision(stub) + 2
    stream = Collector(stub.WatchRuns(pb.WatchRunsRequest(start_revision=future), timeout=20))
    create(stub)
    target = create(stub)
    messages = stream.wait_for(target.revision)
    stream.cancel()
    assert [e.revision for e in live_events(messages)] == [future] == [target.revision]


# -- WatchRun -------------------------------------------------------------------------------


def test_watch_run_sends_current_state_then_changes_and_ends_when_terminal(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    run = create(stub, thread_id=str(uuid.uuid4()))
    stream = Collector(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=20))
    stream.wait_for(run.revision)
    create(stub)  # another run: not sent
    updated = stub.UpdateRun(
        pb.UpdateRunRequest(
            run=run_pb2.Run(run_id=run.run_id, metadata=struct(seen=True)),
            update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
        )
    )
    cancelled = stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="enough"))
    messages = stream.finish()

    assert stream.error is None, stream.error  # ended with OK
    events = [event for message in messages for event in message.events]
    assert [(e.type, e.revision) for e in events[1:]] == [
        (UPDATED, updated.revision),
        (UPDATED, cancelled.revision),
    ]
    assert events[0].type == INITIAL
    assert events[0].run_id == run.run_id
    assert messages[-1].revision == cancelled.revision


def test_watch_run_ends_with_the_deletion(stub: run_service_pb2_grpc.RunServiceStub) -> None:
    run = create(stub)
    stream = Collector(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=20))
    stream.wait_for(1)
    stub.DeleteRun(pb.DeleteRunRequest(run_id=run.run_id, force=True))
    messages = stream.finish()
    assert stream.error is None
    assert [e.type for m in messages for e in m.events] == [INITIAL, DELETED]


def test_watch_run_of_a_terminal_run_ends_after_its_state(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    run = create(stub)
    stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
    messages = [
        to_message(m) for m in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=10)
    ]
    assert len(messages) == 1
    (event,) = messages[0].events
    assert (event.type, event.status) == (INITIAL, run_pb2.RUN_STATUS_INTERRUPTED)


def test_watch_run_from_a_revision_replays_its_history(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    run = create(stub)
    create(stub)
    cancelled = stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
    call = stub.WatchRun(
        pb.WatchRunRequest(run_id=run.run_id, start_revision=run.revision), timeout=10
    )
    events = live_events(to_message(m) for m in call)
    assert [(e.type, e.revision) for e in events] == [
        (CREATED, run.revision),
        (UPDATED, cancelled.revision),
    ]


def test_watch_run_resumed_after_its_end_ends_at_once(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    run = create(stub)
    cancelled = stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
    call = stub.WatchRun(
        pb.WatchRunRequest(run_id=run.run_id, start_revision=cancelled.revision + 1), timeout=10
    )
    messages = [to_message(m) for m in call]
    assert all(m.is_bookmark for m in messages)


def test_watch_run_of_an_unknown_run_is_not_found(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    for start_revision in (0, 1):
        call = stub.WatchRun(
            pb.WatchRunRequest(run_id=str(uuid.uuid4()), start_revision=start_revision),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(call))
        found = failure(raised.value)
        assert found.code == grpc.StatusCode.NOT_FOUND
        assert found.reason == "RUN_NOT_FOUND"


def test_watch_run_rejects_a_malformed_id(stub: run_service_pb2_grpc.RunServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(stub.WatchRun(pb.WatchRunRequest(run_id="x", start_revision=-2), timeout=10)))
    found = failure(raised.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(found.violations) == {"run_id", "start_revision"}


# -- streams and the hub --------------------------------------------------------------------


def test_cancelled_streams_leave_no_watcher_behind(
    server: ServerThread, stub: run_service_pb2_grpc.RunServiceStub
) -> None:
    hub = server.running.hub
    before = hub.watcher_count
    run = create(stub)
    streams = [Collector(stub.WatchRuns(pb.WatchRunsRequest(), timeout=20)) for _ in range(5)] + [
        Collector(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=20))
    ]
    deadline = time.monotonic() + 5
    while hub.watcher_count < before + 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hub.watcher_count == before + 6
    for stream in streams:
        stream.cancel()
    while hub.watcher_count > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hub.watcher_count == before


def test_streams_still_see_writes_after_a_burst_of_changes(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    start = current_revision(stub) + 1
    stream = Collector(stub.WatchRuns(pb.WatchRunsRequest(start_revision=start), timeout=30))
    last = 0
    for _ in range(50):
        last = create(stub).revision
    messages = stream.wait_for(last)
    stream.cancel()
    check_stream(messages, start, last)
    assert reached(last)(messages)
