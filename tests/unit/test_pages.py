from __future__ import annotations

import pytest

from runplane.server import pages
from runplane.server.errors import InvalidInput
from runplane.server.records import PageCursor, RunFilter, RunStatus, SortOrder


def test_token_round_trips_for_the_same_query() -> None:
    query = RunFilter(statuses=frozenset({RunStatus.PENDING}), metadata={"a": 1})
    fingerprint = pages.query_fingerprint(query, SortOrder.ASC)
    cursor = PageCursor(created_at=1_700_000_000_000_000, run_id="r")
    assert pages.decode(pages.encode(cursor, fingerprint), fingerprint) == cursor


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


@pytest.mark.parametrize("token", ["%%%", "bm90IGpzb24", "WzIsIngiLDEsInIiXQ", "W10"])
def test_malformed_tokens_are_invalid_input(token: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        pages.decode(token, "f")
    assert caught.value.violations[0].field == "page_token"
