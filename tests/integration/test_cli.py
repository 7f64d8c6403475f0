"""The `runplane` executable, run as a child process against a real server.

The CLI is a client, so one backend is enough here: the module runs on SQLite only
(the server tests cover PostgreSQL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runplane.client import Client, RunRetryPolicy, RunStatus
from runplane.server.config import ServerConfig
from tests.support.serve_process import free_port
from tests.support.servers import ServerThread

RUNPLANE = str(Path(sys.executable).parent / "runplane")
UNREACHABLE = "127.0.0.1:1"


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without RUNPLANE_* variables, plus `variables`."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RUNPLANE_")}
    return {**clean, **variables}


class Cli:
    """Runs `runplane ...` with RUNPLANE_ADDRESS set to the test server."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.stdout = ""
        self.stderr = ""

    def __call__(self, *argv: str, stdin: str | None = None, **variables: str) -> int:
        done = subprocess.run(
            [RUNPLANE, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            env=environment(**{"RUNPLANE_ADDRESS": self.address, **variables}),
            check=False,
        )
        self.stdout, self.stderr = done.stdout, done.stderr
        return done.returncode

    def json(self, *argv: str, stdin: str | None = None) -> Any:
        assert self(*argv, "--output", "json", stdin=stdin) == 0, self.stderr
        return json.loads(self.stdout)

    def background(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [RUNPLANE, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(RUNPLANE_ADDRESS=self.address),
        )


@pytest.fixture
def cli(server_address: str) -> Cli:
    return Cli(server_address)


@pytest.fixture
def client(server_address: str) -> Iterator[Client]:
    with Client(server_address) as client:
        yield client


def wait_for_watchers(server: ServerThread, count: int) -> None:
    """Until the server has `count` open watch streams (the CLI's started)."""
    deadline = time.monotonic() + 20
    while server.running.hub.watcher_count < count:
        assert time.monotonic() < deadline, "the CLI's watch did not open"
        time.sleep(0.05)


def finish(process: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


# -- create, get, list ----------------------------------------------------------------------


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
        "REJECT",
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


def test_create_reads_metadata_and_kwargs_from_a_file_and_stdin(cli: Cli, tmp_path: Path) -> None:
    document = tmp_path / "metadata.json"
    document.write_text('{"from": "file"}')

    run = cli.json(
        "runs",
        "create",
        "--assistant-id",
        "agent",
        "--metadata",
        f"@{document}",
        "--kwargs",
        "-",
        stdin='{"from": "stdin"}',
    )

    assert (run["metadata"], run["kwargs"]) == ({"from": "file"}, {"from": "stdin"})
    both = ("runs", "create", "--assistant-id", "a", "--metadata", "@-", "--kwargs", "-")
    assert cli(*both, stdin="{}") == 2
    assert "standard input can feed only one flag" in cli.stderr
    assert cli("runs", "create", "--assistant-id", "a", "--kwargs", f"@{tmp_path}/none") == 2
    assert "cannot read" in cli.stderr


def test_create_start_after_takes_a_time_or_a_duration_from_now(cli: Cli) -> None:
    before = datetime.now(UTC)
    later = cli.json("runs", "create", "--assistant-id", "agent", "--start-after", "10m")
    fixed = cli.json(
        "runs", "create", "--assistant-id", "agent", "--start-after", "2031-01-31T09:00:00Z"
    )

    start_after = datetime.fromisoformat(later["start_after"])
    assert (
        before + timedelta(minutes=10) <= start_after <= datetime.now(UTC) + timedelta(minutes=10)
    )
    assert datetime.fromisoformat(fixed["start_after"]) == datetime(2031, 1, 31, 9, tzinfo=UTC)
    assert cli("runs", "create", "--assistant-id", "a", "--start-after", "soonish") == 2
    assert "neither a time like" in cli.stderr


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

    newest_first = [run["run_id"] for run in reversed(created)]
    assert ids() == newest_first
    assert ids("--order", "asc", "--limit", "2") == [run["run_id"] for run in created[:2]]
    assert ids("--status", "interrupted") == [created[1]["run_id"]]
    pending = [created[2]["run_id"], created[0]["run_id"]]
    assert ids("--status", "pending,running") == pending
    assert ids("--status", "PENDING", "--status", "running") == pending
    assert ids("--status", "pending,interrupted") == newest_first
    assert ids("--metadata", '{"i": 2}') == [created[2]["run_id"]]


def test_list_into_a_closed_pipe_exits_quietly(cli: Cli, client: Client) -> None:
    assistant = f"many-{uuid.uuid4()}"
    for _ in range(150):  # ~130 KiB of JSON: more than a pipe holds
        client.create_run(assistant, metadata={"padding": "x" * 300})
    listing = cli.background("runs", "list", "--assistant-id", assistant, "-o", "json")
    assert listing.stdout is not None

    assert listing.stdout.readline() == "[\n"
    listing.stdout.close()  # as `| head -1` does once it has its line

    code, _, stderr = finish(listing)
    assert code in (0, 1)  # 1 when the broken pipe shows before the last write
    assert stderr == ""


def test_watch_into_a_closed_pipe_exits_at_the_next_change(cli: Cli, client: Client) -> None:
    run = client.create_run("agent")
    # From the next revision: the change is delivered even if it comes before the stream.
    after = str(run.revision + 1)
    watcher = cli.background(
        "runs", "watch", "--thread-id", run.thread_id, "--start-revision", after
    )
    assert watcher.stdout is not None
    assert watcher.stdout.readline().startswith("REVISION")
    watcher.stdout.close()

    client.cancel_run(run.run_id)

    assert finish(watcher) == (1, "", "")


# -- global flags -----------------------------------------------------------------------------


def test_global_flags_are_accepted_anywhere_and_the_last_one_wins(
    cli: Cli, server_address: str
) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")
    get = ("runs", "get", run["run_id"])

    for argv in (
        ["--output", "json", *get],
        ["runs", "-o", "json", "get", run["run_id"]],
        [*get, "--output", "json"],
        ["-o", "table", *get, "-o", "json"],
    ):
        assert cli(*argv) == 0, argv
        assert json.loads(cli.stdout)["run_id"] == run["run_id"], argv
    assert cli(*get, "--address", server_address, RUNPLANE_ADDRESS=UNREACHABLE) == 0
    assert cli("--address", server_address, *get, "--address", UNREACHABLE) == 1


def test_global_flags_read_their_environment_twins(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")

    assert cli("runs", "get", run["run_id"], RUNPLANE_OUTPUT="json") == 0
    assert json.loads(cli.stdout)["run_id"] == run["run_id"]
    assert cli("runs", "get", run["run_id"], "-o", "table", RUNPLANE_OUTPUT="json") == 0
    assert cli.stdout.startswith("run_id:")
    assert cli("runs", "get", run["run_id"], RUNPLANE_DEADLINE="soon") == 2
    assert "'soon' is not a duration" in cli.stderr


# -- update, cancel, delete -------------------------------------------------------------------


def test_update_replaces_metadata_and_kwargs_at_the_expected_revision(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent", "--metadata", '{"a": 1}')

    updated = cli.json(
        "runs",
        "update",
        run["run_id"],
        "--metadata",
        '{"b": 2}',
        "--kwargs",
        '{"input": "x"}',
        "--expected-revision",
        str(run["revision"]),
    )

    assert (updated["metadata"], updated["kwargs"]) == ({"b": 2}, {"input": "x"})
    assert updated["revision"] > run["revision"]
    stale = ("--expected-revision", str(run["revision"]))
    assert cli("runs", "update", run["run_id"], "--metadata", "{}", *stale) == 1
    assert "(reason REVISION_MISMATCH)" in cli.stderr
    assert cli("runs", "update", run["run_id"]) == 2
    assert "give --metadata, --kwargs or both" in cli.stderr


def test_cancel_records_the_reason_then_refuses_a_finished_run(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")

    cancelled = cli.json("runs", "cancel", run["run_id"], "--reason", "user pressed stop")

    assert (cancelled["status"], cancelled["cancel_reason"]) == ("interrupted", "user pressed stop")
    assert cli("runs", "cancel", run["run_id"]) == 1
    assert cli.stderr.startswith("error: FAILED_PRECONDITION: ")
    assert cli.stderr.rstrip().endswith("(reason RUN_TERMINAL)")
    assert cli.stderr.count("\n") == 1


def test_cancel_rollback_says_the_run_was_deleted(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")

    rolled_back = cli.json("runs", "cancel", run["run_id"], "--rollback")

    assert (rolled_back["run_id"], rolled_back["deleted"]) == (run["run_id"], True)
    assert rolled_back["status"] == "pending", "its last state, marked deleted"
    assert cli("runs", "get", run["run_id"]) == 1
    assert cli.stderr.startswith(f"error: NOT_FOUND: run {run['run_id']} not found")


def test_cancel_rollback_table_leads_with_the_deletion(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")

    assert cli("runs", "cancel", run["run_id"], "--rollback") == 0

    first, *details = cli.stdout.splitlines()
    assert first == f"deleted run {run['run_id']}; its last state:"
    assert f"run_id:             {run['run_id']}" in details


def test_delete_needs_force_for_an_inflight_run(cli: Cli) -> None:
    run = cli.json("runs", "create", "--assistant-id", "agent")

    assert cli("runs", "delete", run["run_id"]) == 1
    assert "(reason RUN_INFLIGHT)" in cli.stderr
    assert cli("runs", "delete", run["run_id"], "--force") == 0
    assert cli.stdout == f"deleted run {run['run_id']}\n"
    assert cli("runs", "delete", run["run_id"], "-o", "json") == 1


def test_cancel_all_of_a_thread_prints_how_many_it_cancelled(cli: Cli, client: Client) -> None:
    thread = cli.json("runs", "create", "--assistant-id", "agent")["thread_id"]
    for _ in range(2):
        cli.json("runs", "create", "--assistant-id", "agent", "--thread-id", thread)
    other = cli.json("runs", "create", "--assistant-id", "agent")

    assert cli("runs", "cancel", "--thread-id", thread, "--all", "--reason", "bulk") == 0

    assert cli.stdout.startswith("cancelled 3 runs (revision ")
    runs = list(client.list_runs(thread_id=thread))
    assert {(run.status, run.cancel_reason) for run in runs} == {(RunStatus.INTERRUPTED, "bulk")}
    assert max(run.revision for run in runs) == int(cli.stdout.split()[-1].rstrip(")"))
    assert client.get_run(other["run_id"]).status is RunStatus.PENDING
    again = cli.json("runs", "cancel", "--all", "--thread-id", thread)
    assert again["count"] == 0
    assert again["revision"] >= max(run.revision for run in runs)


def test_cancel_all_of_an_assistant_rolls_back_and_says_so(cli: Cli, assistant: str) -> None:
    created = [cli.json("runs", "create", "--assistant-id", assistant) for _ in range(2)]

    done = cli.json("runs", "cancel", "--all", "--assistant-id", assistant, "--rollback")

    assert done["count"] == 2
    for run in created:
        assert cli("runs", "get", run["run_id"]) == 1
    assert cli("runs", "cancel", "--all", "--assistant-id", assistant, "--rollback") == 0
    assert cli.stdout.startswith("deleted 0 runs (revision ")


def test_complete_ends_a_claimed_run_with_its_result(
    cli: Cli, client: Client, assistant: str
) -> None:
    run = cli.json("runs", "create", "--assistant-id", assistant)
    assert client.claim_run("w1", assistant_ids=[assistant]) is not None

    done = cli.json(
        "runs",
        "complete",
        run["run_id"],
        "--worker-id",
        "w1",
        "--status",
        "success",
        "--result",
        '{"answer": 42}',
        "--metadata",
        '{"by": "cli"}',
    )

    assert (done["status"], done["result"], done["metadata"]) == (
        "success",
        {"answer": 42},
        {"by": "cli"},
    )
    assert client.wait_run(run["run_id"], timeout=5).result == {"answer": 42}
    assert cli("runs", "complete", run["run_id"], "--worker-id", "w1", "--status", "error") == 1
    assert "(reason LEASE_LOST)" in cli.stderr


def test_complete_with_an_error_records_it(cli: Cli, client: Client, assistant: str) -> None:
    run = cli.json("runs", "create", "--assistant-id", assistant)
    assert client.claim_run("w1", assistant_ids=[assistant]) is not None

    done = cli.json(
        "runs",
        "complete",
        run["run_id"],
        "--worker-id",
        "w1",
        "--status",
        "ERROR",
        "--error",
        "model overloaded",
        "--retryable",
        "--result",
        '{"partial": [1, 2]}',
    )

    assert (done["status"], done["error"], done["result"]) == (
        "error",
        "model overloaded",
        {"partial": [1, 2]},
    )


def test_create_sets_priority_and_retry_policy(cli: Cli) -> None:
    run = cli.json(
        "runs",
        "create",
        "--assistant-id",
        "agent",
        "--priority",
        "8",
        "--retry-max-attempts",
        "4",
        "--retry-initial-backoff",
        "2s",
        "--retry-maximum-backoff",
        "1m",
    )
    plain = cli.json("runs", "create", "--assistant-id", "agent")

    assert run["priority"] == 8
    assert run["retry_policy"] == {
        "max_attempts": 4,
        "initial_backoff": 2.0,
        "backoff_coefficient": 0.0,
        "maximum_backoff": 60.0,
    }
    assert (plain["priority"], plain["retry_policy"]) == (5, None)
    assert cli("runs", "get", run["run_id"]) == 0
    assert "priority:" in cli.stdout


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


# -- stats ----------------------------------------------------------------------------------


def test_stats_prints_queues_and_inflight_runs_of_the_namespace(cli: Cli, client: Client) -> None:
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    first = client.create_run("agent", namespace=namespace)
    client.create_run("agent", namespace=namespace, thread_id=first.thread_id)
    client.create_run("agent", namespace=namespace)
    client.create_run("helper", namespace=namespace)
    assert client.claim_run("w", namespace=namespace, assistant_ids=["helper"]) is not None

    assert cli("stats", "-n", namespace) == 0
    queues, runs, footer = cli.stdout.rstrip("\n").split("\n\n")
    header, *rows = queues.splitlines()
    assert header.split() == ["NAMESPACE", "ASSISTANT", "DEPTH", "OLDEST"]
    assert [row.split()[:3] for row in rows] == [[namespace, "agent", "2"]]
    assert [line.split() for line in runs.splitlines()] == [
        ["NAMESPACE", "STATUS", "RUNS"],
        [namespace, "pending", "3"],
        [namespace, "running", "1"],
    ]
    assert footer.startswith("revision ")

    document = cli.json("--namespace", namespace, "stats")
    [queue] = document["queues"]
    assert (queue["namespace"], queue["assistant_id"], queue["depth"]) == (namespace, "agent", 2)
    assert queue["oldest_age"] > 0
    assert document["runs"] == [
        {"namespace": namespace, "status": "pending", "count": 3},
        {"namespace": namespace, "status": "running", "count": 1},
    ]
    assert document["revision"] >= first.revision
    assert set(document) == {"queues", "runs", "open_watches", "revision", "compact_revision"}


def test_stats_of_a_quiet_namespace_says_so(cli: Cli) -> None:
    assert cli("stats", "-n", f"quiet-{uuid.uuid4().hex[:8]}") == 0
    assert cli.stdout.startswith("no claimable runs\n\nno inflight runs\n\nrevision ")


# -- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "Usage: runplane"),
        (["runs"], "Usage: runplane runs"),
        (["runs", "create"], "Missing option '--assistant-id'"),
        (["runs", "create", "--assistant-id", "a", "--metadata", "{not json"], "not valid JSON"),
        (["runs", "create", "--assistant-id", "a", "--kwargs", "[1, 2]"], "must be a JSON object"),
        (
            ["runs", "create", "--assistant-id", "a", "--strategy", "rejekt"],
            "'rejekt' is not one of 'reject', 'interrupt', 'rollback', 'enqueue'",
        ),
        (["runs", "create", "--assistant-id", "a", "--timeout", "soon"], "is not a duration"),
        (
            ["runs", "list", "--status", "pending,done"],
            "expected one of: pending, running, error, success, timeout, interrupted",
        ),
        (["runs", "list", "--limit", "0"], "'0' is not a positive integer"),
        (["runs", "list", "--output", "yaml"], "'yaml' is not one of 'table', 'json'"),
        (["runs", "wait", "x", "--timeout", "-1s"], "is not a duration"),
        (["runs", "create", "--assistant-id", "a", "--priority", "10"], "0<=x<=9"),
        (["runs", "cancel"], "give the RUN_ID to cancel, or --all with a filter"),
        (["runs", "cancel", "--all"], "--all needs --thread-id, --assistant-id or --metadata"),
        (["runs", "cancel", "--all", "--status", "pending"], "--all needs --thread-id"),
        (["runs", "cancel", "x", "--all", "--assistant-id", "a"], "give RUN_ID or --all, not both"),
        (["runs", "cancel", "x", "--assistant-id", "a"], "the filter flags go with --all"),
        (["runs", "complete", "x", "--status", "success"], "Missing option '--worker-id'"),
        (
            ["runs", "complete", "x", "--worker-id", "w", "--status", "interrupted"],
            "'interrupted' is not one of 'success', 'error'",
        ),
        (
            ["runs", "complete", "x", "--worker-id", "w", "--status", "success", "--retryable"],
            "--error and --retryable go with --status error",
        ),
    ],
)
def test_usage_errors_exit_2_without_calling_the_server(argv: list[str], says: str) -> None:
    cli = Cli(UNREACHABLE)
    assert cli(*argv) == 2
    assert says in cli.stderr
    assert "Traceback" not in cli.stderr


def test_help_and_version_exit_0() -> None:
    cli = Cli(UNREACHABLE)
    assert cli("runs", "list", "--help") == 0
    assert "--thread-id" in cli.stdout
    assert "RUNPLANE_OUTPUT" in cli.stdout
    assert cli("--version") == 0
    assert cli.stdout.startswith("runplane 0.")


def test_unreachable_server_fails_fast_with_one_line() -> None:
    cli = Cli(UNREACHABLE)
    for argv in (
        ["runs", "list"],
        ["runs", "watch"],
        ["runs", "watch", "--run-id", str(uuid.uuid4())],
        ["runs", "wait", str(uuid.uuid4())],
    ):
        assert cli(*argv) == 1, argv  # before the fix, watch and wait hung (timeout)
        assert cli.stderr.startswith("error: UNAVAILABLE: "), argv
        assert cli.stderr.count("\n") == 1, cli.stderr


def test_server_commands_are_dispatched_through_the_same_cli(tmp_path: Path) -> None:
    cli = Cli(UNREACHABLE)
    database = tmp_path / "runplane.db"

    assert cli("db", "upgrade", "--database-url", f"sqlite:///{database}") == 0
    assert database.exists()
    assert cli("serve", "--help") == 0
    assert "RUNPLANE_DATABASE_URL" in cli.stdout
    assert "RUNPLANE_RUN_RETENTION" in cli.stdout
    assert cli("serve", "--event-retention", "1x") == 2
    assert "'1x' is not a duration" in cli.stderr
    assert cli("serve", "--max-attempts", "0") == 2
    assert cli("serve", "--run-retention", "0s") == 2
    assert "'0s' is not a positive duration" in cli.stderr
    assert cli("serve", "--run-retention", "30 days") == 2
    assert cli("serve", "--log-level", "loud") == 2


# -- watch and wait -------------------------------------------------------------------------


def test_watch_prints_a_header_then_a_line_per_change(cli: Cli, client: Client) -> None:
    run = client.create_run("agent")
    watcher = cli.background("runs", "watch", "--run-id", run.run_id)
    assert watcher.stdout is not None
    assert watcher.stdout.readline().split() == [
        "REVISION",
        "EVENT",
        "RUN_ID",
        "STATUS",
        "ASSISTANT",
    ]
    assert watcher.stdout.readline().split() == [
        str(run.revision),
        "initial",
        run.run_id,
        "pending",
        "agent",
    ]

    client.cancel_run(run.run_id)

    code, rest, stderr = finish(watcher)
    assert (code, stderr) == (0, "")
    assert [line.split()[:4] for line in rest.splitlines()] == [
        [str(run.revision + 1), "updated", run.run_id, "interrupted"]
    ]


def test_watch_json_lines_from_a_revision(cli: Cli, client: Client) -> None:
    run = client.create_run("agent")
    client.cancel_run(run.run_id)

    argv = ("runs", "watch", "--run-id", run.run_id, "--start-revision", str(run.revision))
    assert cli(*argv, "-o", "json") == 0

    documents = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [(d["type"], d["revision"], d["run"]["status"]) for d in documents] == [
        ("created", run.revision, "pending"),
        ("updated", run.revision + 1, "interrupted"),
    ]


def test_watch_stops_quietly_on_ctrl_c(cli: Cli, client: Client) -> None:
    run = client.create_run("agent")
    watcher = cli.background("runs", "watch", "--thread-id", run.thread_id, "--initial")
    assert watcher.stdout is not None
    watcher.stdout.readline()
    assert run.run_id in watcher.stdout.readline()

    watcher.send_signal(signal.SIGINT)

    code, _, stderr = finish(watcher)
    assert code == 130
    assert "Traceback" not in stderr


def _ended_run(client: Client, status: RunStatus) -> str:
    """A run of a fresh assistant, claimed and ended with `status`."""
    assistant = f"wait-{uuid.uuid4()}"
    timeout = 0.2 if status is RunStatus.TIMEOUT else None
    run = client.create_run(assistant, timeout=timeout)
    if status is RunStatus.INTERRUPTED:
        client.cancel_run(run.run_id)
        return run.run_id
    claimed = client.claim_run("w", assistant_ids=[assistant])
    assert claimed is not None
    if status is RunStatus.TIMEOUT:
        final = client.wait_run(run.run_id, timeout=15)  # the sweeper, within a second or two
        assert final.status is RunStatus.TIMEOUT
    else:
        client.complete_run(run.run_id, "w", status, error="it broke")
    return run.run_id


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (RunStatus.SUCCESS, 0),
        (RunStatus.ERROR, 3),
        (RunStatus.TIMEOUT, 4),
        (RunStatus.INTERRUPTED, 5),
    ],
)
def test_wait_exit_status_says_how_the_run_ended(
    cli: Cli, client: Client, status: RunStatus, code: int
) -> None:
    run_id = _ended_run(client, status)

    assert cli("runs", "wait", run_id, "-o", "json") == code, cli.stderr

    assert json.loads(cli.stdout)["status"] == status.value


def test_get_and_wait_show_the_result_and_the_retry_policy(cli: Cli, client: Client) -> None:
    assistant = f"result-{uuid.uuid4()}"
    policy = RunRetryPolicy(max_attempts=4, initial_backoff=timedelta(seconds=2))
    run = client.create_run(assistant, retry_policy=policy, priority=8)
    assert client.claim_run("w", assistant_ids=[assistant]) is not None
    client.complete_run(run.run_id, "w", RunStatus.SUCCESS, result={"answer": 42, "parts": ["a"]})

    waited = cli.json("runs", "wait", run.run_id)
    assert waited["result"] == {"answer": 42, "parts": ["a"]}
    assert waited["priority"] == 8
    assert waited["retry_policy"] == {
        "max_attempts": 4,
        "initial_backoff": 2.0,
        "backoff_coefficient": 0.0,
        "maximum_backoff": None,
    }
    assert cli("runs", "get", run.run_id) == 0
    fields = dict(line.split(":", 1) for line in cli.stdout.splitlines())
    assert json.loads(fields["result"]) == {"answer": 42, "parts": ["a"]}  # a map: any order
    assert fields["priority"].strip() == "8"


def test_wait_blocks_until_the_run_ends(cli: Cli, client: Client) -> None:
    assistant = f"wait-{uuid.uuid4()}"
    run = client.create_run(assistant)
    waiter = cli.background("runs", "wait", run.run_id)
    time.sleep(0.5)
    assert waiter.poll() is None
    assert client.claim_run("w", assistant_ids=[assistant]) is not None

    client.complete_run(run.run_id, "w", RunStatus.SUCCESS)

    code, stdout, stderr = finish(waiter)
    assert (code, stderr) == (0, "")
    assert "status:             success" in stdout


def test_wait_for_a_run_deleted_meanwhile_exits_5(
    cli: Cli, client: Client, server: ServerThread
) -> None:
    run = client.create_run("agent")
    watching = server.running.hub.watcher_count
    waiter = cli.background("runs", "wait", run.run_id)
    wait_for_watchers(server, watching + 1)

    client.cancel_run(run.run_id, action="rollback")

    code, stdout, stderr = finish(waiter)
    assert (code, stdout) == (5, "")
    assert stderr == f"error: run {run.run_id} was deleted while pending\n"


def test_wait_gives_up_after_its_timeout_with_124_and_an_unknown_run_is_1(
    cli: Cli, client: Client
) -> None:
    run = client.create_run("agent")

    assert cli("runs", "wait", run.run_id, "--timeout", "500ms") == 124
    assert cli.stderr == f"error: run {run.run_id} had not ended after 0:00:00.500000\n"
    assert cli("runs", "wait", str(uuid.uuid4())) == 1
    assert "(reason RUN_NOT_FOUND)" in cli.stderr


def test_watch_and_wait_say_reconnecting_once_and_resume(tmp_path: Path) -> None:
    config = ServerConfig(
        address=f"127.0.0.1:{free_port()}", database_url=f"sqlite:///{tmp_path / 'runs.db'}"
    )
    cli = Cli(config.address)
    server = ServerThread(config).start()
    try:
        with Client(config.address) as client:
            run = client.create_run("agent")
        watcher = cli.background("runs", "watch", "--thread-id", run.thread_id, "--initial")
        waiter = cli.background("runs", "wait", run.run_id)
        wait_for_watchers(server, 2)

        server.stop()  # each stream gets UNAVAILABLE; both retry, and say so once
        time.sleep(1)
        server = ServerThread(config).start()
        with Client(config.address) as client:
            client.cancel_run(run.run_id)

        assert watcher.stdout is not None
        lines = [watcher.stdout.readline().split() for _ in range(3)]
        assert [line[1:4] for line in lines[1:]] == [
            ["initial", run.run_id, "pending"],
            ["updated", run.run_id, "interrupted"],
        ]
        watcher.send_signal(signal.SIGINT)
        assert finish(watcher)[2] == "reconnecting...\n"
        code, stdout, stderr = finish(waiter)
        assert (code, stderr) == (5, "reconnecting...\n")
        assert "status:             interrupted" in stdout
    finally:
        server.stop()


# -- completion -----------------------------------------------------------------------------


def complete_in_bash(words: str) -> list[str]:
    """What bash offers for `words` (the last one being completed) with the script
    `runplane completion bash` prints."""
    script = f"""
        source <({RUNPLANE} completion bash)
        COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
        [[ "{words}" == *" " ]] && COMP_WORDS+=("") && COMP_CWORD=${{#COMP_WORDS[@]}}-1
        _runplane_completion {RUNPLANE}
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment(RUNPLANE_ADDRESS=UNREACHABLE),
        check=True,
    )
    return done.stdout.split()


def test_bash_completion_offers_commands_flags_and_values() -> None:
    assert complete_in_bash("runplane ru") == ["runs"]
    assert complete_in_bash("runplane runs c") == ["cancel", "complete", "create"]
    assert "--start-after" in complete_in_bash("runplane runs create --st")
    assert complete_in_bash("runplane runs create --strategy r") == ["reject", "rollback"]
    assert complete_in_bash("runplane runs list --status pending,ru") == ["pending,running"]


def test_completion_scripts_for_zsh_and_fish() -> None:
    cli = Cli(UNREACHABLE)
    assert cli("completion", "zsh") == 0
    assert "compdef _runplane_completion runplane" in cli.stdout
    assert cli("completion", "fish") == 0
    assert "complete --no-files --command runplane" in cli.stdout
    assert cli("completion", "tcsh") == 2


def test_run_ids_complete_from_the_server(cli: Cli, client: Client) -> None:
    run = client.create_run("agent")
    done = subprocess.run(
        [RUNPLANE],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment(
            RUNPLANE_ADDRESS=cli.address,
            _RUNPLANE_COMPLETE="bash_complete",
            COMP_WORDS=f"runplane runs get {run.run_id[:8]}",
            COMP_CWORD="3",
        ),
        check=True,
    )
    assert f"plain,{run.run_id}" in done.stdout.splitlines()
