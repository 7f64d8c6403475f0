"""The cross-replica doorbell: a dedicated PostgreSQL connection that LISTENs for commits.

Writers `pg_notify` on `CHANGES_CHANNEL` inside their transaction (`RunStore.apply`);
this connection hears it when they commit, on whichever replica. Notifications sent
while it is disconnected are lost, so every (re)connection rings once as well: the
hub then re-reads the event log, which is the only source of truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import URL

from runplane.server.store.event_log import CHANGES_CHANNEL

log = logging.getLogger(__name__)

PROBE_INTERVAL = 10.0
"""Seconds without a notification after which the connection is checked to be alive."""
CONNECT_TIMEOUT = 5


def _conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_for_changes(url: URL, ring: Callable[[int], None]) -> None:
    """Call `ring(revision)` on every commit notification, and `ring(0)` (revision not
    known) after each (re)connection.

    Runs until cancelled; a lost connection is retried with capped backoff.
    """
    failures = 0
    while True:
        try:
            connection = await psycopg.AsyncConnection.connect(
                _conninfo(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
            async with connection:
                await connection.execute(f"LISTEN {CHANGES_CHANNEL}")
                if failures:
                    log.info("listening for changes again")
                failures = 0
                ring(0)  # for whatever was committed while nobody listened
                while True:
                    async for notification in connection.notifies(timeout=PROBE_INTERVAL):
                        ring(int(notification.payload) if notification.payload.isdigit() else 0)
                    # A quiet spell: make sure it is quiet, not a dead connection.
                    await connection.execute("SELECT 1")
        except psycopg.Error as error:
            failures += 1
            if failures == 1:
                log.warning("lost the change notifications connection: %s", error)
            ring(0)  # the fallback poll carries on; look once now
            await asyncio.sleep(min(5.0, 0.1 * 2**failures))
