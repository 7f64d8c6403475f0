"""The servers the benchmark can measure, each started fresh and removed afterwards.

A target is a name and a context manager factory that yields the running server to measure
and cleans up everything it created (process, database file, PostgreSQL database)
on the way out, whatever happened in between.

Variants run runplane with one feature on and name their ``baseline``, the same server
with it off: measured in the same run, the two give the feature's cost. ``-metrics`` adds
``--metrics-address``; ``-tracing`` ``--otlp-endpoint`` to an OTLP receiver in this process;
``-tls``, ``-auth`` and ``-tls-auth`` serve TLS with a CA and certificate made for the run
and/or token authentication with an auth config listing the load generator's token. They
run only when asked for (``--targets``, ``--tls``/``--auth``, ``make bench-telemetry``).
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


@dataclass(frozen=True)
class Setup:
    """What a variant adds: flags for ``runplane serve``, arguments for the load process."""

    serve: tuple[str, ...] = ()
    load: tuple[str, ...] = ()


Variant = Callable[[Path], AbstractContextManager[Setup]]
"""Given the run's work folder, prepares what the variant needs while the server runs."""


@contextlib.contextmanager
def _plain(workdir: Path) -> Iterator[Setup]:
    yield Setup()


@contextlib.contextmanager
def _metrics_on(workdir: Path) -> Iterator[Setup]:
    yield Setup(("--metrics-address", "127.0.0.1:0"))


@contextlib.contextmanager
def _tracing_on(workdir: Path) -> Iterator[Setup]:
    with OtlpReceiver(keep=False) as sink:
        yield Setup(("--otlp-endpoint", sink.endpoint))


def _tls(workdir: Path) -> Setup:
    ca = CertificateAuthority("runplane bench CA")
    cert, key = ca.server().write(workdir, "server")
    return Setup(
        ("--tls-cert", str(cert), "--tls-key", str(key)), ("--ca-file", str(ca.write(workdir)))
    )


def _auth(workdir: Path) -> Setup:
    token = new_token()
    config = workdir / "auth.toml"
    config.write_text(
        f'[[principal]]\nname = "bench"\ntokens_sha256 = ["{hash_token(token)}"]\n'
        'grants = [{ namespace = "*", role = "writer" }]\n'
    )
    # One argument, not two: a URL-safe token can begin with "-", which argparse would
    # take for an option.
    return Setup(("--auth-config", str(config)), (f"--token={token}",))


@contextlib.contextmanager
def _tls_on(workdir: Path) -> Iterator[Setup]:
    yield _tls(workdir)


@contextlib.contextmanager
def _auth_on(workdir: Path) -> Iterator[Setup]:
    yield _auth(workdir)


@contextlib.contextmanager
def _tls_and_auth_on(workdir: Path) -> Iterator[Setup]:
    tls, auth = _tls(workdir), _auth(workdir)
    yield Setup(tls.serve + auth.serve, tls.load + auth.load)


def _runplane(
    workdir: Path, database_url: str, name: str, setup: Setup
) -> AbstractContextManager[RunningServer]:
    argv = [str(RUNPLANE), "serve", "--address", "127.0.0.1:0", "--database-url", database_url]
    # The watch scenarios hold thousands of streams from one (anonymous) caller.
    argv += ["--max-watches-per-principal", "100000"]
    return running_server([*argv, *setup.serve], workdir, name, database_url, setup.load)


def runplane_sqlite(variant: Variant = _plain) -> Starter:
    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[RunningServer]:
        url = f"sqlite:///{workdir / 'bench.db'}"
        with (
            variant(workdir) as setup,
            _runplane(workdir, url, "runplane (SQLite)", setup) as server,
        ):
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


def runplane_postgres(admin_url: str, variant: Variant = _plain) -> Starter:
    """runplane on a fresh database of the PostgreSQL server that ``admin_url`` reaches."""

    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[RunningServer]:
        with (
            variant(workdir) as setup,
            _fresh_postgres_database(admin_url) as database_url,
            _runplane(workdir, database_url, "runplane (PostgreSQL)", setup) as server,
        ):
            yield server

    return start


ECHO = Target("echo", _echo)
VARIANTS: dict[str, Variant] = {
    "metrics": _metrics_on,
    "tracing": _tracing_on,
    "tls": _tls_on,
    "auth": _auth_on,
    "tls-auth": _tls_and_auth_on,
}


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
