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
from shared.channels import ClientSettings, open_channel
from shared.errors import ConfigurationError


class CliSettings(BaseSettings):
    """`RECSTACK_*` environment settings of the CLI; command-line flags override them."""

    model_config = SettingsConfigDict(env_prefix="RECSTACK_", extra="forbid")

    registry_addr: str = "127.0.0.1:50051"
    # Sent as `authorization: Bearer …`; an environment variable only, so it stays out of
    # shell history and process listings.
    auth_token: SecretStr | None = None
    # Or a file whose first non-empty line is the token (the services' token file works).
    auth_token_file: Path | None = None
    # A CA bundle switches the channel to TLS and verifies the server against it.
    tls_ca_file: Path | None = None
    # The name the server's certificate is checked against; default: the address's host.
    tls_server_name: str = ""
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

    def call(
        self, rpc: str, request: Message, *, locate: Locator | None = None, long: bool = False
    ) -> Message:
        timeout = self._long_timeout if long else self._timeout
        try:
            return getattr(self._stub, rpc)(request, timeout=timeout)
        except grpc.RpcError as error:
            raise RpcFailed(error, self.address, locate, self.service) from None

    def stream(self, rpc: str, request: Message) -> Iterator[Message]:
        responses = getattr(self._stub, rpc)(request, timeout=self._long_timeout)
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
    # Every call states its deadline here (a long one may have none), so no channel default.
    client = ClientSettings(
        tls_ca_file=settings.tls_ca_file,
        tls=tls,
        tls_server_name=settings.tls_server_name,
        token_file=settings.auth_token_file,
        timeout_seconds=None,
    )
    try:
        return open_channel(address, client, token=settings.auth_token)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


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
