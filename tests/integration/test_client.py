"""The bundled Client and AsyncClient against a real server, on SQLite and PostgreSQL.

Every test works on threads it creates itself, so tests sharing a server keep apart.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from runplane.client import (
    AlreadyExists,
    AsyncClient,
    CancelAction,
    Client,
    FailedPrecondition,
    InvalidArgument,
    LeaseLost,
    MultitaskStrategy,
    NotFound,
    RevisionMismatch,
    Run,
    RunInflight,
    RunStatus,
    RunTerminal,
    ThreadBusy,
)


@pytest.fixture
def client(server_address: str) -> Iterator[Client]:
    with Client(server_address) as client:
        yield client


def new_id() -> str:
    return str(uuid.uuid4())


def thread_of(client: Client, count: int) -> list[Run]:
    """`count` runs queued on one new thread, oldest first."""
    first = client.create_run("agent")
    rest = [client.create_run("agent", thread_id=first.thread_id) for _ in range(count - 1)]
    return [first, *rest]


def test_create_returns_a_pending_run_with_plain_values(client: Client) -> None:
    start_after = datetime.now(UTC) + timedelta(hours=1)

    run = client.create_run(
        "agent",
        metadata={"team": "search", "n": 1},
        kwargs={"input": {"messages": [{"role": "user", "text": "hi"}]}, "temperature": 0.2},
        timeout=90,
        start_after=start_after,
    )

    assert run.status is RunStatus.PENDING
    assert run.multitask_strategy is MultitaskStrategy.ENQUEUE
    assert str(uuid.UUID(run.run_id)) == run.run_id
    assert str(uuid.UUID(run.thread_id)) == run.thread_id
    assert run.metadata == {"team": "search", "n": 1}
    assert run.kwargs["temperature"] == 0.2
    assert run.timeout == timedelta(seconds=90)
    assert run.start_after is not None
    assert abs(run.start_after - start_after) < timedelta(milliseconds=1)
    assert run.created_at.tzinfo is not None
    assert run.revision > 0
    assert client.get_run(run.run_id) == run


def test_create_with_a_taken_run_id_is_already_exists(client: Client) -> None:
    run_id = new_id()
    client.create_run("agent", run_id=run_id)

    with pytest.raises(AlreadyExists):
        client.create_run("agent", run_id=run_id)


def test_request_id_makes_create_idempotent(client: Client) -> None:
    request_id = new_id()

    first = client.create_run("agent", request_id=request_id)
    again = client.create_run("agent", request_id=request_id)

    assert again.run_id == first.run_id
    assert [run.run_id for run in client.list_runs(thread_id=first.thread_id)] == [first.run_id]


def test_reject_strategy_raises_thread_busy_naming_the_blocking_run(client: Client) -> None:
    busy = client.create_run("agent")

    with pytest.raises(ThreadBusy) as caught:
        client.create_run("agent", thread_id=busy.thread_id, multitask_strategy="reject")

    assert caught.value.thread_id == busy.thread_id
    assert caught.value.run_id == busy.run_id
    assert caught.value.reason == "THREAD_BUSY"
    assert [run.run_id for run in client.list_runs(thread_id=busy.thread_id)] == [busy.run_id]


def test_interrupt_strategy_supersedes_the_inflight_runs(client: Client) -> None:
    old = client.create_run("agent")

    new = client.create_run(
        "agent", thread_id=old.thread_id, multitask_strategy=MultitaskStrategy.INTERRUPT
    )

    superseded = client.get_run(old.run_id)
    assert superseded.status is RunStatus.INTERRUPTED
    assert superseded.cancel_reason == f"superseded by run {new.run_id}"
    assert new.status is RunStatus.PENDING


def test_rollback_strategy_deletes_the_inflight_runs(client: Client) -> None:
    old = client.create_run("agent")

    client.create_run("agent", thread_id=old.thread_id, multitask_strategy="ROLLBACK")

    with pytest.raises(NotFound):
        client.get_run(old.run_id)


def test_list_runs_follows_page_tokens_newest_first(client: Client) -> None:
    runs = thread_of(client, 5)
    newest_first = [run.run_id for run in reversed(runs)]

    listed = client.list_runs(thread_id=runs[0].thread_id, page_size=2)
    pages = list(client.list_runs(thread_id=runs[0].thread_id, page_size=2).pages())

    assert [run.run_id for run in listed] == newest_first
    assert [len(page.runs) for page in pages] == [2, 2, 1]
    assert pages[-1].next_page_token == ""
    assert all(page.revision >= runs[-1].revision for page in pages)


def test_list_runs_oldest_first(client: Client) -> None:
    runs = thread_of(client, 3)

    listed = client.list_runs(thread_id=runs[0].thread_id, order_by="created_at asc", page_size=1)

    assert [run.run_id for run in listed] == [run.run_id for run in runs]


def test_list_runs_filters_by_status_assistant_and_metadata(client: Client) -> None:
    assistant = f"assistant-{new_id()}"
    tagged = client.create_run(assistant, metadata={"team": "search", "tier": 1})
    other = client.create_run(assistant, metadata={"team": "ads"})
    client.cancel_run(other.run_id)

    def listed(
        statuses: list[RunStatus | str] | None = None, metadata: dict[str, object] | None = None
    ) -> list[str]:
        runs = client.list_runs(assistant_id=assistant, statuses=statuses, metadata=metadata)
        return [run.run_id for run in runs]

    assert listed() == [other.run_id, tagged.run_id]
    assert listed(statuses=["pending"]) == [tagged.run_id]
    assert listed(statuses=[RunStatus.INTERRUPTED, "success"]) == [other.run_id]
    assert listed(metadata={"team": "search"}) == [tagged.run_id]
    assert listed(metadata={"tier": 1}) == [tagged.run_id]
    assert listed(metadata={"team": "search", "tier": 2}) == []


def test_update_changes_only_the_fields_given(client: Client) -> None:
    run = client.create_run("agent", metadata={"a": 1}, kwargs={"input": "x"})

    updated = client.update_run(run.run_id, metadata={"b": 2})

    assert updated.metadata == {"b": 2}
    assert updated.kwargs == {"input": "x"}
    assert updated.revision > run.revision
    assert updated.updated_at >= run.updated_at


def test_update_with_a_stale_expected_revision_is_revision_mismatch(client: Client) -> None:
    run = client.create_run("agent")
    client.update_run(run.run_id, metadata={"step": 1}, expected_revision=run.revision)

    with pytest.raises(RevisionMismatch) as caught:
        client.update_run(run.run_id, metadata={"step": 2}, expected_revision=run.revision)

    assert caught.value.reason == "REVISION_MISMATCH"
    assert client.get_run(run.run_id).metadata == {"step": 1}


def test_kwargs_change_only_while_pending(client: Client) -> None:
    run = client.create_run("agent", kwargs={"input": "x"})
    client.cancel_run(run.run_id)

    with pytest.raises(FailedPrecondition):
        client.update_run(run.run_id, kwargs={"input": "y"})


def test_cancel_interrupts_with_a_reason_and_refuses_a_terminal_run(client: Client) -> None:
    run = client.create_run("agent")

    cancelled = client.cancel_run(run.run_id, reason="user pressed stop")

    assert cancelled.status is RunStatus.INTERRUPTED
    assert cancelled.status.is_terminal
    assert cancelled.cancel_reason == "user pressed stop"
    assert cancelled.ended_at is not None
    with pytest.raises(RunTerminal):
        client.cancel_run(run.run_id)


def test_cancel_rollback_deletes_the_run_and_returns_its_last_state(client: Client) -> None:
    run = client.create_run("agent", metadata={"keep": "me"})

    last = client.cancel_run(run.run_id, action=CancelAction.ROLLBACK)

    assert last.run_id == run.run_id
    assert last.metadata == {"keep": "me"}
    with pytest.raises(NotFound):
        client.get_run(run.run_id)


def test_delete_refuses_an_inflight_run_unless_forced(client: Client) -> None:
    run = client.create_run("agent")

    with pytest.raises(RunInflight):
        client.delete_run(run.run_id)
    client.delete_run(run.run_id, force=True)

    with pytest.raises(NotFound):
        client.get_run(run.run_id)


def test_delete_a_finished_run(client: Client) -> None:
    run = client.cancel_run(client.create_run("agent").run_id)

    assert client.delete_run(run.run_id, expected_revision=run.revision) is None
    with pytest.raises(NotFound):
        client.delete_run(run.run_id)


def test_unknown_run_is_not_found(client: Client) -> None:
    run_id = new_id()

    with pytest.raises(NotFound) as caught:
        client.get_run(run_id)

    assert run_id in caught.value.message


def test_bad_input_is_invalid_argument_with_field_violations(client: Client) -> None:
    with pytest.raises(InvalidArgument) as malformed:
        client.get_run("not-a-uuid")
    with pytest.raises(InvalidArgument) as empty_assistant:
        client.create_run("")
    with pytest.raises(InvalidArgument) as negative_page:
        list(client.list_runs(page_size=-1))

    assert [field for field, _ in malformed.value.field_violations] == ["run_id"]
    assert [field for field, _ in empty_assistant.value.field_violations] == ["assistant_id"]
    assert [field for field, _ in negative_page.value.field_violations] == ["page_size"]


def test_a_worker_claims_heartbeats_and_completes_a_run(client: Client) -> None:
    assistant = f"assistant-{new_id()}"
    created = client.create_run(assistant)

    claimed = client.claim_run("worker-1", assistant_ids=[assistant], lease_duration=30)
    assert claimed is not None
    assert (claimed.run_id, claimed.status) == (created.run_id, RunStatus.RUNNING)
    assert (claimed.worker_id, claimed.attempt) == ("worker-1", 1)
    assert client.claim_run("worker-2", assistant_ids=[assistant]) is None

    renewed = client.heartbeat_run(created.run_id, "worker-1", lease_duration=60)
    assert renewed.lease_expires_at is not None
    assert claimed.lease_expires_at is not None
    assert renewed.lease_expires_at > claimed.lease_expires_at

    done = client.complete_run(created.run_id, "worker-1", "success", metadata={"tokens": 12})
    assert done.status is RunStatus.SUCCESS
    assert done.metadata == {"tokens": 12}
    with pytest.raises(LeaseLost):
        client.heartbeat_run(created.run_id, "worker-1")


def test_async_client_has_the_same_surface(server_address: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server_address) as client:
            first = await client.create_run("agent", metadata={"n": 1})
            second = await client.create_run("agent", thread_id=first.thread_id)
            assert await client.get_run(first.run_id) == first

            listed = [run.run_id async for run in client.list_runs(thread_id=first.thread_id)]
            assert listed == [second.run_id, first.run_id]
            pages = [page async for page in client.list_runs(page_size=1).pages()]
            assert len(pages) >= 2

            updated = await client.update_run(first.run_id, metadata={"n": 2})
            assert updated.metadata == {"n": 2}
            with pytest.raises(RevisionMismatch):
                await client.update_run(
                    first.run_id, metadata={"n": 3}, expected_revision=first.revision
                )

            with pytest.raises(ThreadBusy) as caught:
                await client.create_run(
                    "agent", thread_id=first.thread_id, multitask_strategy="reject"
                )
            assert caught.value.run_id in {first.run_id, second.run_id}

            cancelled = await client.cancel_run(first.run_id, reason="enough")
            assert cancelled.status is RunStatus.INTERRUPTED
            with pytest.raises(RunInflight):
                await client.delete_run(second.run_id)
            await client.delete_run(second.run_id, force=True)
            with pytest.raises(NotFound):
                await client.get_run(second.run_id)

    asyncio.run(scenario())
