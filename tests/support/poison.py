"""The nastiest run the server accepts: every kind of JSON value, unicode that breaks
naive code (astral characters, right-to-left text, combining marks, zero-width and
control characters, escapes), empty and long keys, nesting to the deepest allowed
level, and each document just under the size limit. `tests/polyglot/src/poison.test.ts`
builds the same kind of run for the TypeScript client.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from tests.support.hostile import ALLOWED_DEPTH

LIMIT = 256 * 1024
"""The server's default --max-struct-bytes."""

NASTY_TEXT = (
    "astral 😀𝄞🏳️‍🌈 | rtl שלום مرحبا \u202eevil\u202c | combining e\u0301 Z\u0324\u0354\u0367 | "
    'zero width \u200b\u200d\ufeff | control \x01\x1f\x7f | escapes " \\ / \b\f\n\r\t | '
    "</script><!-- ${x} %s {0} '; DROP TABLE runs; --"
)


def _deepest(leaf: Any) -> dict[str, Any]:
    """ALLOWED_DEPTH levels, alternating objects and lists, the outer object counted."""
    value = leaf
    for level in range(ALLOWED_DEPTH - 1):
        value = [value] if level % 2 else {NASTY_TEXT[:8]: value}
    return {"deep": value}


def document(tag: str, limit: int = LIMIT) -> dict[str, Any]:
    """A document of every kind of JSON value, padded to just under `limit` bytes."""
    values: dict[str, Any] = {
        "": "the empty key",
        "k" * 4096: "a long key",
        'a"b.c[0]$\\': "JSON-path specials",
        NASTY_TEXT: NASTY_TEXT,
        "null": None,
        "true": True,
        "false": False,
        "numbers": [0.0, -0.0, 1.5, -1e308, 1e308, 5e-324, 2.0**53, 1e-7, 123456789.125],
        "empty": {"list": [], "object": {}, "string": ""},
        "mixed": [None, True, "x", 1.0, [[]], {"": {}}],
        "tag": tag,
    }
    values.update(_deepest(NASTY_TEXT))
    values["padding"] = ""
    size = _size(values)
    values["padding"] = "é" * ((limit - size - 16) // 2)
    assert limit - 64 < _size(values) <= limit, _size(values)
    return values


def _size(document: dict[str, Any]) -> int:
    message = struct_pb2.Struct()
    message.update(document)
    return message.ByteSize()
