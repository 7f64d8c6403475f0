"""Every RPC of the clients, defined once: its signature, its request, how to read its reply.

Each function here takes the public arguments of one client method and returns
a `UnaryCall` (or a `RunListing` for `list_runs`) describing what to send. The
sync `Client` and the `AsyncClient` turn these functions into their methods
with `client_method`, so both share one signature and one docstring per RPC
and differ only in how they wait for the network.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar, cast

from google.protobuf import empty_pb2, field_mask_pb2
from google.protobuf.message import Message

from runplane.client._convert import (
    cancel_action_to_proto,
    cancelled_runs_from_proto,
    duration_to_proto,
    multitask_strategy_to_proto,
    retry_policy_to_proto,
    run_from_proto,
    run_page_from_proto,
    run_status_to_proto,
    stats_from_proto,
    struct_to_proto,
    timestamp_to_proto,
)
from runplane.client._models import (
    CancelAction,
    CancelledRuns,
    MultitaskStrategy,
    Run,
    RunPage,
    RunRetryPolicy,
    RunStatus,
    Stats,
)
from runplane.client._retry import NO_RETRY, Attempts, RetryPolicy
from runplane.client._watching import ReconnectHook, WatchCall
from runplane.v1 import run_pb2, run_service_pb2

_Response = TypeVar("_Response", bound=Message)
_Result = TypeVar("_Result")
_Method = TypeVar("_Method", bound=Callable[..., Any])


@dataclass(frozen=True)
class UnaryCall(Generic[_Response, _Result]):
    """One unary RPC, ready to send through either client."""

    rpc: str
    """Name of the RunService method (and of its attribute on the generated stub)."""
    request: Message
    convert: Callable[[_Response], _Result]
    deadline: float | None
    """Seconds the caller allows, retries included; None means the client's default."""
    idempotent: bool = False
    """Safe to repeat after UNAVAILABLE: the retry policy applies."""
    server_wait: float = 0.0
    """Seconds the server may hold the call on purpose (a long poll), added to the default."""

    def attempts(self, default_deadline: float, retry_policy: RetryPolicy) -> Attempts:
        """Start timing this call: its deadline, and retries only if it is idempotent."""
        if self.deadline is not None:
            deadline = self.deadline
        else:
            deadline = default_deadline + self.server_wait
        return (retry_policy if self.idempotent else NO_RETRY).start(deadline)


@dataclass(frozen=True)
class RunListing:
    """A `list_runs` query; `page` gives the call that reads the page at a token."""

    request: run_service_pb2.ListRunsRequest
    deadline: float | None

    def page(self, page_token: str) -> UnaryCall[run_service_pb2.ListRunsResponse, RunPage]:
        request = run_service_pb2.ListRunsRequest()
        request.CopyFrom(self.request)
        request.page_token = page_token
        return UnaryCall("ListRuns", request, run_page_from_proto, self.deadline, idempotent=True)


def client_method(definition: Callable[..., Any], method: _Method) -> _Method:
    """Dress a client's `method` as `definition`: name, docstring and signature (plus self).

    The explicit `__signature__` keeps `help()` and `inspect.signature` right on
    bound methods, which would otherwise drop the first real parameter. A definition
    taking `namespace` gets the client's own (`self._namespace`) when the caller
    gives none.
    """
    signature = inspect.signature(definition)
    if "namespace" in signature.parameters:
        method = _in_client_namespace(method)
    functools.update_wrapper(method, definition, assigned=("__name__", "__qualname__", "__doc__"))
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_parameter, *signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    return method


