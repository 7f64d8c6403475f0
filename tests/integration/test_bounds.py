"""Resource bounds: no single caller can hurt the others, and bad input never becomes
INTERNAL. On SQLite and PostgreSQL, through raw stubs and raw bytes.

Every refusal here is INVALID_ARGUMENT that names the problem and changes nothing
(the store revision stays where it was).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from runplane.server.config import ServerConfig
from runplane.server.sweeper import Sweeper
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.databases import fresh_postgres_database
from tests.support.hostile import (
    ALLOWED_DEPTH,
    RUN_SERVICE,
    assert_clean,
    nested,
    raw_call,
    store_revision,
    struct,
)
from tests.support.servers import ServerThread
from tests.support.stubs import Failure, refused
from tests.support.watching import cancel

pb = run_service_pb2
Stub = run_service_pb2_grpc.RunServiceStub
INVALID = grpc.StatusCode.INVALID_ARGUMENT
MiB = 1 << 20
CLIENT_LIMIT = 4 * MiB


@pytest.fixture(scope="module")
def channel(server_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server_address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Stub:
    return run_service_pb2_grpc.RunServiceStub(channel)


def new_id() -> str:
    return str(uuid.uuid4())


def create(stub: Stub, **fields: Any) -> run_pb2.Run:
    fields.setdefault("assistant_id", "agent")
    for name in ("metadata", "kwargs"):
        if isinstance(fields.get(name), dict):
            fields[name] = struct(fields[name])
    return stub.CreateRun(pb.CreateRunRequest(**fields))


def claimed(stub: Stub, run: run_pb2.Run, worker_id: str = "w") -> run_pb2.Run:
    response = stub.ClaimRun(
        pb.ClaimRunRequest(worker_id=worker_id, assistant_ids=[run.assistant_id])
    )
    assert response.run.run_id == run.run_id
    return response.run


def refused_unchanged(stub: Stub, call: Callable[[], object]) -> Failure:
    """The call's refusal, after checking it was INVALID_ARGUMENT, wrote nothing and
    said nothing of the server's insides."""
    before = store_revision(stub)
    found = refused(call)
    assert found.code == INVALID, (found.code, found.message)
    assert found.reason == "INVALID_ARGUMENT"
    assert_clean(found)
    assert store_revision(stub) == before
    return found


def first_violation(found: Failure) -> tuple[str, str]:
    return next(iter(found.violations.items()))


# -- Struct depth ------------------------------------------------------------------------------


def first_message(call: Any) -> run_service_pb2.WatchRunsResponse:
    try:
        return next(iter(call))  # type: ignore[no-any-return]
    finally:
        cancel(call)


def watch_all(stub: Stub, request: pb.WatchRunsRequest) -> None:
    first_message(stub.WatchRuns(request, timeout=10))


def deep_requests(stub: Stub, depth: int) -> dict[str, Callable[[], object]]:
    """A call per place a Struct goes, each carrying a document `depth` levels deep."""
    deep = struct(nested(depth))
    filter_ = pb.RunFilter(metadata=deep)
    mask = field_mask_pb2.FieldMask(paths=["metadata", "kwargs"])
    run = create(stub, assistant_id=f"deep-{uuid.uuid4().hex[:8]}")
    held = claimed(stub, run)
    return {
        "metadata": lambda: stub.CreateRun(pb.CreateRunRequest(assistant_id="a", metadata=deep)),
        "kwargs": lambda: stub.CreateRun(pb.CreateRunRequest(assistant_id="a", kwargs=deep)),
        "run.metadata": lambda: stub.UpdateRun(
            pb.UpdateRunRequest(run=run_pb2.Run(run_id=run.run_id, metadata=deep), update_mask=mask)
        ),
        "run.kwargs": lambda: stub.UpdateRun(
            pb.UpdateRunRequest(run=run_pb2.Run(run_id=run.run_id, kwargs=deep), update_mask=mask)
        ),
        "filter.metadata": lambda: stub.ListRuns(pb.ListRunsRequest(filter=filter_)),
        "watch filter.metadata": lambda: watch_all(stub, pb.WatchRunsRequest(filter=filter_)),
        "completion metadata": lambda: stub.CompleteRun(
            pb.CompleteRunRequest(
                run_id=held.run_id, worker_id="w", status=run_pb2.RUN_STATUS_SUCCESS, metadata=deep
            )
        ),
        "result": lambda: stub.CompleteRun(
            pb.CompleteRunRequest(
                run_id=held.run_id, worker_id="w", status=run_pb2.RUN_STATUS_SUCCESS, result=deep
            )
        ),
    }


