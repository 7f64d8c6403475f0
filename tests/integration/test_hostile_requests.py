"""Property: whatever a caller sends to any RPC (valid, invalid, or bytes that are no
message at all), the server answers with a documented code, never UNKNOWN or
INTERNAL; a refused call changes nothing; the server stays SERVING; and no message
carries a stack trace, SQL or a Python repr.

Bounded and reproducible: a fixed number of examples, derandomized, no example
database. The server of this module does not sweep, so the store revision moves only
by the calls the test makes.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterator
from typing import Any, cast

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runplane.server.config import ServerConfig
from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.support.databases import database_url
from tests.support.hostile import (
    LEAKS,
    RUN_SERVICE,
    nested,
    serving,
    store_revision,
)
from tests.support.servers import ServerThread
from tests.support.watching import cancel

pb = run_service_pb2
C = grpc.StatusCode
EXAMPLES = 2500
DOCUMENTED = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.ALREADY_EXISTS,
    C.FAILED_PRECONDITION,
    C.ABORTED,
    C.OUT_OF_RANGE,
}
WAITING = {"WatchRuns", "WatchRun", "ClaimRun"}
WAIT_S = 0.5
"""How long a call that may wait is given: a watch's first message, or a claim's long
poll; either may end DEADLINE_EXCEEDED (a quiet stream, nothing to claim)."""

RUN_IDS = [str(uuid.UUID(int=index + 1)) for index in range(6)]
"""Runs made before the examples, so that requests name runs that exist."""
THREAD_ID = str(uuid.UUID(int=1 << 64))
ASSISTANTS = ["agent", "other"]
CODES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def target(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with database_url(backend, tmp_path_factory.mktemp(backend)) as url:
        server = ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
        try:
            for task in server.running.background:
                if task.name == "sweeper":
                    server.call(task.stop())
            with grpc.insecure_channel(server.address) as channel:
                stub = run_service_pb2_grpc.RunServiceStub(channel)
                for index, run_id in enumerate(RUN_IDS):
                    stub.CreateRun(
                        pb.CreateRunRequest(
                            run_id=run_id,
                            thread_id=THREAD_ID if index % 2 else "",
                            assistant_id=ASSISTANTS[index % 2],
                        )
                    )
                stub.ClaimRun(pb.ClaimRunRequest(worker_id="w0", assistant_ids=["agent"]))
            yield server
        finally:
            server.stop()
            print(f"\nhostile requests ({backend}): {dict(sorted(CODES[backend].items()))}")


# -- strategies ----------------------------------------------------------------------------------


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """Valid values three times in four, so that calls get past validation too."""
    return st.one_of(valid, valid, valid, other)


nul_text = st.text(max_size=5).map(lambda text: text + "\0")
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "agent", "w0", "x" * 300, "created_at asc", "*", "metadata"]),
    nul_text,
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=200, max_size=400),
)
names = mostly(st.sampled_from(ASSISTANTS), texts)
ids = mostly(st.sampled_from(RUN_IDS), st.one_of(st.uuids().map(str), texts))
int64s = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-3, 100))
int32s = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-3, 12))
json_scalars = st.one_of(st.none(), st.booleans(), st.floats(), st.integers(-(10**6), 10**6), texts)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(texts, children, max_size=3)
    ),
    max_leaves=12,
)
documents = mostly(
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.one_of(
        st.integers(28, 40).map(nested),
        st.integers(28, 40).map(lambda depth: nested(depth, lists=True)),
        st.integers(1, 300).map(lambda kib: {"blob": "x" * kib * 1024}),
        st.dictionaries(texts, json_values, max_size=4),
    ),
)
durations = mostly(
    st.builds(duration_pb2.Duration, seconds=st.integers(0, 100), nanos=st.integers(0, 10**9 - 1)),
    st.builds(duration_pb2.Duration, seconds=int64s, nanos=int32s),
)
timestamps = st.builds(timestamp_pb2.Timestamp, seconds=int64s, nanos=int32s)
enums = mostly(st.integers(0, 6), int32s)


def fill(message: Message, spec: dict[str, Any]) -> Message:
    """`message` with the fields of `spec` set in place: documents into Structs (built
    in place, since copying a Struct deeper than protobuf parses fails), dicts into
    nested messages, lists into repeated fields; None leaves a field unset."""
    for name, value in spec.items():
        if value is None:
            continue
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.message_type is struct_pb2.Struct.DESCRIPTOR:
            getattr(message, name).update(value)
        elif isinstance(value, dict):
            fill(getattr(message, name), value)
        elif isinstance(value, Message):
            getattr(message, name).CopyFrom(value)
        elif isinstance(value, list):
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def request(message_class: type[Message], **fields: st.SearchStrategy[Any]) -> Any:
    return st.fixed_dictionaries(fields).map(lambda spec: fill(message_class(), spec))


run_filters = st.fixed_dictionaries(
    {
        "thread_id": st.one_of(st.just(THREAD_ID), ids),
        "assistant_id": names,
        "statuses": st.lists(enums, max_size=4),
        "metadata": optional(documents),
        "namespace": texts,
    }
)
page_tokens = st.one_of(texts, st.binary(max_size=60).map(lambda data: data.hex()))

REQUESTS: dict[str, st.SearchStrategy[Message]] = {
    "CreateRun": request(
        pb.CreateRunRequest,
        thread_id=st.one_of(st.just(""), st.just(THREAD_ID), ids),
        assistant_id=names,
        metadata=optional(documents),
        kwargs=optional(documents),
        multitask_strategy=enums,
        run_id=st.one_of(st.just(""), ids),
        request_id=texts,
        timeout=optional(durations),
        start_after=optional(timestamps),
        namespace=texts,
        retry_policy=optional(
            st.fixed_dictionaries(
                {
                    "max_attempts": int32s,
                    "initial_backoff": optional(durations),
                    "backoff_coefficient": st.floats(),
                    "maximum_backoff": optional(durations),
                }
            )
        ),
        priority=optional(int32s),
    ),
    "GetRun": request(pb.GetRunRequest, run_id=ids),
    "ListRuns": request(
        pb.ListRunsRequest,
        filter=optional(run_filters),
        page_size=int32s,
        page_token=page_tokens,
        order_by=texts,
    ),
    "UpdateRun": request(
        pb.UpdateRunRequest,
        run=st.fixed_dictionaries(
            {"run_id": ids, "metadata": optional(documents), "kwargs": optional(documents)}
        ),
        update_mask=st.fixed_dictionaries(
            {"paths": st.lists(st.one_of(st.sampled_from(["metadata", "kwargs", "*"]), texts))}
        ),
        expected_revision=int64s,
    ),
    "CancelRun": request(pb.CancelRunRequest, run_id=ids, action=enums, reason=texts),
    "DeleteRun": request(
        pb.DeleteRunRequest, run_id=ids, expected_revision=int64s, force=st.booleans()
    ),
    "ClaimRun": request(
        pb.ClaimRunRequest,
        worker_id=mostly(st.just("w1"), texts),
        assistant_ids=st.lists(names, max_size=5),
        lease_duration=optional(durations),
        wait=optional(durations),
        namespace=texts,
    ),
    "HeartbeatRun": request(
        pb.HeartbeatRunRequest,
        run_id=ids,
        worker_id=mostly(st.just("w0"), texts),
        lease_duration=optional(durations),
    ),
    "CompleteRun": request(
        pb.CompleteRunRequest,
        run_id=ids,
        worker_id=mostly(st.just("w0"), texts),
        status=enums,
        error=texts,
        metadata=optional(documents),
        result=optional(documents),
        retryable=st.booleans(),
    ),
    "WatchRuns": request(
        pb.WatchRunsRequest,
        filter=optional(run_filters),
        start_revision=int64s,
        include_initial=st.booleans(),
        progress_interval=optional(durations),
    ),
    "WatchRun": request(pb.WatchRunRequest, run_id=ids, start_revision=int64s),
    "CancelRuns": request(pb.CancelRunsRequest, filter=optional(run_filters), reason=texts),
    "GetStats": request(pb.GetStatsRequest, namespace=texts),
}


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    """A method and the bytes sent to it: a generated request, the same with bytes
    flipped or cut, or arbitrary bytes."""
    method = draw(st.sampled_from(sorted(REQUESTS)))
    kind = draw(st.sampled_from(["message", "message", "message", "mutated", "bytes"]))
    if kind == "bytes":
        return method, draw(st.binary(max_size=64))
    encoded = draw(REQUESTS[method]).SerializeToString()
    if kind == "mutated" and encoded:
        data = bytearray(encoded)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        encoded = bytes(data[: draw(st.integers(0, len(data)))])
    return method, encoded


# -- the property --------------------------------------------------------------------------------


def call(channel: grpc.Channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    path = f"/{RUN_SERVICE.full_name}/{method}"
    timeout = WAIT_S if method in WAITING else 10
    try:
        if RUN_SERVICE.methods_by_name[method].server_streaming:
            stream = channel.unary_stream(path, None, None)(payload, timeout=timeout)
            try:
                next(iter(stream), None)
            finally:
                cancel(stream)
        else:
            channel.unary_unary(path, None, None)(payload, timeout=timeout)
    except grpc.RpcError as error:
        failed = cast(grpc.Call, error)
        return failed.code(), failed.details() or ""
    return C.OK, ""


@pytest.mark.timeout(300)
def test_no_request_makes_the_server_fail_or_change_on_refusal(
    target: ServerThread, backend: str
) -> None:
    with grpc.insecure_channel(target.address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        # What it found before requests were decoded where errors are mapped (UNKNOWN).
        @example(("CancelRun", b"\x00"))
        @example(("GetRun", b"\x0a\x02\xff\xfe"))
        @given(payloads())
        def check(sent: tuple[str, bytes]) -> None:
            method, payload = sent
            before = store_revision(stub)
            code, message = call(channel, method, payload)
            CODES[backend][code.name] += 1
            if method in WAITING and code is C.DEADLINE_EXCEEDED:
                pass  # a quiet stream, or a long poll with nothing to claim
            else:
                assert code in DOCUMENTED, (method, code, message)
            leaked = [marker for marker in LEAKS if marker in message]
            assert not leaked, (method, code, message)
            if code is not C.OK:
                assert store_revision(stub) == before, (method, code, message)
            assert serving(channel)

        check()
