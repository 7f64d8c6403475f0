"""Deleting gives space back: with --run-retention and compaction, a steady workload
keeps a SQLite file at a bounded size (counted in pages, not timed), and a file made
before auto_vacuum still serves, reusing its free pages."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from runplane.client import Client
from runplane.server.config import ServerConfig
from tests.support.servers import ServerThread

RUNS_PER_ROUND = 100
KWARGS = {"prompt": "x" * 2000}


def _pages(path: Path) -> tuple[int, int, int]:
    """(auto_vacuum, page_count, freelist_count) of the database, as committed."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        auto_vacuum, pages, free = (
            int(connection.execute(f"PRAGMA {name}").fetchone()[0])
            for name in ("auto_vacuum", "page_count", "freelist_count")
        )
    return auto_vacuum, pages, free


def _round(server: ServerThread, client: Client, number: int) -> None:
    """A round of traffic, then retention and compaction."""
    for i in range(RUNS_PER_ROUND):
        run = client.create_run("agent", kwargs=KWARGS, metadata={"round": number, "i": i})
        client.cancel_run(run.run_id)
    time.sleep(0.01)  # everything is older than both retentions
    retention = server.running.retention
    assert retention is not None
    assert server.call(retention.delete_expired()) == RUNS_PER_ROUND
    assert server.call(server.running.compactor.compact_now()) is not None


def _server(path: Path) -> ServerThread:
    config = ServerConfig(
        address="127.0.0.1:0",
        database_url=f"sqlite:///{path}",
        run_retention=0.001,
        event_retention=0.001,
        # The test runs the rounds itself.
        retention_interval=3600,
        compaction_interval=3600,
    )
    return ServerThread(config).start()


def test_a_steady_workload_keeps_the_file_bounded(tmp_path: Path) -> None:
    path = tmp_path / "runplane.db"
    server = _server(path)
    try:
        with Client(server.address) as client:
            _round(server, client, 0)
            auto_vacuum, settled, _ = _pages(path)
            assert auto_vacuum == 2  # INCREMENTAL, set as the file was made
            for number in range(1, 6):
                _round(server, client, number)
                _, pages, free = _pages(path)
                # Each round writes ~1 MiB of runs and events (~250 pages of 4 KiB);
                # what it deleted is given back rather than kept as free pages.
                assert free == 0, (number, pages, free)
                assert pages <= settled + 16, (number, pages, settled)
    finally:
        server.stop()


def test_a_file_made_without_auto_vacuum_reuses_its_free_pages(tmp_path: Path) -> None:
    path = tmp_path / "runplane.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE made_by_an_older_version (x)")
    server = _server(path)
    try:
        with Client(server.address) as client:
            _round(server, client, 0)
            _round(server, client, 1)
            auto_vacuum, settled, _ = _pages(path)
            assert auto_vacuum == 0
            for number in range(2, 5):
                _round(server, client, number)
                _, pages, _free = _pages(path)
                assert pages <= settled + 16, (number, pages, settled)
    finally:
        server.stop()
