"""Typed configuration read once from `RECSTACK_*` environment variables.

Each service subclasses `ServiceSettings`, overriding the defaults that differ (its port), and
builds one instance in its `server.py`. Nothing else reads the environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.channels import ClientSettings
from shared.credentials import Credentials, CredentialSettings
from shared.paths import FileRoots, FileRootSettings


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset set)."""
    return len(os.sched_getaffinity(0))


class TlsSettings(BaseModel):
    """Server TLS; both files unset means plaintext (loopback and service-mesh deployments)."""

    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None and self.key_file is not None


class ServiceSettings(BaseSettings):
    """Settings every service shares. Env: `RECSTACK_<FIELD>`, nested with `__`."""

    model_config = SettingsConfigDict(
        env_prefix="RECSTACK_", env_nested_delimiter="__", extra="forbid"
    )

    service_name: str = "recstack"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    # 0 disables the Prometheus endpoint (tests); -1 never occurs.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    log_level: str = "INFO"
    # Required: services never start a database; unset stops the service at start-up.
    database_url: SecretStr | None = None
    db_pool_size: int = Field(default=10, ge=1, le=200)
    run_dir: Path = Path(".run")
    # File with one accepted bearer token per line; unset disables authentication.
    auth_token_file: Path | None = None
    tls: TlsSettings = TlsSettings()
    # How this service calls the others (`RECSTACK_CLIENT__TLS_CA_FILE`, `__TOKEN_FILE`, ...).
    client: ClientSettings = ClientSettings()
    # Secrets this service may send, each bound to endpoints: `RECSTACK_CREDENTIAL__<NAME>__*`
    # and/or one file per credential in `credentials_dir` (shared/credentials.py).
    credential: dict[str, CredentialSettings] = {}
    credentials_dir: Path | None = None
    # When set, the only URL prefixes (or Triton addresses) embedding models may call.
    embedding_endpoints: list[str] = []
    # Where FILE sources and training-set exports of each project may read and write
    # (`RECSTACK_FILES__ROOTS`, `RECSTACK_FILES__ROOT_TEMPLATE`; shared/paths.py).
    files: FileRootSettings = FileRootSettings()
    # Local directory or object-store URI of the Parquet offline store; default <run_dir>/offline.
    # Materialization writes it; the registry needs it to tell a project's own part of it.
    offline_store_uri: str = ""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Upper bound on any request's run time, whatever deadline the client sent.
    max_request_seconds: float = Field(default=30.0, gt=0)
    # Threads per server process.
    max_workers: int = Field(default=16, ge=1, le=1024)
    # Server processes on the one gRPC port (SO_REUSEPORT; shared/workers.py). Services that
    # scale with cores default to the cores this process may use (`available_cores`).
    workers: int = Field(default=1, ge=1, le=256)
    # Set by the supervisor of several workers for each of them (0, 1, ...); never by hand.
    worker_index: int | None = Field(default=None, ge=0)
    # Share of OK calls that log an access line; failed calls, and calls slower than
    # `slow_rpc_seconds`, always do. 1 logs every call.
    access_log_sample: float = Field(default=0.01, ge=0, le=1)
    slow_rpc_seconds: float = Field(default=0.25, ge=0)
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    # How often health probes its dependencies: a database going away turns the service
    # NOT_SERVING within about this long.
    health_poll_seconds: float = Field(default=0.5, gt=0)

    registry_addr: str = "127.0.0.1:50051"
    materialization_addr: str = "127.0.0.1:50052"
    serving_addr: str = "127.0.0.1:50053"
    recommend_addr: str = "127.0.0.1:50054"
    triton_addr: str = "127.0.0.1:8001"

    def server_paths(self) -> dict[str, str]:
        """This service's own paths, as errors name them instead of showing them."""
        paths = {self.offline_store(): "<offline store>", sys.prefix: "<python>"}
        paths.setdefault(str(self.run_dir.resolve()), "<run dir>")
        return paths

    def offline_store(self) -> str:
        return self.offline_store_uri or str((self.run_dir / "offline").resolve())

    def file_roots(self) -> FileRoots:
        return FileRoots.from_settings(self.files, self.offline_store())

    def credentials(self) -> Credentials:
        return Credentials.from_settings(self.credential, self.credentials_dir)

    def client_settings(self) -> ClientSettings:
        """`client`, sending the first token of `auth_token_file` when it names no token file
        of its own: services that share one token file then authenticate to each other."""
        if self.client.token_file is not None or self.auth_token_file is None:
            return self.client
        return self.client.model_copy(update={"token_file": self.auth_token_file})
