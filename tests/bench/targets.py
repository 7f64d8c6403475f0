"""The servers the benchmark can measure, each started fresh and removed afterwards.

A target is a name and a context manager factory that yields the running server to measure
and cleans up everything it created (process, database file, PostgreSQL database)
on the way out, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from tests.bench.processes import RunningServer, running_server

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNPLANE = Path(sys.executable).parent / "runplane"

Starter = Callable[[Path], AbstractContextManager[RunningServer]]


@dataclass(frozen=True)
class Target:
    """A server to measure. ``start(workdir)`` yields it while it runs."""

    name: str
    start: Starter


@contextlib.contextmanager
def _echo(workdir: Path) -> Iterator[RunningServer]:
    argv = [sys.executable, "-m", "tests.bench.echo_server", "--address", "127.0.0.1:0"]
    # cwd is the repository so that `-m tests.bench...` resolves.
    with running_server(argv, REPO_ROOT, "echo server") as server:
        yield server


def _runplane(workdir: Path, database_url: str, name: str) -> AbstractContextManager[RunningServer]:
    argv = [str(RUNPLANE), "serve", "--address", "127.0.0.1:0", "--database-url", database_url]
    return running_server(argv, workdir, name, database_url)


@contextlib.contextmanager
def _runplane_sqlite(workdir: Path) -> Iterator[RunningServer]:
    with _runplane(workdir, f"sqlite:///{workdir / 'bench.db'}", "runplane (SQLite)") as server:
        yield server


def _with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (query kept)."""
    return urlsplit(url)._replace(path=f"/{database}").geturl()


@contextlib.contextmanager
def _fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """Creates an empty database for one run and drops it afterwards; yields its URL."""
    database = f"runplane_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        yield _with_database(admin_url, database)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def runplane_postgres(admin_url: str) -> Starter:
    """runplane on a fresh database of the PostgreSQL server that ``admin_url`` reaches."""

    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[RunningServer]:
        with (
            _fresh_postgres_database(admin_url) as database_url,
            _runplane(workdir, database_url, "runplane (PostgreSQL)") as server,
        ):
            yield server

    return start


ECHO = Target("echo", _echo)
RUNPLANE_SQLITE = Target("runplane-sqlite", _runplane_sqlite)


def available_targets(postgres_url: str | None) -> dict[str, Target]:
    """Every target this machine can run, by name."""
    targets = {ECHO.name: ECHO, RUNPLANE_SQLITE.name: RUNPLANE_SQLITE}
    if postgres_url:
        targets["runplane-postgres"] = Target("runplane-postgres", runplane_postgres(postgres_url))
    return targets
