"""Structured logs, one record per line: logfmt (`ts=... level=... msg=... key=value`) or
a JSON object with the same fields.

Fields come only from `extra=` of the call that logs: nothing here looks at requests, so
what reaches a line is what the code chose to log (never metadata, kwargs or tokens).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


_QUOTED = re.compile(r'[ "=\n]')
"""Characters that make a logfmt value quoted."""


def _value(value: object) -> str:
    text = str(value)
    if text and _QUOTED.search(text) is None:
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class _StructuredFormatter(logging.Formatter):
    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        return fields


class LogfmtFormatter(_StructuredFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_value(value)}" for key, value in self.fields(record).items())


class JsonFormatter(_StructuredFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), default=str, ensure_ascii=False)


FORMATTERS: dict[str, type[logging.Formatter]] = {"logfmt": LogfmtFormatter, "json": JsonFormatter}


def configure(level: str, log_format: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[log_format]())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Records carry only what the formatters print: finding the caller's frame, thread
    # and process costs a fifth of a line, and every mutating call writes one.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    # Audit lines are the record of who changed what: kept whatever the level.
    logging.getLogger("runplane.audit").setLevel(logging.INFO)
    # Alembic narrates every start-up at INFO ("Context impl SQLiteImpl."...).
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
