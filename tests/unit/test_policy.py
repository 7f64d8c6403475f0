"""The roles table, checked against the contract's own table for every method, role and
namespace the grant may name."""

from __future__ import annotations

import itertools

import pytest

from runplane.server import policy
from runplane.server.access import Access
from runplane.server.policy import (
    ANONYMOUS,
    Grant,
    Namespaces,
    Principal,
    Role,
    Verdict,
    parse_grant,
    verdict,
)
from runplane.v1 import run_service_pb2

READS = {"GetRun", "ListRuns", "WatchRuns", "WatchRun", "GetStats"}
CONTRACT = {
    "reader": READS,
    "writer": READS | {"CreateRun", "UpdateRun", "CancelRun", "CancelRuns", "DeleteRun"},
    "worker": READS | {"ClaimRun", "HeartbeatRun", "CompleteRun"},
    "admin": set(policy.RULES),
}
"""The contract's roles table, written out independently of the module under test."""

MUTATING = {
    "CreateRun",
    "UpdateRun",
    "CancelRun",
    "CancelRuns",
    "DeleteRun",
    "ClaimRun",
    "CompleteRun",
}
"""The audited changes: not HeartbeatRun, which keeps a lease alive in place."""
SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]
REQUESTS = {
    method.name: getattr(run_service_pb2, method.input_type.name) for method in SERVICE.methods
}


def test_every_method_of_the_service_has_a_rule() -> None:
    assert set(policy.RULES) == {method.name for method in SERVICE.methods}


def test_mutating_and_watch_methods() -> None:
    assert {name for name, rule in policy.RULES.items() if rule.mutating} == MUTATING
    assert {name for name, rule in policy.RULES.items() if rule.watch} == {"WatchRuns", "WatchRun"}


CALLS = [(method, False) for method in sorted(policy.RULES)] + [("DeleteRun", True)]
"""Every method, and DeleteRun once more with force."""


@pytest.mark.parametrize(("method", "force"), CALLS)
@pytest.mark.parametrize("role", [role.value for role in Role])
@pytest.mark.parametrize("granted_in", ["shop", "lab", "*"])
def test_every_method_role_and_namespace(
    method: str, force: bool, role: str, granted_in: str
) -> None:
    request = REQUESTS[method](force=True) if force else REQUESTS[method]()
    principal = Principal("p", (Grant(granted_in, Role(role)),))

    found = Access.of(principal, method, request).verdict("shop")

    if granted_in == "lab":
        expected = Verdict.HIDDEN
    elif method in CONTRACT[role] and (not force or role == "admin"):
        expected = Verdict.ALLOWED
    else:
        expected = Verdict.DENIED
    assert found is expected


def test_delete_with_force_needs_admin_and_without_it_writer() -> None:
    rule = policy.RULES["DeleteRun"]
    assert rule.role_needed(run_service_pb2.DeleteRunRequest(force=True)) is Role.ADMIN
    assert rule.role_needed(run_service_pb2.DeleteRunRequest()) is Role.WRITER


@pytest.mark.parametrize(("held", "needed"), list(itertools.product(Role, Role)))
def test_role_inclusion(held: Role, needed: Role) -> None:
    expected = held is needed or held is Role.ADMIN or needed is Role.READER
    assert held.includes(needed) is expected


def test_several_grants_combine() -> None:
    principal = Principal(
        "mixed",
        (Grant("shop", Role.WRITER), Grant("lab", Role.WORKER), Grant("*", Role.READER)),
    )
    assert principal.namespaces(Role.READER) == Namespaces(everywhere=True)
    assert principal.namespaces(Role.WRITER) == Namespaces(names=frozenset({"shop"}))
    assert principal.namespaces(Role.WORKER) == Namespaces(names=frozenset({"lab"}))
    assert not principal.namespaces(Role.ADMIN)
    assert verdict(principal, Role.WRITER, "lab") is Verdict.DENIED
    assert verdict(principal, Role.WRITER, "elsewhere") is Verdict.DENIED  # reads everywhere
    assert verdict(principal, Role.WORKER, "lab") is Verdict.ALLOWED


def test_a_principal_without_grants_is_nowhere() -> None:
    nobody = Principal("nobody")
    for role in Role:
        assert not nobody.namespaces(role)
        assert verdict(nobody, role, "default") is Verdict.HIDDEN


def test_the_anonymous_principal_is_admin_everywhere() -> None:
    for role in Role:
        assert ANONYMOUS.namespaces(role).everywhere
        assert verdict(ANONYMOUS, role, "any-namespace") is Verdict.ALLOWED


def test_namespaces_membership() -> None:
    some = Namespaces(names=frozenset({"shop"}))
    assert "shop" in some
    assert "lab" not in some
    assert "lab" in Namespaces(everywhere=True)
    assert not Namespaces()


@pytest.mark.parametrize(
    ("namespace", "role", "problem"),
    [
        ("Shop", "reader", "DNS label"),
        ("shop_1", "reader", "DNS label"),
        ("-shop", "reader", "DNS label"),
        ("a" * 64, "reader", "DNS label"),
        ("", "reader", "DNS label"),
        ("shop", "owner", "not one of reader, writer, worker, admin"),
        ("shop", "Reader", "not one of"),
    ],
)
def test_bad_grants_are_refused(namespace: str, role: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_grant(namespace, role)


def test_good_grants_parse() -> None:
    assert parse_grant("*", "admin") == Grant("*", Role.ADMIN)
    assert parse_grant("a" * 63, "worker") == Grant("a" * 63, Role.WORKER)
    assert parse_grant("team-7", "writer") == Grant("team-7", Role.WRITER)
