"""`runplane serve` as a process: readiness line, health, reflection, SIGTERM, restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from runplane.v1 import run_service_pb2, run_service_pb2_grpc

RUNPLANE = str(Path(sys.executable).parent / "runplane")
READY = re.compile(r"msg=ready address=(\S+)")


@contextmanager
def serving(
    workdir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """The server, its address and its ready line."""
    process = subprocess.Popen(
        [RUNPLANE, "serve", "--address", "127.0.0.1:0", *args],
        cwd=workdir,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if found := READY.search(line):
                yield process, found.group(1), line
                break
        else:
            raise AssertionError(f"server exited with {process.wait()} before it was ready")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def serve_until_it_exits(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`runplane serve` with these flags, which should not get as far as serving."""
    return subprocess.run(
        [RUNPLANE, "serve", *args],
        cwd=workdir,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=20)
    return process.returncode, rest


@pytest.mark.timeout(60)
def test_serve_defaults_to_sqlite_file_in_working_directory(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNPLANE_")}
    with serving(tmp_path, env=env) as (process, address, _):
        with grpc.insecure_channel(address) as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            run = stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id="agent"))
        code, logs = stop(process)
    assert code == 0, logs
    assert "msg=stopped" in logs
    assert (tmp_path / "runplane.db").exists()

    # The run survived the restart.
    with serving(tmp_path, env=env) as (process, address, _), grpc.insecure_channel(address) as ch:
        stub = run_service_pb2_grpc.RunServiceStub(ch)
        assert stub.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id)) == run
        assert stop(process)[0] == 0


@pytest.mark.timeout(60)
def test_serve_reads_flags_from_environment_twins(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "runs.db"
    database.parent.mkdir()
    env = {"RUNPLANE_DATABASE_URL": f"sqlite:///{database}"}
    with serving(tmp_path, env=env) as (process, _, _):
        assert stop(process)[0] == 0
    assert database.exists()
    assert not (tmp_path / "runplane.db").exists()


@pytest.mark.timeout(60)
def test_health_and_reflection_are_served(tmp_path: Path) -> None:
    with serving(tmp_path) as (process, address, _):
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "runplane.v1.RunService"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service))
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
            assert {"runplane.v1.RunService", "grpc.health.v1.Health"} <= services
        assert stop(process)[0] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("flags", "loop"), [((), "uvloop"), (("--event-loop", "asyncio"), "asyncio")]
)
def test_serve_runs_on_the_event_loop_it_is_told(
    tmp_path: Path, flags: tuple[str, ...], loop: str
) -> None:
    with serving(tmp_path, *flags) as (process, address, ready):
        # The ready line names the loop the server runs on, not the flag it was given.
        assert f"event_loop={loop} " in ready
        with grpc.insecure_channel(address) as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            run = stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id="agent"))
            assert stub.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id)) == run
        assert stop(process)[0] == 0


@pytest.mark.timeout(60)
def test_uvloop_missing_is_reported_with_the_way_out(tmp_path: Path) -> None:
    # Where uvloop cannot be imported (as on Windows, which it has no build for).
    (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop on this platform')\n")
    result = serve_until_it_exits(
        tmp_path, "--address", "127.0.0.1:0", "--event-loop", "uvloop", PYTHONPATH=str(tmp_path)
    )
    assert result.returncode == 1
    assert "uvloop is not installed here; use --event-loop asyncio" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_bad_flags_are_reported_without_a_traceback(tmp_path: Path) -> None:
    result = serve_until_it_exits(tmp_path, "--event-retention", "forever")
    assert result.returncode == 2
    assert "not a duration" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / f'{uuid.uuid4().hex}.db'}"
    for _ in range(2):  # idempotent
        result = subprocess.run(
            [RUNPLANE, "db", "upgrade", "--database-url", url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "latest schema" in result.stdout
