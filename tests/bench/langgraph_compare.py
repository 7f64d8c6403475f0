"""The ``langgraph`` scenario: runplane against LangGraph Server's in-memory dev server.

LangGraph is never a dependency of runplane: it lives in a virtualenv of its own, found at
``--langgraph-venv``, else ``$RUNPLANE_BENCH_LANGGRAPH``, else under the user's cache
(``~/.cache/runplane-bench/langgraph``); either a venv or its ``langgraph`` executable.
Without it the scenario records itself as skipped, with the command that installs it, and
the rest of the benchmark runs as usual.

Three figures, each measured the same way on both sides, 16 clients where concurrent:
``create`` (runs created per second: CreateRun on new threads / POST /threads/{id}/runs
on fresh threads), ``end_to_end`` (create, a worker runs it, the client waits for its
result: runplane's executor benchmark with 8 long-polling workers / POST
/threads/{id}/runs/wait with 8 jobs per LangGraph worker) and ``pickup`` (create-to-claim
p50 / from sending the request to the graph's only node starting). The graph is written
into a temporary folder at run time; ``langgraph dev`` serves it on a free local port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.bench.processes import RunningServer
from tests.bench.scenarios import (
    BenchOptions,
    LoadFailedError,
    Result,
    bench_module,
    bench_process,
    run_load,
)
from tests.bench.targets import Target

ENVIRONMENT = "RUNPLANE_BENCH_LANGGRAPH"
TARGET = "langgraph"
SCENARIO = "langgraph"
CLIENTS = 16
WORKERS = 8
PICKUP_RUNS = 40
READY_TIMEOUT_S = 90.0
PACKAGES = ("langgraph", "langgraph-api", "langgraph-runtime-inmem", "langgraph-cli")

GRAPH_SOURCE = """\
import time
from typing import TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    n: int
    started: float


def work(state: State) -> State:
    return {"n": state.get("n", 0) + 1, "started": time.time()}


graph = StateGraph(State).add_node("work", work).add_edge(START, "work").add_edge("work", END)
graph = graph.compile()
"""
CONFIG = {"dependencies": ["."], "graphs": {"bench": "./graph.py:graph"}}


def default_venv() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "runplane-bench" / "langgraph"


def install_command(venv: Path) -> str:
    quoted = shlex.quote(str(venv))
    return f"python3 -m venv {quoted} && {quoted}/bin/pip install 'langgraph-cli[inmem]'"


def find_langgraph(given: str | None) -> tuple[Path | None, Path]:
    """The ``langgraph`` executable to run, if there is one, and the venv it was looked for
    in (for the install command)."""
    where = Path(given or os.environ.get(ENVIRONMENT) or default_venv()).expanduser()
    if where.is_file() and os.access(where, os.X_OK):
        return where, where.parent.parent
    executable = where / "bin" / "langgraph"
    if executable.is_file() and os.access(executable, os.X_OK):
        return executable, where
    return None, where


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def langgraph_server(executable: Path) -> Iterator[str]:
    """``langgraph dev`` serving the bench graph; yields its base URL, stops it on the way out."""
    with tempfile.TemporaryDirectory(prefix="runplane-bench-langgraph-") as folder:
        app = Path(folder)
        (app / "graph.py").write_text(GRAPH_SOURCE)
        (app / "langgraph.json").write_text(json.dumps(CONFIG))
        port = _free_port()
        argv = [str(executable), "dev", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--no-browser", "--no-reload", "--n-jobs-per-worker", str(WORKERS)]
        argv += ["--config", str(app / "langgraph.json"), "--server-log-level", "WARNING"]
        environment = {**os.environ, "LANGSMITH_TRACING": "false", "LANGGRAPH_NO_ANALYTICS": "1"}
        log = (app / "server.log").open("w")
        process = subprocess.Popen(
            argv,
            cwd=app,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not _ready(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = (app / "server.log").read_text()[-2000:]
                    raise LoadFailedError(f"langgraph dev did not come up:\n{tail}")
                time.sleep(0.3)
            yield url
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()


def _load(url: str, *args: str, timeout: float) -> Result:
    return bench_module("langgraph_load", "--url", url, *args, timeout=timeout)


def _versions(executable: Path) -> dict[str, str]:
    """The LangGraph packages beside ``executable``, by name (empty if unreadable)."""
    python = executable.parent / "python"
    if not python.exists():
        return {}
    script = (
        "import importlib.metadata as m, json\n"
        f"print(json.dumps({{p: m.version(p) for p in {list(PACKAGES)!r}}}))"
    )
    completed = subprocess.run(
        [str(python), "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    found: dict[str, str] = json.loads(completed.stdout) if completed.returncode == 0 else {}
    return found


def _record(target: str, measure: str, cell: Result) -> Result:
    return {**cell, "target": target, "scenario": SCENARIO, "measure": measure}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_langgraph(given: str | None, options: BenchOptions) -> list[Result]:
    """LangGraph's three figures, or one record saying why they were skipped. Pickup and
    end to end come first: the create cell leaves background runs behind."""
    executable, venv = find_langgraph(given)
    if executable is None:
        command = install_command(venv)
        _log(f"{TARGET}: skipped, no langgraph at {venv}; install it with: {command}")
        return [
            {
                "target": TARGET,
                "scenario": SCENARIO,
                "skipped": f"no langgraph executable at {venv}",
                "install": command,
            }
        ]
    timeout = 120 + 3 * options.seconds
    about = {"versions": _versions(executable), "jobs_per_worker": WORKERS}
    results: list[Result] = []
    _log(f"{TARGET}: starting {executable} dev")
    with langgraph_server(executable) as url:
        _log(f"{TARGET}: ready at {url}; pickup, {PICKUP_RUNS} runs one at a time")
        cell = _load(url, "--mode", "pickup", "--runs", str(PICKUP_RUNS), timeout=timeout)
        results.append(_record(TARGET, "pickup", {**cell, **about}))
        for mode, measure in (("end-to-end", "end_to_end"), ("create", "create")):
            _log(f"{TARGET}: {measure}, {CLIENTS} clients for {options.seconds:g} s")
            cell = _load(
                url,
                *("--mode", mode, "--clients", str(CLIENTS), "--seconds", str(options.seconds)),
                timeout=timeout,
            )
            _log(f"    {cell['throughput_per_s']}/s  p50 {cell['p50_ms']} ms")
            results.append(_record(TARGET, measure, {**cell, **about}))
    return results


def runplane_side(target: Target, server: RunningServer, options: BenchOptions) -> list[Result]:
    """runplane's side of the comparison (runplane targets only): the same three figures."""
    if server.database_url is None:
        return []
    _log(f"  {target.name}: langgraph comparison, pickup (create-to-claim)")
    pickup = bench_process(
        server, "--mode", "create-to-claim", "--runs", str(PICKUP_RUNS), module="executor"
    )
    _log(f"  {target.name}: langgraph comparison, end to end, {CLIENTS} clients")
    end_to_end = bench_process(
        server,
        *("--mode", "end-to-end", "--clients", str(CLIENTS), "--workers", str(WORKERS)),
        *("--seconds", str(options.seconds)),
        module="executor",
    )
    _log(f"  {target.name}: langgraph comparison, create, {CLIENTS} clients")
    create = run_load(server, "create", CLIENTS, options.seconds)
    return [
        _record(target.name, "pickup", pickup),
        _record(target.name, "end_to_end", end_to_end),
        _record(target.name, "create", {**create, "clients": CLIENTS}),
    ]