@pytest.mark.parametrize("depth", [ALLOWED_DEPTH + 1, ALLOWED_DEPTH + 2])
def test_every_struct_nested_32_levels_or_deeper_is_refused(stub: Stub, depth: int) -> None:
    for place, call in deep_requests(stub, depth).items():
        found = refused_unchanged(stub, call)
        field, description = first_violation(found)
        assert "levels deep" in description, (place, field, description)


def test_lists_count_as_levels(stub: Stub) -> None:
    deep = struct(nested(ALLOWED_DEPTH + 1, lists=True))
    found = refused_unchanged(
        stub, lambda: stub.CreateRun(pb.CreateRunRequest(assistant_id="a", metadata=deep))
    )
    assert first_violation(found)[0] == "metadata"


def test_the_deepest_allowed_struct_is_stored_and_read_back_everywhere(
    stub: Stub, channel: grpc.Channel
) -> None:
    document = nested(ALLOWED_DEPTH, lists=False)
    run = create(stub, metadata=document, kwargs=nested(ALLOWED_DEPTH, lists=True))
    assert stub.GetRun(pb.GetRunRequest(run_id=run.run_id)) == run
    listed = stub.ListRuns(pb.ListRunsRequest(filter=pb.RunFilter(thread_id=run.thread_id)))
    assert list(listed.runs) == [run]
    (event,) = first_message(
        stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=10)
    ).events
    assert event.run == run
    # A WatchRunsResponse carrying it decodes in Python's protobuf runtime (the strictest).
    call = channel.unary_stream("/runplane.v1.RunService/WatchRun", None, None)(
        pb.WatchRunRequest(run_id=run.run_id).SerializeToString(), timeout=10
    )
    raw: bytes = first_message(call)  # type: ignore[assignment]  # undecoded
    assert pb.WatchRunsResponse.FromString(raw).events[0].run.metadata == run.metadata


# -- Requests that do not decode ---------------------------------------------------------------

# run_id (field 1 of GetRunRequest and others) holding bytes that are not UTF-8.
BAD_UTF8 = b"\x0a\x02\xff\xfe"
GARBAGE = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"


def too_deep_for_the_parser() -> bytes:
    """A CreateRunRequest nested beyond what protobuf decodes (100 levels)."""
    request = pb.CreateRunRequest(assistant_id="a")
    request.metadata.update(nested(40))
    return request.SerializeToString()


SERVED = [m.name for m in RUN_SERVICE.methods]


@pytest.mark.parametrize("payload", [BAD_UTF8, GARBAGE], ids=["bad-utf8", "garbage"])
@pytest.mark.parametrize("method", SERVED)
def test_requests_that_do_not_decode_are_invalid_argument(
    stub: Stub, channel: grpc.Channel, method: str, payload: bytes
) -> None:
    found = refused_unchanged(stub, lambda: raw_call(channel, method, payload))
    field, description = first_violation(found)
    assert field == "request"
    assert "is not a valid runplane.v1." in description


def test_a_request_nested_beyond_the_parser_is_invalid_argument(
    stub: Stub, channel: grpc.Channel
) -> None:
    found = refused_unchanged(
        stub, lambda: raw_call(channel, "CreateRun", too_deep_for_the_parser())
    )
    assert "is not a valid runplane.v1.CreateRunRequest" in found.message


