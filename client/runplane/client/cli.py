"""The `runplane` command: manage runs from a shell, and host the server's commands.

    runplane runs create --assistant-id agent --strategy reject
    runplane --output json runs list --status pending running --limit 20
    runplane runs watch --status running       # one line per change, live
    runplane runs wait RUN_ID --timeout 10m    # blocks until the run ends

Exit status: 0 on success, 1 when the server refuses the call, 2 for bad usage.
Every subcommand, the server's `serve` and `db upgrade` included, is a function
`(args) -> int` stored as `args.func`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from runplane.client._cli_output import (
    deletion_json,
    event_json,
    event_line,
    run_details,
    runs_json,
    runs_table,
)
from runplane.client._client import Client
from runplane.client._errors import RunplaneError
from runplane.client._models import CancelAction, MultitaskStrategy, Run, RunStatus

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_PAGE_SIZE = 1000


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error: return the status, don't exit
        return int(exit_.code or 0)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except RunplaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runplane", description="Runs of AI assistants on threads."
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RUNPLANE_ADDRESS", "127.0.0.1:50051"),
        help="server address (default: $RUNPLANE_ADDRESS or 127.0.0.1:50051)",
    )
    parser.add_argument("--output", choices=["table", "json"], default="table")
    parser.add_argument(
        "--deadline", type=float, default=10.0, help="seconds per call (default 10)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_runs_commands(commands)
    _add_server_commands(commands)
    return parser


def _add_server_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`serve` and `db`, when the server is installed alongside (it ships separately)."""
    try:
        from runplane.server.commands import add_commands
    except ImportError:
        return
    add_commands(commands)


def _add_runs_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = commands.add_parser("runs", help="create, inspect and cancel runs")
    actions = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a run")
    create.add_argument("--assistant-id", required=True)
    create.add_argument("--thread-id", help="existing thread (default: a new thread)")
    create.add_argument("--metadata", type=_json_object, help="JSON object")
    create.add_argument("--kwargs", type=_json_object, help="JSON object: the run's arguments")
    create.add_argument(
        "--strategy",
        type=MultitaskStrategy,
        choices=list(MultitaskStrategy),
        help="what to do with the thread's inflight runs (default: enqueue)",
    )
    create.add_argument("--run-id", help="client-chosen run id (UUID)")
    create.add_argument("--request-id", help="idempotency key: a repeat returns the same run")
    create.add_argument("--timeout", type=_duration, help="run time limit, e.g. 90s, 15m, 1h")
    create.set_defaults(func=_create)

    get = actions.add_parser("get", help="show one run")
    get.add_argument("run_id", metavar="RUN_ID")
    get.set_defaults(func=_get)

    listing = actions.add_parser("list", help="list runs, newest first")
    _add_filter_arguments(listing, status_help=f"any of: {', '.join(RunStatus)}")
    listing.add_argument("--order", choices=["asc", "desc"], default="desc")
    listing.add_argument("--limit", type=_positive_int, help="at most this many runs")
    listing.set_defaults(func=_list)

    cancel = actions.add_parser("cancel", help="interrupt (or roll back) an inflight run")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--rollback", action="store_true", help="delete the run instead")
    cancel.add_argument("--reason", default="", help="recorded as the run's cancel_reason")
    cancel.set_defaults(func=_cancel)

    watch = actions.add_parser(
        "watch", help="print each change of matching runs as it happens (Ctrl-C to stop)"
    )
    _add_filter_arguments(watch, status_help="runs in any of these, before or after a change")
    watch.add_argument("--run-id", help="one run: its state, then its changes until it ends")
    watch.add_argument(
        "--start-revision", type=_positive_int, help="replay from this revision (inclusive)"
    )
    watch.add_argument(
        "--initial", action="store_true", help="first print the matching runs as they are"
    )
    watch.set_defaults(func=_watch)

    wait = actions.add_parser("wait", help="wait until a run is terminal, then show it")
    wait.add_argument("run_id", metavar="RUN_ID")
    wait.add_argument("--timeout", type=_duration, help="give up after this long, e.g. 5m")
    wait.set_defaults(func=_wait)

    delete = actions.add_parser("delete", help="delete a run")
    delete.add_argument("run_id", metavar="RUN_ID")
    delete.add_argument("--force", action="store_true", help="even if it is inflight")
    delete.set_defaults(func=_delete)


def _add_filter_arguments(parser: argparse.ArgumentParser, status_help: str) -> None:
    """The RunFilter fields, shared by `runs list` and `runs watch`."""
    parser.add_argument("--thread-id")
    parser.add_argument("--assistant-id")
    parser.add_argument(
        "--status",
        dest="statuses",
        type=RunStatus,
        choices=list(RunStatus),
        nargs="+",
        action="extend",
        metavar="STATUS",
        help=status_help,
    )
    parser.add_argument("--metadata", type=_json_object, help="JSON object runs must contain")


def _create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.create_run(
            args.assistant_id,
            thread_id=args.thread_id,
            metadata=args.metadata,
            kwargs=args.kwargs,
            multitask_strategy=args.strategy,
            run_id=args.run_id,
            request_id=args.request_id,
            timeout=args.timeout,
        )
    return _print_run(args, run)


def _get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.get_run(args.run_id)
    return _print_run(args, run)


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        pager = client.list_runs(
            thread_id=args.thread_id,
            assistant_id=args.assistant_id,
            statuses=args.statuses,
            metadata=args.metadata,
            order_by=f"created_at {args.order}",
            page_size=min(args.limit or 0, _MAX_PAGE_SIZE),
        )
        runs = list(itertools.islice(pager, args.limit))
    if args.output == "json":
        print(runs_json(runs))
    else:
        print(runs_table(runs, datetime.now(UTC)))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    action = CancelAction.ROLLBACK if args.rollback else CancelAction.INTERRUPT
    with _client(args) as client:
        run = client.cancel_run(args.run_id, action=action, reason=args.reason)
    return _print_run(args, run)


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_run(args.run_id, force=args.force)
    print(deletion_json(args.run_id) if args.output == "json" else f"deleted run {args.run_id}")
    return 0


def _watch(args: argparse.Namespace) -> int:
    show = event_json if args.output == "json" else event_line
    with _client(args) as client:
        if args.run_id:
            events = client.watch_run(args.run_id, start_revision=args.start_revision or 0)
        else:
            events = client.watch_runs(
                thread_id=args.thread_id,
                assistant_id=args.assistant_id,
                statuses=args.statuses,
                metadata=args.metadata,
                start_revision=args.start_revision or 0,
                include_initial=args.initial,
            )
        try:
            for event in events:
                print(show(event), flush=True)
        except KeyboardInterrupt:
            return 130
    return 0


def _wait(args: argparse.Namespace) -> int:
    timeout = None if args.timeout is None else args.timeout.total_seconds()
    with _client(args) as client:
        try:
            run = client.wait_run(args.run_id, timeout=timeout)
        except KeyboardInterrupt:
            return 130
    return _print_run(args, run)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.address, default_deadline=args.deadline)


def _print_run(args: argparse.Namespace, run: Run) -> int:
    print(runs_json(run) if args.output == "json" else run_details(run))
    return 0


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, like \'{"key": "value"}\'')
    return value


def _duration(text: str) -> timedelta:
    """`90s`, `15m`, `1h30m`, `500ms`, or a bare number of seconds."""
    try:
        return timedelta(seconds=float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m or 1h30m")
    return timedelta(seconds=sum(float(n) * _DURATION_UNITS[unit] for n, unit in parts))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
