"""Traces across processes: a traced application (its own process, the OpenTelemetry SDK
exporting over OTLP) calls `runplane serve --otlp-endpoint`; both export to a real OTLP
receiver started here, and the spans must form one trace per call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.serve_process import ServeProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER, CLIENT, CONSUMER = 2, 3, 5  # OTLP span kinds
ERROR = 2  # OTLP status code
METHOD = "runplane.v1.RunService/"


def _one(spans: list[ReceivedSpan], **fields: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in fields.items())]
    assert len(found) == 1, f"{len(found)} spans with {fields}: {found}"
    return found[0]


def _served(spans: list[ReceivedSpan], client: ReceivedSpan) -> ReceivedSpan:
    """The server's span of a client span's call: its child, in the same trace."""
    return _one(
        spans,
        service="runplane",
        kind=SERVER,
        name=client.name,
        trace_id=client.trace_id,
        parent_span_id=client.span_id,
    )


@pytest.mark.timeout(90)
def test_client_calls_and_worker_join_one_trace_with_the_server(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        server = ServeProcess(
            "127.0.0.1:0",
            f"sqlite:///{tmp_path / 'runplane.db'}",
            tmp_path,
            "--otlp-endpoint",
            receiver.endpoint,
        )
        with server:
            assert any("tracing=otlp" in line for line in server.logs)
            app = _run_app(server.address, receiver.endpoint)
            assert server.terminate() == 0  # flushes the server's spans
        spans = receiver.spans
    ids = json.loads(app)
    in_app = [s for s in spans if s.trace_id == ids["app_trace_id"]]

    # Each unary call: the app's CLIENT span under its own span, the server's span under it.
    creates = [s for s in in_app if s.kind == CLIENT and s.name == METHOD + "CreateRun"]
    assert len(creates) == 3  # sync, async, and the run the worker works
    for client_span in creates:
        assert client_span.service == "traced-app"
        assert client_span.parent_span_id == ids["app_span_id"]
        served = _served(spans, client_span)
        assert served.attributes["rpc.grpc.status_code"] == 0
        assert served.attributes["rpc.method"] == "CreateRun"
        assert served.attributes["rpc.service"] == "runplane.v1.RunService"

    # A refused call: NOT_FOUND is the caller's error, not the server's.
    get = _one(in_app, kind=CLIENT, name=METHOD + "GetRun")
    assert get.status_code == ERROR
    served = _served(spans, get)
    assert served.attributes["rpc.grpc.status_code"] == 5
    assert served.status_code != ERROR

    # A watch carries the caller's context without a client span of its own.
    _one(in_app, kind=SERVER, name=METHOD + "WatchRun", parent_span_id=ids["app_span_id"])

    # One trace from the create to the completion. The server kept the context of the
    # worked run's CreateRun call (its client span) with the run; the worker claimed the
    # run, ran its handler in a span under that call's span, and completed it there.
    _, trace_id, span_id, _ = ids["worked_traceparent"].split("-")
    assert trace_id == ids["app_trace_id"]
    create = _one(creates, span_id=span_id)  # the client span of the worked run's create
    assert ids["kept_traceparent"] == ids["worked_traceparent"]  # as the worker got it
    claim = _one(in_app, kind=CLIENT, name=METHOD + "ClaimRun")
    assert claim.parent_span_id == ids["app_span_id"]
    _served(spans, claim)
    handler = _one(in_app, kind=CONSUMER)
    assert handler.name == "work worked"
    assert handler.parent_span_id == create.span_id
    assert handler.attributes["runplane.assistant_id"] == "worked"
    assert ids["handled_in_trace"] == ids["app_trace_id"]  # the handler ran inside it
    complete = _one(in_app, kind=CLIENT, name=METHOD + "CompleteRun")
    assert complete.parent_span_id == create.span_id
    assert _served(spans, complete).attributes["rpc.grpc.status_code"] == 0
    # The worker's watch for the run's loss is in that context as well. The handler is
    # quick, so the worker may stop that watch before the server saw it: where the
    # server did, its span must hang under the create.
    watches = [s for s in in_app if s.kind == SERVER and s.name == METHOD + "WatchRun"]
    assert {s.parent_span_id for s in watches} <= {ids["app_span_id"], create.span_id}


def _run_app(address: str, endpoint: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.support.traced_calls", address, endpoint],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout
