from __future__ import annotations

import base64

import pytest

from runplane.server import pages
from runplane.server.errors import InvalidInput
from runplane.server.records import PageCursor, RunFilter, RunStatus, SortOrder

TOKENS = pages.PageTokens(b"k" * 32)
CURSOR = PageCursor(created_at=1_700_000_000_000_000, run_id="r")


def _refusal(tokens: pages.PageTokens, token: str, fingerprint: str = "f") -> str:
    with pytest.raises(InvalidInput) as caught:
        tokens.decode(token, fingerprint)
    (violation,) = caught.value.violations
    assert violation.field == "page_token"
    return violation.description


def test_token_round_trips_for_the_same_query() -> None:
    query = RunFilter(statuses=frozenset({RunStatus.PENDING}), metadata={"a": 1})
    fingerprint = pages.query_fingerprint(query, SortOrder.ASC)
    assert TOKENS.decode(TOKENS.encode(CURSOR, fingerprint), fingerprint) == CURSOR


def test_a_token_of_another_query_says_so() -> None:
    token = TOKENS.encode(CURSOR, "f")
    assert "different filter or order_by" in _refusal(TOKENS, token, "g")


def test_every_altered_byte_and_every_other_key_is_refused() -> None:
    token = TOKENS.encode(CURSOR, "f")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for index in range(len(raw)):
        altered = bytearray(raw)
        altered[index] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(altered)).decode().rstrip("=")
        assert _refusal(TOKENS, forged) == "is not a token ListRuns returned"
    assert _refusal(pages.PageTokens(b"x" * 32), token) == "is not a token ListRuns returned"
    assert _refusal(TOKENS, token[:-3]) == "is not a token ListRuns returned"


def test_fingerprint_depends_on_every_part_of_the_query() -> None:
    base = pages.query_fingerprint(RunFilter(), SortOrder.DESC)
    others = [
        pages.query_fingerprint(RunFilter(), SortOrder.ASC),
        pages.query_fingerprint(RunFilter(assistant_id="a"), SortOrder.DESC),
        pages.query_fingerprint(RunFilter(thread_id="t"), SortOrder.DESC),
        pages.query_fingerprint(RunFilter(metadata={"k": "v"}), SortOrder.DESC),
        pages.query_fingerprint(RunFilter(statuses=frozenset({RunStatus.RUNNING})), SortOrder.DESC),
    ]
    assert base not in others
    assert len(set(others)) == len(others)


def _unsigned(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "%%%",
        "",
        "=",
        _unsigned("not json"),
        # What unsigned tokens let callers forge: huge times, wrong shapes, deep JSON.
        _unsigned('[1,"f",99999999999999999999999,"r"]'),
        _unsigned('[2,"f",{"a":1},["r"]]'),
        _unsigned("[" * 5000 + "]" * 5000),
        _unsigned("[]"),
    ],
)
def test_malformed_and_forged_tokens_are_invalid_input(token: str) -> None:
    assert _refusal(TOKENS, token) == "is not a token ListRuns returned"
