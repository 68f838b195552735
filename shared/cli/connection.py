"""How the CLI reaches the registry: address, credentials and deadline, then one call at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

import grpc
from google.protobuf.message import Message
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from recstack.registry.v1 import registry_service_pb2_grpc

from shared.cli.errors import Locator, RpcFailed, UsageError


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


class Connection:
    """A channel to the registry; `call` adds the deadline and credentials to every RPC."""

    def __init__(self, settings: CliSettings, *, tls: bool = False) -> None:
        self.address = settings.registry_addr
        self._timeout = settings.timeout_seconds
        self._channel = _channel(settings, tls)
        self._stub = registry_service_pb2_grpc.RegistryServiceStub(self._channel)
        token = settings.auth_token.get_secret_value() if settings.auth_token else ""
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def call(self, rpc: str, request: Message, *, locate: Locator | None = None) -> Message:
        try:
            return getattr(self._stub, rpc)(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise RpcFailed(error, self.address, locate) from None

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


def _channel(settings: CliSettings, tls: bool) -> grpc.Channel:
    if settings.tls_ca_file is None and not tls:
        return grpc.insecure_channel(settings.registry_addr)
    roots = None
    if settings.tls_ca_file is not None:
        try:
            roots = settings.tls_ca_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the TLS CA file: {exc}") from None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.secure_channel(settings.registry_addr, credentials)


@dataclass(frozen=True)
class Context:
    """What every command handler gets besides its own arguments."""

    settings: CliSettings
    output: str
    out: TextIO
    tls: bool = False

    def connect(self) -> Connection:
        return Connection(self.settings, tls=self.tls)

    def echo(self, text: str) -> None:
        print(text, file=self.out)
