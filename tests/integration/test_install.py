"""The wheel, built from this tree and installed with pip into fresh virtual environments
outside the repository, at the lowest versions pyproject.toml allows.

The service build tests the newest versions (requirements.lock); these tests check that
the floors of the ranges a library user's resolver may pick really work. One wheel is
built per session and pip's cache serves the dependencies.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIP = ("-m", "pip", "--disable-pip-version-check", "--quiet")
READY = re.compile(r"msg=ready address=(\S+)")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"  # the server the installed client talks to; its storage is not at stake


def floors(*, server: bool) -> list[str]:
    """`name==X` for the highest `name>=X` each dependency of the install has in pyproject:
    the base dependencies, and the server extra's too when `server` (it may raise a floor
    of the base, as the server's grpc packages do)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]]
    if server:
        requirements += project["optional-dependencies"]["server"]
    lowest: dict[str, Version] = {}
    for text in requirements:
        requirement = Requirement(text)
        (floor,) = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        lowest[requirement.name] = max(floor, lowest.get(requirement.name, floor))
    return [f"{name}=={version}" for name, version in lowest.items()]


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, *PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", out, ROOT)
    (built,) = out.glob("runplane-*.whl")
    return built


def install(root: Path, requirement: str, *, server: bool) -> Path:
    """A fresh venv at `root` (outside the repository) with `requirement` installed at the
    floors of pyproject's ranges; its bin directory."""
    assert not root.resolve().is_relative_to(ROOT)
    run(sys.executable, "-m", "venv", root)
    constraints = root / "floors.txt"
    constraints.write_text("\n".join(floors(server=server)) + "\n")
    run(root / "bin" / "python", *PIP, "install", "-c", constraints, requirement)
    return root / "bin"


@pytest.fixture(scope="module")
def client_only(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(tmp_path_factory.mktemp("client-only"), str(wheel), server=False)


@pytest.fixture(scope="module")
def with_server(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    requirement = f"runplane[server] @ {wheel.as_uri()}"
    return install(tmp_path_factory.mktemp("with-server"), requirement, server=True)


def installed(bin_dir: Path) -> dict[str, str]:
    listing = run(bin_dir / "python", "-m", "pip", "list", "--format", "json").stdout
    return {package["name"].lower(): package["version"] for package in json.loads(listing)}


def test_client_install_is_the_client_at_the_floors(client_only: Path) -> None:
    packages = installed(client_only)

    assert not {"sqlalchemy", "alembic", "psycopg", "grpcio-health-checking"} & set(packages)
    for pin in floors(server=False):
        name, version = pin.split("==")
        assert Version(packages[name]) == Version(version)


def test_installed_client_and_cli_work_against_a_server(
    client_only: Path, server_address: str, tmp_path: Path
) -> None:
    script = (
        "from runplane.client import Client\n"
        f"with Client({server_address!r}) as client:\n"
        "    run = client.create_run('installed', kwargs={'n': 1})\n"
        "    print(run.run_id, client.get_run(run.run_id).kwargs)\n"
    )
    run_id, kwargs = run(client_only / "python", "-c", script, cwd=tmp_path).stdout.split(" ", 1)
    assert kwargs.strip() == "{'n': 1}"

    runplane = client_only / "runplane"
    got = run(runplane, "runs", "get", run_id, "--address", server_address, "-o", "json")
    assert json.loads(got.stdout)["kwargs"] == {"n": 1}
    assert run(runplane, "--version").stdout.startswith("runplane 0.")


def test_serve_without_the_server_extra_says_what_to_install(client_only: Path) -> None:
    done = subprocess.run(
        [client_only / "runplane", "serve"], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "pip install 'runplane[server]'" in done.stderr


def test_installed_client_is_typed_for_mypy(client_only: Path, tmp_path: Path) -> None:
    program = tmp_path / "uses_runplane.py"
    program.write_text(
        "from runplane.client import Client\n"
        "from runplane.v1 import run_pb2\n"
        "with Client() as client:\n"
        "    status: int = client.get_run('x').status\n"
        "proto: str = run_pb2.Run().revision\n"
    )
    done = subprocess.run(
        [
            Path(sys.executable).parent / "mypy",
            "--strict",
            "--no-incremental",
            "--python-executable",
            client_only / "python",
            program,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        check=False,
    )

    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, done.stdout
    assert 'expression has type "RunStatus", variable has type "int"' in errors[0]
    assert 'expression has type "int", variable has type "str"' in errors[1]


@pytest.fixture
def serving(with_server: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [with_server / "runplane", "serve", "--address", "127.0.0.1:0"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if found := READY.search(line):
                yield process, found.group(1)
                return
        raise AssertionError(f"runplane serve exited with {process.wait()} before it was ready")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_server_extra_serves(
    with_server: Path, serving: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    process, address = serving
    runplane = with_server / "runplane"

    created = run(
        runplane, "runs", "create", "--assistant-id", "a", "-o", "json", "--address", address
    )
    assert json.loads(created.stdout)["status"] == "pending"
    assert (tmp_path / "runplane.db").exists()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
