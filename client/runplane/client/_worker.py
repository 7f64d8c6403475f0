"""Workers: run a handler for each claimed run, keep its lease, report how it ended.

    async def summarize(run: Run) -> dict[str, Any] | None:
        ...                                   # the work; its result is merged into metadata

    async with AsyncClient() as client:
        worker = AsyncWorker(client, summarize, assistant_ids=["summarizer"])
        await worker.run()                    # until worker.stop(); then drains

For each run it claims, a worker starts the handler, heartbeats every third of the
lease while the handler works, and completes the run with SUCCESS (the handler's
returned dict merged into the run's metadata) or ERROR (the exception's message).
It also watches its run, so the moment the run is lost (interrupted, rolled back,
timed out or re-claimed) the handler is cancelled and nothing is reported; a
heartbeat answered with LeaseLost does the same should the watch fail. `stop()`
stops claiming; runs in hand are finished first.

`Worker` is the same for plain functions: it runs `handler(run, stop)` in a
thread, where `stop` is a `threading.Event` set when the run is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, TypedDict, Unpack

from runplane.client._async_client import AsyncClient
from runplane.client._channels import TLSConfig, connection
from runplane.client._errors import LeaseLost, NotFound, RunplaneError
from runplane.client._models import EventType, Run, RunStatus

log = logging.getLogger(__name__)

AsyncHandler = Callable[[Run], Awaitable[dict[str, Any] | None]]
Handler = Callable[[Run, threading.Event], dict[str, Any] | None]


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
        self._stopping = threading.Event()

    async def run(self) -> None:
        """Claim and work runs until `stop()`; then finish the runs in hand and return."""
        await asyncio.gather(*(self._claim_loop() for _ in range(self._concurrency)))

    def stop(self) -> None:
        """Stop claiming (callable from any thread); `run()` returns once runs in hand end."""
        self._stopping.set()

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
            await asyncio.sleep(0.2)

    async def work(self, run: Run) -> Run | None:
        """Work a run this worker claimed: the run as it ended, or None if it was lost."""
        handling = asyncio.ensure_future(self._handler(run))
        guards = {
            asyncio.ensure_future(self._hold_lease(run)),
            asyncio.ensure_future(self._watch_for_loss(run)),
        }
        await asyncio.wait({handling, *guards}, return_when=asyncio.FIRST_COMPLETED)
        for guard in guards:
            guard.cancel()
        await asyncio.gather(*guards, return_exceptions=True)
        if not handling.done():
            log.info("run %s was lost; cancelling its handler", run.run_id)
            handling.cancel()
            with contextlib.suppress(BaseException):
                await handling
            return None
        error = handling.exception()
        try:
            if error is None:
                return await self._client.complete_run(
                    run.run_id, self.worker_id, RunStatus.SUCCESS, metadata=handling.result()
                )
            return await self._client.complete_run(
                run.run_id, self.worker_id, RunStatus.ERROR, error=str(error) or repr(error)
            )
        except LeaseLost:
            return None

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
            except LeaseLost:
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


class _Connection(TypedDict):
    tls: bool | TLSConfig
    token: str | None
    namespace: str | None


class Worker:
    """`AsyncWorker` for a plain function, run in a thread as `handler(run, stop)`.

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
                if self._stopping.is_set():
                    worker.stop()
                return await work(worker)

        return asyncio.run(main())

    def run(self) -> None:
        """Claim and work runs until `stop()` (from another thread), then drain."""
        self._serve(lambda worker: worker.run())

    def run_once(self, wait: timedelta | float = 0.0) -> Run | None:
        """Claim one run (waiting up to `wait`) and work it; the run as it ended, or None."""
        result: Run | None = self._serve(lambda worker: worker.run_once(wait))
        return result

    def stop(self) -> None:
        self._stopping.set()
        if self._current is not None:
            self._current.stop()
