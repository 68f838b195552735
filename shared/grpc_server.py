"""One gRPC server bootstrap for every service.

Health checking (per-service status, flipped by dependency probes and on shutdown),
reflection, an observability interceptor (request id, one log line per RPC, Prometheus
histogram and error counter, server-side deadline cap, domain error → `google.rpc.Status`),
optional bearer-token auth, optional TLS, message-size limits and graceful shutdown.
"""

from __future__ import annotations

import contextvars
import hmac
import itertools
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from random import random
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from shared.channels import SERVER_KEEPALIVE_OPTIONS
from shared.errors import DomainError, InvalidArgument, redact, summary
from shared.request_context import RequestInfo, request_id, set_deadline, set_request
from shared.request_validation import validate
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)

RPC_SECONDS = Histogram(
    "recstack_rpc_duration_seconds",
    "Server-side RPC latency.",
    ["service", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
RPC_ERRORS = Counter(
    "recstack_rpc_errors_total",
    "RPCs answered with a non-OK status.",
    ["service", "method", "code"],
)
# With several workers (shared/workers.py) one series per live worker process, by pid.
WORKER_UP = Gauge(
    "recstack_worker_up",
    "1 for each live server process of the service.",
    multiprocess_mode="liveall",
)

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
# An error's message and details reach clients cut to this many characters.
MAX_MESSAGE_CHARS = 2000
REQUEST_ID_HEADER = "x-request-id"
# Trailing metadata naming the process that served a call (services may run several workers).
WORKER_HEADER = "x-recstack-worker"

Behavior = Callable[[Any, grpc.ServicerContext], Any]
ReadinessCheck = Callable[[], None]


@dataclass(frozen=True)
class ServiceRegistration:
    """A servicer, the generated function that adds it, and its full service name."""

    add_to_server: Callable[[Any, grpc.Server], None]
    servicer: object
    service_name: str


# --- interceptors ---------------------------------------------------------------------------


def _wrap_handler(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Behavior, bool], Behavior],
    deserializer: Callable[[Callable[[bytes], Any] | None], Callable[[bytes], Any] | None] = (
        lambda given: given
    ),
) -> grpc.RpcMethodHandler:
    """Rebuild a method handler with its behaviour (and optionally its request deserializer)
    wrapped, whatever its streaming kind."""
    kinds = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attribute, factory = kinds[(handler.request_streaming, handler.response_streaming)]
    behavior = wrap(getattr(handler, attribute), handler.response_streaming)
    return factory(
        behavior,
        request_deserializer=deserializer(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


@dataclass(frozen=True)
class _Undecodable:
    """A request whose bytes did not parse as the method's message (gRPC itself would answer
    INTERNAL "Exception deserializing request!": it is the caller's bad input)."""

    error: str


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any parse failure is the request's fault
            return _Undecodable(summary(exc))

    return parse


def _validated(request: Any) -> Any:
    """The request, once it is known to keep the contract's rules (shared.request_validation)."""
    if isinstance(request, _Undecodable):
        raise InvalidArgument("request", f"is not a valid message of this method ({request.error})")
    if isinstance(request, Message):
        validate(request)
    return request


def _validated_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        yield _validated(request)


def domain_error_status(
    error: DomainError, domain: str, redactions: Mapping[str, str] | None = None
) -> status_pb2.Status:
    """The rich `google.rpc.Status` for a domain error (ErrorInfo, plus BadRequest for fields).

    Every text is bounded and has the service's own paths (`redactions`) named, not shown: a
    message built from a library's error may still quote one.
    """

    def clean(text: str) -> str:
        text = redact(text, dict(redactions or {}))
        return text if len(text) <= MAX_MESSAGE_CHARS else f"{text[:MAX_MESSAGE_CHARS]}…"

    metadata = {key: clean(value) for key, value in error.metadata.items()}
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=metadata)
    details = [_pack(info)]
    if isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=clean(error.description)
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    return status_pb2.Status(
        code=getattr(code_pb2, error.code), message=clean(error.message), details=details
    )


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass(frozen=True)
class AccessLog:
    """Which OK calls get an access line: a random `sample` of them, and every call slower than
    `slow_seconds`. Calls that fail are always logged."""

    sample: float = 1.0
    slow_seconds: float = 0.25


class _MethodMetrics:
    """One method's metric children, bound once: `labels()` takes a lock and builds a key."""

    def __init__(self, service: str, method: str) -> None:
        self._service, self._method = service, method
        self.ok = RPC_SECONDS.labels(service, method, "OK")
        self._failed: dict[str, tuple[Any, Any]] = {}

    def failed(self, code: str) -> tuple[Any, Any]:
        """The (histogram, error counter) children of a non-OK code."""
        children = self._failed.get(code)
        if children is None:
            children = self._failed[code] = (
                RPC_SECONDS.labels(self._service, self._method, code),
                RPC_ERRORS.labels(self._service, self._method, code),
            )
        return children


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Request id, logs, metrics, deadline cap and error mapping around every RPC.

    The hot path is what every call pays: its request id (the caller's or a generated one,
    echoed in trailing metadata with the serving process's pid), one `RequestInfo` and its
    deadline in the call's own `contextvars.Context`, validation, one prebound histogram
    observation, and an access line only for sampled, slow or failed calls.
    """

    def __init__(
        self,
        service: str,
        max_request_seconds: float,
        redactions: Mapping[str, str] | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self._redactions = dict(redactions or {})
        self._service = service
        self._domain = f"recstack.{service}"
        self._max_request_seconds = max_request_seconds
        self._access = access_log or AccessLog()
        self._worker = str(os.getpid())
        # Per method: the handler and its wrapper, built once instead of on every call.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: Any
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        cached = self._handlers.get(method)
        if cached is None or cached[0] is not handler:
            metrics = _MethodMetrics(self._service, method)
            wrapped = _wrap_handler(
                handler,
                lambda behavior, streaming: self._wrap(
                    method, metrics, behavior, streaming, handler.request_streaming
                ),
                _tolerant,
            )
            cached = self._handlers[method] = (handler, wrapped)
        return cached[1]

    def _wrap(
        self,
        method: str,
        metrics: _MethodMetrics,
        behavior: Behavior,
        response_streaming: bool,
        request_streaming: bool,
    ) -> Behavior:
        # Every request is validated before the servicer sees it; a streamed one as it arrives.
        check = _validated_stream if request_streaming else _validated
        if response_streaming:
            return self._streaming(method, metrics, behavior, check)

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = self._begin(method, context)
            try:
                response = behavior(check(request), context)
            except BaseException as exc:
                self._fail(metrics, context, exc, started)
            self._finish(metrics, context, started)
            return response

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            # A context of its own: what the call sets (request info, deadline, structlog
            # bindings) is gone when it ends, without clearing anything on the next call.
            return contextvars.Context().run(call, request, context)

        return unary

    def _streaming(
        self, method: str, metrics: _MethodMetrics, behavior: Behavior, check: Any
    ) -> Behavior:
        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            scope = contextvars.Context()
            started = scope.run(self._begin, method, context)
            try:
                responses = scope.run(behavior, check(request), context)
                while True:
                    try:
                        response = scope.run(next, responses)
                    except StopIteration:
                        break
                    yield response
            except BaseException as exc:
                scope.run(self._fail, metrics, context, exc, started)
            scope.run(self._finish, metrics, context, started)

        return streaming

    def _begin(self, method: str, context: grpc.ServicerContext) -> float:
        request_id = _request_id(context.invocation_metadata()) or _new_request_id()
        set_request(RequestInfo(request_id, method, context.peer))
        context.set_trailing_metadata(self._trailers(request_id))
        remaining = context.time_remaining()
        budget = self._max_request_seconds
        if remaining is not None and remaining < budget:
            budget = remaining
        started = time.monotonic()
        set_deadline(started + budget)
        return started

    def _trailers(self, request_id: str) -> tuple[tuple[str, str], ...]:
        """The trailing metadata every call answers with: its request id and this process."""
        return ((REQUEST_ID_HEADER, request_id), (WORKER_HEADER, self._worker))

    def _finish(
        self, metrics: _MethodMetrics, context: grpc.ServicerContext, started: float
    ) -> None:
        code = context.code()
        if code is None or code is grpc.StatusCode.OK:
            seconds = time.monotonic() - started
            metrics.ok.observe(seconds)
            access = self._access
            if seconds >= access.slow_seconds or (access.sample and random() < access.sample):
                log.info("rpc", code="OK", duration_ms=round(seconds * 1000, 3))
        else:
            self._record_failure(metrics, code.name, started)

    def _fail(
        self,
        metrics: _MethodMetrics,
        context: grpc.ServicerContext,
        exc: BaseException,
        started: float,
    ) -> None:
        if isinstance(exc, DomainError):
            self._record_failure(metrics, exc.code, started)
            status = rpc_status.to_status(domain_error_status(exc, self._domain, self._redactions))
            # abort_with_status replaces the trailers set so far: the status's details join
            # the call's own (request id, worker) instead of dropping them.
            own = self._trailers(request_id())
            context.abort_with_status(
                status._replace(trailing_metadata=(*own, *status.trailing_metadata))
            )
        code = context.code()
        if code is not None and code != grpc.StatusCode.OK:
            # The servicer or gRPC already chose a status (e.g. a cancelled stream).
            self._record_failure(metrics, code.name, started)
            raise exc
        self._record_failure(metrics, "INTERNAL", started)
        log.exception("rpc_internal_error")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error; request id {request_id()}")

    def _record_failure(self, metrics: _MethodMetrics, code: str, started: float) -> None:
        seconds = time.monotonic() - started
        timer, errors = metrics.failed(code)
        timer.observe(seconds)
        errors.inc()
        log.warning("rpc", code=code, duration_ms=round(seconds * 1000, 3))


# Generated request ids: a random per-process prefix and a counter, 32 hex digits like a
# uuid4 but without its ~2-9 us (a getrandom syscall that releases the GIL) on every RPC.
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_REQUEST_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_REQUEST_COUNTER) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def _request_id(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and value:
            return str(value)
    return None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Accepts `authorization: Bearer <token>` for tokens listed in a secret file."""

    def __init__(self, token_file: Path) -> None:
        self._tokens = [
            line.strip().encode() for line in token_file.read_text().splitlines() if line.strip()
        ]
        if not self._tokens:
            raise ValueError(f"auth token file {token_file} holds no token")

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: Any
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        metadata = dict(details.invocation_metadata or ())
        if self._accepts(metadata.get("authorization", "")):
            return handler
        return _wrap_handler(handler, lambda _behavior, _streaming: _deny)

    def _accepts(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        # Compare against every token so timing reveals neither which nor how much matched.
        matches = [hmac.compare_digest(token.encode(), known) for known in self._tokens]
        return any(matches)


def _deny(_request: Any, context: grpc.ServicerContext) -> None:
    context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'",
    )


# --- health ---------------------------------------------------------------------------------


@dataclass
class HealthMonitor:
    """Polls dependency checks and flips every served name between SERVING and NOT_SERVING."""

    servicer: health.HealthServicer
    names: Sequence[str]
    checks: Mapping[str, ReadinessCheck] = field(default_factory=dict)
    interval_seconds: float = 5.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _failing: frozenset[str] = frozenset()

    def start(self) -> None:
        self.poll()
        if self.checks:
            threading.Thread(target=self._run, name="health-monitor", daemon=True).start()

    def poll(self) -> None:
        failing = frozenset(name for name, check in self.checks.items() if not _passes(check))
        if failing != self._failing:
            log.warning("health_changed", failing=sorted(failing))
        self._failing = failing
        self._set(
            health_pb2.HealthCheckResponse.NOT_SERVING
            if failing
            else health_pb2.HealthCheckResponse.SERVING
        )

    def shutdown(self) -> None:
        self._stop.set()
        self.servicer.enter_graceful_shutdown()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.poll()

    def _set(self, status: int) -> None:
        if self._stop.is_set():
            return
        for name in ("", *self.names):
            self.servicer.set(name, status)


def _passes(check: ReadinessCheck) -> bool:
    try:
        check()
    except Exception:  # a probe's failure of any kind means not ready
        return False
    return True


# --- server ---------------------------------------------------------------------------------


@dataclass
class RunningServer:
    """A started server, the port it bound, its health monitor and metrics endpoint."""

    server: grpc.Server
    port: int
    health: HealthMonitor
    metrics: WSGIServer | None = None
    # Run once health says NOT_SERVING, before the server stops taking calls, each given the
    # monotonic deadline of the grace: a service winds down its own work there (a running job,
    # open streams ended with a final message) instead of having its open calls cancelled.
    before_stop: list[Callable[[float], None]] = field(default_factory=list)
    # Run after the server stops (background workers, pools), in order.
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    def stop(self, grace: float | None = None) -> None:
        """Stop within `grace` seconds (None: at once): the `before_stop` hooks and the calls
        still open share it, so the whole stop fits the grace the deployment allows."""
        deadline = time.monotonic() + (grace or 0.0)
        self.health.shutdown()
        for callback in self.before_stop:
            callback(deadline)
        remaining = None if grace is None else max(0.0, deadline - time.monotonic())
        self.server.stop(remaining).wait()
        if self.metrics is not None:
            self.metrics.shutdown()
        for callback in self.on_stop:
            callback()


def create_grpc_server(
    settings: ServiceSettings,
    registrations: Sequence[ServiceRegistration],
    *,
    readiness_checks: Mapping[str, ReadinessCheck] | None = None,
) -> RunningServer:
    """Build, bind and start a server; `settings.grpc_port` 0 picks a free port (tests)."""
    interceptors: list[grpc.ServerInterceptor] = []
    if settings.auth_token_file is not None:
        interceptors.append(BearerTokenInterceptor(settings.auth_token_file))
    access_log = AccessLog(settings.access_log_sample, settings.slow_rpc_seconds)
    interceptors.append(
        ObservabilityInterceptor(
            settings.service_name,
            settings.max_request_seconds,
            settings.server_paths(),
            access_log,
        )
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Only the workers of one service share a port; a single server refuses a port
            # another process holds instead of splitting its traffic with it.
            ("grpc.so_reuseport", 0 if settings.worker_index is None else 1),
            *SERVER_KEEPALIVE_OPTIONS,
        ],
    )
    for registration in registrations:
        registration.add_to_server(registration.servicer, server)
    names = [registration.service_name for registration in registrations]
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = _bind(server, settings)
    monitor = HealthMonitor(
        health_servicer, names, dict(readiness_checks or {}), settings.health_poll_seconds
    )
    metrics = None
    if settings.metrics_port:
        metrics, _ = start_http_server(settings.metrics_port, addr=settings.grpc_host)
    server.start()
    monitor.start()
    WORKER_UP.set(1)
    log.info(
        "server_started",
        port=port,
        worker=settings.worker_index,
        metrics_port=settings.metrics_port or None,
        services=names,
        tls=settings.tls.enabled,
    )
    return RunningServer(server, port, monitor, metrics)


def _bind(server: grpc.Server, settings: ServiceSettings) -> int:
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if settings.tls.enabled:
        assert settings.tls.key_file is not None and settings.tls.cert_file is not None
        credentials = grpc.ssl_server_credentials(
            [(settings.tls.key_file.read_bytes(), settings.tls.cert_file.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    return port


def serve_forever(settings: ServiceSettings, running: RunningServer) -> None:
    """Block until SIGTERM/SIGINT, then stop gracefully."""
    stopping = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stopping.wait()
    running.stop(settings.shutdown_grace_seconds)
    log.info("server_stopped")