def _in_client_namespace(method: _Method) -> _Method:
    @functools.wraps(method)
    def defaulted(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("namespace") is None:
            kwargs["namespace"] = self._namespace
        return method(self, *args, **kwargs)

    return cast(_Method, defaulted)


def create_run(
    assistant_id: str,
    *,
    thread_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    multitask_strategy: MultitaskStrategy | str | None = None,
    run_id: str | None = None,
    request_id: str | None = None,
    timeout: timedelta | float | None = None,
    start_after: datetime | None = None,
    priority: int | None = None,
    retry_policy: RunRetryPolicy | None = None,
    namespace: str | None = None,
    deadline: float | None = None,
) -> UnaryCall[run_pb2.Run, Run]:
    """Create a run of `assistant_id`, on `thread_id` or on a new thread, in `namespace`
    (default: the client's namespace, else the server's `default`).

    `multitask_strategy` (default enqueue) decides what happens to the thread's
    inflight runs: reject raises `ThreadBusy`, interrupt and rollback supersede
    them. `timeout` is the run's own time limit once RUNNING (seconds or a
    timedelta); `start_after` (timezone-aware) defers it. `priority` (0 to 9, default
    5) ranks it among runs ready to start, higher first; `retry_policy` has the server
    try it again after a failed attempt. `deadline` bounds the call.

    With a `request_id` the create is idempotent: a repeat returns the run first
    created with it, so the client also retries it when the server is unavailable.
    Without one it is never retried, since a lost reply may hide a created run.
    """
    request = run_service_pb2.CreateRunRequest(
        assistant_id=assistant_id,
        thread_id=thread_id or "",
        run_id=run_id or "",
        request_id=request_id or "",
        namespace=namespace or "",
    )
    if metadata is not None:
        request.metadata.CopyFrom(struct_to_proto(metadata))
    if kwargs is not None:
        request.kwargs.CopyFrom(struct_to_proto(kwargs))
    if multitask_strategy is not None:
        request.multitask_strategy = multitask_strategy_to_proto(multitask_strategy)
    if timeout is not None:
        request.timeout.CopyFrom(duration_to_proto(timeout))
    if start_after is not None:
        request.start_after.CopyFrom(timestamp_to_proto(start_after))
    if priority is not None:
        request.priority = priority
    if retry_policy is not None:
        request.retry_policy.CopyFrom(retry_policy_to_proto(retry_policy))
    return UnaryCall(
        "CreateRun", request, run_from_proto, deadline, idempotent=request_id is not None
    )


def get_run(run_id: str, *, deadline: float | None = None) -> UnaryCall[run_pb2.Run, Run]:
    """The run's current state; `NotFound` if it does not exist."""
    request = run_service_pb2.GetRunRequest(run_id=run_id)
    return UnaryCall("GetRun", request, run_from_proto, deadline, idempotent=True)


def list_runs(
    *,
    thread_id: str | None = None,
    assistant_id: str | None = None,
    statuses: Iterable[RunStatus | str] | None = None,
    metadata: dict[str, Any] | None = None,
    order_by: str = "created_at desc",
    page_size: int = 0,
    namespace: str | None = None,
    deadline: float | None = None,
) -> RunListing:
    """The runs matching every filter given, newest first unless `order_by="created_at asc"`.

    Returns a pager: iterating it yields runs across all pages, fetching each page
    when needed (the first one on first iteration); `pages()` yields whole pages.
    `metadata` matches runs whose metadata contains every key given with an equal
    value. `page_size` 0 lets the server choose (50); `deadline` applies per page.
    `namespace` (default: the client's) limits the listing to one namespace; ""
    means every namespace the caller may read.
    """
    request = run_service_pb2.ListRunsRequest(
        filter=_run_filter(thread_id, assistant_id, statuses, metadata, namespace),
        page_size=page_size,
        order_by=order_by,
    )
    return RunListing(request, deadline)


def update_run(
    run_id: str,
    *,
    metadata: dict[str, Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    expected_revision: int = 0,
    deadline: float | None = None,
) -> UnaryCall[run_pb2.Run, Run]:
    """Replace the run's metadata and/or kwargs (kwargs only while PENDING).

    Only the arguments given are changed (at least one is required: ValueError
    otherwise, before anything is sent). With `expected_revision` the update
    applies only if the run is still at that revision, else `RevisionMismatch`.
    """
    run = run_pb2.Run(run_id=run_id)
    paths = []
    if metadata is not None:
        run.metadata.CopyFrom(struct_to_proto(metadata))
        paths.append("metadata")
    if kwargs is not None:
        run.kwargs.CopyFrom(struct_to_proto(kwargs))
        paths.append("kwargs")
    if not paths:
        raise ValueError("update_run needs metadata or kwargs to change")
    request = run_service_pb2.UpdateRunRequest(
        run=run,
        update_mask=field_mask_pb2.FieldMask(paths=paths),
        expected_revision=expected_revision,
    )
    return UnaryCall("UpdateRun", request, run_from_proto, deadline)


def cancel_run(
    run_id: str,
    *,
    action: CancelAction | str = CancelAction.INTERRUPT,
    reason: str = "",
    deadline: float | None = None,
) -> UnaryCall[run_pb2.Run, Run]:
    """Stop an inflight run: interrupt keeps it INTERRUPTED, rollback deletes it.

    Returns the run's last state; `RunTerminal` if it had already finished.
    """
    request = run_service_pb2.CancelRunRequest(
        run_id=run_id, action=cancel_action_to_proto(action), reason=reason
    )
    return UnaryCall("CancelRun", request, run_from_proto, deadline)


def cancel_runs(
    *,
    thread_id: str | None = None,
    assistant_id: str | None = None,
    statuses: Iterable[RunStatus | str] | None = None,
    metadata: dict[str, Any] | None = None,
    action: CancelAction | str = CancelAction.INTERRUPT,
    reason: str = "",
    namespace: str | None = None,
    deadline: float | None = None,
) -> UnaryCall[run_service_pb2.CancelRunsResponse, CancelledRuns]:
    """Stop every inflight run matching the filters (as `list_runs`), in one transaction:
    interrupt keeps them INTERRUPTED with `reason`, rollback deletes them.

    At least one of `thread_id`, `assistant_id` and `metadata` is required
    (`InvalidArgument` otherwise); `statuses` narrows to pending or running runs.
    Only runs of namespaces the caller may write are touched: `namespace` (default: the
    client's) limits it to one, "" means all of them. Returns how many were cancelled
    and the revision of the last change; a filter matching more than the server cancels
    in one call raises `FailedPrecondition` (reason TOO_MANY_RUNS) and cancels nothing.
    """
    request = run_service_pb2.CancelRunsRequest(
        filter=_run_filter(thread_id, assistant_id, statuses, metadata, namespace),
        action=cancel_action_to_proto(action),
        reason=reason,
    )
    return UnaryCall("CancelRuns", request, cancelled_runs_from_proto, deadline)


def delete_run(
    run_id: str,
    *,
    expected_revision: int = 0,
    force: bool = False,
    deadline: float | None = None,
) -> UnaryCall[empty_pb2.Empty, None]:
    """Delete a run; an inflight one raises `RunInflight` unless `force`."""
    request = run_service_pb2.DeleteRunRequest(
        run_id=run_id, expected_revision=expected_revision, force=force
    )
    return UnaryCall("DeleteRun", request, _nothing, deadline)


def claim_run(
    worker_id: str,
    *,
    assistant_ids: Iterable[str] | None = None,
    lease_duration: timedelta | float = 30.0,
    wait: timedelta | float = 0.0,
    namespace: str | None = None,
    deadline: float | None = None,
) -> UnaryCall[run_service_pb2.ClaimRunResponse, Run | None]:
    """Claim the oldest claimable PENDING run for `worker_id`, or None if there is none.

    The server long-polls up to `wait` (at most 60 s) for one to become claimable;
    the default deadline is extended by `wait`. Keep the claim with `heartbeat_run`
    within `lease_duration`. `namespace` (default: the client's) claims only there;
    "" claims in every namespace where the caller is a worker.
    """
    request = run_service_pb2.ClaimRunRequest(
        namespace=namespace or "",
        worker_id=worker_id,
        assistant_ids=list(assistant_ids or ()),
        lease_duration=duration_to_proto(lease_duration),
        wait=duration_to_proto(wait),
    )
    return UnaryCall(
        "ClaimRun",
        request,
        _claimed_run,
        deadline,
        server_wait=request.wait.ToTimedelta().total_seconds(),
    )


def heartbeat_run(
    run_id: str,
    worker_id: str,
    *,
    lease_duration: timedelta | float = 30.0,
    deadline: float | None = None,
) -> UnaryCall[run_pb2.Run, Run]:
    """Extend `worker_id`'s lease on a RUNNING run; `LeaseLost` means stop working on it."""
    request = run_service_pb2.HeartbeatRunRequest(
        run_id=run_id, worker_id=worker_id, lease_duration=duration_to_proto(lease_duration)
    )
    return UnaryCall("HeartbeatRun", request, run_from_proto, deadline)


def complete_run(
    run_id: str,
    worker_id: str,
    status: RunStatus | str,
    *,
    error: str = "",
    metadata: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    retryable: bool = False,
    deadline: float | None = None,
) -> UnaryCall[run_pb2.Run, Run]:
    """End a RUNNING run with success or error, merging `metadata` into the run's and
    storing `result` (with an error, partial output) as the run's result.

    An error that is `retryable` sends a run with a retry policy back in line, PENDING,
    while it has attempts left; the run returned says which happened.
    """
    request = run_service_pb2.CompleteRunRequest(
        run_id=run_id,
        worker_id=worker_id,
        status=run_status_to_proto(status),
        error=error,
        retryable=retryable,
    )
    if metadata is not None:
        request.metadata.CopyFrom(struct_to_proto(metadata))
    if result is not None:
        request.result.CopyFrom(struct_to_proto(result))
    return UnaryCall("CompleteRun", request, run_from_proto, deadline)


def watch_runs(
    *,
    thread_id: str | None = None,
    assistant_id: str | None = None,
    statuses: Iterable[RunStatus | str] | None = None,
    metadata: dict[str, Any] | None = None,
    start_revision: int = 0,
    include_initial: bool = False,
    progress_interval: timedelta | float | None = None,
    reconnect: bool = True,
    on_reconnect: ReconnectHook | None = None,
    namespace: str | None = None,
    deadline: float | None = None,
) -> WatchCall:
    """Iterate the changes of runs matching the filters (as `list_runs`), as `RunEvent`s.

    From now by default, or from `start_revision` (inclusive: a `RunPage.revision` + 1
    continues a listing with no gap). With `include_initial`, first the matching runs
    as INITIAL events, all read at one revision. A run is reported when it matches
    before or after a change, so a watch of running runs sees the change that ends one.

    The iterator never ends by itself: stop iterating to close it. If the connection
    drops or the server restarts, it reconnects and resumes right after the last
    revision it gave you: no gap, no duplicate (`reconnect=False` raises `Unavailable`
    instead); `on_reconnect(error)` is called once per drop. A server that cannot be
    reached at the start is retried as a read is, then `Unavailable` is raised. If the
    server no longer has that history, it raises `RevisionCompacted`: list again and
    watch from the listing's revision + 1. `namespace` as in `list_runs`. `deadline`
    bounds the whole watch, reconnections included.
    """
    request = run_service_pb2.WatchRunsRequest(
        filter=_run_filter(thread_id, assistant_id, statuses, metadata, namespace),
        start_revision=start_revision,
        include_initial=include_initial,
    )
    if progress_interval is not None:
        request.progress_interval.CopyFrom(duration_to_proto(progress_interval))
    return WatchCall("WatchRuns", request, deadline, reconnect=reconnect, on_reconnect=on_reconnect)


def watch_run(
    run_id: str,
    *,
    start_revision: int = 0,
    reconnect: bool = True,
    on_reconnect: ReconnectHook | None = None,
    deadline: float | None = None,
) -> WatchCall:
    """Iterate one run's changes as `RunEvent`s: its current state first (INITIAL),
    then each change; the iterator ends after the run turns terminal or is deleted.

    With `start_revision`, its changes from that revision on instead of its state.
    Resumes by itself after a dropped connection, as `watch_runs`; `NotFound` for an
    unknown run.
    """
    request = run_service_pb2.WatchRunRequest(run_id=run_id, start_revision=start_revision)
    return WatchCall("WatchRun", request, deadline, reconnect=reconnect, on_reconnect=on_reconnect)


def wait_run(
    run_id: str,
    *,
    timeout: timedelta | float | None = None,
    on_reconnect: ReconnectHook | None = None,
) -> WatchCall:
    """Block until the run is terminal and return it (SUCCESS, ERROR, TIMEOUT, INTERRUPTED).

    Raises `NotFound` if the run does not exist, `RunDeleted` if it is deleted before
    it ends, and `DeadlineExceeded` after `timeout` (None: wait as long as it takes).
    Resumes after a dropped connection as `watch_run` does.
    """
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    return watch_run(run_id, deadline=seconds, on_reconnect=on_reconnect)


def stats(
    *, namespace: str | None = None, deadline: float | None = None
) -> UnaryCall[run_service_pb2.GetStatsResponse, Stats]:
    """Queue depths and oldest waits per namespace and assistant, inflight runs per
    namespace and status, and the watch streams open on the replica that answers.

    `namespace` (default: the client's) limits the figures to one namespace; ""
    means every namespace the caller may read.
    """
    request = run_service_pb2.GetStatsRequest(namespace=namespace or "")
    return UnaryCall("GetStats", request, stats_from_proto, deadline, idempotent=True)


def _run_filter(
    thread_id: str | None,
    assistant_id: str | None,
    statuses: Iterable[RunStatus | str] | None,
    metadata: dict[str, Any] | None,
    namespace: str | None,
) -> run_service_pb2.RunFilter:
    run_filter = run_service_pb2.RunFilter(
        namespace=namespace or "",
        thread_id=thread_id or "",
        assistant_id=assistant_id or "",
        statuses=[run_status_to_proto(status) for status in statuses or ()],
    )
    if metadata is not None:
        run_filter.metadata.CopyFrom(struct_to_proto(metadata))
    return run_filter


def _nothing(_: empty_pb2.Empty) -> None:
    return None


def _claimed_run(response: run_service_pb2.ClaimRunResponse) -> Run | None:
    return run_from_proto(response.run) if response.HasField("run") else None
