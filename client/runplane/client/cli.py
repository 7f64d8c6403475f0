"""The `runplane` command: manage runs from a shell, and host the server's commands.

    runplane runs create --assistant-id agent --strategy reject --kwargs @input.json
    runplane runs list --status pending,running --limit 20 -o json
    runplane runs watch --status running       # one line per change, live
    runplane runs wait RUN_ID --timeout 10m    # blocks until the run ends
    runplane runs cancel --all --thread-id T   # every inflight run of the thread

The global flags (`ClientSettings`) are accepted anywhere on the command line. The
server's `serve` and `db` commands plug in through the `runplane.commands` entry
points: the client never imports the server. docs/cli.md is the reference.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

# grpc's core reads its log level once, when grpc is first imported (below), and
# until told otherwise prints even its informational lines ("Got goaway" when a
# server restarts) on stderr, where the CLI speaks to people. Errors only, unless the
# user asks for more.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import click
from click.core import ParameterSource

from runplane.client._channels import TLSConfig
from runplane.client._cli_output import (
    cancellation_json,
    deletion_json,
    event_header,
    event_json,
    event_line,
    rollback_details,
    rollback_json,
    run_details,
    runs_json,
    runs_table,
    stats_json,
    stats_table,
)
from runplane.client._client import Client
from runplane.client._errors import DeadlineExceeded, RunDeleted, RunplaneError
from runplane.client._models import (
    CancelAction,
    MultitaskStrategy,
    Run,
    RunEvent,
    RunRetryPolicy,
    RunStatus,
)
from runplane.client.cli_support import (
    CommandError,
    ParamType,
    Parsed,
    add_flag,
    flag,
    flag_fields,
    positive_int,
    seconds,
    switch,
)
from runplane.client.durations import parse_duration

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

_Function = TypeVar("_Function", bound=Callable[..., Any])

_MAX_PAGE_SIZE = 1000
_GLOBALS = "runplane.globals"
PLUGIN_GROUP = "runplane.commands"

# `runs wait`: the exit status says how the run ended (docs/cli.md, "Exit status").
WAIT_EXIT = {
    RunStatus.SUCCESS: 0,
    RunStatus.ERROR: 3,
    RunStatus.TIMEOUT: 4,
    RunStatus.INTERRUPTED: 5,
}
WAIT_DELETED = 5
WAIT_GAVE_UP = 124
"""`--timeout` expired with the run still inflight: the status of timeout(1)."""
INTERRUPTED_BY_USER = 130


def _readable_file(text: str) -> str:
    try:
        with open(text, "rb"):
            pass
    except OSError as error:
        raise ValueError(f"cannot read {text}: {error.strerror}") from None
    return text


@dataclass(frozen=True)
class ClientSettings:
    """The global flags of the client commands, accepted anywhere on the command line.

    A new one is one field here (see `cli_support.flag`), used in `client()`.
    """

    address: str = flag("127.0.0.1:50051", metavar="HOST:PORT", help="Server address.")
    output: str = flag(
        "table", short="-o", choices=("table", "json"), help="Output format: table or json."
    )
    deadline: float = flag(
        "10s", parse=seconds, metavar="DURATION", help="Time limit of each call, e.g. 500ms, 1m."
    )
    namespace: str | None = flag(
        None,
        short="-n",
        metavar="NAMESPACE",
        help="Namespace to create runs in, list and watch (default: runs are created in "
        "`default`; listings and watches cover every namespace you may read).",
    )
    tls: bool = switch(help="Connect over TLS, trusting the system's CAs.")
    tls_ca: str | None = flag(
        None,
        parse=_readable_file,
        metavar="FILE",
        help="PEM CA certificates to trust instead of the system's (implies --tls).",
    )
    tls_cert: str | None = flag(
        None,
        parse=_readable_file,
        metavar="FILE",
        help="PEM client certificate, for servers that require one (with --tls-key).",
    )
    tls_key: str | None = flag(
        None, parse=_readable_file, metavar="FILE", help="PEM private key of --tls-cert."
    )
    token: str | None = flag(
        None,
        metavar="TOKEN",
        help="Bearer token sent with every call; prefer the variable, which `ps` does not "
        "show. Over plaintext only to a loopback address.",
    )

    def client(self, deadline: float | None = None) -> Client:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise click.UsageError("--tls-cert and --tls-key go together")
        tls: bool | TLSConfig = self.tls
        if self.tls_ca or self.tls_cert:
            tls = TLSConfig(ca_file=self.tls_ca, cert_file=self.tls_cert, key_file=self.tls_key)
        try:
            return Client(
                self.address,
                default_deadline=deadline or self.deadline,
                tls=tls,
                token=self.token,
                namespace=self.namespace,
            )
        except ValueError as error:  # a token for plaintext beyond loopback, say
            raise click.UsageError(str(error)) from None

    @property
    def json(self) -> bool:
        return self.output == "json"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Keep a global flag's value for the command that runs: given on the command line
    at any level (the last one wins), else from its variable or default."""
    assert param.name is not None
    given: dict[str, Any] = ctx.meta.setdefault(_GLOBALS, {})
    if param.name not in given or (
        ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE
    ):
        given[param.name] = value


