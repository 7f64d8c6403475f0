"""Opaque page tokens for ListRuns, bound to the filter (namespaces included) and order
they were made for.

A token is signed (HMAC-SHA256) with a key the store keeps (`store_secrets`, made by a
migration and shared by every replica), so a token the server did not issue, or one
altered by a byte, is refused before anything in it is read: what reaches the query
is only ever a position the server itself handed out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from runplane.server.errors import FieldViolation, InvalidInput
from runplane.server.records import PageCursor, RunFilter, SortOrder

_VERSION = 2
_MAC_BYTES = 16
MAX_TOKEN_CHARS = 512
"""Longer than any token the server issues (a run id, a time, a fingerprint, a MAC)."""


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


class PageTokens:
    """Issues and checks the tokens of one store, with its key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, cursor: PageCursor, fingerprint: str) -> str:
        payload = json.dumps(
            [_VERSION, fingerprint, cursor.created_at, cursor.run_id], separators=(",", ":")
        ).encode()
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def decode(self, token: str, fingerprint: str) -> PageCursor:
        """The cursor in `token`, or InvalidInput if it is not one this store issued or was
        made for another query."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidInput([FieldViolation("page_token", "is not a token ListRuns returned")])
        # Signed by this store: its shape is the one `encode` wrote.
        _version, token_fingerprint, created_at, run_id = json.loads(payload)
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
