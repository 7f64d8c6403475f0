"""The asyncio client: `AsyncClient`, with the same methods as `Client`, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import grpc

from runplane.client import _requests, _tracing
from runplane.client._channels import TLSConfig, connection
from runplane.client._convert import run_event_from_proto
from runplane.client._models import Run, RunEvent
from runplane.client._pagers import AsyncRunPager
from runplane.client._requests import RunListing, UnaryCall, client_method
from runplane.client._retry import DEFAULT_RETRY, RetryPolicy
from runplane.client._watching import WatchCall, finished_run, unfinished
from runplane.v1 import run_pb2, run_service_pb2_grpc

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _unary(
    definition: Callable[_P, UnaryCall[Any, _T]],
) -> Callable[Concatenate[AsyncClient, _P], Coroutine[Any, Any, _T]]:
    async def method(self: AsyncClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self._call(definition(*args, **kwargs))

    return client_method(definition, method)


def _paged(
    definition: Callable[_P, RunListing],
) -> Callable[Concatenate[AsyncClient, _P], AsyncRunPager]:
    def method(self: AsyncClient, /, *args: _P.args, **kwargs: _P.kwargs) -> AsyncRunPager:
        return AsyncRunPager(definition(*args, **kwargs), self._call)

    return client_method(definition, method)


def _watched(
    definition: Callable[_P, WatchCall],
) -> Callable[Concatenate[AsyncClient, _P], AsyncIterator[RunEvent]]:
    def method(
        self: AsyncClient, /, *args: _P.args, **kwargs: _P.kwargs
    ) -> AsyncIterator[RunEvent]:
        return self._watch(definition(*args, **kwargs), run_event_from_proto)

    return client_method(definition, method)


def _waited(
    definition: Callable[_P, WatchCall],
) -> Callable[Concatenate[AsyncClient, _P], Coroutine[Any, Any, Run]]:
    async def method(self: AsyncClient, /, *args: _P.args, **kwargs: _P.kwargs) -> Run:
        watch = definition(*args, **kwargs)
        async for run in self._watch(watch, finished_run):
            if run is not None:
                return run
        raise unfinished(watch)

    return client_method(definition, method)


class AsyncClient:
    """An asyncio runplane client over one `grpc.aio` channel.

    Use it as an async context manager (or await `close()`). Methods are the
    `Client` ones, as coroutines; `list_runs` returns a pager for `async for`.
    It connects as `Client` does: `tls`, `token` and `namespace` mean the same.
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
            self._channel = grpc.aio.insecure_channel(address, options=reach.options)
        else:
            self._channel = grpc.aio.secure_channel(address, reach.credentials, reach.options)
        self._metadata = reach.metadata
        self._namespace = namespace or ""
        self._stub = run_service_pb2_grpc.RunServiceStub(self._channel)
        self._default_deadline = default_deadline
        self._retry_policy = retry_policy

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, call: UnaryCall[Any, _T]) -> _T:
        attempts = call.attempts(self._default_deadline, self._retry_policy)
        send = getattr(self._stub, call.rpc)
        with _tracing.call_span(call.rpc) as traced:
            metadata = (*self._metadata, *traced)
            while True:
                try:
                    response = await send(
                        call.request, timeout=attempts.remaining(), metadata=metadata
                    )
                except grpc.RpcError as error:
                    await asyncio.sleep(attempts.backoff_or_raise(error))
                else:
                    return call.convert(response)

    async def _watch(
        self, watch: WatchCall, convert: Callable[[run_pb2.RunEvent], _T]
    ) -> AsyncIterator[_T]:
        """The watch's events, each as `convert` makes it, resuming after a drop."""
        resumption = watch.start(self._retry_policy)
        send = getattr(self._stub, watch.rpc)
        metadata = (*self._metadata, *_tracing.stream_metadata())
        while True:
            call = send(resumption.request(), timeout=resumption.remaining(), metadata=metadata)
            try:
                resumption.headers(await call.initial_metadata())
                async for response in call:
                    for event in resumption.receive(response):
                        yield convert(event)
                return
            except grpc.RpcError as error:
                await asyncio.sleep(resumption.pause_or_raise(error))
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
