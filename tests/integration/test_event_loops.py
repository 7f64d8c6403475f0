"""The event loops a server runs on (`--event-loop`): uvloop by default, asyncio's own on
request.

Every other test serves on the default loop (`ServerThread` takes the one `runplane
serve` would), so asyncio's loop gets a round of its own here, on both databases: a
worker long-polling before the run exists, a client waiting on a watch before the run
starts, a claim and a completion. On PostgreSQL the store also watches sockets of its
own on the loop (the revision reads, the change listener).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import uvloop

from runplane.client import Client, RunStatus
from runplane.server.config import ServerConfig
from tests.conftest import BACKENDS
from tests.support.servers import ServerThread, own_server


async def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_servers_run_on_uvloop_by_default(server: ServerThread) -> None:
    assert ServerConfig().event_loop == "uvloop"
    assert isinstance(server.call(_loop()), uvloop.Loop)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_goes_from_create_to_its_end_on_asyncios_own_loop(
    backend: str, tmp_path: Path
) -> None:
    with (
        own_server(backend, tmp_path, event_loop="asyncio") as server,
        Client(server.address) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        running_on = server.call(_loop())
        assert not isinstance(running_on, uvloop.Loop)
        assert isinstance(running_on, asyncio.SelectorEventLoop)

        claiming = pool.submit(client.claim_run, "worker", assistant_ids=["agent"], wait=10)
        run = client.create_run("agent")
        claimed = claiming.result(timeout=20)
        assert claimed is not None
        assert claimed.run_id == run.run_id

        waiting = pool.submit(client.wait_run, run.run_id, timeout=20)
        client.complete_run(run.run_id, "worker", RunStatus.SUCCESS, result={"answer": 42})
        ended = waiting.result(timeout=30)
        assert ended.status is RunStatus.SUCCESS
        assert ended.result == {"answer": 42}
        assert client.get_run(run.run_id) == ended
