"""Recording watch streams and checking them, after etcd's robustness validators.

A test records every message a stream delivered (and the revisions its writes were
given), then asserts the properties the contract promises, each named as in etcd's
`tests/robustness/validate`:

- ordered: event revisions strictly increase along a stream; message revisions never
  go back;
- unique: no event is delivered twice (implied by ordered);
- atomic: a revision is never split: each message covers exactly the revisions after
  the previous message's revision up to its own;
- bookmarkable: after a message at revision R no event at or below R arrives;
- reliable: an unfiltered stream delivers every revision, with no gap;
- resumable: starting again at R + 1 delivers exactly the tail after R.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc


@dataclass(frozen=True)
class Event:
    type: int
    revision: int
    run_id: str
    status: int


@dataclass(frozen=True)
class Message:
    events: tuple[Event, ...]
    revision: int

    @property
    def is_bookmark(self) -> bool:
        return not self.events


def message(response: run_service_pb2.WatchRunsResponse) -> Message:
    return Message(
        events=tuple(
            Event(event.type, event.revision, event.run.run_id, event.run.status)
            for event in response.events
        ),
        revision=response.revision,
    )


def read_until(
    responses: Iterable[run_service_pb2.WatchRunsResponse],
    done: Callable[[list[Message]], bool],
) -> list[Message]:
    """Messages until `done(messages)`; the caller bounds the wait with the call's deadline."""
    messages: list[Message] = []
    for response in responses:
        messages.append(message(response))
        if done(messages):
            break
    return messages


def reached(revision: int) -> Callable[[list[Message]], bool]:
    return lambda messages: bool(messages) and messages[-1].revision >= revision


def cancel(call: object) -> None:
    """Cancel a streaming call (grpc-stubs leaves `cancel` untyped)."""
    getattr(call, "cancel")()  # noqa: B009


def watch_from(
    stub: run_service_pb2_grpc.RunServiceStub,
    start_revision: int,
    until_revision: int,
    *,
    timeout: float = 20,
    run_filter: run_service_pb2.RunFilter | None = None,
) -> list[Message]:
    """A whole stream from `start_revision` to the first message at `until_revision`."""
    call = stub.WatchRuns(
        run_service_pb2.WatchRunsRequest(start_revision=start_revision, filter=run_filter),
        timeout=timeout,
    )
    try:
        return read_until(call, reached(until_revision))
    finally:
        cancel(call)


def live_events(messages: Iterable[Message]) -> list[Event]:
    return [
        event
        for message in messages
        for event in message.events
        if event.type != run_pb2.EVENT_TYPE_INITIAL
    ]


def check_ordered(messages: list[Message]) -> None:
    revisions = [event.revision for event in live_events(messages)]
    assert revisions == sorted(set(revisions)), f"events out of order or repeated: {revisions}"
    marks = [message.revision for message in messages]
    assert marks == sorted(marks), f"message revisions went back: {marks}"


def check_atomic_and_bookmarkable(messages: list[Message], start_revision: int) -> None:
    """Message k carries exactly the events in (revision of k-1, revision of k]."""
    after = start_revision - 1
    for index, message in enumerate(messages):
        for event in message.events:
            if event.type == run_pb2.EVENT_TYPE_INITIAL:
                continue
            assert after < event.revision <= message.revision, (
                f"message {index} at {message.revision} carries revision {event.revision}, "
                f"but a previous message already covered up to {after}"
            )
        after = max(after, message.revision)


def check_reliable(messages: list[Message], first: int, last: int) -> None:
    revisions = [event.revision for event in live_events(messages)]
    expected = list(range(first, last + 1))
    missing = sorted(set(expected) - set(revisions))
    assert revisions == expected, f"missing revisions {missing[:20]}; extra or repeated ones?"


def check_stream(messages: list[Message], first: int, last: int) -> None:
    """All the guarantees of one unfiltered stream from `first` to `last`."""
    check_ordered(messages)
    check_atomic_and_bookmarkable(messages, first)
    check_reliable(messages, first, last)


def check_resumable(
    stub: run_service_pb2_grpc.RunServiceStub,
    messages: list[Message],
    resume_points: Iterable[int],
    last: int,
) -> None:
    """From each revision R a client may have seen, a new stream from R + 1 delivers
    exactly the original stream's events after R.
    """
    events = live_events(messages)
    for seen in resume_points:
        tail = live_events(watch_from(stub, seen + 1, last))
        expected = [event for event in events if event.revision > seen]
        assert tail == expected, f"resuming after {seen} gave a different tail"


class Collector:
    """Reads a stream on a thread, keeping every message, until cancelled or it ends."""

    def __init__(self, call: Iterable[run_service_pb2.WatchRunsResponse]) -> None:
        self.call = call
        self.messages: list[Message] = []
        self.error: grpc.RpcError | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                with self._changed:
                    self.messages.append(message(response))
                    self._changed.notify_all()
        except grpc.RpcError as error:
            self.error = error
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, revision: int, timeout: float = 10) -> list[Message]:
        """Messages until one at `revision` or later."""
        return self.wait_until(reached(revision), timeout)

    def wait_until(
        self, done: Callable[[list[Message]], bool], timeout: float = 10
    ) -> list[Message]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.messages):
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise AssertionError(
                        f"stream did not get there: {self.messages[-3:]}, error {self.error}"
                    )
                self._changed.wait(left)
            return list(self.messages)

    def finish(self, timeout: float = 10) -> list[Message]:
        """Wait for the stream to end by itself."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "stream did not end"
        return list(self.messages)

    def cancel(self) -> list[Message]:
        cancel(self.call)
        self._thread.join(10)
        return list(self.messages)


def check_ended_by_shutdown(stream: Collector, revision: int) -> None:
    """The stream got a last bookmark at `revision`, then ended with UNAVAILABLE."""
    messages = stream.finish()
    assert messages[-1].is_bookmark
    assert messages[-1].revision == revision
    assert stream.error is not None
    assert stream.error.code() == grpc.StatusCode.UNAVAILABLE
