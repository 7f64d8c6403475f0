"""A `runplane serve` that cannot start says why in one line on stderr, exits with 1, and
leaves nothing on disk: it checks its address and its database's folder before it
opens anything, and removes a SQLite file it created if it fails after all."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.databases import postgres_admin_url
from tests.support.mounts import remount_read_only, tmpfs
from tests.support.serve_process import RUNPLANE


def failed_start(workdir: Path, *args: str) -> str:
    """Run `runplane serve` in an empty `workdir`; its one line of stderr, after checking
    it exited with 1 and left the folder empty."""
    before = sorted(workdir.iterdir())
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNPLANE_")}
    result = subprocess.run(
        [RUNPLANE, "serve", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    assert sorted(workdir.iterdir()) == before
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def test_a_port_in_use(tmp_path: Path, taken_port: int) -> None:
    line = failed_start(tmp_path, "--address", f"127.0.0.1:{taken_port}")
    assert f"127.0.0.1:{taken_port}" in line
    assert "in use" in line


def test_an_address_that_is_not_one(tmp_path: Path) -> None:
    line = failed_start(tmp_path, "--insecure", "--address", "nowhere")
    assert "not a host:port address" in line


@pytest.mark.postgres
def test_a_database_server_that_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/runplane"
    line = failed_start(tmp_path, "--address", "127.0.0.1:0", "--database-url", url)
    assert f"127.0.0.1:{port}" in line
    assert "refused" in line.lower()


@pytest.mark.postgres
def test_a_missing_database(tmp_path: Path) -> None:
    name = f"runplane_missing_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_admin_url()).set(database=name).render_as_string(hide_password=False)
    line = failed_start(tmp_path, "--address", "127.0.0.1:0", "--database-url", url)
    assert f'database "{name}" does not exist' in line


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://user@host/db", "unsupported database 'mysql'"),
        ("foo://x", "unsupported database 'foo'"),
        ("not a url at all", "does not parse"),
        ("sqlite://", "needs a database file"),
    ],
)
def test_a_url_runplane_cannot_use(tmp_path: Path, url: str, says: str) -> None:
    assert says in failed_start(tmp_path, "--address", "127.0.0.1:0", "--database-url", url)


def test_a_missing_sqlite_folder_is_not_created(tmp_path: Path) -> None:
    database = tmp_path / "missing" / "runs.db"
    line = failed_start(
        tmp_path, "--address", "127.0.0.1:0", "--database-url", f"sqlite:///{database}"
    )
    assert str(database) in line
    assert "does not exist" in line


def test_a_read_only_filesystem(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m") as folder:
        existing = folder / "existing.db"
        existing.write_bytes(b"")
        remount_read_only(folder)
        line = failed_start(
            tmp_path, "--address", "127.0.0.1:0", "--database-url", f"sqlite:///{folder / 'new.db'}"
        )
        assert "read-only" in line
        line = failed_start(
            tmp_path, "--address", "127.0.0.1:0", "--database-url", f"sqlite:///{existing}"
        )
        assert "read-only" in line  # SQLite's WAL files go beside the database
        assert sorted(p.name for p in folder.iterdir()) == ["existing.db"]


def test_a_database_created_by_a_failed_start_is_removed(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "tiny", "16k") as folder:
        line = failed_start(
            tmp_path, "--address", "127.0.0.1:0", "--database-url", f"sqlite:///{folder / 'r.db'}"
        )
        assert "cannot use the database" in line
        assert list(folder.iterdir()) == []
