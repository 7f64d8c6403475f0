"""The README's results, retries and priorities example, run as the reader would run it
(against a fresh server of each backend), printing exactly what the README shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks() -> tuple[str, str]:
    """The program saved as `retries.py`, and the output shown after it."""
    text = README.read_text()
    start = text.index("```python\n", text.index("Save this as `retries.py`")) + len("```python\n")
    end = text.index("```", start)
    output_start = text.index("```text\n", end) + len("```text\n")
    return text[start:end], text[output_start : text.index("```", output_start)]


def test_readme_retries_example_prints_what_the_readme_shows(
    server_address: str, tmp_path: Path
) -> None:
    program, shown = readme_blocks()
    assert 'ADDRESS = "127.0.0.1:50051"' in program
    script = tmp_path / "retries.py"
    script.write_text(program.replace('"127.0.0.1:50051"', repr(server_address)))

    ran = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )

    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    assert ran.stdout == shown
