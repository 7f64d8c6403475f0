"""The benchmark harness works end to end (against the echo server only).

Timings never decide a test: this checks the shape of what ``make bench`` prints, so a broken
harness is noticed before someone needs its numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_KEYS = {
    "target",
    "scenario",
    "rpc",
    "concurrency",
    "calls",
    "seconds",
    "throughput_per_s",
    "p50_ms",
    "p99_ms",
    "errors",
    "server_cpu_percent",
    "server_cpu_us_per_call",
    "client_cpu_percent",
}


def bench(*args: str) -> dict[str, Any]:
    """`make bench`'s harness run with `args`: its JSON document, once it exited 0."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


def test_harness_measures_echo_server_and_prints_one_json_document() -> None:
    document = bench("--targets", "echo", "--seconds", "0.5", "--concurrency", "2")
    assert set(document) >= {"machine", "results", "ratios", "targets", "failures"}
    assert document["machine"]["cpus"] >= 1
    assert document["failures"] == []
    unary = [r for r in document["results"] if r["scenario"] == "unary"]
    cells = {(r["rpc"], r["concurrency"]) for r in unary}
    assert cells == {("create", 2), ("get", 2)}
    watch = [r for r in document["results"] if r["scenario"] == "watch_latency"]
    assert [r["watchers"] for r in watch] == [1, 100, 1000]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in watch)
    (idle,) = [r for r in document["results"] if r["scenario"] == "watch_idle"]
    assert idle["rss_mb"] > 0
    for result in unary:
        assert set(result) >= RESULT_KEYS
        assert result["target"] == "echo"
        assert result["calls"] > 0
        assert result["errors"] == 0
        assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert set(document["targets"]) >= {
        "get_32_ratio_min",
        "create_32_sqlite_min_per_s",
        "create_1_p99_max_ms",
    }


def test_tls_and_auth_variant_is_measured_against_its_plaintext_baseline() -> None:
    document = bench(
        *("--tls", "--auth", "--scenarios", "unary", "--targets", "runplane-sqlite"),
        *("--seconds", "0.3", "--concurrency", "2", "--rpcs", "get"),
    )
    cells = [(r["target"], r["rpc"], r["errors"]) for r in document["results"]]
    assert cells == [("runplane-sqlite", "get", 0), ("runplane-sqlite-tls-auth", "get", 0)]
    cost = document["variant_cost"]["runplane-sqlite-tls-auth"]
    assert cost["baseline"] == "runplane-sqlite"
    assert isinstance(cost["unary"]["get_2"]["throughput_ratio"], float)
