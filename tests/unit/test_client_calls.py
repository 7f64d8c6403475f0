"""Client behaviour on the wire, against a real gRPC server answering from a script.

The server is a real `grpc.server` on 127.0.0.1:0 serving RunService's method
paths; each test scripts its answers (replies, rich error statuses, stalls) and
reads back the requests it received. Nothing of gRPC is mocked.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from runplane.client import (
    AsyncClient,
    Client,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    RevisionCompacted,
    RevisionMismatch,
    Run,
    RunplaneError,
    RunStatus,
    ThreadBusy,
    TLSConfig,
    Unavailable,
    Worker,
)
from runplane.v1 import run_pb2, run_service_pb2

FAST_RETRY = RetryPolicy(initial_backoff=0.001, max_backoff=0.005)
RUN_ID = "0b6f3c52-3cf4-4d5c-9d56-3c2f8e1f0a11"
THREAD_ID = "5d0c7a1e-8f2b-4b8e-9a4c-1e2f3a4b5c6d"

_MESSAGES: dict[str, tuple[type[Message], type[Message]]] = {
    "CreateRun": (run_service_pb2.CreateRunRequest, run_pb2.Run),
    "GetRun": (run_service_pb2.GetRunRequest, run_pb2.Run),
    "ListRuns": (run_service_pb2.ListRunsRequest, run_service_pb2.ListRunsResponse),
    "UpdateRun": (run_service_pb2.UpdateRunRequest, run_pb2.Run),
    "DeleteRun": (run_service_pb2.DeleteRunRequest, empty_pb2.Empty),
    "ClaimRun": (run_service_pb2.ClaimRunRequest, run_service_pb2.ClaimRunResponse),
}


@dataclass(frozen=True)
class Stall:
    """Answer `reply` only after `seconds`: long enough to miss a short deadline."""

    seconds: float
    reply: Message


@dataclass
class Received:
    request: Any
    time_remaining: float
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ScriptedRunService:
    """Answers each RPC with the next scripted outcome; repeats the last one when out."""

    script: dict[str, list[Message | status_pb2.Status | Stall]] = field(
        default_factory=lambda: defaultdict(list)
    )
    received: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            "runplane.v1.RunService",
            {
                rpc: grpc.unary_unary_rpc_method_handler(
                    self._answerer(rpc),
                    request_deserializer=request_type.FromString,
                    response_serializer=response_type.SerializeToString,
                )
                for rpc, (request_type, response_type) in _MESSAGES.items()
            }
            | {
                "WatchRuns": grpc.unary_stream_rpc_method_handler(
                    self._watch,
                    request_deserializer=run_service_pb2.WatchRunsRequest.FromString,
                    response_serializer=run_service_pb2.WatchRunsResponse.SerializeToString,
                )
            },
        )

    def _watch(
        self, request: run_service_pb2.WatchRunsRequest, context: grpc.ServicerContext
    ) -> Iterator[run_service_pb2.WatchRunsResponse]:
        """One CREATED event of `proto_run()`, then the stream ends."""
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self.received["WatchRuns"].append(Received(request, context.time_remaining(), metadata))
        event = run_pb2.RunEvent(type=run_pb2.EVENT_TYPE_CREATED, revision=1, run=proto_run())
        yield run_service_pb2.WatchRunsResponse(events=[event], revision=1)

    def _answerer(self, rpc: str) -> Callable[[Any, grpc.ServicerContext], Message]:
        def answer(request: Any, context: grpc.ServicerContext) -> Message:
            metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
            self.received[rpc].append(Received(request, context.time_remaining(), metadata))
            outcomes = self.script[rpc]
            outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
            if isinstance(outcome, status_pb2.Status):
                context.abort_with_status(rpc_status.to_status(outcome))
            if isinstance(outcome, Stall):
                time.sleep(outcome.seconds)
                return outcome.reply
            return outcome

        return answer


@pytest.fixture
def service() -> ScriptedRunService:
    return ScriptedRunService()


@pytest.fixture
def address(service: ScriptedRunService) -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture
def client(address: str) -> Iterator[Client]:
    with Client(address, default_deadline=5, retry_policy=FAST_RETRY) as client:
        yield client


def rich_status(
    code: int,
    message: str,
    reason: str = "",
    *,
    metadata: dict[str, str] | None = None,
    violations: dict[str, str] | None = None,
    domain: str = "runplane.dev",
) -> status_pb2.Status:
    details = []
    if reason:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)
        details.append(info)
    if violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=name, description=text)
                for name, text in violations.items()
            ]
        )
        details.append(bad_request)
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=code, message=message, details=packed)


def proto_run(revision: int = 1) -> run_pb2.Run:
    run = run_pb2.Run(
        run_id=RUN_ID,
        thread_id=THREAD_ID,
        assistant_id="agent",
        status=run_pb2.RUN_STATUS_PENDING,
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
        revision=revision,
    )
    run.created_at.GetCurrentTime()
    run.updated_at.GetCurrentTime()
    return run


def get_run_with(flavour: str, address: str) -> Run:
    """get_run through the sync Client or the AsyncClient, so both are held to one test."""
    if flavour == "sync":
        with Client(address, retry_policy=FAST_RETRY) as client:
            return client.get_run(RUN_ID)

    async def get() -> Run:
        async with AsyncClient(address, retry_policy=FAST_RETRY) as client:
            return await client.get_run(RUN_ID)

    return asyncio.run(get())


FLAVOURS = pytest.mark.parametrize("flavour", ["sync", "async"])


@FLAVOURS
def test_thread_busy_carries_the_thread_and_the_blocking_run(
    service: ScriptedRunService, address: str, flavour: str
) -> None:
    service.script["GetRun"] = [
        rich_status(
            code_pb2.FAILED_PRECONDITION,
            "thread is busy",
            "THREAD_BUSY",
            metadata={"thread_id": THREAD_ID, "run_id": RUN_ID},
        )
    ]

    with pytest.raises(ThreadBusy) as caught:
        get_run_with(flavour, address)

    error = caught.value
    assert isinstance(error, FailedPrecondition)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert (error.thread_id, error.run_id) == (THREAD_ID, RUN_ID)
    assert (error.reason, error.domain) == ("THREAD_BUSY", "runplane.dev")
    assert error.message == "thread is busy"
    assert str(error) == "FAILED_PRECONDITION: thread is busy (reason THREAD_BUSY)"


@FLAVOURS
def test_invalid_argument_lists_its_field_violations(
    service: ScriptedRunService, address: str, flavour: str
) -> None:
    service.script["GetRun"] = [
        rich_status(
            code_pb2.INVALID_ARGUMENT,
            "invalid request",
            "INVALID_ARGUMENT",
            violations={"run_id": "must be a UUID", "page_size": "must not be negative"},
        )
    ]

    with pytest.raises(InvalidArgument) as caught:
        get_run_with(flavour, address)

    assert caught.value.field_violations == [
        ("run_id", "must be a UUID"),
        ("page_size", "must not be negative"),
    ]


def test_revision_errors_pick_their_reason_class(
    service: ScriptedRunService, client: Client
) -> None:
    service.script["GetRun"] = [
        rich_status(
            code_pb2.OUT_OF_RANGE,
            "compacted",
            "REVISION_COMPACTED",
            metadata={"compact_revision": "100", "current_revision": "250"},
        ),
        rich_status(code_pb2.ABORTED, "stale", "REVISION_MISMATCH"),
    ]

    with pytest.raises(RevisionCompacted) as compacted:
        client.get_run(RUN_ID)
    with pytest.raises(RevisionMismatch):
        client.get_run(RUN_ID)

    assert (compacted.value.compact_revision, compacted.value.current_revision) == (100, 250)


def test_a_reason_from_another_domain_keeps_the_plain_code_class(
    service: ScriptedRunService, client: Client
) -> None:
    service.script["GetRun"] = [
        rich_status(code_pb2.FAILED_PRECONDITION, "busy", "THREAD_BUSY", domain="example.com")
    ]

    with pytest.raises(FailedPrecondition) as caught:
        client.get_run(RUN_ID)

    assert type(caught.value) is FailedPrecondition
    assert caught.value.domain == "example.com"


def test_an_error_without_rich_details_maps_by_code(
    service: ScriptedRunService, client: Client
) -> None:
    service.script["GetRun"] = [status_pb2.Status(code=code_pb2.NOT_FOUND, message="gone")]

    with pytest.raises(NotFound) as caught:
        client.get_run(RUN_ID)

    assert (caught.value.message, caught.value.reason, caught.value.metadata) == ("gone", "", {})


def test_an_unreachable_server_is_unavailable_after_retries() -> None:
    with (
        Client("127.0.0.1:1", retry_policy=FAST_RETRY) as client,
        pytest.raises(Unavailable) as caught,
    ):
        client.get_run(RUN_ID)

    assert isinstance(caught.value, RunplaneError)


def test_reads_retry_unavailable_until_the_server_answers(
    service: ScriptedRunService, client: Client
) -> None:
    unavailable = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="restarting")
    service.script["GetRun"] = [unavailable, unavailable, proto_run()]

    run = client.get_run(RUN_ID)

    assert run.status is RunStatus.PENDING
    assert len(service.received["GetRun"]) == 3


def test_reads_give_up_after_max_attempts(service: ScriptedRunService, client: Client) -> None:
    service.script["GetRun"] = [status_pb2.Status(code=code_pb2.UNAVAILABLE, message="down")]

    with pytest.raises(Unavailable):
        client.get_run(RUN_ID)

    assert len(service.received["GetRun"]) == FAST_RETRY.max_attempts


def test_other_failures_are_not_retried(service: ScriptedRunService, client: Client) -> None:
    service.script["GetRun"] = [status_pb2.Status(code=code_pb2.INTERNAL, message="oops")]

    with pytest.raises(Internal):
        client.get_run(RUN_ID)

    assert len(service.received["GetRun"]) == 1


def test_create_without_request_id_is_never_retried(
    service: ScriptedRunService, client: Client
) -> None:
    service.script["CreateRun"] = [
        status_pb2.Status(code=code_pb2.UNAVAILABLE, message="down"),
        proto_run(),
    ]

    with pytest.raises(Unavailable):
        client.create_run("agent")

    assert len(service.received["CreateRun"]) == 1


@FLAVOURS
def test_create_with_request_id_is_retried_with_the_same_request(
    service: ScriptedRunService, address: str, flavour: str
) -> None:
    service.script["CreateRun"] = [
        status_pb2.Status(code=code_pb2.UNAVAILABLE, message="down"),
        proto_run(),
    ]

    if flavour == "sync":
        with Client(address, retry_policy=FAST_RETRY) as client:
            client.create_run("agent", request_id="req-1")
    else:

        async def create() -> None:
            async with AsyncClient(address, retry_policy=FAST_RETRY) as client:
                await client.create_run("agent", request_id="req-1")

        asyncio.run(create())

    requests = [received.request for received in service.received["CreateRun"]]
    assert len(requests) == 2
    assert requests[0] == requests[1]
    assert requests[0].request_id == "req-1"


def test_every_call_has_a_default_deadline(service: ScriptedRunService, address: str) -> None:
    service.script["GetRun"] = [proto_run()]

    with Client(address, default_deadline=3) as client:
        client.get_run(RUN_ID)
        client.get_run(RUN_ID, deadline=30)

    first, second = service.received["GetRun"]
    assert 0 < first.time_remaining < 3.5  # gRPC rounds the deadline on the wire
    assert 3.5 < second.time_remaining < 31


def test_a_slow_answer_raises_deadline_exceeded(
    service: ScriptedRunService, client: Client
) -> None:
    service.script["GetRun"] = [Stall(1.0, proto_run())]
    started = time.monotonic()

    with pytest.raises(RunplaneError) as caught:
        client.get_run(RUN_ID, deadline=0.2)

    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.9


def test_claim_waits_longer_than_the_default_deadline(
    service: ScriptedRunService, address: str
) -> None:
    service.script["ClaimRun"] = [run_service_pb2.ClaimRunResponse()]

    with Client(address, default_deadline=2) as client:
        claimed = client.claim_run("worker-1", assistant_ids=["agent"], wait=5, lease_duration=60)

    assert claimed is None
    (received,) = service.received["ClaimRun"]
    assert received.time_remaining > 5
    assert received.request.wait.seconds == 5
    assert received.request.lease_duration.seconds == 60
    assert list(received.request.assistant_ids) == ["agent"]


def test_list_runs_is_lazy_and_follows_page_tokens(
    service: ScriptedRunService, client: Client
) -> None:
    service.script["ListRuns"] = [
        run_service_pb2.ListRunsResponse(
            runs=[proto_run(revision=3), proto_run(revision=2)], next_page_token="p2", revision=9
        ),
        run_service_pb2.ListRunsResponse(runs=[proto_run(revision=1)], revision=9),
    ]

    pager = client.list_runs(
        thread_id=THREAD_ID, statuses=["PENDING", RunStatus.RUNNING], metadata={"n": 1}, page_size=2
    )
    assert service.received["ListRuns"] == []
    runs = list(pager)

    assert [run.revision for run in runs] == [3, 2, 1]
    first, second = (received.request for received in service.received["ListRuns"])
    assert (first.page_token, second.page_token) == ("", "p2")
    assert first.page_size == 2
    assert first.order_by == "created_at desc"
    assert first.filter.thread_id == THREAD_ID
    assert list(first.filter.statuses) == [run_pb2.RUN_STATUS_PENDING, run_pb2.RUN_STATUS_RUNNING]
    assert dict(first.filter.metadata) == {"n": 1.0}
    assert second.filter == first.filter


def test_async_list_runs_pages_carry_their_revision(
    service: ScriptedRunService, address: str
) -> None:
    service.script["ListRuns"] = [
        run_service_pb2.ListRunsResponse(runs=[proto_run()], next_page_token="p2", revision=7),
        run_service_pb2.ListRunsResponse(runs=[proto_run()], revision=8),
    ]

    async def read_pages() -> list[tuple[int, int]]:
        async with AsyncClient(address) as client:
            pager = client.list_runs(order_by="created_at asc")
            return [(len(page.runs), page.revision) async for page in pager.pages()]

    assert asyncio.run(read_pages()) == [(1, 7), (1, 8)]


def test_update_run_masks_only_what_was_given(service: ScriptedRunService, client: Client) -> None:
    service.script["UpdateRun"] = [proto_run(revision=2)]

    client.update_run(RUN_ID, metadata={"a": 1}, expected_revision=1)

    (received,) = service.received["UpdateRun"]
    assert list(received.request.update_mask.paths) == ["metadata"]
    assert received.request.run.run_id == RUN_ID
    assert received.request.expected_revision == 1


def test_update_run_with_nothing_to_change_is_refused_locally(client: Client) -> None:
    with pytest.raises(ValueError, match="metadata or kwargs"):
        client.update_run(RUN_ID)


def test_delete_run_returns_none(service: ScriptedRunService, client: Client) -> None:
    service.script["DeleteRun"] = [empty_pb2.Empty()]

    assert client.delete_run(RUN_ID, force=True) is None
    assert service.received["DeleteRun"][0].request.force is True


def test_the_namespace_goes_with_creates_listings_and_claims(
    service: ScriptedRunService, address: str
) -> None:
    service.script["CreateRun"] = [proto_run()]
    service.script["ListRuns"] = [run_service_pb2.ListRunsResponse()]
    service.script["ClaimRun"] = [run_service_pb2.ClaimRunResponse()]
    with Client(address, namespace="shop", retry_policy=FAST_RETRY) as client:
        client.create_run("agent")
        client.create_run("agent", namespace="lab")
        list(client.list_runs())
        list(client.list_runs(namespace=""))  # every namespace the caller may read
        client.claim_run("w1")
        next(iter(client.watch_runs()))
        next(iter(client.watch_runs(namespace="lab")))
    with Client(address, retry_policy=FAST_RETRY) as client:
        client.create_run("agent")
    creates = [r.request.namespace for r in service.received["CreateRun"]]
    assert creates == ["shop", "lab", ""]
    assert [r.request.filter.namespace for r in service.received["ListRuns"]] == ["shop", ""]
    assert [r.request.namespace for r in service.received["ClaimRun"]] == ["shop"]
    assert [r.request.filter.namespace for r in service.received["WatchRuns"]] == ["shop", "lab"]


def test_the_async_client_sends_its_namespace_too(
    service: ScriptedRunService, address: str
) -> None:
    service.script["CreateRun"] = [proto_run()]

    async def create() -> None:
        async with AsyncClient(address, namespace="shop") as client:
            await client.create_run("agent")

    asyncio.run(create())
    assert service.received["CreateRun"][0].request.namespace == "shop"


@FLAVOURS
def test_the_token_goes_with_every_call(
    service: ScriptedRunService, address: str, flavour: str
) -> None:
    service.script["GetRun"] = [proto_run()]
    service.script["CreateRun"] = [proto_run()]

    async def calls() -> None:
        async with AsyncClient(address, token="tok-1") as client:
            await client.create_run("agent")
            await client.get_run(RUN_ID)

    if flavour == "sync":
        with Client(address, token="tok-1") as client:
            client.create_run("agent")
            client.get_run(RUN_ID)
    else:
        asyncio.run(calls())
    received = service.received["CreateRun"] + service.received["GetRun"]
    assert [r.metadata.get("authorization") for r in received] == ["Bearer tok-1"] * 2


def test_without_a_token_no_authorization_is_sent(
    service: ScriptedRunService, client: Client
) -> None:
    service.script["GetRun"] = [proto_run()]
    client.get_run(RUN_ID)
    assert "authorization" not in service.received["GetRun"][0].metadata


@pytest.mark.parametrize("address", ["10.0.0.7:50051", "runplane.internal:50051", ":50051"])
def test_a_token_is_never_sent_in_plaintext_beyond_loopback(address: str) -> None:
    with pytest.raises(ValueError, match="refusing to send a token in plaintext"):
        Client(address, token="tok")
    with pytest.raises(ValueError, match="refusing to send a token in plaintext"):
        Worker(address, lambda run, stop: None, token="tok")


@pytest.mark.parametrize(
    "address", ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "unix:/tmp/runplane.sock"]
)
def test_a_token_may_go_in_plaintext_to_loopback(address: str) -> None:
    Client(address, token="tok").close()


@pytest.mark.parametrize("token", ["", " tok", "tok\n", "a\nb"])
def test_malformed_tokens_are_refused_locally(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        Client("127.0.0.1:50051", token=token)


def test_tls_config_needs_a_certificate_and_its_key_together() -> None:
    with pytest.raises(ValueError, match="together"):
        TLSConfig(cert_file="client.crt")
