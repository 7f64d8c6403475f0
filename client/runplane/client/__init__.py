"""Python client for runplane: runs of AI assistants on conversation threads.

    from runplane.client import Client, MultitaskStrategy

    with Client("127.0.0.1:50051") as client:   # or tls=True, token=..., namespace=...
        run = client.create_run("agent", multitask_strategy=MultitaskStrategy.REJECT)
        for run in client.list_runs(thread_id=run.thread_id):
            print(run.run_id, run.status)

`AsyncClient` offers the same methods as coroutines. Calls return plain values
(`Run`, `RunStatus`, dicts, datetimes) and raise `RunplaneError` subclasses.
"""

from typing import TYPE_CHECKING, Any

from runplane.client._channels import TLSConfig
from runplane.client._client import Client
from runplane.client._errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LeaseLost,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    RevisionCompacted,
    RevisionMismatch,
    RunDeleted,
    RunInflight,
    RunplaneError,
    RunTerminal,
    ThreadBusy,
    TooManyWatches,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_grpc_error,
)
from runplane.client._models import (
    CancelAction,
    EventType,
    MultitaskStrategy,
    Run,
    RunEvent,
    RunPage,
    RunStatus,
)
from runplane.client._pagers import AsyncRunPager, RunPager
from runplane.client._retry import RetryPolicy

if TYPE_CHECKING:
    from runplane.client._async_client import AsyncClient
    from runplane.client._worker import AsyncWorker, Worker

# Imported on first use: they bring asyncio, which the CLI and sync callers never need
# (a third of the CLI's start-up).
_LAZY = {
    "AsyncClient": "runplane.client._async_client",
    "AsyncWorker": "runplane.client._worker",
    "Worker": "runplane.client._worker",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncRunPager",
    "AsyncWorker",
    "CancelAction",
    "Cancelled",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "EventType",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "LeaseLost",
    "MultitaskStrategy",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "RateLimited",
    "ResourceExhausted",
    "RetryPolicy",
    "RevisionCompacted",
    "RevisionMismatch",
    "Run",
    "RunDeleted",
    "RunEvent",
    "RunInflight",
    "RunPage",
    "RunPager",
    "RunStatus",
    "RunTerminal",
    "RunplaneError",
    "TLSConfig",
    "ThreadBusy",
    "TooManyWatches",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "Worker",
    "from_grpc_error",
]
