"""Validators whose RPCs the servicer does not serve yet, and the v0.2 CreateRun fields as
the domain receives them (the served RPCs are tested through real servers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from runplane.server import convert, requests, validation
from runplane.server.access import Access
from runplane.server.errors import InvalidInput
from runplane.server.policy import Grant, Principal, Role
from runplane.server.records import CancelAction, RetryPolicy, RunFilter
from runplane.v1 import run_pb2, run_service_pb2

LIMITS = validation.Limits()
THREAD = "123e4567-e89b-42d3-a456-426614174000"
ACCESS = Access(Principal("tester", (Grant("team-a", Role.WRITER),)), Role.WRITER)


def _violations(call: Callable[[], object]) -> set[str]:
    with pytest.raises(InvalidInput) as caught:
        call()
    return {violation.field for violation in caught.value.violations}


def test_cancel_runs_needs_a_filter_that_narrows() -> None:
    empty = run_service_pb2.CancelRunsRequest(reason="closing")
    assert _violations(lambda: validation.cancel_runs(empty, LIMITS, access=ACCESS)) == {"filter"}
    statuses_only = run_service_pb2.CancelRunsRequest(
        filter=run_service_pb2.RunFilter(statuses=[run_pb2.RUN_STATUS_PENDING])
    )
    assert _violations(lambda: validation.cancel_runs(statuses_only, LIMITS, access=ACCESS)) == {
        "filter"
    }


def test_cancel_runs_becomes_its_request() -> None:
    message = run_service_pb2.CancelRunsRequest(
        filter=run_service_pb2.RunFilter(thread_id=THREAD, namespace="team-a"),
        action=run_pb2.CANCEL_ACTION_ROLLBACK,
        reason="closing",
    )
    assert validation.cancel_runs(message, LIMITS, access=ACCESS) == requests.CancelRuns(
        access=ACCESS,
        run_filter=RunFilter(thread_id=THREAD),
        action=CancelAction.ROLLBACK,
        reason="closing",
        namespace="team-a",
    )


def test_cancel_runs_reports_every_problem() -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"k": "v"})
    message = run_service_pb2.CancelRunsRequest(
        filter=run_service_pb2.RunFilter(metadata=metadata, namespace="Team_A"),
        action=run_pb2.CancelAction.ValueType(7),
        reason="r" * 2000,
    )
    assert _violations(lambda: validation.cancel_runs(message, LIMITS, access=ACCESS)) == {
        "filter.namespace",
        "action",
        "reason",
    }


def test_get_stats_takes_a_namespace_or_none() -> None:
    unnamed = run_service_pb2.GetStatsRequest()
    assert validation.get_stats(unnamed, access=ACCESS) == requests.GetStats(access=ACCESS)
    named = run_service_pb2.GetStatsRequest(namespace="team-a")
    assert validation.get_stats(named, access=ACCESS) == requests.GetStats(
        access=ACCESS, namespace="team-a"
    )
    bad = run_service_pb2.GetStatsRequest(namespace="a" * 64)
    assert _violations(lambda: validation.get_stats(bad, access=ACCESS)) == {"namespace"}


def test_create_run_carries_the_new_fields_as_given() -> None:
    message = run_service_pb2.CreateRunRequest(
        assistant_id="agent",
        retry_policy=run_pb2.RetryPolicy(
            max_attempts=3, initial_backoff=duration_pb2.Duration(seconds=2)
        ),
    )
    created = validation.create_run(message, LIMITS, access=ACCESS)
    assert (created.namespace, created.priority, created.access) == ("default", 5, ACCESS)
    assert created.retry_policy == RetryPolicy(max_attempts=3, initial_backoff=2_000_000)


texts = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, derandomize=True, database=None)
@given(st.dictionaries(texts, json_values, max_size=5))
def test_documents_convert_as_protobufs_json_format_does(document: dict[str, Any]) -> None:
    message = struct_pb2.Struct()
    message.update(document)
    converted = convert.document(message, max_depth=1000)
    assert converted == json_format.MessageToDict(message)
    assert [type(value) for value in converted.values()] == [
        type(value) for value in json_format.MessageToDict(message).values()
    ]


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"a": float("nan")}, "holds nan"),
        ({"a": [1, float("-inf")]}, "holds -inf"),
        ({"a\0": 1}, "key with a NUL"),
        ({"a": ["x\0"]}, "string with a NUL"),
        ({"a": {"b": {}}}, "more than 2 levels deep"),
        ({"a": [[]]}, "more than 2 levels deep"),
    ],
)
def test_documents_without_a_stored_form_are_refused(document: dict[str, Any], says: str) -> None:
    message = struct_pb2.Struct()
    message.update(document)
    with pytest.raises(ValueError, match=says):
        convert.document(message, max_depth=2)
