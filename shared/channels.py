"""The one way recstack opens a gRPC client channel: service to service, the CLI, benchmarks,
tests and the demo all call `open_channel`, so turning on TLS or tokens never breaks a caller.

A channel from `open_channel`:
- uses TLS when a CA bundle is configured (servers are verified against it) or `tls` is set
  (the system's roots); `tls_server_name` names the certificate to expect when the address is
  an IP or an internal alias;
- sends `authorization: Bearer <token>` on every call when a token is configured (read once,
  from the first non-empty line of `token_file`, when the channel opens);
- gives calls with a unary response a default deadline when the caller set none (a response
  stream, such as watching a job, runs until the caller's own deadline);
- keeps the connection alive with HTTP/2 pings, so a peer that vanished is noticed before the
  next call waits on it;
- retries a call answered UNAVAILABLE, and only UNAVAILABLE, with exponential backoff (a gRPC
  service-config retry policy: https://github.com/grpc/proposal/blob/master/A6-client-retries.md).
  Every other status is the answer: retrying INTERNAL or UNAUTHENTICATED cannot help.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from shared.errors import ConfigurationError

AUTHORIZATION = "authorization"
# Server side: accept our clients' keepalive pings (gRPC's default minimum is 5 minutes, and a
# client pinging more often than that is sent GOAWAY "too_many_pings").
SERVER_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
)
_RETRY_INITIAL_BACKOFF = "0.1s"
_RETRY_MAX_BACKOFF = "1s"


class ClientSettings(BaseModel):
    """How a process's gRPC clients reach recstack services (`RECSTACK_CLIENT__<FIELD>` in a
    service's environment)."""

    model_config = ConfigDict(extra="forbid")

    # A PEM bundle of the CAs that sign the services' certificates: switches channels to TLS.
    tls_ca_file: Path | None = None
    # TLS verified against the system's roots, when no CA bundle is given.
    tls: bool = False
    # The host name the servers' certificates are checked against; default: the address's host.
    tls_server_name: str = ""
    # First non-empty line: the bearer token sent on every call.
    token_file: Path | None = None
    # Deadline of a unary-response call that sets none; None leaves such calls without one.
    timeout_seconds: float | None = Field(default=30.0, gt=0)
    keepalive_seconds: float = Field(default=60.0, ge=10)
    # Attempts of a call answered UNAVAILABLE, the first included (gRPC allows at most 5).
    max_attempts: int = Field(default=3, ge=1, le=5)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    @property
    def secure(self) -> bool:
        return self.tls or self.tls_ca_file is not None


def open_channel(
    address: str,
    settings: ClientSettings | None = None,
    *,
    token: SecretStr | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `address` with `settings`; `token` overrides `settings.token_file`.

    Raises ConfigurationError when a configured file cannot be read.
    """
    settings = settings or ClientSettings()
    secret = token.get_secret_value() if token is not None else read_token(settings.token_file)
    channel_options = [*_options(settings), *options]
    if settings.secure:
        credentials = grpc.ssl_channel_credentials(root_certificates=_roots(settings))
        channel = grpc.secure_channel(address, credentials, options=channel_options)
    else:
        channel = grpc.insecure_channel(address, options=channel_options)
    if not secret and settings.timeout_seconds is None:
        return channel
    return grpc.intercept_channel(channel, CallDefaults(secret, settings.timeout_seconds))


def read_token(path: Path | None) -> str:
    """The first non-empty line of a token file ('' when `path` is None)."""
    if path is None:
        return ""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the token file {path}: {exc.strerror}") from None
    token = next((line.strip() for line in lines if line.strip()), "")
    if not token:
        raise ConfigurationError(f"the token file {path} holds no token")
    return token


def service_config(max_attempts: int) -> str:
    """The retry policy as gRPC service config JSON: every method, UNAVAILABLE only."""
    if max_attempts < 2:
        return json.dumps({"methodConfig": [{"name": [{}]}]})
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": _RETRY_INITIAL_BACKOFF,
        "maxBackoff": _RETRY_MAX_BACKOFF,
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": policy}]})


def _options(settings: ClientSettings) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(settings.max_attempts)),
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    if settings.secure and settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    return options


def _roots(settings: ClientSettings) -> bytes | None:
    if settings.tls_ca_file is None:
        return None  # gRPC's default roots
    try:
        return settings.tls_ca_file.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the TLS CA file {settings.tls_ca_file}: {exc.strerror}"
        ) from None


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class CallDefaults(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call and a deadline to unary-response calls without one."""

    def __init__(self, token: str, timeout_seconds: float | None) -> None:
        self._authorization = ((AUTHORIZATION, f"Bearer {token}"),) if token else ()
        self._timeout = timeout_seconds

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details, unary_response=True), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details, unary_response=False), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._details(details, unary_response=True), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._details(details, unary_response=False), requests)

    def _details(self, details: grpc.ClientCallDetails, *, unary_response: bool) -> _CallDetails:
        timeout = details.timeout
        if timeout is None and unary_response:
            timeout = self._timeout
        metadata = details.metadata
        if self._authorization:
            # The caller's own authorization (a test sending a wrong token) wins.
            given = tuple(metadata or ())
            if not any(key == AUTHORIZATION for key, _ in given):
                metadata = given + self._authorization
        return _CallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
