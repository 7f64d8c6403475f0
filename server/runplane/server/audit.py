"""One audit line per call that changes runs: who, what, where, which run, how it ended.

    level=info logger=runplane.audit msg=audit principal=checkout method=CreateRun
        namespace=shop run_id=6f0c... code=OK

Only these five fields are written: never metadata, kwargs, tokens or any other part
of a request. The run and namespace come from the stored run the call answered with
when there is one, else from the request, and then only if they are well formed (a
UUID, a DNS label): anything else there is the caller's free text. A call refused
before authentication logs no principal and nothing of its request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import grpc

from runplane.server.policy import NAMESPACE_PATTERN
from runplane.v1 import run_pb2, run_service_pb2

log = logging.getLogger("runplane.audit")

_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_REQUESTED: dict[str, Callable[[Any], tuple[str, str]]] = {
    "CreateRun": lambda request: (request.namespace, request.run_id),
    "UpdateRun": lambda request: ("", request.run.run_id),
    "CancelRun": lambda request: ("", request.run_id),
    "CancelRuns": lambda request: (request.filter.namespace, ""),
    "DeleteRun": lambda request: ("", request.run_id),
    "ClaimRun": lambda request: (request.namespace, ""),
    "CompleteRun": lambda request: ("", request.run_id),
}
"""(namespace, run_id) as each audited method's request names them."""


def record(
    method: str,
    code: grpc.StatusCode,
    principal: str | None,
    request: Any = None,
    response: Any = None,
) -> None:
    """Write the audit line of one finished call of `method`; `principal` is None when
    the caller was not authenticated (and then `request` is not read)."""
    namespace, run_id = "", ""
    if principal is not None and request is not None:
        namespace, run_id = _REQUESTED[method](request)
        namespace = namespace if NAMESPACE_PATTERN.fullmatch(namespace) else ""
        run_id = run_id if _RUN_ID.fullmatch(run_id) else ""
    run = _answered_run(response)
    if run is not None:
        namespace, run_id = run.namespace or namespace, run.run_id
    log.info(
        "audit",
        extra={
            "principal": principal or "",
            "method": method,
            "namespace": namespace,
            "run_id": run_id,
            "code": code.name,
        },
    )


def _answered_run(response: Any) -> run_pb2.Run | None:
    if isinstance(response, run_pb2.Run):
        return response
    if isinstance(response, run_service_pb2.ClaimRunResponse) and response.HasField("run"):
        return response.run
    return None
