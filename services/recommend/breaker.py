"""A circuit breaker for the model server, per model.

When Triton is down or too slow, every request would otherwise wait for its own connection
error or deadline before degrading. After a failure the model is skipped for a delay that
doubles with each further failure (from `initial` up to `maximum` seconds); the first request
after the delay tries again, and one success closes the breaker. Ranking therefore resumes by
itself within `maximum` seconds of the server coming back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.errors import Unavailable


@dataclass
class _State:
    delay: float = 0.0
    open_until: float = 0.0
    last_error: str = ""


@dataclass
class ModelBreaker:
    initial: float = 0.25
    maximum: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, model: str) -> None:
        """Unavailable (with the last failure's reason) while the model is being skipped."""
        state = self._states.get(model)
        if state is None:
            return
        wait = state.open_until - self.clock()
        if wait > 0:
            raise Unavailable(
                f"{state.last_error} (skipping the model server for {wait:.1f}s more)",
                reason="MODEL_SERVER_UNAVAILABLE",
            )

    def failed(self, model: str, error: str) -> None:
        with self._lock:
            state = self._states.setdefault(model, _State())
            state.delay = min(max(state.delay * 2, self.initial), self.maximum)
            state.open_until = self.clock() + state.delay
            state.last_error = error

    def succeeded(self, model: str) -> None:
        if model in self._states:
            with self._lock:
                self._states.pop(model, None)
