"""The reloader puts a changed file in force only once it has stopped changing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from runplane.server.config import ConfigError
from runplane.server.reloading import Reloader


class Recorded:
    """A source that loads one file and remembers every text it put in force."""

    name = "test file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loaded = [path.read_text()]

    def files(self) -> Sequence[Path]:
        return [self.path]

    def reload(self) -> None:
        text = self.path.read_text()
        if text.startswith("broken"):
            raise ConfigError("cannot parse")
        self.loaded.append(text)


def test_a_change_is_loaded_when_two_looks_agree(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text("first")
    source = Recorded(path)
    reloader = Reloader([source])
    path.write_text("second")
    reloader.reload_changed()
    assert source.loaded == ["first"]
    reloader.reload_changed()
    assert source.loaded == ["first", "second"]
    reloader.reload_changed()  # unchanged since: nothing more
    assert source.loaded == ["first", "second"]


def test_a_file_seen_half_written_is_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text("first")
    source = Recorded(path)
    reloader = Reloader([source])
    path.write_text("")  # truncated, as an in-place rewrite leaves it for a moment
    reloader.reload_changed()
    path.write_text("second")
    reloader.reload_changed()
    reloader.reload_changed()
    assert source.loaded == ["first", "second"]


def test_sighup_loads_at_once_and_a_broken_file_keeps_what_was_in_force(
    tmp_path: Path,
) -> None:
    path = tmp_path / "auth.toml"
    path.write_text("first")
    source = Recorded(path)
    reloader = Reloader([source])
    path.write_text("second")
    reloader.reload_now()
    assert source.loaded == ["first", "second"]
    path.write_text("broken")
    reloader.reload_changed()
    reloader.reload_changed()
    assert source.loaded == ["first", "second"]
