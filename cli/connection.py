"""How the CLI reaches the registry: address, credentials and deadline, then one call at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import grpc
from google.protobuf.message import Message
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from recstack.registry.v1 import registry_service_pb2_grpc

from cli.errors import Locator, RpcFailed, UsageError


class CliSettings(BaseSettings):
    """`RECSTACK_*` environment settings of the CLI; command-line flags override them."""

    model_config = SettingsConfigDict(env_prefix="RECSTACK_", extra="forbid")

    registry_addr: str = "127.0.0.1:50051"
    # Sent as `authorization: Bearer …`; an environment variable only, so it stays out of
    # shell history and process listings.
    auth_token: SecretStr | None = None
    # A CA bundle switches the channel to TLS and verifies the server against it.
    tls_ca_file: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    # Show Python tracebacks of unexpected errors (for bug reports).
    debug: bool = False


@dataclass(frozen=True)
class Service:
    """A service the CLI talks to: its stub and how a user points the CLI at it."""

    label: str
    flag: str
    env: str
    stub: Callable[[grpc.Channel], Any]


REGISTRY = Service(
    "registry",
    "--registry",
    "RECSTACK_REGISTRY_ADDR",
    registry_service_pb2_grpc.RegistryServiceStub,
)


class Connection:
    """A channel to one service; every RPC gets the deadline and credentials.

    Long calls (watching a job, exporting) take as long as the work unless the user set a
    timeout (--timeout or RECSTACK_TIMEOUT_SECONDS).
    """

    def __init__(
        self, settings: CliSettings, address: str, service: Service, *, tls: bool = False
    ) -> None:
        self.address = address
        self.service = service
        self._timeout = settings.timeout_seconds
        explicit = "timeout_seconds" in settings.model_fields_set
        self._long_timeout = settings.timeout_seconds if explicit else None
        self._channel = _channel(address, settings, tls)
        self._stub = service.stub(self._channel)
        token = settings.auth_token.get_secret_value() if settings.auth_token else ""
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def call(
        self, rpc: str, request: Message, *, locate: Locator | None = None, long: bool = False
    ) -> Message:
        timeout = self._long_timeout if long else self._timeout
        try:
            return getattr(self._stub, rpc)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise RpcFailed(error, self.address, locate, self.service) from None

    def stream(self, rpc: str, request: Message) -> Iterator[Message]:
        responses = getattr(self._stub, rpc)(
            request, timeout=self._long_timeout, metadata=self._metadata
        )
        try:
            yield from responses
        except grpc.RpcError as error:
            raise RpcFailed(error, self.address, None, self.service) from None
        finally:
            responses.cancel()  # an interrupted watch must not leave the stream open

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _channel(address: str, settings: CliSettings, tls: bool) -> grpc.Channel:
    if settings.tls_ca_file is None and not tls:
        return grpc.insecure_channel(address)
    roots = None
    if settings.tls_ca_file is not None:
        try:
            roots = settings.tls_ca_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the TLS CA file: {exc}") from None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.secure_channel(address, credentials)


@dataclass(frozen=True)
class Context:
    """What every command handler gets besides its own arguments."""

    settings: CliSettings
    output: str
    out: TextIO
    tls: bool = False

    def connect(self) -> Connection:
        return Connection(self.settings, self.settings.registry_addr, REGISTRY, tls=self.tls)

    def echo(self, text: str) -> None:
        print(text, file=self.out)
