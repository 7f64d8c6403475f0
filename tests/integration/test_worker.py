"""The Worker helpers against a real server: claim, heartbeat, complete, cancel on loss."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from runplane.client import AsyncClient, AsyncWorker, Client, Run, RunStatus, Worker


@pytest.fixture
def assistant() -> str:
    return f"worker-test-{uuid.uuid4()}"


def test_async_worker_completes_runs_with_handler_results_and_errors(
    server_address: str, assistant: str
) -> None:
    async def handler(run: Run) -> dict[str, Any] | None:
        if run.kwargs.get("fail"):
            raise ValueError("bad input: fail was set")
        return {"answer": run.kwargs["n"] * 2}

    async def scenario() -> list[Run]:
        async with AsyncClient(server_address) as client:
            thread_id = str(uuid.uuid4())
            created = [
                await client.create_run(assistant, thread_id=thread_id, kwargs=kwargs)
                for kwargs in ({"n": 1}, {"n": 2, "fail": True}, {"n": 3})
            ]
            worker = AsyncWorker(client, handler, assistant_ids=[assistant], lease_duration=5)
            running = asyncio.ensure_future(worker.run())
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                runs = [await client.get_run(run.run_id) for run in created]
                if all(run.status.is_terminal for run in runs):
                    break
                await asyncio.sleep(0.05)
            worker.stop()
            await asyncio.wait_for(running, 5)
            return runs

    first, failed, third = asyncio.run(scenario())
    assert (first.status, first.result, first.metadata) == (RunStatus.SUCCESS, {"answer": 2}, {})
    assert (failed.status, failed.error) == (RunStatus.ERROR, "bad input: fail was set")
    assert (third.status, third.result) == (RunStatus.SUCCESS, {"answer": 6})
    assert first.worker_id == third.worker_id


def test_async_worker_cancels_handler_when_its_run_is_interrupted(
    server_address: str, assistant: str
) -> None:
    started, cancelled = asyncio.Event(), []

    async def handler(run: Run) -> dict[str, Any] | None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(time.monotonic())
            raise
        return None

    async def scenario() -> tuple[Run | None, float, Run]:
        async with AsyncClient(server_address) as client:
            run = await client.create_run(assistant)
            # A long lease: heartbeats come every 10 s, so only the watch can be this quick.
            worker = AsyncWorker(client, handler, assistant_ids=[assistant], lease_duration=30)
            working = asyncio.ensure_future(worker.run_once(wait=5))
            await asyncio.wait_for(started.wait(), 10)
            interrupted_at = time.monotonic()
            await client.cancel_run(run.run_id, reason="user pressed stop")
            outcome = await asyncio.wait_for(working, 10)
            return outcome, interrupted_at, await client.get_run(run.run_id)

    outcome, interrupted_at, final = asyncio.run(scenario())
    assert outcome is None
    assert len(cancelled) == 1
    assert cancelled[0] - interrupted_at < 2
    assert (final.status, final.cancel_reason) == (RunStatus.INTERRUPTED, "user pressed stop")


def test_stop_drains_the_run_in_hand(server_address: str, assistant: str) -> None:
    started = asyncio.Event()

    async def handler(run: Run) -> dict[str, Any] | None:
        started.set()
        await asyncio.sleep(0.5)
        return {"done": True}

    async def scenario() -> Run:
        async with AsyncClient(server_address) as client:
            run = await client.create_run(assistant)
            worker = AsyncWorker(client, handler, assistant_ids=[assistant])
            running = asyncio.ensure_future(worker.run())
            await asyncio.wait_for(started.wait(), 10)
            worker.stop()
            await asyncio.wait_for(running, 10)
            return await client.get_run(run.run_id)

    final = asyncio.run(scenario())
    assert (final.status, final.result) == (RunStatus.SUCCESS, {"done": True})


def test_sync_worker_runs_plain_functions_and_signals_loss(
    server_address: str, assistant: str
) -> None:
    seen: list[str] = []

    def handler(run: Run, stop: threading.Event) -> dict[str, Any] | None:
        seen.append(run.run_id)
        if run.kwargs.get("long"):
            stop.wait(30)
            seen.append("stopped" if stop.is_set() else "timed out")
        return {"by": "sync"}

    with Client(server_address) as client:
        quick = client.create_run(assistant)
        worker = Worker(server_address, handler, assistant_ids=[assistant], lease_duration=30)
        done = worker.run_once(wait=5)
        assert done is not None
        assert (done.run_id, done.status, done.result) == (
            quick.run_id,
            RunStatus.SUCCESS,
            {"by": "sync"},
        )

        long = client.create_run(assistant, kwargs={"long": True})
        outcome: list[Run | None] = []
        thread = threading.Thread(target=lambda: outcome.append(worker.run_once(wait=5)))
        thread.start()
        deadline = time.monotonic() + 10
        while client.get_run(long.run_id).status is not RunStatus.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.cancel_run(long.run_id)
        thread.join(15)
    assert outcome == [None]
    assert seen == [quick.run_id, long.run_id, "stopped"]


def _hand_back_scenario(
    server_address: str, assistant: str, *, stop_twice: bool, stop_grace: float
) -> tuple[Run, Run, float, list[str]]:
    """A worker holding a run with a 30 s lease is stopped while its handler works:
    the run before the stop, the run once PENDING again, the seconds that took, and
    what the handler saw."""
    seen: list[str] = []
    started = asyncio.Event()

    async def handler(run: Run) -> dict[str, Any] | None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return None

    async def scenario() -> tuple[Run, Run, float]:
        async with AsyncClient(server_address) as client:
            run = await client.create_run(assistant)
            worker = AsyncWorker(
                client,
                handler,
                assistant_ids=[assistant],
                lease_duration=30,
                stop_grace=stop_grace,
                claim_wait=1,
            )
            running = asyncio.ensure_future(worker.run(handle_signals=False))
            await asyncio.wait_for(started.wait(), 10)
            held = await client.get_run(run.run_id)
            stopped_at = time.monotonic()
            worker.stop()
            if stop_twice:
                worker.stop()
            await asyncio.wait_for(running, 10)
            while (again := await client.get_run(run.run_id)).status is not RunStatus.PENDING:
                assert time.monotonic() - stopped_at < 10, again
                await asyncio.sleep(0.05)
            return held, again, time.monotonic() - stopped_at

    held, again, waited = asyncio.run(scenario())
    return held, again, waited, seen


def test_second_stop_hands_the_run_back_at_once(server_address: str, assistant: str) -> None:
    held, again, waited, seen = _hand_back_scenario(
        server_address, assistant, stop_twice=True, stop_grace=60
    )

    assert (held.status, held.attempt) == (RunStatus.RUNNING, 1)
    assert seen == ["cancelled"]
    assert (again.worker_id, again.attempt) == ("", 1)
    assert waited < 5, "requeued by the sweeper, not after the 30 s lease"


def test_stop_grace_expiry_hands_the_run_back(server_address: str, assistant: str) -> None:
    _, again, waited, seen = _hand_back_scenario(
        server_address, assistant, stop_twice=False, stop_grace=0.5
    )

    assert seen == ["cancelled"]
    assert again.status is RunStatus.PENDING
    assert 0.5 <= waited < 5


# -- the README's worker, as a program -----------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_worker(address: str, seconds: float) -> str:
    """The README's worker example, on `address`, its handler taking `seconds`."""
    text = README.read_text()
    start = text.index("```python\n", text.index("Save this as `worker.py`")) + len("```python\n")
    source = text[start : text.index("```", start)]
    assert "asyncio.sleep(2)" in source
    assert '"127.0.0.1:50051"' in source
    return source.replace("asyncio.sleep(2)", f"asyncio.sleep({seconds})").replace(
        '"127.0.0.1:50051"', repr(address)
    )