# -- Durations and timestamps ------------------------------------------------------------------

INT64_MAX = 2**63 - 1
TOO_LONG = [
    duration_pb2.Duration(seconds=INT64_MAX),
    duration_pb2.Duration(seconds=9_000_000_000_000),
    duration_pb2.Duration(seconds=315_576_000_001),
    duration_pb2.Duration(seconds=1, nanos=1_000_000_000),
    duration_pb2.Duration(seconds=-1),
    duration_pb2.Duration(nanos=-1),
]


@pytest.mark.parametrize("duration", TOO_LONG, ids=lambda d: f"{d.seconds}s{d.nanos}n")
def test_durations_outside_protobufs_range_are_refused_everywhere(
    stub: Stub, duration: duration_pb2.Duration
) -> None:
    run = create(stub)
    calls: dict[str, Callable[[], object]] = {
        "timeout": lambda: stub.CreateRun(pb.CreateRunRequest(assistant_id="a", timeout=duration)),
        "retry_policy.initial_backoff": lambda: stub.CreateRun(
            pb.CreateRunRequest(
                assistant_id="a", retry_policy=run_pb2.RetryPolicy(initial_backoff=duration)
            )
        ),
        "lease_duration": lambda: stub.ClaimRun(
            pb.ClaimRunRequest(worker_id="w", assistant_ids=["none"], lease_duration=duration)
        ),
        "wait": lambda: stub.ClaimRun(
            pb.ClaimRunRequest(worker_id="w", assistant_ids=["none"], wait=duration)
        ),
        "heartbeat lease_duration": lambda: stub.HeartbeatRun(
            pb.HeartbeatRunRequest(run_id=run.run_id, worker_id="w", lease_duration=duration)
        ),
        "progress_interval": lambda: watch_all(
            stub, pb.WatchRunsRequest(progress_interval=duration)
        ),
    }
    for place, call in calls.items():
        field, _ = first_violation(refused_unchanged(stub, call))
        assert field in place, (field, place)


@pytest.mark.parametrize(
    "seconds", [INT64_MAX, 253_402_300_800, -62_135_596_801, -INT64_MAX], ids=str
)
def test_timestamps_outside_protobufs_range_are_refused(stub: Stub, seconds: int) -> None:
    start_after = timestamp_pb2.Timestamp(seconds=seconds)
    found = refused_unchanged(
        stub,
        lambda: stub.CreateRun(pb.CreateRunRequest(assistant_id="a", start_after=start_after)),
    )
    assert first_violation(found)[0] == "start_after"


def test_the_longest_timeout_cannot_stop_the_sweeper(stub: Stub, server: ServerThread) -> None:
    """A claimed run with the longest timeout protobuf allows: the sweeper's sums stay
    within BIGINT, and other runs still time out."""
    assistant = f"sweep-{uuid.uuid4().hex[:8]}"
    longest = duration_pb2.Duration(seconds=315_576_000_000, nanos=999_999_999)
    claimed(stub, create(stub, assistant_id=assistant, timeout=longest))
    short = create(stub, assistant_id=assistant, timeout=duration_pb2.Duration(nanos=1000))
    claimed(stub, short)
    swept = server.call(Sweeper(server.running.database, max_attempts=3).sweep())
    assert short.run_id in {run.run_id for run in swept}
    final = stub.GetRun(pb.GetRunRequest(run_id=short.run_id))
    assert final.status == run_pb2.RUN_STATUS_TIMEOUT


# -- NUL characters ----------------------------------------------------------------------------


