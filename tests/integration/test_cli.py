"""The `runplane` CLI, run in-process through `main([...])` against a real server."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runplane.client.cli import main


class Cli:
    """Runs `runplane --address <server> ...` and keeps what it printed."""

    def __init__(self, address: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.address = address
        self.capsys = capsys
        self.stdout = ""
        self.stderr = ""

    def __call__(self, *argv: str, output: str = "table") -> int:
        self.capsys.readouterr()
        status = main(["--address", self.address, "--output", output, *argv])
        self.stdout, self.stderr = self.capsys.readouterr()
        return status

    def json(self, *argv: str) -> Any:
        assert self(*argv, output="json") == 0, self.stderr
        return json.loads(self.stdout)


@pytest.fixture
def cli(server_address: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(server_address, capsys)


def test_create_prints_json_with_iso_timestamps(cli: Cli) -> None:
    run = cli.json(
        "runs",
        "create",
        "--assistant-id",
        "agent",
        "--metadata",
        '{"team": "search", "n": 1}',
        "--kwargs",
        '{"input": "hi"}',
        "--strategy",
        "reject",
        "--timeout",
        "1m30s",
    )

    assert run["status"] == "pending"
    assert run["multitask_strategy"] == "reject"
    assert run["metadata"] == {"team": "search", "n": 1}
    assert run["kwargs"] == {"input": "hi"}
    assert run["timeout"] == 90
    assert datetime.fromisoformat(run["created_at"]).tzinfo is not None
    assert run["started_at"] is None
    assert cli.json("runs", "get", run["run_id"]) == run


def test_get_prints_the_run_field_by_field(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent", "--metadata", '{"n": 1}')

    assert cli("runs", "get", run["run_id"]) == 0

    fields = dict(line.split(":", 1) for line in cli.stdout.splitlines())
    assert fields["run_id"].strip() == run["run_id"]
    assert fields["status"].strip() == "pending"
    assert fields["metadata"].strip() == '{"n": 1}'
    values_at = {
        line.index(value.strip())
        for line, value in zip(cli.stdout.splitlines(), fields.values(), strict=True)
    }
    assert len(values_at) == 1, "values are aligned in one column"


def test_list_prints_an_aligned_table_of_the_thread(cli: Cli) -> None:
    first = cli.json("runs", "create", "--assistant-id", "agent")
    second = cli.json(
        "runs", "create", "--assistant-id", "agent", "--thread-id", first["thread_id"]
    )

    assert cli("runs", "list", "--thread-id", first["thread_id"]) == 0

    header, *rows = cli.stdout.splitlines()
    assert header.split() == ["RUN_ID", "THREAD_ID", "ASSISTANT", "STATUS", "CREATED", "REVISION"]
    assert [row.split()[0] for row in rows] == [second["run_id"], first["run_id"]]
    assert all(row.index("pending") == header.index("STATUS") for row in rows)
    assert all(len(line) <= 120 for line in cli.stdout.splitlines())


def test_list_filters_orders_and_limits(cli: Cli) -> None:
    assistant = f"assistant-{uuid.uuid4()}"
    created = [
        cli.json("runs", "create", "--assistant-id", assistant, "--metadata", f'{{"i": {i}}}')
        for i in range(3)
    ]
    cli("runs", "cancel", created[1]["run_id"])

    def ids(*argv: str) -> list[str]:
        return [
            run["run_id"] for run in cli.json("runs", "list", "--assistant-id", assistant, *argv)
        ]

    assert ids() == [run["run_id"] for run in reversed(created)]
    assert ids("--order", "asc", "--limit", "2") == [run["run_id"] for run in created[:2]]
    assert ids("--status", "interrupted") == [created[1]["run_id"]]
    assert ids("--status", "pending", "running") == [created[2]["run_id"], created[0]["run_id"]]
    assert ids("--metadata", '{"i": 2}') == [created[2]["run_id"]]


def test_cancel_records_the_reason_then_refuses_a_finished_run(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")

    cancelled = cli.json("runs", "cancel", run["run_id"], "--reason", "user pressed stop")

    assert (cancelled["status"], cancelled["cancel_reason"]) == ("interrupted", "user pressed stop")
    assert cli("runs", "cancel", run["run_id"]) == 1
    assert cli.stderr.startswith("error: FAILED_PRECONDITION: ")
    assert cli.stderr.rstrip().endswith("(reason RUN_TERMINAL)")


def test_cancel_rollback_deletes_the_run(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")

    assert cli.json("runs", "cancel", run["run_id"], "--rollback")["run_id"] == run["run_id"]

    assert cli("runs", "get", run["run_id"]) == 1
    assert cli.stdout == ""
    assert cli.stderr.startswith(f"error: NOT_FOUND: run {run['run_id']} not found")


def test_delete_needs_force_for_an_inflight_run(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")

    assert cli("runs", "delete", run["run_id"]) == 1
    assert "(reason RUN_INFLIGHT)" in cli.stderr
    assert cli("runs", "delete", run["run_id"], "--force") == 0
    assert cli.stdout == f"deleted run {run['run_id']}\n"
    assert cli("runs", "delete", run["run_id"], output="json") == 1


def test_reject_on_a_busy_thread_exits_1_with_thread_busy(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")

    status = cli(
        "runs",
        "create",
        "--assistant-id",
        "agent",
        "--thread-id",
        run["thread_id"],
        "--strategy",
        "reject",
    )

    assert status == 1
    assert "FAILED_PRECONDITION" in cli.stderr
    assert "(reason THREAD_BUSY)" in cli.stderr


def test_address_defaults_to_the_environment(
    server_address: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPLANE_ADDRESS", server_address)

    assert main(["--output", "json", "runs", "create", "--assistant-id", "agent"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "pending"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["runs"],
        ["runs", "create"],
        ["runs", "create", "--assistant-id", "a", "--metadata", "{not json"],
        ["runs", "create", "--assistant-id", "a", "--kwargs", "[1, 2]"],
        ["runs", "create", "--assistant-id", "a", "--strategy", "queue"],
        ["runs", "create", "--assistant-id", "a", "--timeout", "soon"],
        ["runs", "list", "--status", "done"],
        ["runs", "list", "--limit", "0"],
        ["--output", "yaml", "runs", "list"],
    ],
)
def test_usage_errors_exit_2_without_calling_the_server(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--address", "127.0.0.1:1", *argv]) == 2
    assert "usage: runplane" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "list", "--help"]) == 0
    assert "--thread-id" in capsys.readouterr().out


def test_server_commands_are_dispatched_through_the_same_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "runplane.db"

    assert main(["db", "upgrade", "--database-url", f"sqlite:///{database}"]) == 0
    assert database.exists()
    assert main(["serve", "--help"]) == 0
    assert "--database-url" in capsys.readouterr().out
