"""Log lines as operators read them: text on a terminal, or one JSON object a line for a log
pipeline (Loki, Elasticsearch, Cloud Logging), at a level they choose.

Every ltrr process, the server and its children (the learner, the writer, jobs, a first start),
logs the same way: each is handed the server's ``LogSetup`` and applies it first.

>>> record = logging.LogRecord("ltrr_server.demo", logging.INFO, "app.py", 1, "ready in %.1fs", (1.25,), None)
>>> line = json.loads(JsonFormatter().format(record))
>>> line["level"], line["logger"], line["message"]
('info', 'ltrr_server.demo', 'ready in 1.2s')
>>> LogSetup(level="loud")
Traceback (most recent call last):
...
ltrr_server.errors.InvalidArgument: server.log_level: must be one of debug, info, warning, error, got 'loud'
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from ltrr_server.errors import InvalidArgument

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has: the rest were passed in ``extra=`` and go into the JSON object.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def trace_ids() -> tuple[str, str] | None:
    """The current OpenTelemetry span's trace and span id (hex), inside a traced call; else None.

    Read only where the tracing API is loaded: a process that never traced has no span, and the
    children do not import it for their logs.
    """
    otel = sys.modules.get("opentelemetry.trace")
    if otel is None:
        return None
    ctx = otel.get_current_span().get_span_context()
    return (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")) if ctx.is_valid else None


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, and inside a traced call `` trace_id=... span_id=...`` after the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = trace_ids()
        if ids is None:
            return line
        head, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} trace_id={ids[0]} span_id={ids[1]}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339, UTC, milliseconds), level, logger, message, process,
    the exception's traceback as ``error`` when there is one, any ``extra=`` fields, and inside a
    traced call its ``trace_id`` and ``span_id`` (as OpenTelemetry's log correlation names them)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        ids = trace_ids()
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["error"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


@dataclass(frozen=True)
class LogSetup:
    """The level and format of every ltrr process's log (``server.log_level``, ``server.log_format``)."""

    level: str = "info"
    format: str = "text"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise InvalidArgument("server.log_level", f"must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.format not in FORMATS:
            raise InvalidArgument("server.log_format", f"must be one of {', '.join(FORMATS)}, got {self.format!r}")

    def apply(self, stream: IO[str] | None = None) -> None:
        """Makes this the root logger's only handler (standard error unless ``stream``)."""
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter() if self.format == "json" else TextFormatter())
        root = logging.getLogger()
        for old in root.handlers[:]:
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(self.level.upper())

    def env(self) -> dict[str, str]:
        """For a child that is a plain interpreter: the variables ``from_env`` reads."""
        return {"LTRR_LOG_LEVEL": self.level, "LTRR_LOG_FORMAT": self.format}

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] | None = None) -> LogSetup:
        env = os.environ if env is None else env
        return cls(env.get("LTRR_LOG_LEVEL", "info"), env.get("LTRR_LOG_FORMAT", "text"))


DEFAULT_LOGS = LogSetup()
