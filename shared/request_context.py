"""Per-request facts that domain code may need without knowing about gRPC.

The server interceptor runs every RPC in a context of its own (a fresh `contextvars.Context`)
and sets these there once: nothing a request binds outlives it, and nothing has to be
cleared between requests on the same thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

_deadline: ContextVar[float | None] = ContextVar("recstack_deadline", default=None)


@dataclass(slots=True)
class RequestInfo:
    """Who asked what: the fields every log line of a request carries."""

    request_id: str
    rpc: str
    # The peer address, asked for only when a line is logged (most requests log none).
    peer: Callable[[], str]


_request: ContextVar[RequestInfo | None] = ContextVar("recstack_request", default=None)


def set_deadline(monotonic_deadline: float | None) -> None:
    _deadline.set(monotonic_deadline)


def seconds_remaining() -> float | None:
    """Seconds until the current request must be answered; None outside a request."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def set_request(info: RequestInfo | None) -> None:
    _request.set(info)


def current_request() -> RequestInfo | None:
    return _request.get()


def request_id() -> str:
    """The current request's id; empty outside a request."""
    info = _request.get()
    return "" if info is None else info.request_id
