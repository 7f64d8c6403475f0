"""The per-namespace rule as the rules ask it: one run, one named namespace, many runs."""

from __future__ import annotations

import pytest

from runplane.server.access import Access
from runplane.server.errors import PermissionDenied, RunNotFound
from runplane.server.policy import ANONYMOUS, Grant, Principal, Role
from runplane.server.records import MultitaskStrategy, Run, RunStatus
from runplane.v1 import run_service_pb2

RUN_ID = "123e4567-e89b-42d3-a456-426614174000"
CHECKOUT = Principal("checkout", (Grant("shop", Role.WRITER), Grant("lab", Role.READER)))
"""Writes in shop, reads in lab, holds nothing anywhere else."""


def run_in(namespace: str) -> Run:
    return Run(
        run_id=RUN_ID,
        thread_id=RUN_ID,
        assistant_id="agent",
        status=RunStatus.PENDING,
        multitask_strategy=MultitaskStrategy.ENQUEUE,
        created_at=0,
        updated_at=0,
        namespace=namespace,
    )


def test_a_run_where_the_role_is_held_is_found() -> None:
    run = run_in("shop")
    assert Access.of(CHECKOUT, "UpdateRun", None).found(RUN_ID, run) is run


def test_a_run_the_caller_may_only_read_is_permission_denied() -> None:
    with pytest.raises(PermissionDenied) as denied:
        Access.of(CHECKOUT, "CancelRun", None).found(RUN_ID, run_in("lab"))
    assert denied.value.details == {"namespace": "lab", "role_needed": "writer"}


def test_a_run_where_the_caller_holds_nothing_is_missing() -> None:
    access = Access.of(CHECKOUT, "GetRun", None)
    with pytest.raises(RunNotFound) as hidden:
        access.found(RUN_ID, run_in("bank"))
    with pytest.raises(RunNotFound) as missing:
        access.found(RUN_ID, None)
    assert (hidden.value.message, hidden.value.details) == (
        missing.value.message,
        missing.value.details,
    )


def test_delete_with_force_needs_admin_where_the_run_is() -> None:
    forced = Access.of(CHECKOUT, "DeleteRun", run_service_pb2.DeleteRunRequest(force=True))
    assert forced.role is Role.ADMIN
    with pytest.raises(PermissionDenied) as denied:
        forced.found(RUN_ID, run_in("shop"))
    assert denied.value.details["role_needed"] == "admin"


def test_a_create_names_its_namespace_and_is_refused_elsewhere() -> None:
    access = Access.of(CHECKOUT, "CreateRun", None)
    access.require("shop")
    for elsewhere in ("lab", "bank"):
        with pytest.raises(PermissionDenied) as denied:
            access.require(elsewhere)
        assert denied.value.details == {"namespace": elsewhere, "role_needed": "writer"}


def test_the_namespaces_of_a_query() -> None:
    listing = Access.of(CHECKOUT, "ListRuns", None)
    assert listing.namespaces(None) == frozenset({"shop", "lab"})
    assert listing.namespaces("lab") == frozenset({"lab"})
    assert listing.namespaces("bank") == frozenset()  # looked in, found empty
    cancelling = Access.of(CHECKOUT, "CancelRuns", None)
    assert cancelling.namespaces(None) == frozenset({"shop"})
    with pytest.raises(PermissionDenied) as denied:
        cancelling.namespaces("lab")
    assert denied.value.details == {"namespace": "lab", "role_needed": "writer"}


def test_a_grant_everywhere_covers_every_namespace() -> None:
    dashboard = Principal("dashboard", (Grant("*", Role.READER),))
    assert Access.of(dashboard, "WatchRuns", None).namespaces(None) is None
    assert Access.of(ANONYMOUS, "ClaimRun", None).namespaces(None) is None
    assert Access.of(ANONYMOUS, "ClaimRun", None).caller == "anonymous"
