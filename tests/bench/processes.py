"""Starting and always stopping the server processes the benchmark measures.

A server is a child process that announces ``ready ... address=HOST:PORT`` on stderr (the
logfmt line of ``runplane serve``, or the echo server's). Its stderr is drained by a thread
for the whole run: a server that logs per request would otherwise block on a full pipe and
the benchmark would measure the pipe.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

READY_LINE = re.compile(r"\bready\b.*?\baddress=\"?(?P<address>[^\s\"]+)")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RunningServer:
    """Where to reach a started server, and its pid so its CPU time can be read."""

    address: str
    pid: int
    database_url: str | None = None
    """For runplane targets: the database, so a scenario can start a replica on it."""
    load_args: tuple[str, ...] = ()
    """What a load process needs to reach it besides the address (CA file, token)."""


class ServerFailedError(RuntimeError):
    """The server exited or stayed silent before announcing its address."""


class _StderrWatcher(threading.Thread):
    """Reads a child's stderr to the end, noting the ready address and the last lines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self._process = process
        self.address: str | None = None
        self.ready = threading.Event()
        self.tail: deque[str] = deque(maxlen=40)

    def run(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self.tail.append(line.rstrip())
            if self.address is None and (match := READY_LINE.search(line)):
                self.address = match["address"]
                self.ready.set()
        self.ready.set()  # end of stream: wake the waiter, who finds no address


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL if the server does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_server(
    argv: Sequence[str],
    cwd: Path,
    name: str,
    database_url: str | None = None,
    load_args: tuple[str, ...] = (),
) -> Iterator[RunningServer]:
    """Starts ``argv``, yields it once it announced its address, and stops it on the way out.

    The child gets its own session so that a Ctrl-C meant for the benchmark does not reach
    it half-way: the benchmark itself shuts it down, in order, from this ``finally``.
    """
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    watcher = _StderrWatcher(process)
    try:
        watcher.start()
        watcher.ready.wait(READY_TIMEOUT_S)
        if watcher.address is None:
            code = process.poll()
            what = (
                f"exited with code {code}"
                if code is not None
                else f"stayed silent for {READY_TIMEOUT_S:.0f} s"
            )
            tail = "\n".join(watcher.tail) or "(no output)"
            raise ServerFailedError(
                f"{name} {what} before announcing 'ready address=...'; last stderr lines:\n{tail}"
            )
        yield RunningServer(watcher.address, process.pid, database_url, load_args)
    finally:
        _stop(process)
        watcher.join(timeout=STOP_TIMEOUT_S)