def _global_flags(command: _Function) -> _Function:
    for name, spec in reversed(flag_fields(ClientSettings)):
        command = add_flag(command, name, spec, expose_value=False, callback=_remember)
    return command


def _client_command(command: _Function) -> _Function:
    """A client command: the global flags, and `settings` as its first argument."""

    @functools.wraps(command)
    def with_settings(*args: Any, **kwargs: Any) -> Any:
        given = click.get_current_context().meta.get(_GLOBALS, {})
        return command(ClientSettings(**given), *args, **kwargs)

    return cast(_Function, _global_flags(with_settings))


@functools.cache
def _plugins() -> dict[str, EntryPoint]:
    """Commands other packages add (the server's `serve` and `db`), not imported yet."""
    from importlib.metadata import entry_points

    return {entry.name: entry for entry in entry_points(group=PLUGIN_GROUP)}


class _Runplane(click.Group):
    """The root group: loads plugin commands when asked for, and turns failed calls
    into one `error:` line instead of a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _plugins():
            command = _plugins()[cmd_name].load()
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RunplaneError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(1)
        except CommandError as error:
            click.echo(f"error: {error.message}", err=True)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            ctx.exit(INTERRUPTED_BY_USER)


@click.group(cls=_Runplane, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="runplane", prog_name="runplane", message="%(prog)s %(version)s")
@_global_flags
def cli() -> None:
    """Runs of AI assistants on conversation threads.

    The options below are global: they go anywhere on the command line of the `runs`
    commands, and each reads its RUNPLANE_ variable when not given. Shell completion:
    runplane completion --help. Reference: docs/cli.md.
    """


def main() -> None:
    """The `runplane` console script."""
    cli.main(prog_name="runplane", complete_var="_RUNPLANE_COMPLETE")


# -- values typed on the command line ------------------------------------------------------


_stdin = {"read": False}
"""Whether a flag has read standard input: it can feed only one."""


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline, as `@FILE`, or as `-`/`@-` for standard input."""
    if text in ("-", "@-"):
        if _stdin["read"]:
            raise ValueError("standard input can feed only one flag")
        _stdin["read"] = True
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise ValueError(f"cannot read {text[1:]}: {error.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object, like \'{"key": "value"}\'')
    return value


def _start_after(text: str) -> datetime:
    """A time (ISO 8601; without an offset, local time) or a duration from now."""
    try:
        return datetime.now(UTC) + parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time like 2030-01-31T09:00:00Z nor a duration like 10m"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


class _Statuses(ParamType):
    """Run statuses, comma-separated; the option may also be repeated."""

    name = "status"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "STATUS[,STATUS...]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[RunStatus]:
        if isinstance(value, list):
            return value
        try:
            return [RunStatus(word.strip()) for word in str(value).split(",") if word.strip()]
        except ValueError as error:
            self.fail(str(error), param, ctx)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[click.shell_completion.CompletionItem]:
        done, _, last = incomplete.rpartition(",")
        prefix = f"{done}," if done else ""
        return [
            click.shell_completion.CompletionItem(prefix + status.value)
            for status in RunStatus
            if status.value.startswith(last.lower())
        ]


def _complete_run_ids(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """The newest runs' ids, from the server; nothing if it cannot be asked quickly."""
    settings = ClientSettings(**ctx.meta.get(_GLOBALS, {}))
    try:
        with settings.client(deadline=1.0) as client:
            runs = itertools.islice(client.list_runs(page_size=100), 100)
            return [
                click.shell_completion.CompletionItem(run.run_id, help=run.status.value)
                for run in runs
                if run.run_id.startswith(incomplete)
            ]
    except (RunplaneError, click.UsageError):
        return []


_JSON = Parsed(_json_object, "JSON|@FILE|-")
_DURATION = Parsed(parse_duration, "DURATION")
_POSITIVE = Parsed(positive_int, "N")


def _run_id_argument(command: _Function) -> _Function:
    return click.argument("run_id", metavar="RUN_ID", shell_complete=_complete_run_ids)(command)


def _filter_options(status_help: str) -> Callable[[_Function], _Function]:
    """The RunFilter's flags, shared by `runs list` and `runs watch`."""

    def decorate(command: _Function) -> _Function:
        for option in reversed(
            [
                click.option("--thread-id", help="Runs of this thread."),
                click.option("--assistant-id", help="Runs of this assistant."),
                click.option(
                    "--status",
                    "statuses",
                    type=_Statuses(),
                    multiple=True,
                    help=status_help + f" ({', '.join(RunStatus)}); comma-separated or repeated.",
                ),
                click.option(
                    "--metadata", type=_JSON, help="JSON object the runs' metadata contains."
                ),
            ]
        ):
            command = option(command)
        return command

    return decorate


def _statuses(given: Iterable[list[RunStatus]]) -> list[RunStatus]:
    return [status for statuses in given for status in statuses]


# -- runs --------------------------------------------------------------------------------


@cli.group()
@_global_flags
def runs() -> None:
    """Create, inspect, change, cancel, watch and wait for runs."""


@runs.command()
@click.option("--assistant-id", required=True, help="The assistant to run.")
@click.option("--thread-id", help="An existing thread (default: a new thread).")
@click.option("--metadata", type=_JSON, help="JSON object: the run's metadata.")
@click.option("--kwargs", type=_JSON, help="JSON object: the run's arguments.")
@click.option(
    "--strategy",
    type=click.Choice([strategy.value for strategy in MultitaskStrategy], case_sensitive=False),
    help="What to do with the thread's inflight runs (default: enqueue).",
)
@click.option("--run-id", help="Client-chosen run id (a UUID).")
@click.option("--request-id", help="Idempotency key: a repeat returns the run first created.")
@click.option("--timeout", type=_DURATION, help="The run's time limit once running, e.g. 15m.")
@click.option(
    "--start-after",
    type=Parsed(_start_after, "TIME|DURATION"),
    help="Not claimable before this time (2030-01-31T09:00:00Z) or this long from now (10m).",
)
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    help="0 to 9 (server default 5): among runs ready to start, higher is claimed first.",
)
@click.option(
    "--retry-max-attempts",
    type=_POSITIVE,
    help="Give the run a retry policy: a retryable error or an expired lease puts it back "
    "in line until it was claimed this many times.",
)
@click.option(
    "--retry-initial-backoff",
    type=_DURATION,
    help="Wait before the first retry (server default 1s).",
)
@click.option(
    "--retry-backoff-coefficient",
    type=click.FloatRange(min=1),
    help="Each retry waits this many times longer than the one before (server default 2).",
)
@click.option(
    "--retry-maximum-backoff",
    type=_DURATION,
    help="The longest wait between retries (server default 100 times the initial backoff).",
)
@_client_command
def create(
    settings: ClientSettings,
    *,
    assistant_id: str,
    thread_id: str | None,
    metadata: dict[str, Any] | None,
    kwargs: dict[str, Any] | None,
    strategy: str | None,
    run_id: str | None,
    request_id: str | None,
    timeout: timedelta | None,
    start_after: datetime | None,
    priority: int | None,
    retry_max_attempts: int | None,
    retry_initial_backoff: timedelta | None,
    retry_backoff_coefficient: float | None,
    retry_maximum_backoff: timedelta | None,
) -> None:
    """Create a run.

    Any --retry- flag gives it a retry policy; the ones not given take the server's
    defaults (--retry-max-attempts: the server's --max-attempts).
    """
    retry_policy = None
    retry_flags = (
        retry_max_attempts,
        retry_initial_backoff,
        retry_backoff_coefficient,
        retry_maximum_backoff,
    )
    if any(value is not None for value in retry_flags):
        retry_policy = RunRetryPolicy(
            max_attempts=retry_max_attempts or 0,
            initial_backoff=retry_initial_backoff,
            backoff_coefficient=retry_backoff_coefficient or 0.0,
            maximum_backoff=retry_maximum_backoff,
        )
    with settings.client() as client:
        run = client.create_run(
            assistant_id,
            thread_id=thread_id,
            metadata=metadata,
            kwargs=kwargs,
            multitask_strategy=strategy,
            run_id=run_id,
            request_id=request_id,
            timeout=timeout,
            start_after=start_after,
            priority=priority,
            retry_policy=retry_policy,
        )
    _show_run(settings, run)


@runs.command()
@_run_id_argument
@_client_command
def get(settings: ClientSettings, *, run_id: str) -> None:
    """Show one run."""
    with settings.client() as client:
        _show_run(settings, client.get_run(run_id))


@runs.command("list")
@_filter_options("Runs in any of these statuses")
@click.option(
    "--order",
    type=click.Choice(["asc", "desc"]),
    default="desc",
    show_default=True,
    help="By creation time.",
)
@click.option("--limit", type=_POSITIVE, help="At most this many runs.")
@_client_command
def list_(
    settings: ClientSettings,
    *,
    thread_id: str | None,
    assistant_id: str | None,
    statuses: tuple[list[RunStatus], ...],
    metadata: dict[str, Any] | None,
    order: str,
    limit: int | None,
) -> None:
    """List runs, newest first."""
    with settings.client() as client:
        pager = client.list_runs(
            thread_id=thread_id,
            assistant_id=assistant_id,
            statuses=_statuses(statuses),
            metadata=metadata,
            order_by=f"created_at {order}",
            page_size=min(limit or 0, _MAX_PAGE_SIZE),
        )
        found = list(itertools.islice(pager, limit))
    click.echo(runs_json(found) if settings.json else runs_table(found, datetime.now(UTC)))


@runs.command()
@_run_id_argument
@click.option("--metadata", type=_JSON, help="JSON object: the run's new metadata (replaces it).")
@click.option("--kwargs", type=_JSON, help="JSON object: the run's new arguments (while pending).")
@click.option(
    "--expected-revision",
    type=_POSITIVE,
    help="Change it only if it is still at this revision (else exit 1, REVISION_MISMATCH).",
)
@_client_command
def update(
    settings: ClientSettings,
    *,
    run_id: str,
    metadata: dict[str, Any] | None,
    kwargs: dict[str, Any] | None,
    expected_revision: int | None,
) -> None:
    """Replace a run's metadata and/or kwargs."""
    if metadata is None and kwargs is None:
        raise click.UsageError("give --metadata, --kwargs or both")
    with settings.client() as client:
        run = client.update_run(
            run_id, metadata=metadata, kwargs=kwargs, expected_revision=expected_revision or 0
        )
    _show_run(settings, run)


@runs.command()
@click.argument("run_id", metavar="[RUN_ID]", required=False, shell_complete=_complete_run_ids)
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Every inflight run matching the filter flags, in one transaction; prints how many.",
)
@_filter_options("With --all: runs in any of these inflight statuses")
@click.option("--rollback", is_flag=True, help="Delete the runs instead of interrupting them.")
@click.option("--reason", default="", help="Recorded as each interrupted run's cancel_reason.")
@_client_command
def cancel(
    settings: ClientSettings,
    *,
    run_id: str | None,
    every: bool,
    thread_id: str | None,
    assistant_id: str | None,
    statuses: tuple[list[RunStatus], ...],
    metadata: dict[str, Any] | None,
    rollback: bool,
    reason: str,
) -> None:
    """Interrupt an inflight run (or, with --rollback, delete it).

    With --all instead of RUN_ID: every inflight run matching --thread-id,
    --assistant-id and --metadata (at least one of them), narrowed by --status.
    """
    action = CancelAction.ROLLBACK if rollback else CancelAction.INTERRUPT
    filtered = thread_id is not None or assistant_id is not None or metadata is not None
    if every:
        if run_id is not None:
            raise click.UsageError("give RUN_ID or --all, not both")
        if not filtered:
            raise click.UsageError("--all needs --thread-id, --assistant-id or --metadata")
        with settings.client() as client:
            done = client.cancel_runs(
                thread_id=thread_id,
                assistant_id=assistant_id,
                statuses=_statuses(statuses),
                metadata=metadata,
                action=action,
                reason=reason,
            )
        verb = "deleted" if rollback else "cancelled"
        noun = "run" if done.count == 1 else "runs"
        summary = f"{verb} {done.count} {noun} (revision {done.revision})"
        click.echo(cancellation_json(done) if settings.json else summary)
        return
    if run_id is None:
        raise click.UsageError("give the RUN_ID to cancel, or --all with a filter")
    if filtered or statuses:
        raise click.UsageError("the filter flags go with --all, not with RUN_ID")
    with settings.client() as client:
        run = client.cancel_run(run_id, action=action, reason=reason)
    if not rollback:
        _show_run(settings, run)
    else:
        click.echo(rollback_json(run) if settings.json else rollback_details(run))


