"""The one duration grammar, shared by the CLI, the client and `runplane serve`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from runplane.client.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("24h", 86400),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2d", 172800),
        ("1m30s", 90),
        ("500ms", 0.5),
        ("1s500ms", 1.5),
        ("7", 7),
        ("0.25", 0.25),
        (" 10s ", 10),
    ],
)
def test_parse_duration_accepts_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "h", "-5s", "10 years", "5x", "30m1h", "1h 30m", "1.2.3s", "5ss", "1h1h"]
)
def test_parse_duration_rejects_nonsense_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: use 90s, 15m, 1h30m, 500ms"):
        parse_duration(text)
