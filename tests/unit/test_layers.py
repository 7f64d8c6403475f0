"""One direction of flow: only `store/` speaks SQL or knows which database it runs on."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server" / "runplane" / "server"
DATABASE_LIBRARIES = ("sqlalchemy", "psycopg", "sqlite3", "alembic")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_nothing_outside_the_store_imports_a_database_library() -> None:
    outside = [
        path for path in SERVER.rglob("*.py") if "store" not in path.relative_to(SERVER).parts
    ]
    assert len(outside) > 10
    offenders = {
        str(path.relative_to(SERVER)): sorted(
            name for name in _imports(path) if name.split(".")[0] in DATABASE_LIBRARIES
        )
        for path in outside
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_rules_reach_the_store_only_through_database_and_units_of_work() -> None:
    allowed = {
        "runplane.server.store.database",
        "runplane.server.store.unit_of_work",
        "runplane.server.store.event_log",  # LogState and LogPage, plain values
    }
    for path in SERVER.rglob("*.py"):
        parts = path.relative_to(SERVER).parts
        if "store" in parts or path.name in ("app.py", "commands.py"):
            continue  # the store itself, and the assembly that opens it
        store_imports = {
            name for name in _imports(path) if name.startswith("runplane.server.store")
        }
        assert store_imports <= allowed, (path.name, store_imports - allowed)
    for path in SERVER.rglob("*.py"):
        if "store" not in path.relative_to(SERVER).parts:
            assert "dialect" not in path.read_text().lower(), path.name