@runs.command()
@_run_id_argument
@click.option("--force", is_flag=True, help="Even if it is inflight.")
@_client_command
def delete(settings: ClientSettings, *, run_id: str, force: bool) -> None:
    """Delete a run."""
    with settings.client() as client:
        client.delete_run(run_id, force=force)
    click.echo(deletion_json(run_id) if settings.json else f"deleted run {run_id}")


@runs.command()
@_run_id_argument
@click.option("--worker-id", required=True, help="The worker that claimed the run.")
@click.option(
    "--status",
    type=click.Choice([RunStatus.SUCCESS.value, RunStatus.ERROR.value], case_sensitive=False),
    required=True,
    help="How the run ended.",
)
@click.option("--result", type=_JSON, help="JSON object: what the run produced.")
@click.option("--error", default="", help="With --status error: what went wrong.")
@click.option(
    "--retryable",
    is_flag=True,
    help="With --status error: try again if the run's retry policy has attempts left.",
)
@click.option("--metadata", type=_JSON, help="JSON object merged into the run's metadata.")
@_client_command
def complete(
    settings: ClientSettings,
    *,
    run_id: str,
    worker_id: str,
    status: str,
    result: dict[str, Any] | None,
    error: str,
    retryable: bool,
    metadata: dict[str, Any] | None,
) -> None:
    """End a run you claimed (as a worker would), then show it.

    The run must still be running under --worker-id; otherwise the exit status is 1
    with LEASE_LOST.
    """
    if RunStatus(status) is not RunStatus.ERROR and (error or retryable):
        raise click.UsageError("--error and --retryable go with --status error")
    with settings.client() as client:
        run = client.complete_run(
            run_id,
            worker_id,
            status,
            error=error,
            metadata=metadata,
            result=result,
            retryable=retryable,
        )
    _show_run(settings, run)


