"""Watch streams that resume by themselves, shared by `Client` and `AsyncClient`.

A `WatchCall` says what to watch; each iteration of it gets a `Resumption`, which
knows the last revision the caller was given and turns a dropped stream into a new
request that starts right after it. The server guarantees that a stream starting at
R + 1 delivers exactly what follows R, so the caller sees no gap and no duplicate
across reconnections, whichever replica answers. Both clients drive it the same way:

    resumption = watch.start()
    while True:
        try:
            for response in stub.<rpc>(resumption.request(), timeout=resumption.remaining()):
                yield from resumption.receive(response)
            return                      # the server ended the stream (WatchRun: run done)
        except grpc.RpcError as error:
            sleep(resumption.pause_or_raise(error))
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass

import grpc

from runplane.client._convert import run_event_from_proto
from runplane.client._errors import ERROR_DOMAIN, NotFound, Unavailable, from_grpc_error
from runplane.client._models import EventType, Run, RunEvent
from runplane.v1 import run_pb2, run_service_pb2

WatchRequest = run_service_pb2.WatchRunsRequest | run_service_pb2.WatchRunRequest

# After a drop, wait a random time up to this ceiling, doubling from the first value.
_FIRST_PAUSE = 0.05
_MAX_PAUSE = 2.0


@dataclass(frozen=True)
class WatchCall:
    """One watch as the caller asked for it."""

    rpc: str
    """`WatchRuns` or `WatchRun`: the RunService method and stub attribute."""
    request: WatchRequest
    deadline: float | None
    """Seconds the whole watch may last, reconnections included; None: no limit."""
    reconnect: bool = True

    def start(self) -> Resumption:
        return Resumption(self)


class Resumption:
    """The state of one iteration of a watch: where it got, and when to try again."""

    def __init__(self, watch: WatchCall) -> None:
        self._watch = watch
        self._seen = 0
        """Revision up to which the caller has been given everything (0: nothing yet)."""
        self._pauses = 0
        self._expires_at = None if watch.deadline is None else time.monotonic() + watch.deadline

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

    def receive(self, response: run_service_pb2.WatchRunsResponse) -> list[RunEvent]:
        """The events of a message the caller has not seen yet, in order."""
        self._pauses = 0
        events = [
            run_event_from_proto(event)
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
        """
        mapped = from_grpc_error(error)
        if mapped.code is not grpc.StatusCode.UNAVAILABLE or not self._watch.reconnect:
            raise mapped from error
        pause = random.uniform(0.0, min(_MAX_PAUSE, _FIRST_PAUSE * 2**self._pauses))
        self._pauses += 1
        remaining = self.remaining()
        if remaining is not None and pause >= remaining:
            raise mapped from error
        return pause


def finished_run(event: RunEvent) -> Run | None:
    """What `wait_run` returns once `event` shows the run terminal; None while it is not.

    Raises `NotFound` for a run deleted before it ended: it will never end.
    """
    if event.type is EventType.DELETED:
        raise NotFound(
            f"run {event.run.run_id} was deleted while {event.run.status.value}",
            reason="RUN_NOT_FOUND",
            domain=ERROR_DOMAIN,
            metadata={"run_id": event.run.run_id},
        )
    return event.run if event.run.status.is_terminal else None


def unfinished(watch: WatchCall) -> Unavailable:
    """The watch of a run ended without its end: only a server that broke the contract."""
    run_id = getattr(watch.request, "run_id", "")
    return Unavailable(f"the watch of run {run_id} ended before the run did")
