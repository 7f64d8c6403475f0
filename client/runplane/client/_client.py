"""The blocking client: `Client`, for scripts, CLIs and threaded services."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import grpc

from runplane.client import _requests, _tracing
from runplane.client._channels import TLSConfig, connection
from runplane.client._convert import run_event_from_proto
from runplane.client._models import Run, RunEvent
from runplane.client._pagers import RunPager
from runplane.client._requests import RunListing, UnaryCall, client_method
from runplane.client._retry import DEFAULT_RETRY, RetryPolicy
from runplane.client._watching import WatchCall, finished_run, unfinished
from runplane.v1 import run_pb2, run_service_pb2_grpc

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _unary(
    definition: Callable[_P, UnaryCall[Any, _T]],
) -> Callable[Concatenate[Client, _P], _T]:
    def method(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._call(definition(*args, **kwargs))

    return client_method(definition, method)


def _paged(definition: Callable[_P, RunListing]) -> Callable[Concatenate[Client, _P], RunPager]:
    def method(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> RunPager:
        return RunPager(definition(*args, **kwargs), self._call)

    return client_method(definition, method)


def _watched(
    definition: Callable[_P, WatchCall],
) -> Callable[Concatenate[Client, _P], Iterator[RunEvent]]:
    def method(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> Iterator[RunEvent]:
        return self._watch(definition(*args, **kwargs), run_event_from_proto)

    return client_method(definition, method)


def _waited(definition: Callable[_P, WatchCall]) -> Callable[Concatenate[Client, _P], Run]:
    def method(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> Run:
        watch = definition(*args, **kwargs)
        for run in self._watch(watch, finished_run):
            if run is not None:
                return run
        raise unfinished(watch)

    return client_method(definition, method)


class Client:
    """A blocking runplane client over one gRPC channel.

    Use it as a context manager (or call `close()`) to release the channel. Every
    call is bounded by `default_deadline` seconds unless given its own `deadline`;
    failures raise `RunplaneError` subclasses, never `grpc.RpcError`.

    `tls=True` (or a `TLSConfig`) connects over TLS; `token` is sent as a bearer
    token with every call (in plaintext only to a loopback address); `namespace` is
    the namespace creates, listings, watches and claims use unless given their own.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        default_deadline: float = 10.0,
        channel_options: Sequence[tuple[str, Any]] = (),
        retry_policy: RetryPolicy = DEFAULT_RETRY,
        tls: bool | TLSConfig = False,
        token: str | None = None,
        namespace: str | None = None,
    ) -> None:
        reach = connection(address, tls, token, list(channel_options))
        if reach.credentials is None:
            self._channel = grpc.insecure_channel(address, options=reach.options)
        else:
            self._channel = grpc.secure_channel(address, reach.credentials, reach.options)
        self._metadata = reach.metadata
        self._namespace = namespace or ""
        self._stub = run_service_pb2_grpc.RunServiceStub(self._channel)
        self._default_deadline = default_deadline
        self._retry_policy = retry_policy

    def close(self) -> None:
        self._channel.close()
        # The channel ends its cancelled calls on a daemon thread of grpc's. A call object
        # left in a reference cycle would otherwise be collected at interpreter exit,
        # after that thread is frozen, and wait forever for a lock it holds: a program
        # that watched and then exited could hang. Collect it while the thread runs.
        gc.collect()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, call: UnaryCall[Any, _T]) -> _T:
        attempts = call.attempts(self._default_deadline, self._retry_policy)
        send = getattr(self._stub, call.rpc)
        with _tracing.call_span(call.rpc) as traced:
            metadata = (*self._metadata, *traced)
            while True:
                try:
                    response = send(call.request, timeout=attempts.remaining(), metadata=metadata)
                except grpc.RpcError as error:
                    time.sleep(attempts.backoff_or_raise(error))
                else:
                    return call.convert(response)

    def _watch(self, watch: WatchCall, convert: Callable[[run_pb2.RunEvent], _T]) -> Iterator[_T]:
        """The watch's events, each as `convert` makes it, resuming after a drop."""
        resumption = watch.start(self._retry_policy)
        send = getattr(self._stub, watch.rpc)
        metadata = (*self._metadata, *_tracing.stream_metadata())
        while True:
            call = send(resumption.request(), timeout=resumption.remaining(), metadata=metadata)
            try:
                resumption.headers(call.initial_metadata())
                for response in call:
                    for event in resumption.receive(response):
                        yield convert(event)
                return
            except grpc.RpcError as error:
                time.sleep(resumption.pause_or_raise(error))
            finally:
                call.cancel()

    create_run = _unary(_requests.create_run)
    get_run = _unary(_requests.get_run)
    list_runs = _paged(_requests.list_runs)
    update_run = _unary(_requests.update_run)
    cancel_run = _unary(_requests.cancel_run)
    cancel_runs = _unary(_requests.cancel_runs)
    delete_run = _unary(_requests.delete_run)
    claim_run = _unary(_requests.claim_run)
    heartbeat_run = _unary(_requests.heartbeat_run)
    complete_run = _unary(_requests.complete_run)
    watch_runs = _watched(_requests.watch_runs)
    watch_run = _watched(_requests.watch_run)
    wait_run = _waited(_requests.wait_run)
    stats = _unary(_requests.stats)