@runs.command()
@_filter_options("Runs in any of these statuses, before or after a change")
@click.option("--run-id", help="One run: its state, then its changes until it ends.")
@click.option("--start-revision", type=_POSITIVE, help="Replay from this revision (inclusive).")
@click.option("--initial", is_flag=True, help="First show the matching runs as they are.")
@_client_command
def watch(
    settings: ClientSettings,
    *,
    thread_id: str | None,
    assistant_id: str | None,
    statuses: tuple[list[RunStatus], ...],
    metadata: dict[str, Any] | None,
    run_id: str | None,
    start_revision: int | None,
    initial: bool,
) -> None:
    """Show each change of matching runs as it happens, until Ctrl-C.

    Table lines or, with -o json, one JSON object per line. A dropped connection is
    resumed with nothing lost or repeated; `reconnecting...` goes to stderr meanwhile.
    """
    with settings.client() as client:
        events: Iterator[RunEvent]
        if run_id:
            events = client.watch_run(
                run_id, start_revision=start_revision or 0, on_reconnect=_say_reconnecting
            )
        else:
            events = client.watch_runs(
                thread_id=thread_id,
                assistant_id=assistant_id,
                statuses=_statuses(statuses),
                metadata=metadata,
                start_revision=start_revision or 0,
                include_initial=initial,
                on_reconnect=_say_reconnecting,
            )
        show = event_json if settings.json else event_line
        if not settings.json:
            click.echo(event_header())
        for event in events:
            click.echo(show(event))
            sys.stdout.flush()


