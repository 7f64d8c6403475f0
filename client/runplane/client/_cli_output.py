"""How the CLI shows runs and stats: aligned tables for people, JSON for programs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from runplane.client._models import CancelledRuns, Run, RunEvent, Stats

_ASSISTANT_WIDTH = 20

# Two full UUIDs take 74 columns, so the rest stays narrow: the creation time is
# shown as an age, which also reads faster than a timestamp.
_COLUMNS: tuple[tuple[str, Callable[[Run, datetime], str]], ...] = (
    ("RUN_ID", lambda run, _: run.run_id),
    ("THREAD_ID", lambda run, _: run.thread_id),
    ("ASSISTANT", lambda run, _: _clip(run.assistant_id, _ASSISTANT_WIDTH)),
    ("STATUS", lambda run, _: run.status.value),
    ("CREATED", lambda run, now: f"{_age(now - run.created_at)} ago"),
    ("REVISION", lambda run, _: str(run.revision)),
)


def runs_table(runs: Iterable[Run], now: datetime) -> str:
    """One row per run under a header, columns padded to their widest cell."""
    rows = [[header for header, _ in _COLUMNS]]
    rows += [[cell(run, now) for _, cell in _COLUMNS] for run in runs]
    return _table(rows)


def stats_table(stats: Stats) -> str:
    """The queues, then the inflight runs, each a table; then where they were read."""
    queues = [["NAMESPACE", "ASSISTANT", "DEPTH", "OLDEST"]]
    queues += [
        [q.namespace, _clip(q.assistant_id, _ASSISTANT_WIDTH), str(q.depth), _age(q.oldest_age)]
        for q in stats.queues
    ]
    runs = [["NAMESPACE", "STATUS", "RUNS"]]
    runs += [[count.namespace, count.status.value, str(count.count)] for count in stats.runs]
    return "\n\n".join(
        (
            _table(queues) if stats.queues else "no claimable runs",
            _table(runs) if stats.runs else "no inflight runs",
            f"revision {stats.revision}, open watches on this server: {stats.open_watches}",
        )
    )


def stats_json(stats: Stats) -> str:
    """The stats as one JSON object; ages in seconds, statuses as words."""
    return _dumps(_plain(stats))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def run_details(run: Run) -> str:
    """Every field that has a value, one `name: value` line each, values aligned."""
    fields = {name: value for name, value in _plain(run).items() if value not in ("", None)}
    width = max(len(name) for name in fields) + 1
    return "\n".join(f"{name + ':':<{width}} {_text(value)}" for name, value in fields.items())


def runs_json(runs: Run | Iterable[Run]) -> str:
    """One JSON document: an object for one run, a list for several; ISO-8601 times."""
    if isinstance(runs, Run):
        return _dumps(_plain(runs))
    return _dumps([_plain(run) for run in runs])


# Changes are printed as they happen, so the columns have fixed widths.
_EVENT_LINE = "{:>8}  {:<8}  {:<36}  {:<11}  {}"


def event_header() -> str:
    """The header of the `runs watch` table, printed before the first change."""
    return _EVENT_LINE.format("REVISION", "EVENT", "RUN_ID", "STATUS", "ASSISTANT")


def event_line(event: RunEvent) -> str:
    """One line per change, aligned under `event_header()`."""
    run = event.run
    return _EVENT_LINE.format(
        event.revision,
        event.type.value,
        run.run_id,
        run.status.value,
        _clip(run.assistant_id, _ASSISTANT_WIDTH),
    ).rstrip()


def event_json(event: RunEvent) -> str:
    """One compact JSON object per line (JSON Lines), so a pipe can read each change."""
    document = {"type": event.type.value, "revision": event.revision, "run": _plain(event.run)}
    return json.dumps(document, ensure_ascii=False)


def deletion_json(run_id: str) -> str:
    return _dumps({"run_id": run_id, "deleted": True})


def cancellation_json(done: CancelledRuns) -> str:
    return _dumps(_plain(done))


def rollback_details(run: Run) -> str:
    """A run that `cancel --rollback` deleted: said first, then its last state."""
    return f"deleted run {run.run_id}; its last state:\n{run_details(run)}"


def rollback_json(run: Run) -> str:
    """The last state of a rolled-back run, marked `"deleted": true`."""
    return _dumps({**_plain(run), "deleted": True})


def _plain(value: Any) -> dict[str, Any]:
    """A dataclass (a run, its retry policy, stats) as a JSON object."""
    return {
        field.name: _json_value(getattr(value, field.name)) for field in dataclasses.fields(value)
    }


def _json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(value)
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _dumps(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _age(elapsed: timedelta) -> str:
    """Compact age like kubectl's: 42s, 7m, 5h, 3d."""
    seconds = max(0, int(elapsed.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