def nul_requests(stub: Stub) -> dict[str, Callable[[], object]]:
    run = create(stub, assistant_id=f"nul-{uuid.uuid4().hex[:8]}")
    held = claimed(stub, run)
    mask = field_mask_pb2.FieldMask(paths=["metadata"])
    nul = "a\0b"

    def complete(**fields: Any) -> run_pb2.Run:
        return stub.CompleteRun(
            pb.CompleteRunRequest(
                run_id=held.run_id, worker_id="w", status=run_pb2.RUN_STATUS_ERROR, **fields
            )
        )

    return {
        "assistant_id": lambda: create(stub, assistant_id=nul),
        "request_id": lambda: create(stub, request_id=nul),
        "metadata key": lambda: create(stub, metadata={nul: 1}),
        "metadata value": lambda: create(stub, metadata={"k": [{"x": nul}]}),
        "kwargs": lambda: create(stub, kwargs={"k": nul}),
        "update": lambda: stub.UpdateRun(
            pb.UpdateRunRequest(
                run=run_pb2.Run(run_id=run.run_id, metadata=struct({nul: nul})), update_mask=mask
            )
        ),
        "reason": lambda: stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason=nul)),
        "filter assistant_id": lambda: stub.ListRuns(
            pb.ListRunsRequest(filter=pb.RunFilter(assistant_id=nul))
        ),
        "filter metadata": lambda: stub.ListRuns(
            pb.ListRunsRequest(filter=pb.RunFilter(metadata=struct({nul: "v"})))
        ),
        "watch filter": lambda: watch_all(
            stub, pb.WatchRunsRequest(filter=pb.RunFilter(metadata=struct({"k": nul})))
        ),
        "page_token": lambda: stub.ListRuns(pb.ListRunsRequest(page_token=nul)),
        "order_by": lambda: stub.ListRuns(pb.ListRunsRequest(order_by="created_at\0 desc")),
        "worker_id": lambda: stub.ClaimRun(pb.ClaimRunRequest(worker_id=nul)),
        "assistant_ids": lambda: stub.ClaimRun(
            pb.ClaimRunRequest(worker_id="w", assistant_ids=[nul])
        ),
        "error": lambda: complete(error=nul),
        "completion metadata": lambda: complete(metadata=struct({"k": nul})),
        "result": lambda: complete(result=struct({nul: None})),
        "namespace": lambda: create(stub, namespace=nul),
        "thread_id": lambda: create(stub, thread_id=str(uuid.uuid4())[:-1] + "\0"),
    }


def test_a_nul_character_in_any_string_is_refused(stub: Stub) -> None:
    for place, call in nul_requests(stub).items():
        found = refused_unchanged(stub, call)
        assert found.violations, place


# -- Page tokens -------------------------------------------------------------------------------


def page_token(stub: Stub, run_filter: pb.RunFilter) -> str:
    for _ in range(2):
        create(stub, thread_id=run_filter.thread_id or new_id())
    token = stub.ListRuns(pb.ListRunsRequest(filter=run_filter, page_size=1)).next_page_token
    assert token
    return token


def test_forged_and_altered_page_tokens_are_refused(stub: Stub) -> None:
    run_filter = pb.RunFilter(thread_id=new_id())
    token = page_token(stub, run_filter)
    flipped = ("A" if token[10] != "A" else "B").join((token[:10], token[11:]))
    forged = [flipped, token[:-4], token + "AAAA", "eyJhIjoxfQ", "W1szMyw", "x" * 600, "%%"]
    for bad in forged:
        request = pb.ListRunsRequest(filter=run_filter, page_token=bad)
        found = refused_unchanged(stub, functools.partial(stub.ListRuns, request))
        assert found.violations == {"page_token": "is not a token ListRuns returned"}, bad


def test_a_token_of_another_query_keeps_its_clear_message(stub: Stub) -> None:
    run_filter = pb.RunFilter(thread_id=new_id())
    token = page_token(stub, run_filter)
    found = refused_unchanged(stub, lambda: stub.ListRuns(pb.ListRunsRequest(page_token=token)))
    assert "different filter or order_by" in found.violations["page_token"]


