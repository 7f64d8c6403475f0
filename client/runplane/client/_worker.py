"""Workers: run a handler for each claimed run, keep its lease, report how it ended.

    async def summarize(run: Run) -> dict[str, Any] | None:
        ...                                   # the work; what it returns is the run's result

    async with AsyncClient() as client:
        worker = AsyncWorker(client, summarize, assistant_ids=["summarizer"])
        await worker.run()                    # until worker.stop(); then drains

For each run it claims, a worker starts the handler, heartbeats every third of the
lease while the handler works, and completes the run with SUCCESS (the handler's
returned dict stored as the run's `result`) or ERROR (the exception's message). A
handler raises `RetryableError` to ask for another attempt: the run's retry policy,
if it has attempts left, sends it back in line after its backoff; any other
exception, or a run without a policy, ends it as ERROR.
It also watches its run, so the moment the run is lost (interrupted, rolled back,
timed out or re-claimed) the handler is cancelled and nothing is reported; a
heartbeat answered with LeaseLost (or NotFound: the run was deleted) does the same
should the watch fail.

Stopping is graceful. `stop()` (or SIGINT/SIGTERM, which `run()` handles unless
`handle_signals=False`) stops claiming and lets the runs in hand finish, for up to
`stop_grace`. A second `stop()` (a second Ctrl-C), or the grace running out, cancels
their handlers and hands the runs back: there is no release call, so the worker
heartbeats each with the shortest lease, which expires at once, and the server's
sweeper (every second) puts the run back in line for another worker, keeping its
place in its thread (the claim counts as an attempt). Nothing waits for a lease
of `lease_duration` to run out.

`Worker` is the same for plain functions: it runs `handler(run, stop)` in a
thread, where `stop` is a `threading.Event` set when the run is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, TypedDict, Unpack

from runplane.client import _tracing
from runplane.client._async_client import AsyncClient
from runplane.client._channels import TLSConfig, connection
from runplane.client._errors import LeaseLost, NotFound, RunplaneError
from runplane.client._models import EventType, Run, RunStatus

log = logging.getLogger(__name__)

AsyncHandler = Callable[[Run], Awaitable[dict[str, Any] | None]]
Handler = Callable[[Run, threading.Event], dict[str, Any] | None]

_HAND_BACK_LEASE = 0.001
"""Seconds: the shortest lease, expired as soon as it is granted."""
_POLL = 0.2
"""Seconds between looks at the stop flags, which any thread may set."""


class RetryableError(Exception):
    """Raise it from a handler when this attempt failed but another may succeed (a
    timeout, a rate limit): the run is completed with ERROR (this message) marked
    retryable, so its retry policy tries it again while attempts remain."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class AsyncWorker:
    def __init__(
        self,
        client: AsyncClient,
        handler: AsyncHandler,
        *,
        assistant_ids: Iterable[str] = (),
        worker_id: str | None = None,
        lease_duration: timedelta | float = 30.0,
        concurrency: int = 1,
        claim_wait: timedelta | float = 30.0,
        stop_grace: timedelta | float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.worker_id = worker_id or default_worker_id()
        self._client = client
        self._handler = handler
        self._assistant_ids = tuple(assistant_ids)
        self._lease = _seconds(lease_duration)
        self._concurrency = concurrency
        self._claim_wait = _seconds(claim_wait)
        self._stop_grace = _seconds(stop_grace)
        self._stopping = threading.Event()
        self._abandoning = threading.Event()
        self._abandon_at = float("inf")
        """time.monotonic() when runs still in hand are handed back."""

    async def run(self, *, handle_signals: bool = True) -> None:
        """Claim and work runs until `stop()`; then finish the runs in hand and return.

        With `handle_signals` (the default, for a worker that is the program's main
        loop), SIGINT and SIGTERM call `stop()` while it runs; pass False when the
        program handles signals itself. Signals are only handled on the main thread.
        """
        with self._signals_stop() if handle_signals else contextlib.nullcontext():
            await asyncio.gather(*(self._claim_loop() for _ in range(self._concurrency)))

    def stop(self) -> None:
        """Stop claiming; the runs in hand get `stop_grace` to finish. A second call
        hands them back at once (see the module docstring). Callable from any thread."""
        if self._stopping.is_set():
            self._abandoning.set()
            return
        self._abandon_at = time.monotonic() + self._stop_grace
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called: no more claims."""
        return self._stopping.is_set()

    @contextlib.contextmanager
    def _signals_stop(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            yield
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping.is_set():
            log.warning("%s again: handing the runs in hand back", name)
        else:
            log.warning(
                "%s: no more claims; finishing the runs in hand (up to %gs, "
                "interrupt again to hand them back now)",
                name,
                self._stop_grace,
            )
        self.stop()

    async def run_once(self, wait: timedelta | float = 0.0) -> Run | None:
        """Claim one run (waiting up to `wait`) and work it; the run as it ended, or None."""
        run = await self._claim(_seconds(wait))
        return None if run is None else await self.work(run)

    async def _claim(self, wait: float) -> Run | None:
        return await self._client.claim_run(
            self.worker_id,
            assistant_ids=self._assistant_ids,
            lease_duration=self._lease,
            wait=wait,
        )

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            claim = asyncio.ensure_future(self._claim(self._claim_wait))
            stopped = asyncio.ensure_future(self._stopped())
            await asyncio.wait({claim, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not claim.done():
                # A claim the server grants after this is requeued when its lease expires.
                claim.cancel()
                return
            try:
                run = claim.result()
            except RunplaneError as error:
                log.warning("claim failed: %s; retrying", error)
                await asyncio.sleep(1.0)
                continue
            if run is not None:
                await self.work(run)

    async def _stopped(self) -> None:
        # stop() may come from any thread, so this polls a threading.Event.
        while not self._stopping.is_set():  # noqa: ASYNC110
            await asyncio.sleep(_POLL)

    async def _abandoned(self) -> None:
        """Return once the runs in hand must be handed back: a second stop(), or the
        grace after the first one is over."""
        while not self._abandoning.is_set() and time.monotonic() < self._abandon_at:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)

    async def work(self, run: Run) -> Run | None:
        """Work a run this worker claimed: the run as it ended, or None if it was lost
        or handed back.

        The work joins the trace its creator left in `run.trace_context` (heartbeats and
        the completion included), the handler in a span of its own.
        """
        with _tracing.run_context(run):
            return await self._work(run)

    async def _handle(self, run: Run) -> dict[str, Any] | None:
        with _tracing.handler_span(run):
            return await self._handler(run)

    async def _work(self, run: Run) -> Run | None:
        handling = asyncio.ensure_future(self._handle(run))
        abandoned = asyncio.ensure_future(self._abandoned())
        guards = {
            abandoned,
            asyncio.ensure_future(self._hold_lease(run)),
            asyncio.ensure_future(self._watch_for_loss(run)),
        }
        await asyncio.wait({handling, *guards}, return_when=asyncio.FIRST_COMPLETED)
        for guard in guards:
            guard.cancel()
        await asyncio.gather(*guards, return_exceptions=True)
        if not handling.done():
            handing_back = abandoned.done() and not abandoned.cancelled()
            log.info(
                "run %s %s; cancelling its handler",
                run.run_id,
                "is handed back" if handing_back else "was lost",
            )
            handling.cancel()
            with contextlib.suppress(BaseException):
                await handling
            if handing_back:
                await self._hand_back(run)
            return None
        error = handling.exception()
        try:
            if error is None:
                return await self._client.complete_run(
                    run.run_id, self.worker_id, RunStatus.SUCCESS, result=handling.result()
                )
            return await self._client.complete_run(
                run.run_id,
                self.worker_id,
                RunStatus.ERROR,
                error=str(error) or repr(error),
                retryable=isinstance(error, RetryableError),
            )
        except (LeaseLost, NotFound):  # NotFound: deleted meanwhile
            return None

    async def _hand_back(self, run: Run) -> None:
        """Let the lease expire now, so that the sweeper requeues the run within a second."""
        try:
            await self._client.heartbeat_run(
                run.run_id, self.worker_id, lease_duration=_HAND_BACK_LEASE
            )
        except RunplaneError as error:  # lost meanwhile, or the server is away: its lease ends
            log.warning("could not hand run %s back: %s", run.run_id, error)

    async def _watch_for_loss(self, run: Run) -> None:
        """Return as soon as the run is no longer RUNNING under this worker."""
        try:
            async for event in self._client.watch_run(run.run_id, start_revision=run.revision + 1):
                lost = event.type is EventType.DELETED or event.run.status is not RunStatus.RUNNING
                if lost or event.run.worker_id != self.worker_id:
                    return
        except NotFound:
            return  # deleted before the watch began
        except RunplaneError as error:
            log.warning("cannot watch run %s (%s); relying on heartbeats", run.run_id, error)
            await asyncio.Event().wait()

    async def _hold_lease(self, run: Run) -> None:
        """Heartbeat every third of the lease; return when the run is lost."""
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await self._client.heartbeat_run(
                    run.run_id, self.worker_id, lease_duration=self._lease
                )
            except (LeaseLost, NotFound):
                return
            except RunplaneError as error:
                log.warning("heartbeat of run %s failed: %s", run.run_id, error)


class WorkerOptions(TypedDict, total=False):
    """`AsyncWorker`'s keyword options, which `Worker` takes as they are."""

    assistant_ids: Iterable[str]
    worker_id: str | None
    lease_duration: timedelta | float
    concurrency: int
    claim_wait: timedelta | float
    stop_grace: timedelta | float


class _Connection(TypedDict):
    tls: bool | TLSConfig
    token: str | None
    namespace: str | None


class Worker:
    """`AsyncWorker` for a plain function, run in a thread as `handler(run, stop)`.

    `stop` is set when the run is lost or handed back: the handler should then return
    soon, since a thread cannot be cancelled and the worker waits for it to end.

    It connects to `address` as `Client` does: `tls`, `token`, and `namespace` (where
    it claims; default: every namespace where its principal is a worker).
    """

    def __init__(
        self,
        address: str,
        handler: Handler,
        *,
        tls: bool | TLSConfig = False,
        token: str | None = None,
        namespace: str | None = None,
        **options: Unpack[WorkerOptions],
    ) -> None:
        connection(address, tls, token, [])  # bad settings fail here, not in run()
        self._address = address
        self._connection: _Connection = {"tls": tls, "token": token, "namespace": namespace}
        self._handler = handler
        self.worker_id: str = options.get("worker_id") or default_worker_id()
        self._options: WorkerOptions = {**options, "worker_id": self.worker_id}
        self._stopping = threading.Event()
        self._current: AsyncWorker | None = None

    async def _in_thread(self, run: Run) -> dict[str, Any] | None:
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._handler, run, stop)
        except asyncio.CancelledError:
            stop.set()  # the thread cannot be killed: tell the handler to give up
            raise

    def _serve(self, work: Callable[[AsyncWorker], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            async with AsyncClient(self._address, **self._connection) as client:
                worker = AsyncWorker(client, self._in_thread, **self._options)
                self._current = worker
                if self._stopping.is_set() and not worker.stopping:
                    worker.stop()
                return await work(worker)

        return asyncio.run(main())

    def run(self, *, handle_signals: bool = True) -> None:
        """Claim and work runs until `stop()` (from another thread) or SIGINT/SIGTERM,
        then drain, as `AsyncWorker.run` does."""
        self._serve(lambda worker: worker.run(handle_signals=handle_signals))

    def run_once(self, wait: timedelta | float = 0.0) -> Run | None:
        """Claim one run (waiting up to `wait`) and work it; the run as it ended, or None."""
        result: Run | None = self._serve(lambda worker: worker.run_once(wait))
        return result

    def stop(self) -> None:
        """As `AsyncWorker.stop`: a first call drains, a second hands the runs back."""
        self._stopping.set()
        if self._current is not None:
            self._current.stop()
