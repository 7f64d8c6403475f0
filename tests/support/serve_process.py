"""`runplane serve` as a child process that tests can kill -9, restart and SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

RUNPLANE = str(Path(sys.executable).parent / "runplane")
READY = re.compile(r"msg=ready address=(\S+)")


def free_port() -> int:
    """A port nothing listens on now, so a server can be restarted on the same address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServeProcess:
    """One `runplane serve` process; its stderr is drained (and its tail kept) by a thread."""

    def __init__(
        self,
        address: str,
        database_url: str,
        workdir: Path,
        *args: str,
        keep: int = 200,
        env: dict[str, str] | None = None,
    ) -> None:
        self.address = address
        self.process = subprocess.Popen(
            [RUNPLANE, "serve", "--address", address, "--database-url", database_url, *args],
            cwd=workdir,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.logs: deque[str] = deque(maxlen=keep)
        self._ready = threading.Event()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        if not self._ready.wait(30) or self.process.poll() is not None:
            self.kill()
            raise AssertionError("runplane serve did not start:\n" + "\n".join(self.logs))

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.logs.append(line.rstrip())
            if found := READY.search(line):
                self.address = found.group(1)  # the bound port, when asked for port 0
                self._ready.set()
        self._ready.set()

    def kill(self) -> None:
        """kill -9: no shutdown at all."""
        if self.process.poll() is None:
            self.process.kill()
        self._reap()

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM, then the exit status."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        return self._reap()

    def _reap(self) -> int:
        code = self.process.wait(10)
        self._drainer.join(10)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