@runs.command()
@_run_id_argument
@click.option("--timeout", type=_DURATION, help="Give up after this long, e.g. 5m (exit 124).")
@_client_command
def wait(settings: ClientSettings, *, run_id: str, timeout: timedelta | None) -> None:
    """Wait until a run ends, then show it; the exit status says how it ended.

    0 success, 3 error, 4 timeout, 5 interrupted or deleted, 124 still inflight when
    --timeout expired, 1 any other failure (the run does not exist, the server is
    unreachable...).
    """
    with settings.client() as client:
        try:
            run = client.wait_run(run_id, timeout=timeout, on_reconnect=_say_reconnecting)
        except RunDeleted as deleted:
            raise CommandError(deleted.message, WAIT_DELETED) from None
        except DeadlineExceeded:
            raise CommandError(
                f"run {run_id} had not ended after {timeout}", WAIT_GAVE_UP
            ) from None
    _show_run(settings, run)
    click.get_current_context().exit(WAIT_EXIT[run.status])


def _say_reconnecting(error: RunplaneError) -> None:
    click.echo("reconnecting...", err=True)


def _show_run(settings: ClientSettings, run: Run) -> None:
    click.echo(runs_json(run) if settings.json else run_details(run))


@cli.command()
@_client_command
def stats(settings: ClientSettings) -> None:
    """Show queue depths, inflight runs and open watches.

    Queues are claimable runs per namespace and assistant, with how long the oldest
    has waited; the figures cover --namespace, or every namespace you may read.
    """
    with settings.client() as client:
        figures = client.stats()
    click.echo(stats_json(figures) if settings.json else stats_table(figures))


# -- completion ----------------------------------------------------------------------------


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  source <(runplane completion bash)      # in ~/.bashrc
    zsh:   source <(runplane completion zsh)       # in ~/.zshrc
    fish:  runplane completion fish > ~/.config/fish/completions/runplane.fish
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None
    click.echo(completer(cli, {}, "runplane", "_RUNPLANE_COMPLETE").source())


if __name__ == "__main__":
    main()
