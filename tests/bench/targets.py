"""The servers the benchmark can measure, each started fresh and removed afterwards.

A target is a name and a context manager factory that yields the running server to measure
and cleans up everything it created (process, database file, PostgreSQL database)
on the way out, whatever happened in between.

Variants run runplane with telemetry on (``-metrics``: ``--metrics-address``; ``-tracing``:
``--otlp-endpoint`` to an OTLP receiver in this process) and name their ``baseline``, the
same server with it off: measured in the same run, the two give telemetry's cost. They run
only when asked for (``--targets``, or ``make bench-telemetry``).
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
from tests.support.otlp import OtlpReceiver

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNPLANE = Path(sys.executable).parent / "runplane"

Starter = Callable[[Path], AbstractContextManager[RunningServer]]


@dataclass(frozen=True)
class Target:
    """A server to measure. ``start(workdir)`` yields it while it runs."""

    name: str
    start: Starter
    baseline: str | None = None
    """For a variant: the target it is compared with."""


@contextlib.contextmanager
def _echo(workdir: Path) -> Iterator[RunningServer]:
    argv = [sys.executable, "-m", "tests.bench.echo_server", "--address", "127.0.0.1:0"]
    # cwd is the repository so that `-m tests.bench...` resolves.
    with running_server(argv, REPO_ROOT, "echo server") as server:
        yield server


def _runplane(
    workdir: Path, database_url: str, name: str, *flags: str
) -> AbstractContextManager[RunningServer]:
    argv = [str(RUNPLANE), "serve", "--address", "127.0.0.1:0", "--database-url", database_url]
    return running_server([*argv, *flags], workdir, name, database_url)


Flags = Callable[[], AbstractContextManager[tuple[str, ...]]]


@contextlib.contextmanager
def _no_flags() -> Iterator[tuple[str, ...]]:
    yield ()


@contextlib.contextmanager
def _metrics_on() -> Iterator[tuple[str, ...]]:
    yield ("--metrics-address", "127.0.0.1:0")


@contextlib.contextmanager
def _tracing_on() -> Iterator[tuple[str, ...]]:
    with OtlpReceiver(keep=False) as sink:
        yield ("--otlp-endpoint", sink.endpoint)


def runplane_sqlite(flags: Flags = _no_flags) -> Starter:
    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[RunningServer]:
        url = f"sqlite:///{workdir / 'bench.db'}"
        with flags() as extra, _runplane(workdir, url, "runplane (SQLite)", *extra) as server:
            yield server

    return start


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


def runplane_postgres(admin_url: str, flags: Flags = _no_flags) -> Starter:
    """runplane on a fresh database of the PostgreSQL server that ``admin_url`` reaches."""

    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[RunningServer]:
        with (
            flags() as extra,
            _fresh_postgres_database(admin_url) as database_url,
            _runplane(workdir, database_url, "runplane (PostgreSQL)", *extra) as server,
        ):
            yield server

    return start


ECHO = Target("echo", _echo)
VARIANTS: dict[str, Flags] = {"metrics": _metrics_on, "tracing": _tracing_on}


def available_targets(postgres_url: str | None) -> dict[str, Target]:
    """Every target this machine can run, by name (variants last)."""
    bases = {ECHO.name: ECHO, "runplane-sqlite": Target("runplane-sqlite", runplane_sqlite())}
    variants = {
        f"runplane-sqlite-{variant}": Target(
            f"runplane-sqlite-{variant}", runplane_sqlite(flags), baseline="runplane-sqlite"
        )
        for variant, flags in VARIANTS.items()
    }
    if postgres_url:
        bases["runplane-postgres"] = Target("runplane-postgres", runplane_postgres(postgres_url))
        variants.update(
            {
                f"runplane-postgres-{variant}": Target(
                    f"runplane-postgres-{variant}",
                    runplane_postgres(postgres_url, flags),
                    baseline="runplane-postgres",
                )
                for variant, flags in VARIANTS.items()
            }
        )
    return {**bases, **variants}
