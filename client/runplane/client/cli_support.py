"""What every command of the `runplane` CLI shares, the server's `serve` included.

A flag is declared once, as a field of the frozen dataclass that its command
receives: the field's name gives `--name` and its `RUNPLANE_NAME` environment twin,
and the field's default is the flag's default, parsed by the flag's own parser.

    @dataclass(frozen=True)
    class ServeSettings:
        address: str = flag("127.0.0.1:50051", help="where to listen")
        event_retention: float = flag("24h", parse=seconds, help="history kept for watchers")
        insecure: bool = switch(help="allow a non-loopback address without TLS")

    @click.command()
    @settings_from(ServeSettings)
    def serve(settings: ServeSettings) -> None: ...

The flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from runplane.client.durations import parse_duration

_FLAG = "runplane.flag"

if TYPE_CHECKING:
    ParamType = click.ParamType[Any]
else:  # generic only from click 8.4; the floor is older
    ParamType = click.ParamType

_Settings = TypeVar("_Settings")
_Function = TypeVar("_Function", bound=Callable[..., Any])


@dataclass(frozen=True)
class Flag:
    """How one dataclass field reads from the command line."""

    default: str | None
    """As typed on the command line (shown in --help); None: no default."""
    parse: Callable[[str], Any]
    help: str
    short: str | None = None
    choices: Sequence[str] | None = None
    metavar: str | None = None
    is_switch: bool = False


def flag(
    default: str | None,
    *,
    help: str,
    parse: Callable[[str], Any] = str,
    short: str | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also the flag `--<field-name>` (see the module docstring).

    `parse` turns text into the field's value (ValueError: a usage error showing its
    message); `choices` limits the values, case-insensitively, and lists them on a miss.
    """
    spec = Flag(default, parse, help, short, choices, metavar)
    value = None if default is None else parse(default)
    return dataclasses.field(default=value, metadata={_FLAG: spec})


def switch(*, help: str, short: str | None = None) -> Any:
    """A boolean dataclass field that is the on/off flag `--<field-name>` (default off);
    its variable takes 1/0, true/false, yes/no."""
    spec = Flag(None, str, help, short, is_switch=True)
    return dataclasses.field(default=False, metadata={_FLAG: spec})


def env_name(field_name: str) -> str:
    return "RUNPLANE_" + field_name.upper()


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def flag_fields(settings: type[Any]) -> list[tuple[str, Flag]]:
    """The fields of a settings dataclass that are flags, in declaration order."""
    return [
        (field.name, field.metadata[_FLAG])
        for field in dataclasses.fields(settings)
        if _FLAG in field.metadata
    ]


def add_flag(command: _Function, name: str, spec: Flag, **extra: Any) -> _Function:
    """Attach the click option of the flag `name` to a command function."""
    declarations = [option_name(name), *([spec.short] if spec.short else [])]
    options: dict[str, Any] = {
        "help": spec.help,
        "envvar": env_name(name),
        "show_envvar": True,
        **extra,
    }
    if spec.is_switch:
        options.update(is_flag=True, default=False)
    else:
        options.update(default=spec.default, show_default=spec.default is not None)
        if spec.choices is not None:
            options.update(type=click.Choice(list(spec.choices), case_sensitive=False))
        else:
            options.update(type=Parsed(spec.parse, spec.metavar))
    return click.option(*declarations, name, **options)(command)


def settings_from(
    settings: type[_Settings], parameter: str = "settings"
) -> Callable[[_Function], _Function]:
    """Give a command one option per flag of `settings`, and the built dataclass as
    its `parameter` argument instead of the options one by one."""
    fields = flag_fields(settings)

    def decorate(command: _Function) -> _Function:
        @functools.wraps(command)
        def with_settings(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name, _ in fields}
            return command(*args, **{parameter: settings(**values)}, **kwargs)

        for name, spec in reversed(fields):
            with_settings = add_flag(with_settings, name, spec)
        return with_settings  # type: ignore[return-value]

    return decorate


class Parsed(ParamType):
    """A click type from a function of text; its ValueError becomes a usage error."""

    def __init__(self, parse: Callable[[str], Any], metavar: str | None = None) -> None:
        self.parse = parse
        self.name = metavar or str(getattr(parse, "__name__", "value"))
        self._metavar = metavar

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self._metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default already parsed
        try:
            return self.parse(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def seconds(text: str) -> float:
    """A duration flag's value in seconds (the grammar of `parse_duration`)."""
    return parse_duration(text).total_seconds()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive integer")
    return value


class CommandError(Exception):
    """A command failed for a reason the user can act on: the `runplane` command prints
    `error: <message>` on stderr, with no traceback, and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
