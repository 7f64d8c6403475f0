"""A server with an auth config for the tenant tests, and raw calls as its principals.

Tenants are two namespaces, `team-a` and `team-b`; `operator` (admin everywhere) sets
up what the principal under test then calls on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from runplane.server.config import ServerConfig
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.auth import Caller, write_config
from tests.support.databases import database_url
from tests.support.servers import ServerThread
from tests.support.watching import cancel

TEAM_A, TEAM_B = "team-a", "team-b"
OPERATOR = Caller("operator", [("*", "admin")])

Metadata = tuple[tuple[str, str], ...]


def bearer(caller: Caller) -> Metadata:
    return (("authorization", f"Bearer {caller.token}"),)


class Tenants:
    """Raw calls to a secured server, as any of its principals."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(address)
        self.stub = run_service_pb2_grpc.RunServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def call(self, caller: Caller, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=bearer(caller), timeout=10)

    def create(self, namespace: str, caller: Caller = OPERATOR, **fields: Any) -> run_pb2.Run:
        fields.setdefault("assistant_id", "agent")
        request = run_service_pb2.CreateRunRequest(namespace=namespace, **fields)
        run: run_pb2.Run = self.call(caller, "CreateRun", request)
        return run

    def claim(self, worker_id: str, assistant_id: str, caller: Caller = OPERATOR) -> run_pb2.Run:
        request = run_service_pb2.ClaimRunRequest(worker_id=worker_id, assistant_ids=[assistant_id])
        claimed = self.call(caller, "ClaimRun", request)
        assert claimed.HasField("run"), "nothing to claim"
        run: run_pb2.Run = claimed.run
        return run

    def cancel_run(self, run_id: str, caller: Caller = OPERATOR) -> run_pb2.Run:
        request = run_service_pb2.CancelRunRequest(run_id=run_id)
        run: run_pb2.Run = self.call(caller, "CancelRun", request)
        return run

    def listed(self, caller: Caller, namespace: str = "", **filters: Any) -> list[run_pb2.Run]:
        """Every run `caller` is shown by ListRuns with this filter, page after page."""
        found: list[run_pb2.Run] = []
        token = ""
        while True:
            request = run_service_pb2.ListRunsRequest(
                filter=run_service_pb2.RunFilter(namespace=namespace, **filters),
                page_size=2,
                page_token=token,
            )
            page = self.call(caller, "ListRuns", request)
            found.extend(page.runs)
            token = page.next_page_token
            if not token:
                return found

    def initial(self, caller: Caller, namespace: str = "", **filters: Any) -> list[run_pb2.Run]:
        """The runs of a WatchRuns initial state for `caller`."""
        request = run_service_pb2.WatchRunsRequest(
            filter=run_service_pb2.RunFilter(namespace=namespace, **filters),
            include_initial=True,
        )
        stream = self.stub.WatchRuns(request, metadata=bearer(caller), timeout=10)
        runs: list[run_pb2.Run] = []
        try:
            for response in stream:
                if not response.events:  # the end of the initial state
                    return runs
                runs.extend(event.run for event in response.events)
        finally:
            cancel(stream)
        raise AssertionError("the watch ended before its initial state did")


@contextmanager
def secured_server(backend: str, folder: Path, callers: list[Caller]) -> Iterator[Tenants]:
    """A server on `backend` that knows `callers` and `OPERATOR`, for a module."""
    config = write_config(folder / "auth.toml", [OPERATOR, *callers])
    with database_url(backend, folder) as url:
        server = ServerThread(
            ServerConfig(address="127.0.0.1:0", database_url=url, auth_config=config)
        ).start()
        tenants = Tenants(server.address)
        try:
            yield tenants
        finally:
            tenants.close()
            server.stop()
