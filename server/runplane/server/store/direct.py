"""Statements the server runs again and again, sent on the driver's own cursor.

SQLAlchemy's `Connection.execute` costs about 33 us a statement on SQLite and 80 us on
PostgreSQL beyond the driver's own work: it looks the compiled form up by the
statement's cache key, builds an execution context, and a result with its metadata
(GetRun's SELECT: 42 us against sqlite3's 8 us; 160 us against psycopg's 78 us, round
trip included). Nearly every statement the store runs is built once, at import or by a
cached function, and run thousands of times a second.

A `DirectConnection` runs such a statement itself once it has seen that statement
object before: compiled once per dialect and set of parameter names (with its result's
columns), its parameters converted by their column types' bind processors and its rows
by their result processors, as SQLAlchemy would. Everything else goes through
SQLAlchemy as before: a statement seen for the first time (one built for a single call
stays there), text, expanding (IN) parameters, Python-side column defaults, statement
execution options, and a statement outside a transaction (SQLAlchemy begins it).
`before_execute` and `before_`/`after_cursor_execute` listeners still hear of every
statement (`held_rows` relies on the first; the cursor events get no execution
context), and a driver error is handed to SQLAlchemy's own handling: it is wrapped in
the same exception, and a lost connection is invalidated.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import SelectBase

Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to run one statement, for one dialect and set of parameter names."""

    compiled: SQLCompiler
    sql: str
    positions: Sequence[str] | None
    """Parameter names in the order of a positional driver's placeholders; None for a
    driver that takes them by name."""
    binds: Mapping[str, Processor]
    columns: SimpleResultMetaData
    """The result's columns, by name: none for a statement that returns no rows."""
    results: Sequence[Processor | None]
    """Each column's result processor, if it has one."""

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        full = self.compiled.construct_params(values, escape_names=False)
        binds = self.binds
        if self.positions is not None:
            return [binds[k](full[k]) if k in binds else full[k] for k in self.positions]
        escaped = self.compiled.escaped_bind_names
        return {
            escaped.get(k, k): binds[k](value) if k in binds else value for k, value in full.items()
        }

    def rows(self, fetched: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        if not any(self.results):
            return fetched
        return [
            tuple(v if p is None else p(v) for p, v in zip(self.results, row, strict=True))
            for row in fetched
        ]


_Plans = dict[tuple[tuple[str, ...], bool], _Plan | None]
"""A statement's plans by (parameter names, executemany); None: SQLAlchemy runs it."""

_plans: weakref.WeakKeyDictionary[
    Dialect, weakref.WeakKeyDictionary[SelectBase | UpdateBase, _Plans]
] = weakref.WeakKeyDictionary()
"""Each dialect's statements seen, kept as long as the statement and the engine live."""


def _plan(
    dialect: Dialect, statement: SelectBase | UpdateBase, names: list[str], many: bool
) -> _Plan | None:
    """How to run `statement` with parameters of these names, or None where only
    SQLAlchemy knows how (see the module's note)."""
    compiled = statement.compile(dialect=dialect, column_keys=names, for_executemany=many)
    assert isinstance(compiled, SQLCompiler)
    if (
        compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.schema_translate_map
        or (many and compiled.effective_returning)
    ):
        return None
    binds = {name: bind for name, bind in compiled._bind_processors.items() if callable(bind)}
    if len(binds) < len(compiled._bind_processors):
        return None  # a tuple's parameters, processed element by element
    columns = compiled._result_columns
    return _Plan(
        compiled=compiled,
        sql=compiled.string,
        positions=compiled.positiontup if compiled.positional else None,
        binds=binds,
        columns=SimpleResultMetaData([column.keyname for column in columns]),
        results=[
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ],
    )


class _Rows(IteratorResult[Any]):
    """Fetched rows, as a Result, with the row count the driver reported."""

    def __init__(
        self, columns: SimpleResultMetaData, rows: Sequence[Sequence[Any]], rowcount: int
    ) -> None:
        super().__init__(columns, iter(rows))
        self.rowcount = rowcount


class DirectConnection(Connection):
    """A `Connection` that runs statements it has seen before on the driver's cursor."""

    def execute(
        self,
        statement: Executable,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
    ) -> CursorResult[Any]:
        if (
            execution_options is None
            and isinstance(statement, (SelectBase, UpdateBase))
            and not statement.get_execution_options()
            and self.in_transaction()
        ):
            each = [parameters] if isinstance(parameters, Mapping) else list(parameters or ())
            plan = self._plan_for(statement, each)
            if plan is not None:
                return cast("CursorResult[Any]", self._run(plan, statement, each))
        return super().execute(statement, parameters, execution_options=execution_options)

    def _plan_for(
        self, statement: SelectBase | UpdateBase, each: list[Mapping[str, Any]]
    ) -> _Plan | None:
        statements = _plans.get(self.dialect)
        if statements is None:
            statements = _plans.setdefault(self.dialect, weakref.WeakKeyDictionary())
        plans = statements.get(statement)
        if plans is None:
            statements[statement] = {}  # seen once: SQLAlchemy runs it this time
            return None
        names = sorted(each[0]) if each else []
        many = len(each) > 1
        key = (tuple(names), many)
        if key not in plans:
            plans[key] = _plan(self.dialect, statement, names, many)
        return plans[key]

    def _run(
        self, plan: _Plan, statement: SelectBase | UpdateBase, each: list[Mapping[str, Any]]
    ) -> _Rows:
        events = self._has_events or self.engine._has_events
        if events:
            self._invoke_before_exec_event(statement, each, self._execution_options)
        values = [plan.parameters(one) for one in each] or [plan.parameters({})]
        many = len(values) > 1
        sent = values if many else values[0]
        cursor = self.connection.cursor()
        try:
            if events:
                for before in self.dispatch.before_cursor_execute:
                    before(self, cursor, plan.sql, sent, None, many)
            if many:
                cursor.executemany(plan.sql, cast("list[Any]", values))
            else:
                cursor.execute(plan.sql, sent)
            if events:
                for after in self.dispatch.after_cursor_execute:
                    after(self, cursor, plan.sql, sent, None, many)
            fetched = cursor.fetchall() if plan.results else []
            rowcount = cursor.rowcount
        except Exception as error:
            self._handle_dbapi_exception(error, plan.sql, sent, cursor, None)
        finally:
            cursor.close()
        return _Rows(plan.columns, plan.rows(fetched), rowcount)
