"""The servers the benchmark can measure, each started fresh and removed afterwards.

A target is a name and a context manager factory that yields the running server to measure
and cleans up everything it created (process, database file, PostgreSQL database)
on the way out, whatever happened in between.

With ``--tls`` and/or ``--auth``, each runplane target gets a secured twin measured in the
same run (``runplane-sqlite+tls+auth``): TLS with a CA and certificate made for the run,
token authentication with an auth config listing the load generator's token.
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

from runplane.server.identity import hash_token, new_token
from tests.bench.processes import RunningServer, running_server
from tests.support.certificates import CertificateAuthority

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNPLANE = Path(sys.executable).parent / "runplane"

Starter = Callable[[Path], AbstractContextManager[RunningServer]]


@dataclass(frozen=True)
class Target:
    """A server to measure. ``start(workdir)`` yields it while it runs."""

    name: str
    start: Starter
    secured: bool = False
    """A TLS and/or auth twin: measured by the unary scenario only."""


@dataclass(frozen=True)
class Security:
    """What a secured twin turns on."""

    tls: bool
    auth: bool

    @property
    def suffix(self) -> str:
        return "".join(part for part, on in (("+tls", self.tls), ("+auth", self.auth)) if on)

    def prepare(self, workdir: Path) -> tuple[list[str], tuple[str, ...]]:
        """Files for the run in `workdir`: the server's flags, and the load's arguments."""
        serve: list[str] = []
        load: list[str] = []
        if self.tls:
            ca = CertificateAuthority("runplane bench CA")
            cert, key = ca.server().write(workdir, "server")
            serve += ["--tls-cert", str(cert), "--tls-key", str(key)]
            load += ["--ca-file", str(ca.write(workdir))]
        if self.auth:
            token = new_token()
            config = workdir / "auth.toml"
            config.write_text(
                f'[[principal]]\nname = "bench"\ntokens_sha256 = ["{hash_token(token)}"]\n'
                'grants = [{ namespace = "*", role = "writer" }]\n'
            )
            serve += ["--auth-config", str(config)]
            load += ["--token", token]
        return serve, tuple(load)


@contextlib.contextmanager
def _echo(workdir: Path) -> Iterator[RunningServer]:
    argv = [sys.executable, "-m", "tests.bench.echo_server", "--address", "127.0.0.1:0"]
    # cwd is the repository so that `-m tests.bench...` resolves.
    with running_server(argv, REPO_ROOT, "echo server") as server:
        yield server


def _runplane(
    workdir: Path, database_url: str, name: str, security: Security | None
) -> AbstractContextManager[RunningServer]:
    argv = [str(RUNPLANE), "serve", "--address", "127.0.0.1:0", "--database-url", database_url]
    # The watch scenarios hold thousands of streams from one (anonymous) caller.
    argv += ["--max-watches-per-principal", "100000"]
    serve, load = security.prepare(workdir) if security else ([], ())
    return running_server([*argv, *serve], workdir, name, database_url, load)


def runplane_sqlite(security: Security | None = None) -> Starter:
    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[RunningServer]:
        url = f"sqlite:///{workdir / 'bench.db'}"
        with _runplane(workdir, url, "runplane (SQLite)", security) as server:
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


def runplane_postgres(admin_url: str, security: Security | None = None) -> Starter:
    """runplane on a fresh database of the PostgreSQL server that ``admin_url`` reaches."""

    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[RunningServer]:
        with (
            _fresh_postgres_database(admin_url) as database_url,
            _runplane(workdir, database_url, "runplane (PostgreSQL)", security) as server,
        ):
            yield server

    return start


ECHO = Target("echo", _echo)


def available_targets(
    postgres_url: str | None, security: Security | None = None
) -> dict[str, Target]:
    """Every target this machine can run, by name; each runplane one followed by its
    secured twin when `security` asks for one."""
    starters: dict[str, Callable[[Security | None], Starter]] = {"runplane-sqlite": runplane_sqlite}
    if postgres_url:
        starters["runplane-postgres"] = lambda secured: runplane_postgres(postgres_url, secured)
    targets = {ECHO.name: ECHO}
    for name, starter in starters.items():
        targets[name] = Target(name, starter(None))
        if security is not None:
            twin = name + security.suffix
            targets[twin] = Target(twin, starter(security), secured=True)
    return targets
