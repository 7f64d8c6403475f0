"""The background-task helper: steps on interval or wake, one log line per spell of
failures, backoff, recovery, clean stop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from runplane.server import periodic
from runplane.server.errors import StoreUnavailable
from runplane.server.periodic import PeriodicTask


def test_a_failing_step_is_logged_once_backs_off_and_recovers(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(periodic, "FIRST_BACKOFF", 0.01)
    failures = [RuntimeError("a bug"), RuntimeError("again")]
    done = asyncio.Event()

    async def step() -> None:
        if failures:
            raise failures.pop(0)
        done.set()

    async def scenario() -> int:
        task = PeriodicTask("flaky", step, interval=0.001)
        task.start()
        await asyncio.wait_for(done.wait(), 5)
        await task.stop()
        return task.failures

    with caplog.at_level(logging.INFO, logger="runplane.server.periodic"):
        assert asyncio.run(scenario()) == 0
    lines = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert lines == [
        ("WARNING", "background task failed; retrying with backoff"),
        ("INFO", "background task recovered"),
    ]
    assert caplog.records[0].exc_info is not None  # unexpected: its traceback, once


def test_a_store_outage_is_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def step() -> None:
        raise StoreUnavailable()

    async def scenario() -> None:
        task = PeriodicTask("sweeper", step, interval=0.001)
        task.start()
        await asyncio.sleep(0.3)
        await task.stop()

    with caplog.at_level(logging.INFO, logger="runplane.server.periodic"):
        asyncio.run(scenario())
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is None
    assert getattr(caplog.records[0], "error") == "StoreUnavailable"  # noqa: B009


def test_wake_runs_the_step_before_the_interval_ends_and_stop_ends_the_task() -> None:
    steps: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ran = asyncio.Event()

        async def step() -> None:
            steps.append(loop.time())
            ran.set()

        task = PeriodicTask("tailer", step, interval=3600)
        task.start()
        await asyncio.sleep(0.05)
        assert steps == []  # the first step waits for the interval
        task.wake()
        await asyncio.wait_for(ran.wait(), 5)
        await task.stop()
        await task.stop()  # stopping twice is harmless

    asyncio.run(scenario())
    assert len(steps) == 1