def start_readme_worker(tmp_path: Path, address: str, seconds: float) -> subprocess.Popen[str]:
    program = tmp_path / "worker.py"
    program.write_text(readme_worker(address, seconds))
    return subprocess.Popen(
        [sys.executable, str(program)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_status(client: Client, run_id: str, status: RunStatus, within: float) -> Run:
    deadline = time.monotonic() + within
    while (run := client.get_run(run_id)).status is not status:
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    return run


def test_readme_worker_finishes_its_run_on_ctrl_c(server_address: str, tmp_path: Path) -> None:
    with Client(server_address) as client:
        run = client.create_run("support-bot", kwargs={"input": "hello"})
        worker = start_readme_worker(tmp_path, server_address, seconds=1.5)
        wait_for_status(client, run.run_id, RunStatus.RUNNING, within=20)

        worker.send_signal(signal.SIGINT)

        _, stderr = worker.communicate(timeout=20)
        final = client.get_run(run.run_id)
    assert worker.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "SIGINT: no more claims" in stderr
    assert (final.status, final.result) == (RunStatus.SUCCESS, {"reply": "done with 'hello'"})


def test_readme_worker_hands_its_run_back_on_a_second_ctrl_c(
    server_address: str, tmp_path: Path
) -> None:
    with Client(server_address) as client:
        run = client.create_run("support-bot", kwargs={"input": "hello"})
        worker = start_readme_worker(tmp_path, server_address, seconds=60)
        wait_for_status(client, run.run_id, RunStatus.RUNNING, within=20)

        worker.send_signal(signal.SIGINT)
        time.sleep(0.3)
        worker.send_signal(signal.SIGINT)

        _, stderr = worker.communicate(timeout=20)
        requeued = wait_for_status(client, run.run_id, RunStatus.PENDING, within=5)
    assert worker.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "SIGINT again: handing the runs in hand back" in stderr
    assert (requeued.worker_id, requeued.attempt) == ("", 1)
