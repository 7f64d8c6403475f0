"""Opaque page tokens for ListRuns, bound to the filter (namespaces included) and order
they were made for."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from runplane.server.errors import FieldViolation, InvalidInput
from runplane.server.records import PageCursor, RunFilter, SortOrder

_VERSION = 1


def query_fingerprint(run_filter: RunFilter, order: SortOrder) -> str:
    """A short digest of what a token may be used with."""
    canonical = json.dumps(
        {
            "thread_id": run_filter.thread_id,
            "assistant_id": run_filter.assistant_id,
            "statuses": sorted(run_filter.statuses),
            "metadata": run_filter.metadata,
            "namespaces": None if run_filter.namespaces is None else sorted(run_filter.namespaces),
            "order": order.value,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode(cursor: PageCursor, fingerprint: str) -> str:
    payload = json.dumps([_VERSION, fingerprint, cursor.created_at, cursor.run_id])
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode(token: str, fingerprint: str) -> PageCursor:
    """The cursor in `token`, or InvalidInput if it is malformed or made for another query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, token_fingerprint, created_at, run_id = json.loads(raw)
        valid = version == _VERSION and isinstance(created_at, int) and isinstance(run_id, str)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        valid = False
    if not valid:
        raise InvalidInput([FieldViolation("page_token", "is not a token ListRuns returned")])
    if token_fingerprint != fingerprint:
        raise InvalidInput(
            [
                FieldViolation(
                    "page_token",
                    "was issued for a different filter or order_by; "
                    "repeat the original filter and order_by, or start without a token",
                )
            ]
        )
    return PageCursor(created_at=created_at, run_id=run_id)
