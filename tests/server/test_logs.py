"""The server's log as an operator's pipeline reads it: JSON lines at the level asked for."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ltrr_server.logs import LogSetup
from tests.server.test_restart import ServerProcess, teach


def _lines(path: Path) -> list[dict[str, object]]:
    out = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if text.strip():
            try:
                out.append(json.loads(text))
            except json.JSONDecodeError:
                pytest.fail(f"log line {number} is not JSON: {text[:200]}")
    return out


def test_json_log_lines_at_the_level_asked_for(tmp_path: Path, sqlite_url: str) -> None:
    """Every line `ltrr serve --log-format json` writes, through start, traffic and stop, is one JSON
    object with time, level, logger and message; LTRR_LOG_LEVEL=warning drops the info lines."""
    server = ServerProcess(tmp_path, sqlite_url, args=("--log-format", "json", "--log-level", "debug"))
    teach(server.channel, 50)
    assert server.terminate() == 0
    lines = _lines(server.log_path)
    assert all({"time", "level", "logger", "message", "pid"} <= set(line) for line in lines)
    assert any(line["message"] == "ltrr ready: every service restored and loaded" for line in lines)
    assert {"debug", "info"} <= {line["level"] for line in lines}
    assert all(str(line["time"]).endswith("Z") for line in lines)

    (tmp_path / "quiet").mkdir()
    # A misspelt variable is named in the log, in the log's own format.
    quiet = ServerProcess(tmp_path / "quiet", sqlite_url,
                          env={"LTRR_LOG_LEVEL": "warning", "LTRR_LOG_FORMAT": "json", "LTRR_GRPC_PROT": "1"})
    teach(quiet.channel, 10)
    assert quiet.terminate() == 0
    lines = _lines(quiet.log_path)
    assert all(line["level"] in ("warning", "error") for line in lines)
    assert any("LTRR_GRPC_PROT" in str(line["message"]) for line in lines)


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, given back as it was (``LogSetup.apply`` replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for h in root.handlers[:]:
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_an_exception_is_one_line_with_its_traceback(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    LogSetup(format="json").apply(stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("ltrr_server.x").exception("failed", extra={"policy": "p"})
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "failed" and record["policy"] == "p" and record["level"] == "error"
    assert "ValueError: boom" in record["error"]


def test_children_read_the_same_setup_from_their_environment() -> None:
    setup = LogSetup(level="warning", format="json")
    assert LogSetup.from_env(setup.env()) == setup
    assert LogSetup.from_env({}) == LogSetup()


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_lines_logged_inside_a_traced_call_carry_its_trace_and_span_ids(root_logger: logging.Logger,
                                                                        log_format: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    out = io.StringIO()
    LogSetup(format=log_format).apply(stream=out)
    tracer = TracerProvider().get_tracer("test")
    logging.getLogger("ltrr_server.x").warning("outside")
    with tracer.start_as_current_span("call") as span:
        logging.getLogger("ltrr_server.x").warning("inside")
    ctx = span.get_span_context()
    trace_id, span_id = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    outside, inside = out.getvalue().splitlines()
    if log_format == "json":
        assert "trace_id" not in json.loads(outside)
        record = json.loads(inside)
        assert (record["message"], record["trace_id"], record["span_id"]) == ("inside", trace_id, span_id)
    else:
        assert "trace_id" not in outside
        assert inside.endswith(f"inside trace_id={trace_id} span_id={span_id}")
