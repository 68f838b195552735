"""Errors that leak nothing: bounded quotes, one-line summaries, redacted paths, upstream codes."""

from __future__ import annotations

import pytest
from google.rpc import error_details_pb2

from shared.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    quoted,
    summary,
    upstream_error,
)
from shared.grpc_server import MAX_MESSAGE_CHARS, domain_error_status


def test_quoted_input_is_bounded():
    assert quoted("short") == "'short'"
    long = quoted("x" * 10_000)
    assert len(long) < 130 and long.endswith("…'")


def test_a_summary_never_carries_the_traceback_a_library_appended():
    error = OSError(
        "Invalid Input Error: reading the stream failed: disk full. Detail: Python exception: "
        'Traceback (most recent call last):\n  File "/opt/venv/lib/python3.11/x.py", line 1'
    )
    assert summary(error) == "Invalid Input Error: reading the stream failed: disk full."
    assert len(summary(RuntimeError("y" * 5000))) <= 301


@pytest.mark.parametrize(
    ("code", "error", "reason"),
    [
        ("NOT_FOUND", NotFound, "NOT_FOUND"),
        ("UNAVAILABLE", Unavailable, "UNAVAILABLE"),
        ("DEADLINE_EXCEEDED", DeadlineExceeded, "DEADLINE_EXCEEDED"),
        ("INTERNAL", Internal, "UPSTREAM_INTERNAL"),
        ("UNAUTHENTICATED", Internal, "UPSTREAM_UNAUTHENTICATED"),
        ("PERMISSION_DENIED", Internal, "UPSTREAM_PERMISSION_DENIED"),
        ("UNIMPLEMENTED", Internal, "UPSTREAM_UNIMPLEMENTED"),
    ],
)
def test_upstream_codes_keep_their_meaning(code, error, reason):
    translated = upstream_error("the registry at r:1", code, "details")
    assert type(translated) is error
    assert translated.reason == reason
    assert translated.metadata == {"upstream": "the registry at r:1", "upstream_code": code}


def test_statuses_name_server_paths_and_are_bounded():
    error = InvalidArgument(
        "path", "cannot read /srv/offline/shop/v1/x.parquet " + "z" * 5000, reason="R"
    )
    status = domain_error_status(
        error, "recstack.materialization", {"/srv/offline": "<offline store>"}
    )
    assert "/srv/offline" not in status.message
    assert "<offline store>/shop/v1" in status.message
    assert len(status.message) <= MAX_MESSAGE_CHARS + 1
    bad_request = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad_request)
    assert "/srv/offline" not in bad_request.field_violations[0].description
