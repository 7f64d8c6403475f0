"""Load generator for LangGraph Server, standard library only (the project gains no HTTP
client for it), run in its own process like ``tests.bench.load``:

    python -m tests.bench.langgraph_load --url http://HOST:PORT --mode create|end-to-end|pickup
        [--clients 16] [--seconds 5] [--runs 100]

Every run goes to a fresh thread (``if_not_exists: create``), one HTTP call per run, the
way runplane's CreateRun starts a new thread. ``create``: C threads each POST
/threads/{id}/runs back to back (background runs; the server executes them meanwhile).
``end-to-end``: C threads each POST /threads/{id}/runs/wait, so a run's latency covers
create, execution and the result. ``pickup``: one run at a time, paced; the graph's node
stores ``time.time()`` when it starts, and the latency is from sending the request to that.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import threading
import time
import uuid
from urllib.parse import urlsplit

ASSISTANT_ID = "bench"
"""The graph's id in the langgraph.json the harness writes; usable as an assistant id."""
PACE_S = 0.02
TIMEOUT_S = 30.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _Connection:
    """One keep-alive HTTP connection, as a client holding a session would use."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=TIMEOUT_S
        )

    def post(self, path: str, body: dict[str, object]) -> object:
        self._connection.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = self._connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status}: {payload[:200]!r}")
        return json.loads(payload)

    def close(self) -> None:
        self._connection.close()


def _run_body() -> dict[str, object]:
    return {"assistant_id": ASSISTANT_ID, "input": {"n": 0}, "if_not_exists": "create"}


def _path(suffix: str) -> str:
    return f"/threads/{uuid.uuid4()}/runs{suffix}"


def concurrent(url: str, clients: int, seconds: float, wait: bool) -> dict[str, object]:
    """C clients creating runs (and with ``wait``, waiting for each) for ``seconds``."""
    suffix = "/wait" if wait else ""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    warmed = threading.Barrier(clients + 1)
    go = threading.Event()
    until = [0.0]

    def client() -> None:
        connection = _Connection(url)
        mine: list[float] = []
        try:
            connection.post(_path(suffix), _run_body())  # warm-up: connection, first call
            warmed.wait()
            go.wait()
            while time.perf_counter() < until[0]:
                began = time.perf_counter()
                result = connection.post(_path(suffix), _run_body())
                if wait and not (isinstance(result, dict) and "started" in result):
                    raise RuntimeError(f"run ended without the node's output: {result!r:.200}")
                mine.append((time.perf_counter() - began) * 1000)
        except Exception as error:  # reported in the JSON; the cell is then unusable
            with lock:
                errors.append(str(error))
            warmed.abort()
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: no timing
        warmed.wait()
    began = time.perf_counter()
    until[0] = began + seconds
    go.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors or not latencies:
        raise SystemExit(f"LangGraph load failed: {errors[:3] or 'no run finished'}")
    return {
        "measure": "end_to_end" if wait else "create",
        "clients": clients,
        "runs": len(latencies),
        "seconds": round(elapsed, 3),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
    }


def pickup(url: str, runs: int) -> dict[str, object]:
    """Create-to-node-start latency, one run at a time."""
    connection = _Connection(url)
    latencies: list[float] = []
    try:
        connection.post(_path("/wait"), _run_body())  # warm-up
        for _ in range(runs):
            sent = time.time()
            result = connection.post(_path("/wait"), _run_body())
            assert isinstance(result, dict), result
            latencies.append((float(result["started"]) - sent) * 1000)
            time.sleep(PACE_S)
    finally:
        connection.close()
    return {
        "measure": "pickup",
        "runs": runs,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["create", "end-to-end", "pickup"], required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=100, help="pickup: runs, one at a time")
    args = parser.parse_args()
    if args.mode == "pickup":
        result = pickup(args.url, args.runs)
    else:
        result = concurrent(args.url, args.clients, args.seconds, args.mode == "end-to-end")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