@pytest.mark.postgres
def test_replicas_accept_each_others_tokens() -> None:
    """The key is the database's: a token one replica issued pages on with another."""
    with fresh_postgres_database() as url:
        replicas = [
            ServerThread(ServerConfig(address="127.0.0.1:0", database_url=url)).start()
            for _ in range(2)
        ]
        try:
            with (
                grpc.insecure_channel(replicas[0].address) as first,
                grpc.insecure_channel(replicas[1].address) as second,
            ):
                one = run_service_pb2_grpc.RunServiceStub(first)
                other = run_service_pb2_grpc.RunServiceStub(second)
                run_filter = pb.RunFilter(thread_id=new_id())
                token = page_token(one, run_filter)
                request = pb.ListRunsRequest(filter=run_filter, page_size=1, page_token=token)
                assert len(other.ListRuns(request).runs) == 1
        finally:
            for replica in replicas:
                replica.stop()


# -- Filter sizes ------------------------------------------------------------------------------


def test_filters_too_large_for_the_store_are_refused_with_the_limit(stub: Stub) -> None:
    many_keys = pb.RunFilter(metadata=struct({f"k{i}": i for i in range(2000)}))
    statuses = pb.RunFilter(statuses=[run_pb2.RUN_STATUS_PENDING] * 1000)
    calls = {
        "filter.metadata": lambda: stub.ListRuns(pb.ListRunsRequest(filter=many_keys)),
        "filter.statuses": lambda: stub.ListRuns(pb.ListRunsRequest(filter=statuses)),
        "watch filter.metadata": lambda: watch_all(stub, pb.WatchRunsRequest(filter=many_keys)),
        "assistant_ids": lambda: stub.ClaimRun(
            pb.ClaimRunRequest(worker_id="w", assistant_ids=[f"a{i}" for i in range(70_000)])
        ),
    }
    for place, call in calls.items():
        field, description = first_violation(refused_unchanged(stub, call))
        assert field in place
        assert "at most" in description, description


# -- Sizes of runs and responses ---------------------------------------------------------------


def big(tag: str, size: int = 250_000, char: str = "x") -> dict[str, Any]:
    return {"tag": tag, "blob": char * size}


@pytest.mark.parametrize(("runs", "blob", "char"), [(12, 250_000, "x"), (90, 4_000, "\x01")])
def test_a_page_too_large_for_one_response_is_cut_and_continues(
    stub: Stub, runs: int, blob: int, char: str
) -> None:
    """Large runs: the page is cut as it is sent. Many runs that look large in memory
    (a control character takes 4 characters in their repr, 1 byte on the wire): the page
    is cut as it is read, before the response would be."""
    thread_id = new_id()
    created = [
        create(
            stub, thread_id=thread_id, metadata=big("m", blob, char), kwargs=big("k", blob, char)
        )
        for _ in range(runs)
    ]
    request = pb.ListRunsRequest(filter=pb.RunFilter(thread_id=thread_id), page_size=runs)
    seen: list[str] = []
    pages = 0
    while True:
        page = stub.ListRuns(request)
        pages += 1
        assert page.ByteSize() < CLIENT_LIMIT
        seen.extend(run.run_id for run in page.runs)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == [run.run_id for run in reversed(created)]
    assert pages > 1


def test_an_initial_state_too_large_for_one_message_is_cut_and_ends_at_its_revision(
    stub: Stub,
) -> None:
    thread_id = new_id()
    created = [
        create(stub, thread_id=thread_id, metadata=big("m"), kwargs=big("k")) for _ in range(12)
    ]
    call = stub.WatchRuns(
        pb.WatchRunsRequest(filter=pb.RunFilter(thread_id=thread_id), include_initial=True),
        timeout=20,
    )
    messages = []
    for response in call:
        assert response.ByteSize() < CLIENT_LIMIT
        messages.append(response)
        if not response.events:
            break
    cancel(call)
    *initial, end = messages
    assert len(initial) > 1
    revision = end.revision
    assert {m.revision for m in initial} == {revision}
    events = [event for message in initial for event in message.events]
    assert {e.type for e in events} == {run_pb2.EVENT_TYPE_INITIAL}
    assert {e.revision for e in events} == {revision}
    assert sorted(e.run.run_id for e in events) == sorted(run.run_id for run in created)


