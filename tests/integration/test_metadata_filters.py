"""ListRuns by metadata without a thread reads the metadata index: its pages hold exactly
the matching runs, in list order, also when most runs that hold the first key's value
fail the rest of the filter, across namespaces, and after metadata changed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from runplane.client import Client
from runplane.v1 import run_service_pb2
from tests.support.hostile import struct
from tests.support.servers import ServerThread
from tests.support.stubs import run_service


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.address) as client:
        yield client


def test_pages_hold_exactly_the_matching_runs(server: ServerThread, client: Client) -> None:
    batch = str(uuid.uuid4())
    runs = [
        client.create_run(
            "agent",
            metadata={"batch": batch, **({"pick": i % 3} if i % 7 == 0 else {})},
            namespace="ns-a" if i % 2 else "ns-b",
        )
        for i in range(120)
    ]
    picked = [run.run_id for i, run in enumerate(runs) if i % 7 == 0 and i % 3 == 1]
    # "batch" leads (sorted first) and all 120 runs hold it; "pick" decides.
    wanted = {"batch": batch, "pick": 1}
    for size in (1, 2, 5, 50):
        listed = [run.run_id for run in client.list_runs(metadata=wanted, page_size=size)]
        assert listed == picked[::-1], size
        oldest_first = client.list_runs(metadata=wanted, page_size=size, order_by="created_at asc")
        assert [run.run_id for run in oldest_first] == picked
    in_a = [run.run_id for run in client.list_runs(metadata=wanted, namespace="ns-a")]
    assert in_a == [r.run_id for r in runs if r.run_id in picked and r.namespace == "ns-a"][::-1]
    # A change of metadata moves a run in or out of the index's answer.
    first, last = picked[0], picked[-1]
    client.update_run(first, metadata={"batch": batch})
    client.update_run(runs[1].run_id, metadata={"batch": batch, "pick": 1.0})
    listed = [run.run_id for run in client.list_runs(metadata=wanted)]
    assert listed[0] == last
    assert set(listed) == (set(picked) - {first}) | {runs[1].run_id}
    with run_service(server.address) as stub:
        request = run_service_pb2.ListRunsRequest(
            filter=run_service_pb2.RunFilter(metadata=struct({"batch": batch, "pick": 2})),
            page_size=3,
        )
        page = stub.ListRuns(request)
        expected = [r.run_id for i, r in enumerate(runs) if i % 7 == 0 and i % 3 == 2][::-1]
        assert [run.run_id for run in page.runs] == expected[:3]
        assert page.next_page_token
