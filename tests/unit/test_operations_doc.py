"""docs/operations.md and the Grafana dashboard stay true to the series the server serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

from runplane.server.telemetry.metrics import Metrics

DOCS = Path(__file__).resolve().parents[2] / "docs"
NAME = re.compile(r"\b((?:runplane|grpc_server)_[a-z_]+)")
HISTOGRAM_PARTS = re.compile(r"_(bucket|sum|count)$")


def _served() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        if family.name.startswith(("runplane_", "grpc_server_")):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def _series(text: str) -> set[str]:
    return {HISTOGRAM_PARTS.sub("", name) for name in NAME.findall(text)}


def test_every_served_series_is_documented_and_every_documented_one_served() -> None:
    page = (DOCS / "operations.md").read_text()
    documented = set(re.findall(r"^\| `((?:runplane|grpc_server)_[a-z_]+)` \|", page, re.M))
    assert documented == _served()
    assert _series(page) <= _served()


def test_the_dashboard_queries_only_series_that_exist() -> None:
    dashboard = json.loads((DOCS / "grafana" / "runplane.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 20
    used = set().union(*(_series(expr) for expr in exprs))
    assert used <= _served()
    # The questions the operations page promises a panel for.
    assert {"runplane_queue_depth", "runplane_claim_wait_seconds"} <= used
    assert {"grpc_server_handled_total", "runplane_sweeps_total"} <= used
