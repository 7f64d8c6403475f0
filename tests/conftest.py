"""Fixtures every test can use: a real server per storage backend.

`server` is parametrized over SQLite and PostgreSQL, so a test that takes it (or
`server_address`, or `stub`) runs against both. A server is shared by the tests of
one module; tests keep apart by working on fresh thread ids (or a fresh `assistant`).
`database` is a migrated store of its own per test, on each backend, for tests of
the store without a server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runplane.server.store.database import Database
from runplane.server.store.migrate import upgrade
from runplane.v1 import run_service_pb2_grpc
from tests.support.databases import database_url
from tests.support.servers import ServerThread, own_server
from tests.support.stubs import run_service

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with own_server(backend, tmp_path_factory.mktemp(backend)) as running:
        yield running


@pytest.fixture(scope="module")
def server_address(server: ServerThread) -> str:
    return server.address


@pytest.fixture
def stub(server_address: str) -> Iterator[run_service_pb2_grpc.RunServiceStub]:
    with run_service(server_address) as stub:
        yield stub


@pytest.fixture
def assistant() -> str:
    """An assistant id of the test's own: claims for it see only the test's runs."""
    return f"assistant-{uuid.uuid4()}"


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database_url(request.param, tmp_path) as url:
        database = Database(url)
        upgrade(database.engine)
        try:
            yield database
        finally:
            database.dispose()