def test_a_completion_cannot_grow_metadata_past_the_limit(stub: Stub) -> None:
    run = create(stub, assistant_id=f"merge-{uuid.uuid4().hex[:8]}", metadata=big("stored"))
    held = claimed(stub, run)
    completion = pb.CompleteRunRequest(
        run_id=held.run_id,
        worker_id="w",
        status=run_pb2.RUN_STATUS_SUCCESS,
        metadata=struct({"more": "y" * 250_000}),
    )
    found = refused_unchanged(stub, lambda: stub.CompleteRun(completion))
    field, description = first_violation(found)
    assert field == "metadata"
    assert "merged" in description
    assert "--max-struct-bytes" in description
    assert stub.GetRun(pb.GetRunRequest(run_id=run.run_id)).status == run_pb2.RUN_STATUS_RUNNING


def test_errors_quote_only_a_short_prefix_of_what_was_sent(stub: Stub) -> None:
    long = "created_at " + "z" * 5000
    found = refused_unchanged(stub, lambda: stub.ListRuns(pb.ListRunsRequest(order_by=long)))
    assert len(found.message) < 400
    assert "5011 characters" in found.message
    mask = field_mask_pb2.FieldMask(paths=[f"p{i}" * 300 for i in range(2000)])
    run_id = create(stub).run_id
    found = refused_unchanged(
        stub,
        lambda: stub.UpdateRun(
            pb.UpdateRunRequest(run=run_pb2.Run(run_id=run_id), update_mask=mask)
        ),
    )
    assert len(found.violations) <= 11
    assert len(found.message) < 2000


# -- Metadata filters: list and watch agree on every key ---------------------------------------

NASTY_KEYS = ['a"b', "", "x.y", "p[0]", "$", "back\\slash", "it's", "*", " ", "é", "👍", 'a""b']


def watched_run_ids(stub: Stub, request: pb.WatchRunsRequest, upto: int) -> list[str]:
    """The runs of the events a watch delivers up to revision `upto`."""
    call = stub.WatchRuns(request, timeout=10)
    found: list[str] = []
    for message in call:
        found.extend(event.run.run_id for event in message.events)
        if message.revision >= upto:
            break
    cancel(call)
    return found


@pytest.mark.parametrize("on_thread", [True, False], ids=["thread", "metadata-index"])
@pytest.mark.parametrize("key", NASTY_KEYS)
def test_list_and_watch_filters_agree_on_nasty_keys(stub: Stub, key: str, on_thread: bool) -> None:
    """The store's query (ListRuns, a watch's initial state) and the watch's own matching
    of live events select the same runs, whatever the key and the JSON type: among a
    thread's runs, or through the metadata index (the runs of this test carry a key of
    their own, `batch`, so that the filter needs no thread)."""
    thread_id = new_id()
    start = store_revision(stub) + 1
    values: list[Any] = ["v", 1, True, False, 0, None, {"n": [1, "two"]}, [False], "1", ""]
    runs = [
        create(stub, thread_id=thread_id, metadata={key: value, "i": i, "batch": thread_id})
        for i, value in enumerate(values)
    ]
    last = create(stub, thread_id=thread_id, metadata={"other": "v", "batch": thread_id})
    for value, run in zip(values, runs, strict=True):
        if on_thread:
            run_filter = pb.RunFilter(thread_id=thread_id, metadata=struct({key: value}))
        else:
            run_filter = pb.RunFilter(metadata=struct({key: value, "batch": thread_id}))
        listed = stub.ListRuns(pb.ListRunsRequest(filter=run_filter))
        assert [r.run_id for r in listed.runs] == [run.run_id], (key, value)
        initial = pb.WatchRunsRequest(filter=run_filter, include_initial=True)
        assert watched_run_ids(stub, initial, last.revision) == [run.run_id], (key, value)
        live = pb.WatchRunsRequest(filter=run_filter, start_revision=start)
        assert watched_run_ids(stub, live, last.revision) == [run.run_id], (key, value)
