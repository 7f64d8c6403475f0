"""The nastiest run the server accepts can be read by every client in the repository:
Python's sync and async clients, the raw stubs and the CLI, by get, list and watch.
(The TypeScript client's case is `tests/polyglot/src/poison.test.ts`.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from runplane.client import AsyncClient, Client, EventType, Run
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.hostile import struct
from tests.support.poison import NASTY_TEXT, document
from tests.support.serve_process import RUNPLANE
from tests.support.watching import cancel

pb = run_service_pb2


@dataclass(frozen=True)
class Poison:
    run: run_pb2.Run
    """As the server answered the completion."""
    created_revision: int
    metadata: dict[str, Any]
    kwargs: dict[str, Any]
    result: dict[str, Any]


def as_stored(document: dict[str, Any]) -> dict[str, Any]:
    """The document as a Struct carries it (every number a double)."""
    return json_format.MessageToDict(struct(document))


@pytest.fixture(scope="module")
def poison(server_address: str) -> Poison:
    metadata, kwargs, result = document("metadata"), document("kwargs"), document("result")
    assistant = f"poison-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(server_address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        created = stub.CreateRun(
            pb.CreateRunRequest(
                assistant_id=assistant,
                request_id=NASTY_TEXT[:128],
                metadata=struct(metadata),
                kwargs=struct(kwargs),
            )
        )
        claimed = stub.ClaimRun(
            pb.ClaimRunRequest(worker_id=NASTY_TEXT[:256], assistant_ids=[assistant])
        )
        assert claimed.run.run_id == created.run_id
        completed = stub.CompleteRun(
            pb.CompleteRunRequest(
                run_id=created.run_id,
                worker_id=NASTY_TEXT[:256],
                status=run_pb2.RUN_STATUS_ERROR,
                error=(NASTY_TEXT * 1000)[: 64 * 1024],
                result=struct(result),
            )
        )
    return Poison(
        completed, created.revision, as_stored(metadata), as_stored(kwargs), as_stored(result)
    )


def check_run(run: Run, poison: Poison) -> None:
    assert run.run_id == poison.run.run_id
    assert (run.metadata, run.kwargs) == (poison.metadata, poison.kwargs)
    assert run.error == poison.run.error


def same(message: run_pb2.Run, other: run_pb2.Run) -> bool:
    """Equal as JSON: PostgreSQL keeps -0.0 as 0 (its numbers have no negative zero)."""
    return json_format.MessageToDict(message) == json_format.MessageToDict(other)


def test_raw_stubs_get_list_and_replay_it(server_address: str, poison: Poison) -> None:
    with grpc.insecure_channel(server_address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        assert same(stub.GetRun(pb.GetRunRequest(run_id=poison.run.run_id)), poison.run)
        listed = stub.ListRuns(
            pb.ListRunsRequest(filter=pb.RunFilter(thread_id=poison.run.thread_id))
        )
        (run,) = listed.runs
        assert same(run, poison.run)
        call = stub.WatchRuns(
            pb.WatchRunsRequest(
                filter=pb.RunFilter(thread_id=poison.run.thread_id),
                start_revision=poison.created_revision,
            ),
            timeout=20,
        )
        events: list[run_pb2.RunEvent] = []
        for message in call:
            events.extend(message.events)
            if events and events[-1].revision >= poison.run.revision:
                break
        cancel(call)
    assert [event.run.run_id for event in events] == [poison.run.run_id] * 3
    assert same(events[-1].run, poison.run)
    assert json_format.MessageToDict(events[-1].run.result) == poison.result


def test_the_sync_client_gets_lists_and_watches_it(server_address: str, poison: Poison) -> None:
    with Client(server_address) as client:
        check_run(client.get_run(poison.run.run_id), poison)
        (listed,) = client.list_runs(thread_id=poison.run.thread_id)
        check_run(listed, poison)
        events = client.watch_runs(thread_id=poison.run.thread_id, include_initial=True)
        initial = next(events)
        events.close()  # type: ignore[attr-defined]  # a generator
        assert initial.type is EventType.INITIAL
        check_run(initial.run, poison)
        (last,) = list(client.watch_run(poison.run.run_id))
        check_run(last.run, poison)


def test_the_async_client_gets_lists_and_watches_it(server_address: str, poison: Poison) -> None:
    async def read() -> list[Run]:
        async with AsyncClient(server_address) as client:
            got = await client.get_run(poison.run.run_id)
            listed = [run async for run in client.list_runs(thread_id=poison.run.thread_id)]
            watched = [event.run async for event in client.watch_run(poison.run.run_id)]
            return [got, *listed, *watched]

    runs = asyncio.run(read())
    assert len(runs) == 3
    for run in runs:
        check_run(run, poison)


def cli(server_address: str, *args: str) -> Any:
    result = subprocess.run(
        [RUNPLANE, "--address", server_address, "--output", "json", "runs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_cli_gets_lists_and_watches_it(server_address: str, poison: Poison) -> None:
    got = json.loads(cli(server_address, "get", poison.run.run_id))
    listed = json.loads(cli(server_address, "list", "--thread-id", poison.run.thread_id))
    # Its run is over: the watch prints its state and ends.
    watched = [
        json.loads(line)
        for line in cli(server_address, "watch", "--run-id", poison.run.run_id).splitlines()
    ]
    for run in (got, *listed, watched[-1]["run"]):
        assert run["run_id"] == poison.run.run_id
        assert (run["metadata"], run["kwargs"]) == (poison.metadata, poison.kwargs)
