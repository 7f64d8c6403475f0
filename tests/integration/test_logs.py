"""`runplane serve --log-format json --access-log`: every line is a JSON object, every call
leaves exactly one access line, and no line carries metadata, kwargs or tokens.

The secret travels in every place a caller can put one (run metadata and kwargs, a
request id, a metadata filter, an oversized struct, a malformed id, the authorization
header and other call metadata); the server's whole stderr is then searched for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.databases import database_url

RUNPLANE = str(Path(sys.executable).parent / "runplane")
SECRET = f"s3cret-{uuid.uuid4().hex}"
CALL_METADATA = (("authorization", f"Bearer {SECRET}"), ("x-api-key", SECRET))


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _workload(address: str) -> list[tuple[str, grpc.StatusCode]]:
    """Calls carrying the secret everywhere; returns each call's method and code."""
    made: list[tuple[str, grpc.StatusCode]] = []
    with grpc.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)

        def call(method: str, request: object) -> Any:
            try:
                response = getattr(stub, method)(request, timeout=10, metadata=CALL_METADATA)
            except grpc.RpcError as error:
                made.append((method, error.code()))
                return None
            made.append((method, grpc.StatusCode.OK))
            return response

        secrets = {"secret": SECRET, "nested": {"token": SECRET}}
        run = call(
            "CreateRun",
            run_service_pb2.CreateRunRequest(
                assistant_id="logged",
                metadata=_struct(secrets),
                kwargs=_struct({"api_key": SECRET}),
                request_id=SECRET,
            ),
        )
        call("GetRun", run_service_pb2.GetRunRequest(run_id=run.run_id))
        call(
            "UpdateRun",
            run_service_pb2.UpdateRunRequest(
                run=run_pb2.Run(run_id=run.run_id, metadata=_struct(secrets)),
                update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
            ),
        )
        call(
            "ListRuns",
            run_service_pb2.ListRunsRequest(
                filter=run_service_pb2.RunFilter(metadata=_struct({"secret": SECRET}))
            ),
        )
        call(
            "CreateRun",
            run_service_pb2.CreateRunRequest(assistant_id="logged", thread_id=SECRET),
        )
        call(
            "CreateRun",
            run_service_pb2.CreateRunRequest(
                assistant_id="logged", kwargs=_struct({"big": SECRET * 10_000})
            ),
        )
        call("GetRun", run_service_pb2.GetRunRequest(run_id=SECRET))
        call("CancelRun", run_service_pb2.CancelRunRequest(run_id=run.run_id, reason=SECRET))
        stream = stub.WatchRun(
            run_service_pb2.WatchRunRequest(run_id=run.run_id), timeout=10, metadata=CALL_METADATA
        )
        assert len(list(stream)) == 1  # the run is over: its state, and the stream ends
        made.append(("WatchRun", grpc.StatusCode.OK))
    return made


@pytest.mark.timeout(90)
def test_json_access_log_has_one_line_per_call_and_no_secret(backend: str, tmp_path: Path) -> None:
    with database_url(backend, tmp_path) as url:
        process = subprocess.Popen(
            [RUNPLANE, "serve", "--address", "127.0.0.1:0", "--database-url", url],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "RUNPLANE_LOG_FORMAT": "json",
                "RUNPLANE_ACCESS_LOG": "true",
                "RUNPLANE_LOG_LEVEL": "debug",
            },
        )
        try:
            assert process.stderr is not None
            lines = []
            for line in process.stderr:
                lines.append(line)
                record = json.loads(line)
                if record["msg"] == "ready":
                    break
            else:
                raise AssertionError("no ready line:\n" + "".join(lines))
            made = _workload(record["address"])
            process.send_signal(signal.SIGTERM)
            _, rest = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0
    lines += rest.splitlines(keepends=True)

    assert SECRET not in "".join(lines)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [record for record in records if record["logger"] == "runplane.access"]
    assert [(r["method"].rsplit("/", 1)[1], r["code"]) for r in access] == [
        (method, code.name) for method, code in made
    ]
    assert {code for _, code in made} >= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    for record in access:
        assert record["method"].startswith("/runplane.v1.RunService/")
        assert record["duration_ms"] >= 0
        assert record["peer"].startswith("ipv4:127.0.0.1:")
        assert record["principal"] == "anonymous"
        assert record["level"] == "info"
    assert records[-1]["msg"] == "stopped"
