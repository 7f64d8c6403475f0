"""The store's revision, read on the event loop (PostgreSQL).

A replica's run cache answers a lookup only once its watch hub is through the store's
revision as of the call (`cache.ReplicaCache`), so every such lookup reads it. A read
starts after each call it answers arrived, so no write committed before the call is
missed; the calls that arrive while a read is in flight share the next one.

Under load the calls come one per turn of the event loop and hardly ever share a read,
so what one read costs the loop is what matters: it goes through a `LoopSession` of its
own (about 60 µs of CPU, most of it the loop's wake-up, against 150 µs through psycopg's
asyncio connection).
"""

from __future__ import annotations

import asyncio

from psycopg import pq
from sqlalchemy.engine import URL

from runplane.server.errors import StoreUnavailable
from runplane.server.store.loop_session import LoopSession

_STATEMENT = b"runplane_revision"
_REVISION = "SELECT revision FROM store_state"


class RevisionReads:
    def __init__(self, url: URL) -> None:
        self._session = LoopSession(url, {_STATEMENT: _REVISION})
        self._reading: asyncio.Future[int] | None = None
        """What the calls of the read in flight wait for."""
        self._next: asyncio.Future[int] | None = None
        """What the calls that came since the read in flight began wait for."""

    async def read(self) -> int:
        """The store's revision, read after the call came."""
        future = self._next
        if future is None:
            future = self._next = asyncio.get_running_loop().create_future()
            if self._reading is None:
                self._start()
        # The read belongs to every call waiting for it: one that leaves (its deadline)
        # must not cancel it for the others.
        return await asyncio.shield(future)

    def _start(self) -> None:
        """Send the read the calls since the last one wait for."""
        self._reading, self._next = self._next, None
        self._session.submit(_STATEMENT, None, prepared=True, deliver=self._answer)

    def _answer(self, result: pq.abc.PGresult | StoreUnavailable) -> None:
        """Answer the read in flight, then send the next if calls wait."""
        future, self._reading = self._reading, None
        if future is not None and not future.done():
            if isinstance(result, StoreUnavailable):
                future.set_exception(result)
                future.exception()  # retrieved, should every caller have left
            else:
                value = result.get_value(0, 0)
                assert value is not None, "store_state has its one row"
                future.set_result(int(value))
        if self._next is not None:
            self._start()

    def close(self) -> None:
        """Stop reading (at shutdown): calls still waiting are cancelled, and the
        connection is closed."""
        reading, waiting = self._reading, self._next
        self._reading = self._next = None
        self._session.close()
        for future in (reading, waiting):
            if future is not None:
                future.cancel()
