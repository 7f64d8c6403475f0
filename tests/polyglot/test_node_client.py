"""A Node.js client built from proto/ alone speaks runplane's contract.

``run_client.js`` (@grpc/grpc-js + @grpc/proto-loader, nothing generated from Python) creates,
gets and lists a run against a real server and provokes NOT_FOUND; these tests check what it
saw against the contract, then read the same run back through the raw Python stub. They fail,
never skip, when Node.js or tests/polyglot/node_modules is missing: a polyglot claim that is
not checked is not made.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

POLYGLOT_DIR = Path(__file__).resolve().parent
RUN_CLIENT = POLYGLOT_DIR / "run_client.js"
NODE_TIMEOUT_S = 60


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is required for the polyglot tests: install `node` (18 or newer)")
    if not (POLYGLOT_DIR / "node_modules" / "@grpc" / "proto-loader").is_dir():
        pytest.fail(
            "tests/polyglot/node_modules is missing: run `cd tests/polyglot && npm ci` "
            "(`make test` does it)"
        )
    return node


@pytest.fixture(scope="module")
def node_saw(server_address: str) -> dict[str, Any]:
    """What run_client.js reports after running once against each server."""
    completed = subprocess.run(
        [_node(), str(RUN_CLIENT), server_address],
        cwd=POLYGLOT_DIR,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, f"run_client.js failed:\n{completed.stderr}"
    report: dict[str, Any] = json.loads(completed.stdout)
    return report


def _is_canonical_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def test_node_created_run_is_pending_with_canonical_ids(node_saw: dict[str, Any]) -> None:
    created = node_saw["created"]
    assert created["status"] == "RUN_STATUS_PENDING"
    assert _is_canonical_uuid(created["run_id"]), created["run_id"]
    assert _is_canonical_uuid(created["thread_id"]), created["thread_id"]
    assert created["assistant_id"] == "node-assistant"
    assert created["multitask_strategy"] == "MULTITASK_STRATEGY_ENQUEUE"
    assert created["metadata"] == {"source": "node"}


def test_node_get_returns_the_created_run(node_saw: dict[str, Any]) -> None:
    assert node_saw["got"] == node_saw["created"]


def test_node_list_by_thread_returns_the_created_run(node_saw: dict[str, Any]) -> None:
    # The thread was new, so the run is the only one on it.
    assert node_saw["listed"]["run_ids"] == [node_saw["created"]["run_id"]]
    assert node_saw["listed"]["statuses"] == ["RUN_STATUS_PENDING"]
    assert int(node_saw["listed"]["revision"]) > 0


def test_node_get_of_unknown_run_is_not_found(node_saw: dict[str, Any]) -> None:
    assert node_saw["not_found"]["code"] == grpc.StatusCode.NOT_FOUND.value[0] == 5


def test_python_stub_reads_the_run_node_created(
    node_saw: dict[str, Any], server_address: str
) -> None:
    created = node_saw["created"]
    with grpc.insecure_channel(server_address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        run = stub.GetRun(run_service_pb2.GetRunRequest(run_id=created["run_id"]), timeout=10)

    assert run.run_id == created["run_id"]
    assert run.thread_id == created["thread_id"]
    assert run.assistant_id == "node-assistant"
    assert run.status == run_pb2.RUN_STATUS_PENDING
    assert json_format.MessageToDict(run.metadata) == {"source": "node"}
