"""The metadata index: which runs hold which metadata key and value, for ListRuns filters.

A metadata filter asks for runs whose metadata has each given key with an equal JSON
value. `run_metadata` holds one row per (run, key): an *entry*, a 64-bit hash of the
key and its value, with the run's creation time and namespace. A listing filtered by
metadata reads one entry's range of `ix_run_metadata_entry` in list order and stops at
its LIMIT, however many runs there are; the runs it finds are then checked against the
filter's actual values (`Dialect.json_equals`), so a hash collision never shows a run
that does not match.

Equal JSON values hash alike, as watch filters compare them (`records.same_json`):
objects whatever their key order, numbers by value (1 and 1.0 alike), true not 1.

`UnitOfWork.apply` hands every batch of changes to `follow`, in the transaction that
writes the runs, so the index is never out of step with them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert

from runplane.server.records import Change, ChangeType, JSONObject, Run
from runplane.server.store import held_rows
from runplane.server.store.schema import Base, RunMetadataRow

_entries = Base.metadata.tables[RunMetadataRow.__tablename__]

_INSERT = insert(_entries)
_DELETE_RUN = delete(_entries).where(_entries.c.run_id == bindparam("run_id"))


def _canonical(value: Any) -> Any:
    """`value` with integral numbers as ints, so that equal JSON values dump alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def entry(key: str, value: Any) -> int:
    """The index entry of `key` holding `value`: a signed 64-bit hash (BIGINT)."""
    dumped = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))
    # Keys hold no NUL (validation refuses them), so NUL separates key from value.
    digest = hashlib.blake2b(f"{key}\0{dumped}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def entries(metadata: JSONObject) -> set[int]:
    """The entries of a run's metadata (two keys of one run that collide share one)."""
    return {entry(key, value) for key, value in metadata.items()}


def rows(
    run_id: str, namespace: str, created_at: int, metadata: JSONObject
) -> list[dict[str, Any]]:
    """The index rows of one run."""
    return [
        {"entry": hashed, "run_id": run_id, "namespace": namespace, "created_at_us": created_at}
        for hashed in entries(metadata)
    ]


def _same(run: Run, before: Run) -> bool:
    return run.metadata is before.metadata or entries(run.metadata) == entries(before.metadata)


class MetadataIndex:
    """`run_metadata`, over the connection of one transaction."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def follow(self, changes: Sequence[Change]) -> None:
        """Index the metadata of the runs `changes` created or changed, and forget the
        runs they deleted."""
        forget: list[dict[str, Any]] = []
        index: list[dict[str, Any]] = []
        for change in changes:
            run, before = change.run, change.previous
            if change.type is ChangeType.UPDATED and before is not None and _same(run, before):
                continue  # the common update (a claim, a completion) keeps the metadata
            if change.type is not ChangeType.CREATED:
                forget.append({"run_id": run.run_id})
            if change.type is not ChangeType.DELETED:
                index.extend(rows(run.run_id, run.namespace, run.created_at, run.metadata))
        if forget:
            self._conn.execute(_DELETE_RUN, forget)
        for row in index:
            # Cannot fail: the run's row is written (or held) and its old entries are gone.
            held_rows.hold(self._conn, _INSERT, row)


def index_rows(found: Iterable[tuple[str, str, int, JSONObject]]) -> list[dict[str, Any]]:
    """The index rows of runs given as (run_id, namespace, created_at_us, metadata)."""
    return [row for run in found for row in rows(*run)]
