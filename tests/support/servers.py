"""A real runplane server on 127.0.0.1:0, on its own event loop in a thread.

The tests then reach it like any client would: the sync Client, the AsyncClient
(on the test's own loop) and raw stubs, over real sockets.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from runplane.server.app import RunningServer, new_event_loop, start_server
from runplane.server.config import ServerConfig
from tests.support.databases import database_url

T = TypeVar("T")


class ServerThread:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        # The loop `runplane serve` would run it on, so that the tests cover that one.
        self._loop = new_event_loop(config.event_loop)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._running: RunningServer | None = None

    def start(self) -> ServerThread:
        self._thread.start()
        self._running = self.call(start_server(self.config))
        return self

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def running(self) -> RunningServer:
        assert self._running is not None, "server not started"
        return self._running

    @property
    def address(self) -> str:
        return self.running.address

    def stop(self, grace: float = 0) -> None:
        if self._running is not None:
            self.call(self._running.stop(grace))
            self._running = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextmanager
def own_server(backend: str, folder: Path, **settings: Any) -> Iterator[ServerThread]:
    """A server on a database of its own that holds no run yet (`database_url`), with
    any other `ServerConfig` settings given."""
    with database_url(backend, folder) as url:
        config = ServerConfig(address="127.0.0.1:0", database_url=url, **settings)
        running = ServerThread(config).start()
        try:
            yield running
        finally:
            running.stop()
