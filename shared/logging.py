"""structlog JSON logging, configured once per process.

Request-scoped fields (request_id, rpc, peer) come from `shared.request_context`, set once per
RPC by the server interceptor, and are merged into a line only when one is logged; other
fields code binds with structlog's contextvars last for the request that bound them (each RPC
runs in a context of its own). Every line also names the service and its process id (a
service may run several worker processes, shared/workers.py).

Rendering JSON and writing to stderr happen on a background thread: a request only hands its
event dict over, so the access log costs the hot path microseconds, not a syscall.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
import threading
from typing import Any, TextIO

import structlog
import structlog.tracebacks

from shared.request_context import current_request

MAX_BATCH = 512
# Tracebacks as structured frames, without local variables: `dict_tracebacks` would log every
# frame's locals, and those hold tokens, passwords and users' payloads.
TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


class BackgroundWriter:
    """Renders events as JSON lines and writes them in batches from one daemon thread."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def put(self, event: dict[str, Any]) -> None:
        self._queue.put(event)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, then stop (at exit, so no line is lost)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get())
            events = [event for event in batch if event is not None]
            if events:
                self._write(events)
            if len(events) < len(batch):
                return

    def _write(self, events: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(event, default=str) + "\n" for event in events)
        try:
            self._stream.write(lines)
            self._stream.flush()
        except (OSError, ValueError):  # a closed stderr must not kill the writer
            pass


class QueueLogger:
    """The structlog logger behind every bound logger: each level method enqueues the event."""

    def __init__(self, writer: BackgroundWriter) -> None:
        self._writer = writer

    def msg(self, **event: Any) -> None:
        self._writer.put(event)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def merge_request(
    _logger: object, _method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """The current RPC's request id, method and peer (fields given to the call win)."""
    info = current_request()
    if info is not None:
        event.setdefault("request_id", info.request_id)
        event.setdefault("rpc", info.rpc)
        event.setdefault("peer", info.peer())
    return event


def configure_logging(level: str = "INFO", *, service: str = "recstack") -> None:
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    pid = os.getpid()

    def add_service(
        _logger: object, _method: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        event.setdefault("service", service)
        event.setdefault("pid", pid)
        return event

    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        merge_request,
        add_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    logger = QueueLogger(BackgroundWriter(sys.stderr))
    structlog.configure(
        # The last processor returns the event dict itself: QueueLogger renders it later.
        processors=[*shared_processors, TRACEBACKS],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *_args: logger,
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library; render them the same way.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
