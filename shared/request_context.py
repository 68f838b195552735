"""Per-request facts that domain code may need without knowing about gRPC."""

from __future__ import annotations

import time
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("recstack_deadline", default=None)


def set_deadline(monotonic_deadline: float | None) -> None:
    _deadline.set(monotonic_deadline)


def seconds_remaining() -> float | None:
    """Seconds until the current request must be answered; None outside a request."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
