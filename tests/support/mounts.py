"""Small filesystems a test makes and removes itself: tmpfs mounts, full or read-only.

The suite runs as root on Linux (CI too); a machine that cannot mount fails these
tests with the reason rather than skipping them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"these tests mount a small tmpfs (as root): mount {' '.join(args)}: "
            f"{result.stderr.strip()}"
        )


@contextmanager
def tmpfs(where: Path, size: str, *, owner: str | None = None) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "2m") mounted at `where` for the duration."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0777"
    _mount("-t", "tmpfs", "-o", options, "tmpfs", str(where))
    try:
        if owner is not None:
            subprocess.run(["chown", owner, str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)


def remount_read_only(where: Path) -> None:
    _mount("-o", "remount,ro", str(where))


def resize(where: Path, size: str) -> None:
    _mount("-o", f"remount,size={size}", str(where))


def used_kib(where: Path) -> int:
    found = subprocess.run(
        ["df", "--output=used", "-k", str(where)], capture_output=True, text=True, check=True
    )
    return int(found.stdout.split()[-1])
