"""The one map between a `Run` and what the store keeps of it.

Each `RunField` names a `Run` attribute, the `runs` column that holds it and, where the
stored form differs, how to convert it. Everything else derives from `FIELDS`: the
select list and row -> Run, the values of an insert, the columns an update changes,
and the run's JSON in the event log (keyed by attribute, so a log written before a field
existed still reads: the field takes its default).

Adding a field to `Run`: declare it here, add its column to `schema.py` and a migration.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, column, select
from sqlalchemy.sql.functions import Function

from runplane.server.records import (
    JSONObject,
    MultitaskStrategy,
    RetryPolicy,
    Run,
    RunStatus,
    same_json,
)
from runplane.server.store.schema import RunRow

Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class RunField:
    name: str
    """The `Run` attribute, and the key in the event log's JSON."""
    column: str = ""
    """The `runs` column; the attribute's name when empty."""
    dump: Convert | None = None
    """Run value -> stored value (the column's and the JSON's), when they differ."""
    load: Convert | None = None
    """Stored value -> Run value, when they differ."""

    def __post_init__(self) -> None:
        if not self.column:
            object.__setattr__(self, "column", self.name)


def _value(member: Any) -> Any:
    return member.value


def _dump_policy(policy: RetryPolicy | None) -> JSONObject | None:
    return None if policy is None else dataclasses.asdict(policy)


def _load_policy(stored: JSONObject | None) -> RetryPolicy | None:
    return None if stored is None else RetryPolicy(**stored)


FIELDS: tuple[RunField, ...] = (
    RunField("run_id"),
    RunField("thread_id"),
    RunField("assistant_id"),
    RunField("status", dump=_value, load=RunStatus),
    RunField("multitask_strategy", dump=_value, load=MultitaskStrategy),
    RunField("created_at", "created_at_us"),
    RunField("updated_at", "updated_at_us"),
    RunField("metadata"),
    RunField("kwargs"),
    RunField("revision"),
    RunField("attempt"),
    RunField("started_at", "started_at_us"),
    RunField("ended_at", "ended_at_us"),
    RunField("error"),
    RunField("cancel_reason"),
    RunField("worker_id"),
    RunField("lease_expires_at", "lease_expires_at_us"),
    RunField("timeout", "timeout_us"),
    RunField("start_after", "start_after_us"),
    RunField("request_id"),
    RunField("namespace"),
    RunField("created_by"),
    RunField("trace_context"),
    RunField("result"),
    RunField("retry_policy", dump=_dump_policy, load=_load_policy),
    RunField("priority"),
)
"""In `Run`'s order, so a row builds a `Run` positionally."""

COLUMNS: tuple[str, ...] = tuple(field.column for field in FIELDS)

# Columns the store keeps for itself, not part of a Run (see RunStore.write).
_STORE_ONLY = frozenset({"create_revision", "timeout_at_us"})

if tuple(field.name for field in FIELDS) != tuple(f.name for f in dataclasses.fields(Run)):
    raise AssertionError("FIELDS must list every Run attribute, in Run's order")
if set(COLUMNS) | _STORE_ONLY != set(RunRow.__table__.columns.keys()):
    raise AssertionError("FIELDS must map every column of the runs table")

_NAMES = tuple(field.name for field in FIELDS)
# Hot paths (every read and write): fetch all values in one C call, convert the few.
_VALUES = operator.attrgetter(*_NAMES)
_DUMPS = tuple((i, field.dump) for i, field in enumerate(FIELDS) if field.dump is not None)
_LOADS = tuple((i, field.load) for i, field in enumerate(FIELDS) if field.load is not None)


def stored_values(run: Run) -> list[Any]:
    """The run's values as stored, in `FIELDS` order."""
    values = list(_VALUES(run))
    for index, dump in _DUMPS:
        values[index] = dump(values[index])
    return values


def row_values(stored: Sequence[Any]) -> dict[str, Any]:
    """An insert's values, from `stored_values`."""
    return dict(zip(COLUMNS, stored, strict=True))


def to_json(stored: Sequence[Any]) -> JSONObject:
    """The run as the event log keeps it, from `stored_values`."""
    return dict(zip(_NAMES, stored, strict=True))


_FILTERED = tuple(
    field
    for field in FIELDS
    if field.name in ("namespace", "thread_id", "assistant_id", "status", "metadata")
)
"""What `RunFilter.matches` reads of a run."""


def previous_json(previous: Run, run: Run) -> JSONObject:
    """What the event log keeps of the run before an update, `run` being after it: the
    attributes filters read that the update changed (a watcher's filter matches either
    side). The rest of the run before is the run after (`from_json_pair`)."""
    return {
        field.name: before if field.dump is None else field.dump(before)
        for field in _FILTERED
        if not same_json(before := getattr(previous, field.name), getattr(run, field.name))
    }


def from_json_pair(run: JSONObject, previous: JSONObject) -> Run:
    """The run before an update, from the log's documents of the run after it and of the
    attributes it changed (or, as logs written before migration 0008 kept it, the whole run)."""
    return from_json({**run, **previous})


def changed_values(run: Run, previous: Run) -> dict[str, Any]:
    """The columns whose values differ between `previous` and `run`, with the new values:
    a claim then rewrites a few small columns, and serializes no JSON."""
    changed: dict[str, Any] = {}
    for field in FIELDS:
        value = getattr(run, field.name)
        before = getattr(previous, field.name)
        if value is not before and value != before:
            changed[field.column] = value if field.dump is None else field.dump(value)
    return changed


def returned_runs(function: Function[Any]) -> Select[Any]:
    """The rows of a set-returning function over the runs table (RETURNS SETOF runs), as
    `COLUMNS` of the table read them, so that `from_row` takes them."""
    table = RunRow.__table__.c
    rows = function.table_valued(*(column(name, table[name].type) for name in COLUMNS))
    return select(*rows.c)


def from_row(row: Sequence[Any]) -> Run:
    """A run from a row selected with `COLUMNS`, in that order."""
    values = list(row)
    for index, load in _LOADS:
        values[index] = load(values[index])
    return Run(*values)


def from_json(document: JSONObject) -> Run:
    """A run from the event log; attributes missing from older entries take their defaults."""
    return Run(
        **{
            field.name: document[field.name]
            if field.load is None
            else field.load(document[field.name])
            for field in FIELDS
            if field.name in document
        }
    )
