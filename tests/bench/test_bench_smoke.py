"""The benchmark harness works end to end (against the echo server only).

Timings never decide a test: this checks the shape of what ``make bench`` prints, so a broken
harness is noticed before someone needs its numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.bench import targets, watch
from tests.support.servers import ServerThread, own_server

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


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m tests.bench.<module> ARGS`, finished."""
    return subprocess.run(
        [sys.executable, "-m", f"tests.bench.{module}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _run_json(module: str, *args: str) -> dict[str, Any]:
    """What `python -m tests.bench.<module> ARGS` prints, parsed; it must succeed."""
    completed = _run(module, *args)
    assert completed.returncode == 0, completed.stderr
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


def test_harness_measures_echo_server_and_prints_one_json_document(tmp_path: Path) -> None:
    no_langgraph = tmp_path / "no-langgraph"
    document = _run_json(
        "run",
        *("--targets", "echo", "--seconds", "0.5", "--concurrency", "2"),
        *("--langgraph-venv", str(no_langgraph)),
    )
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
    # Without LangGraph the comparison says how to install it, and nothing fails.
    command = f"python3 -m venv {no_langgraph} && {no_langgraph}/bin/pip install "
    assert document["langgraph"] == {
        "skipped": f"no langgraph executable at {no_langgraph}",
        "install": command + "'langgraph-cli[inmem]'",
    }
    (skipped,) = [r for r in document["results"] if r["scenario"] == "langgraph"]
    assert skipped["target"] == "langgraph"
    assert set(document["targets"]) >= {
        "get_32_ratio_min",
        "create_32_sqlite_min_per_s",
        "create_1_p99_max_ms",
    }


def test_tls_and_auth_variant_is_measured_against_its_plaintext_baseline() -> None:
    document = _run_json(
        "run",
        *("--tls", "--auth", "--scenarios", "unary", "--targets", "runplane-sqlite"),
        *("--seconds", "0.3", "--concurrency", "2", "--rpcs", "get"),
    )
    cells = [(r["target"], r["rpc"], r["errors"]) for r in document["results"]]
    assert cells == [("runplane-sqlite", "get", 0), ("runplane-sqlite-tls-auth", "get", 0)]
    cost = document["variant_cost"]["runplane-sqlite-tls-auth"]
    assert cost["baseline"] == "runplane-sqlite"
    assert isinstance(cost["unary"]["get_2"]["throughput_ratio"], float)


def test_the_load_process_takes_a_token_that_begins_with_a_dash(
    server: ServerThread, tmp_path: Path
) -> None:
    """One made token in 64 begins with "-"; the auth variant must still hand it over."""
    setup = next(
        made
        for made in (targets._auth(tmp_path) for _ in range(2_000))
        if made.load[-1].removeprefix("--token=").startswith("-")
    )
    measured = _run_json(
        "load", "--address", server.address, "--rpc", "get", "--seconds", "0.2", *setup.load
    )
    assert measured["calls"] > 0


def test_claim_and_heartbeat_benchmarks_run_against_a_server(server: ServerThread) -> None:
    """The executor benchmark with a backlog and the heartbeat benchmark, small."""
    url = server.config.database_url
    common = ("--address", server.address, "--database-url", url, "--server-pid", str(os.getpid()))
    claims = _run_json(
        "executor", *common, "--mode", "create-to-claim", "--runs", "20", "--backlog", "300"
    )
    heartbeats = _run_json(
        "heartbeats", *common, "--runs", "60", "--lease", "1", "--seconds", "1.5"
    )
    assert (claims["scenario"], claims["runs"], claims["backlog"]) == ("create_to_claim", 20, 300)
    assert 0 < claims["p50_ms"] <= claims["p99_ms"]
    assert claims["server_cpu_us_per_run"] > 0
    assert heartbeats["scenario"] == "heartbeat"
    assert heartbeats["errors"] == {}
    assert heartbeats["throughput_per_s"] > 0
    assert heartbeats["server_cpu_percent"] is not None
    assert (heartbeats["database_cpu_percent"] is None) == url.startswith("sqlite")


@pytest.fixture
def empty_server(backend: str, tmp_path: Path) -> Iterator[ServerThread]:
    with own_server(backend, tmp_path) as running:
        yield running


def test_the_watch_benchmark_opens_more_streams_than_a_connection_holds(tmp_path: Path) -> None:
    """Its channels each open a connection of their own: sharing one, the streams past the
    server's limit per connection would wait for ever, as 5,000 idle streams once did."""
    # As many as one channel of the benchmark opens.
    limit = watch.STREAMS_PER_CHANNEL
    with own_server("sqlite", tmp_path, max_streams_per_connection=limit) as running:
        found = _run_json(
            "watch",
            *("idle", "--address", running.address, "--watchers", "250"),
            *("--server-pid", str(os.getpid())),
        )
    assert found["watchers"] == 250
    assert found["rss_mb"] > 0


def test_the_scale_benchmark_runs_against_a_server(empty_server: ServerThread) -> None:
    """Two small stages of stored runs, a few calls of each RPC at each."""
    url = empty_server.config.database_url
    document = _run_json(
        "scale",
        *("--address", empty_server.address, "--database-url", url),
        *("--runs", "1200", "--stages", "600", "--samples", "5"),
    )
    assert [stage["stored_runs"] for stage in document["stages"]] == [600, 1200]
    rpcs = {"get", "list_thread", "list_metadata", "create", "claim"}
    assert set(document["p50_growth"]) == rpcs
    for stage in document["stages"]:
        for rpc in rpcs:
            assert 0 < stage[rpc]["p50_ms"] <= stage[rpc]["p99_ms"]
    assert set(document["metadata_vs_thread_p50"]) == {"600", "1200"}
    storage = document["storage"]
    assert set(storage["bytes_per_run"]) == {"runs", "run_metadata", "thread_heads"}
    assert storage["bytes_per_event"] > 0
    # Each change logs its run once (the run before: only what filters read).
    assert 1 <= storage["event_json_per_run_json"] <= 1.1


def test_cancel_runs_benchmark_runs_against_a_server(server: ServerThread) -> None:
    found = _run_json("cancel_runs", "--address", server.address, "--runs", "40", "--threads", "8")
    assert (found["runs"], found["threads"], found["cancelled"]) == (40, 8, 40)
    assert found["cancel_ms"] > 0
    assert found["slowest_concurrent_create_ms"] > 0


def test_the_scale_benchmark_refuses_a_database_that_already_holds_runs(
    server: ServerThread, stub: run_service_pb2_grpc.RunServiceStub
) -> None:
    """Its stages and bytes per run count every stored run: others' runs would skew them."""
    stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id="not-the-benchmark"))
    completed = _run(
        "scale",
        *("--address", server.address, "--database-url", server.config.database_url),
        *("--runs", "100"),
    )
    assert completed.returncode == 2
    assert "already holds" in completed.stderr
    assert "scale needs an empty one" in completed.stderr


def test_the_harness_gives_the_scale_benchmark_a_server_of_its_own() -> None:
    """Run after the unary calls, which store runs, it still finds an empty database."""
    document = _run_json(
        "run",
        *("--targets", "runplane-sqlite", "--scenarios", "unary,scale", "--runs", "3000"),
        *("--seconds", "0.3", "--concurrency", "2", "--rpcs", "create"),
    )
    assert document["failures"] == []
    scenarios = [r["scenario"] for r in document["results"]]
    assert scenarios == ["unary", "scale"]
    (scale,) = [r for r in document["results"] if r["scenario"] == "scale"]
    assert [stage["stored_runs"] for stage in scale["stages"]] == [3000]
