"""Fixtures every test can use: a real server per storage backend.

`server` is parametrized over SQLite and PostgreSQL, so a test that takes it (or
`server_address`) runs against both. A server is shared by the tests of one
module; tests keep apart by working on fresh thread ids.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runplane.server.config import ServerConfig
from tests.support.databases import database_url
from tests.support.servers import ServerThread

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with database_url(backend, tmp_path_factory.mktemp(backend)) as url:
        running = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def server_address(server: ServerThread) -> str:
    return server.address
