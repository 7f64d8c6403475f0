"""Audit lines, and secrets kept out of every log line, read from a real `runplane serve`.

Every RPC is called, succeeding and failing, with a secret in kwargs, metadata,
filters, completion metadata, error messages and tokens; the server logs at debug
level; then every line it wrote is searched.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.auth import Caller, write_config
from tests.support.serve_process import ServeProcess

pytestmark = pytest.mark.timeout(120)

SECRET = "sk-LEAK-7f3a9c"
PIPELINE = Caller("pipeline", [("shop", "writer"), ("shop", "worker")])
OPERATOR = Caller("operator", [("*", "admin")])
VIEWER = Caller("viewer", [("*", "reader")])
AUDIT = re.compile(
    r"logger=runplane\.audit msg=audit principal=(?P<principal>\S*) method=(?P<method>\S+) "
    r"namespace=(?P<namespace>\S*) run_id=(?P<run_id>\S*) code=(?P<code>\S+)$"
)


def secret_struct() -> struct_pb2.Struct:
    values = struct_pb2.Struct()
    values.update({"api_key": SECRET, "nested": {"password": SECRET}})
    return values


class Calls:
    """Raw calls that record each audited outcome as (principal, method, code)."""

    def __init__(self, stub: run_service_pb2_grpc.RunServiceStub) -> None:
        self.stub = stub
        self.expected: Counter[tuple[str, str, str]] = Counter()

    def __call__(
        self, caller: Caller | str | None, method: str, request: Any, audited: bool = True
    ) -> Any:
        token = caller.token if isinstance(caller, Caller) else caller
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        code = grpc.StatusCode.OK
        try:
            result = getattr(self.stub, method)(request, metadata=metadata, timeout=10)
            if method.startswith("Watch"):
                result = next(result)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            result = None
        if audited:
            known = isinstance(caller, Caller) and code != grpc.StatusCode.UNAUTHENTICATED
            principal = caller.name if known and isinstance(caller, Caller) else ""
            self.expected[(principal, method, code.name)] += 1
        return result


def every_rpc(call: Calls) -> None:
    create = functools.partial(run_service_pb2.CreateRunRequest, namespace="shop")
    run = call(
        PIPELINE,
        "CreateRun",
        create(assistant_id="agent", kwargs=secret_struct(), metadata=secret_struct()),
    )
    call(PIPELINE, "CreateRun", create(assistant_id="", kwargs=secret_struct()))  # invalid
    call(
        PIPELINE,
        "CreateRun",
        create(
            assistant_id="agent",
            thread_id=run.thread_id,
            kwargs=secret_struct(),
            multitask_strategy=run_pb2.MULTITASK_STRATEGY_REJECT,
        ),
    )  # THREAD_BUSY
    call(VIEWER, "CreateRun", create(assistant_id="agent", kwargs=secret_struct()))  # denied
    call(SECRET, "CreateRun", create(assistant_id="agent", kwargs=secret_struct()))  # unknown
    call(None, "CreateRun", create(assistant_id="agent", kwargs=secret_struct()))  # missing
    call(f"{SECRET}.{SECRET}.{SECRET}", "GetRun", run_service_pb2.GetRunRequest(), False)

    call(VIEWER, "GetRun", run_service_pb2.GetRunRequest(run_id=run.run_id), False)
    call(VIEWER, "GetRun", run_service_pb2.GetRunRequest(run_id=SECRET), False)
    secret_filter = run_service_pb2.RunFilter(metadata=secret_struct())
    call(VIEWER, "ListRuns", run_service_pb2.ListRunsRequest(filter=secret_filter), False)
    call(VIEWER, "ListRuns", run_service_pb2.ListRunsRequest(page_token=SECRET), False)
    call(VIEWER, "WatchRuns", run_service_pb2.WatchRunsRequest(filter=secret_filter), False)
    call(VIEWER, "WatchRun", run_service_pb2.WatchRunRequest(run_id=run.run_id), False)

    mask = field_mask_pb2.FieldMask(paths=["metadata", "kwargs"])
    changed = run_pb2.Run(run_id=run.run_id, metadata=secret_struct(), kwargs=secret_struct())
    call(PIPELINE, "UpdateRun", run_service_pb2.UpdateRunRequest(run=changed, update_mask=mask))
    call(
        PIPELINE,
        "UpdateRun",
        run_service_pb2.UpdateRunRequest(run=changed, update_mask=mask, expected_revision=1),
    )  # ABORTED
    call(PIPELINE, "UpdateRun", run_service_pb2.UpdateRunRequest(run=run_pb2.Run(run_id=SECRET)))

    claim = run_service_pb2.ClaimRunRequest(worker_id="w1", assistant_ids=["agent"])
    claimed = call(PIPELINE, "ClaimRun", claim)
    run_id = claimed.run.run_id
    heartbeat = run_service_pb2.HeartbeatRunRequest
    # Lease keep-alives are not audited changes; a secret in one still reaches no line.
    call(PIPELINE, "HeartbeatRun", heartbeat(run_id=run_id, worker_id="w1"), False)
    call(PIPELINE, "HeartbeatRun", heartbeat(run_id=run_id, worker_id=SECRET), False)
    call(
        PIPELINE,
        "CompleteRun",
        run_service_pb2.CompleteRunRequest(
            run_id=run_id,
            worker_id="w1",
            status=run_pb2.RUN_STATUS_ERROR,
            error=SECRET,
            metadata=secret_struct(),
        ),
    )
    call(PIPELINE, "CompleteRun", run_service_pb2.CompleteRunRequest(run_id=run_id))  # invalid

    other = call(PIPELINE, "CreateRun", create(assistant_id="other", kwargs=secret_struct()))
    cancel = run_service_pb2.CancelRunRequest
    call(PIPELINE, "CancelRun", cancel(run_id=other.run_id, reason=SECRET))
    call(PIPELINE, "CancelRun", cancel(run_id=other.run_id, reason=SECRET))  # terminal
    call(
        PIPELINE,
        "CancelRuns",
        run_service_pb2.CancelRunsRequest(filter=secret_filter, reason=SECRET),
    )
    delete = run_service_pb2.DeleteRunRequest
    inflight = call(PIPELINE, "CreateRun", create(assistant_id="x", kwargs=secret_struct()))
    call(PIPELINE, "DeleteRun", delete(run_id=inflight.run_id))  # RUN_INFLIGHT
    call(PIPELINE, "DeleteRun", delete(run_id=inflight.run_id, force=True))  # needs admin
    call(OPERATOR, "DeleteRun", delete(run_id=inflight.run_id, force=True))
    call(PIPELINE, "DeleteRun", delete(run_id=other.run_id))
    call(PIPELINE, "DeleteRun", delete(run_id=other.run_id))  # NOT_FOUND


def test_audit_lines_name_each_change_and_no_line_carries_a_secret(tmp_path: Path) -> None:
    config = write_config(tmp_path / "auth.toml", [PIPELINE, OPERATOR, VIEWER])
    server = ServeProcess(
        "127.0.0.1:0",
        f"sqlite:///{tmp_path / 'runplane.db'}",
        tmp_path,
        *("--auth-config", str(config), "--log-level", "debug"),
        keep=100_000,
    )
    with server:
        with grpc.insecure_channel(server.address) as channel:
            calls = Calls(run_service_pb2_grpc.RunServiceStub(channel))
            every_rpc(calls)
        assert server.terminate() == 0
    lines = list(server.logs)
    assert len(lines) < 100_000  # nothing scrolled away

    for line in lines:
        assert SECRET not in line
        for caller in (PIPELINE, OPERATOR, VIEWER):
            assert caller.token not in line

    audited = [found for line in lines if (found := AUDIT.search(line))]
    outcomes = Counter((a["principal"].strip('"'), a["method"], a["code"]) for a in audited)
    assert outcomes == calls.expected
    created = next(a for a in audited if a["method"] == "CreateRun" and a["code"] == "OK")
    assert re.fullmatch(r"[0-9a-f-]{36}", created["run_id"])
    denied = [a for a in audited if a["code"] == "PERMISSION_DENIED"]
    assert {a["principal"] for a in denied} == {"viewer", "pipeline"}
