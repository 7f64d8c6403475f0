"""Re-reading configuration files while the server runs: certificates, the auth config.

Each `Reloadable` names its files and loads them whole. The `Reloader` reads those
files at every `check` (a `PeriodicTask` calls it every second) and reloads a source
when their bytes changed (so a file replaced by rename, edited in place or touched
twice within a second is all seen) and stayed the same for one more look, or at once
on `reload_now()` (SIGHUP). That look matters: a file rewritten in place is empty or
half-written for a moment, and an auth config read then (an empty file is valid TOML)
would lock every caller out. A load that fails keeps what was in force and logs one
error line, once per distinct content.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from runplane.server.config import ConfigError

log = logging.getLogger(__name__)


class Reloadable(Protocol):
    name: str
    """What is reloaded, for log lines: "auth config", "TLS certificates"."""

    def files(self) -> Sequence[Path]:
        """The files the source was loaded from."""
        ...

    def reload(self) -> None:
        """Read the files again and put them in force; ConfigError leaves the old in force."""
        ...


def _contents(files: Sequence[Path]) -> tuple[bytes | None, ...]:
    contents: list[bytes | None] = []
    for path in files:
        try:
            contents.append(path.read_bytes())
        except OSError:
            contents.append(None)
    return tuple(contents)


class _Watched:
    def __init__(self, source: Reloadable) -> None:
        self.source = source
        self.seen = _contents(source.files())
        self.changing: tuple[bytes | None, ...] | None = None
        """New contents seen at one look: loaded if the next look finds them again."""


class Reloader:
    def __init__(self, sources: Sequence[Reloadable]) -> None:
        self._watched = [_Watched(source) for source in sources]

    async def check(self) -> None:
        """Reload what changed, reading the files off the event loop (a `PeriodicTask`)."""
        await asyncio.to_thread(self.reload_changed)

    def reload_changed(self) -> None:
        for watched in self._watched:
            contents = _contents(watched.source.files())
            if contents == watched.seen:
                watched.changing = None
            elif contents == watched.changing:
                self._reload(watched, contents)
            else:
                watched.changing = contents  # perhaps mid-write: let it settle

    def reload_now(self) -> None:
        """Reload every source whether or not its files changed (SIGHUP)."""
        for watched in self._watched:
            self._reload(watched, _contents(watched.source.files()))

    def _reload(self, watched: _Watched, contents: tuple[bytes | None, ...]) -> None:
        watched.seen = contents
        watched.changing = None
        files = watched.source.files()
        try:
            watched.source.reload()
        except ConfigError as error:
            log.error(
                "%s not reloaded; the previous one stays in force",
                watched.source.name,
                extra={"error": str(error)},
            )
            return
        if watched.source.files() != files:  # the auth config may name another key file
            watched.seen = _contents(watched.source.files())
        log.info("%s reloaded", watched.source.name)
