"""JSON log lines are rendered off the request path and none is lost at exit."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from shared.logging import BackgroundWriter

REPO = Path(__file__).resolve().parents[2]


def test_writer_renders_every_event_in_order():
    stream = io.StringIO()
    writer = BackgroundWriter(stream)
    for index in range(1000):
        writer.put({"event": "e", "n": index})
    writer.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == list(range(1000))


def test_configured_process_logs_json_with_context_and_flushes_at_exit():
    code = """
import structlog
from shared.logging import configure_logging, get_logger
configure_logging("INFO", service="serving")
structlog.contextvars.bind_contextvars(request_id="r1")
log = get_logger("x")
log.info("hello", n=1)
log.debug("hidden")
def divide(token):
    return token / 0
try:
    divide(1 + len("secret-token-in-a-local"))
except ZeroDivisionError:
    password = "s3cret-local-password"
    log.exception("boom")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    first, second = (json.loads(line) for line in result.stderr.splitlines())
    assert first["event"] == "hello" and first["n"] == 1
    assert (first["service"], first["request_id"], first["level"]) == ("serving", "r1", "info")
    assert second["level"] == "error"
    assert second["exception"][0]["exc_type"] == "ZeroDivisionError"
    # Frames without their local variables: no secret a frame held reaches the log.
    assert all("locals" not in frame for frame in second["exception"][0]["frames"])
    assert "s3cret-local-password" not in result.stderr


def test_a_request_s_fields_join_its_lines_and_every_line_names_the_process():
    code = """
from shared.logging import configure_logging, get_logger
from shared.request_context import RequestInfo, set_request
configure_logging("INFO", service="serving")
log = get_logger("x")
log.info("outside")
set_request(RequestInfo("r9", "/pkg.Service/Method", lambda: "ipv4:127.0.0.1:5"))
log.info("inside")
log.info("own", request_id="given")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    outside, inside, own = (json.loads(line) for line in result.stderr.splitlines())
    assert "request_id" not in outside
    assert (inside["request_id"], inside["rpc"], inside["peer"]) == (
        "r9",
        "/pkg.Service/Method",
        "ipv4:127.0.0.1:5",
    )
    assert own["request_id"] == "given"
    assert outside["pid"] == inside["pid"] > 0
