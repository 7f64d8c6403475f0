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

if TYPE_CHECKING:
    from runplane.client._async_client import AsyncClient
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
        CancelledRuns,
        EventType,
        MultitaskStrategy,
        QueueStats,
        Run,
        RunCount,
        RunEvent,
        RunPage,
        RunRetryPolicy,
        RunStatus,
        Stats,
    )
    from runplane.client._pagers import (
        AsyncRunPager,
        RunPager,
    )
    from runplane.client._retry import RetryPolicy
    from runplane.client._worker import (
        AsyncWorker,
        RetryableError,
        Worker,
    )

# Every name is imported on first use. The CLI starts faster for what it never needs
# (asyncio, the workers), and it can set grpc's logging defaults before grpc loads:
# grpc reads them once, at import.
_LAZY = {
    "Aborted": "runplane.client._errors",
    "AlreadyExists": "runplane.client._errors",
    "AsyncClient": "runplane.client._async_client",
    "AsyncRunPager": "runplane.client._pagers",
    "AsyncWorker": "runplane.client._worker",
    "CancelAction": "runplane.client._models",
    "Cancelled": "runplane.client._errors",
    "CancelledRuns": "runplane.client._models",
    "Client": "runplane.client._client",
    "DataLoss": "runplane.client._errors",
    "DeadlineExceeded": "runplane.client._errors",
    "EventType": "runplane.client._models",
    "FailedPrecondition": "runplane.client._errors",
    "from_grpc_error": "runplane.client._errors",
    "Internal": "runplane.client._errors",
    "InvalidArgument": "runplane.client._errors",
    "LeaseLost": "runplane.client._errors",
    "MultitaskStrategy": "runplane.client._models",
    "NotFound": "runplane.client._errors",
    "OutOfRange": "runplane.client._errors",
    "PermissionDenied": "runplane.client._errors",
    "QueueStats": "runplane.client._models",
    "RateLimited": "runplane.client._errors",
    "ResourceExhausted": "runplane.client._errors",
    "RetryableError": "runplane.client._worker",
    "RetryPolicy": "runplane.client._retry",
    "RevisionCompacted": "runplane.client._errors",
    "RevisionMismatch": "runplane.client._errors",
    "Run": "runplane.client._models",
    "RunCount": "runplane.client._models",
    "RunDeleted": "runplane.client._errors",
    "RunEvent": "runplane.client._models",
    "RunInflight": "runplane.client._errors",
    "RunPage": "runplane.client._models",
    "RunPager": "runplane.client._pagers",
    "RunRetryPolicy": "runplane.client._models",
    "RunplaneError": "runplane.client._errors",
    "RunStatus": "runplane.client._models",
    "RunTerminal": "runplane.client._errors",
    "Stats": "runplane.client._models",
    "ThreadBusy": "runplane.client._errors",
    "TLSConfig": "runplane.client._channels",
    "TooManyWatches": "runplane.client._errors",
    "Unauthenticated": "runplane.client._errors",
    "Unavailable": "runplane.client._errors",
    "Unimplemented": "runplane.client._errors",
    "Unknown": "runplane.client._errors",
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
    "CancelledRuns",
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
    "QueueStats",
    "RateLimited",
    "ResourceExhausted",
    "RetryPolicy",
    "RetryableError",
    "RevisionCompacted",
    "RevisionMismatch",
    "Run",
    "RunCount",
    "RunDeleted",
    "RunEvent",
    "RunInflight",
    "RunPage",
    "RunPager",
    "RunRetryPolicy",
    "RunStatus",
    "RunTerminal",
    "RunplaneError",
    "Stats",
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
