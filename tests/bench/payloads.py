"""The run the benchmark creates, shared by the load generator and the echo server.

Both sides use the same metadata and kwargs so that the echo server answers with a message
of the size runplane answers with: the comparison then measures runplane's own work, not a
difference in payload.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from runplane.v1 import run_pb2

BENCH_ASSISTANT_ID = "bench"
BENCH_METADATA: dict[str, Any] = {"source": "bench", "user_id": "user-0042", "priority": 1}
BENCH_KWARGS: dict[str, Any] = {
    "input": {"messages": [{"role": "user", "content": "What is the weather in Paris?"}]},
    "config": {"recursion_limit": 25, "tags": ["bench"]},
}


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """Builds a protobuf Struct from plain JSON-like values."""
    message = struct_pb2.Struct()
    message.update(values)
    return message


def realistic_run() -> run_pb2.Run:
    """A PENDING run as runplane would return it right after CreateRun."""
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return run_pb2.Run(
        run_id=str(uuid.uuid4()),
        thread_id=str(uuid.uuid4()),
        assistant_id=BENCH_ASSISTANT_ID,
        created_at=now,
        updated_at=now,
        status=run_pb2.RUN_STATUS_PENDING,
        metadata=struct(BENCH_METADATA),
        kwargs=struct(BENCH_KWARGS),
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
        revision=1,
    )
