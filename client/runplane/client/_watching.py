"""Watch streams that resume by themselves, shared by `Client` and `AsyncClient`.

A `WatchCall` says what to watch; each iteration of it gets a `Resumption`, which
knows the last revision the caller was given and turns a dropped stream into a new
request that starts right after it. The server guarantees that a stream starting at
R + 1 delivers exactly what follows R, so the caller sees no gap and no duplicate
across reconnections, whichever replica answers.

Only a watch that was open is resumed: one that cannot reach the server at its start
fails as a read would, after the client's retry policy. The server marks an open
stream with headers (`runplane-watch: open`) sent before any message. Both clients
drive it the same way:

    resumption = watch.start(retry_policy)
    while True:
        call = stub.<rpc>(resumption.request(), timeout=resumption.remaining())
        try:
            resumption.headers(call.initial_metadata())
            for response in call:
                for event in resumption.receive(response):
                    yield convert(event)  # wait_run converts only the run's end
            return                        # the server ended the stream (WatchRun: run done)
        except grpc.RpcError as error:
            sleep(resumption.pause_or_raise(error))
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from runplane.client._convert import enum_from_proto, run_from_proto
from runplane.client._errors import (
    ERROR_DOMAIN,
    RunDeleted,
    RunplaneError,
    Unavailable,
    from_grpc_error,
)
from runplane.client._models import Run, RunStatus
from runplane.client._retry import Attempts, RetryPolicy
from runplane.v1 import run_pb2, run_service_pb2

WatchRequest = run_service_pb2.WatchRunsRequest | run_service_pb2.WatchRunRequest

# After a drop, wait a random time up to this ceiling, doubling from the first value.
_FIRST_PAUSE = 0.05
_MAX_PAUSE = 2.0

_OPEN_HEADER = ("runplane-watch", "open")

ReconnectHook = Callable[[RunplaneError], None]
"""Called with the error once each time an open watch drops, before it reconnects."""


@dataclass(frozen=True)
class WatchCall:
    """One watch as the caller asked for it."""

    rpc: str
    """`WatchRuns` or `WatchRun`: the RunService method and stub attribute."""
    request: WatchRequest
    deadline: float | None
    """Seconds the whole watch may last, reconnections included; None: no limit."""
    reconnect: bool = True
    on_reconnect: ReconnectHook | None = None

    def start(self, retry_policy: RetryPolicy) -> Resumption:
        """Begin an iteration; `retry_policy` bounds the attempts to open it at first."""
        return Resumption(self, retry_policy)


class Resumption:
    """The state of one iteration of a watch: where it got, and when to try again."""

    def __init__(self, watch: WatchCall, retry_policy: RetryPolicy) -> None:
        self._watch = watch
        self._seen = 0
        """Revision up to which the caller has been given everything (0: nothing yet)."""
        self._pauses = 0
        self._expires_at = None if watch.deadline is None else time.monotonic() + watch.deadline
        self._opening: Attempts | None = retry_policy.start(
            math.inf if watch.deadline is None else watch.deadline
        )
        """The attempts to open the watch at first; None once it has been open."""
        self._dropped = False
        """Whether the open watch dropped and is not open again yet."""

    def request(self) -> WatchRequest:
        """The request for the next attempt: the caller's, or a resumption after `seen`."""
        request = copy.deepcopy(self._watch.request)
        if self._seen:
            request.start_revision = self._seen + 1
            if isinstance(request, run_service_pb2.WatchRunsRequest):
                request.include_initial = False  # the initial state was delivered already
        return request

    def remaining(self) -> float | None:
        """Seconds left for the next attempt, None without a deadline."""
        if self._expires_at is None:
            return None
        return max(0.0, self._expires_at - time.monotonic())

    def headers(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """Note the headers of an attempt: the server's mark says the stream is open."""
        if metadata is not None and _OPEN_HEADER in tuple(metadata):
            self._opened()

    def _opened(self) -> None:
        self._opening = None
        self._dropped = False
        self._pauses = 0

    def receive(self, response: run_service_pb2.WatchRunsResponse) -> list[run_pb2.RunEvent]:
        """The events of a message the caller has not seen yet, in order, as they came:
        each caller converts what it needs (`wait_run` only the run's last state)."""
        self._opened()
        events = [
            event
            for event in response.events
            # INITIAL events carry the snapshot's revision, like the message.
            if event.revision > self._seen or event.type == run_pb2.EVENT_TYPE_INITIAL
        ]
        initial_state = response.events and response.events[0].type == run_pb2.EVENT_TYPE_INITIAL
        if not (initial_state and self._watch.rpc == "WatchRuns"):
            # A WatchRuns initial state may span messages; it is whole only at the bookmark
            # after them: a stream that drops before it starts over.
            self._seen = max(self._seen, response.revision)
        return events

    def pause_or_raise(self, error: grpc.RpcError) -> float:
        """Seconds to wait before reconnecting after `error`, or raise it, mapped.

        Only UNAVAILABLE (a dropped connection, a restarting or draining server) is
        resumed; anything else, REVISION_COMPACTED included, is the caller's to handle.
        A watch never open yet is retried as a read is, then fails.
        """
        mapped = from_grpc_error(error)
        if mapped.code is not grpc.StatusCode.UNAVAILABLE or not self._watch.reconnect:
            raise mapped from error
        if self._opening is not None:
            return self._opening.backoff_or_raise(error)
        if not self._dropped:
            self._dropped = True
            if self._watch.on_reconnect is not None:
                self._watch.on_reconnect(mapped)
        pause = random.uniform(0.0, min(_MAX_PAUSE, _FIRST_PAUSE * 2**self._pauses))
        self._pauses += 1
        remaining = self.remaining()
        if remaining is not None and pause >= remaining:
            raise mapped from error
        return pause


def finished_run(event: run_pb2.RunEvent) -> Run | None:
    """What `wait_run` returns once `event` shows the run terminal; None while it is not.

    Only the terminal state becomes a `Run`: the states before it are looked at, not
    converted (their documents and timestamps would be thrown away).
    Raises `RunDeleted` for a run deleted before it ended: it will never end.
    """
    status = enum_from_proto(RunStatus, run_pb2.RunStatus.Name(event.run.status))
    if event.type == run_pb2.EVENT_TYPE_DELETED:
        raise RunDeleted(
            f"run {event.run.run_id} was deleted while {status.value}",
            reason="RUN_NOT_FOUND",
            domain=ERROR_DOMAIN,
            metadata={"run_id": event.run.run_id},
        )
    return run_from_proto(event.run) if status.is_terminal else None


def unfinished(watch: WatchCall) -> Unavailable:
    """The watch of a run ended without its end: only a server that broke the contract."""
    run_id = getattr(watch.request, "run_id", "")
    return Unavailable(f"the watch of run {run_id} ended before the run did")
