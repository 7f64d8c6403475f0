"""`runplane` is one PEP 420 namespace spread over client/ and server/."""

from __future__ import annotations

import importlib
from pathlib import Path

import runplane

ROOT = Path(__file__).resolve().parents[2]


def test_namespace_roots_have_no_init_file() -> None:
    for source_root in ("client", "server"):
        assert not (ROOT / source_root / "runplane" / "__init__.py").exists()


def test_runplane_is_a_namespace_package_over_both_roots() -> None:
    assert getattr(runplane, "__file__", None) is None
    paths = {Path(p).resolve() for p in runplane.__path__}
    assert {ROOT / "client" / "runplane", ROOT / "server" / "runplane"} <= paths


def test_stubs_client_and_server_import() -> None:
    for name in (
        "runplane.v1.run_pb2",
        "runplane.v1.run_service_pb2_grpc",
        "runplane.client",
        "runplane.server.app",
    ):
        assert importlib.import_module(name).__name__ == name
