"""The one duration grammar of runplane: the CLI, the client and the server's flags.

    90s   15m   1h30m   500ms   1.5h   2d   45 (bare seconds)

A duration is one or more `<number><unit>` parts, largest unit first, each unit at
most once (units: d, h, m, s, ms), or a bare number of seconds. No sign, no spaces
inside.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(
    "".join(rf"(?:(?P<{unit}>{_NUMBER}){unit})?" for unit in _UNIT_SECONDS)
    + rf"|(?P<bare>{_NUMBER})"
)
EXAMPLES = "90s, 15m, 1h30m, 500ms or a number of seconds"


def parse_duration(text: str) -> timedelta:
    """The duration `text` spells; ValueError naming the accepted forms otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or not any(match.groupdict().values()):
        raise ValueError(f"{text!r} is not a duration: use {EXAMPLES}")
    if (bare := match.group("bare")) is not None:
        return timedelta(seconds=float(bare))
    return timedelta(
        seconds=sum(
            float(value) * _UNIT_SECONDS[unit]
            for unit, value in match.groupdict().items()
            if unit != "bare" and value is not None
        )
    )
