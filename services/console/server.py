"""Console entry point: settings → logging → clients of the four services → HTTP server.

    python -m services.console.server

The console is an HTTP server for people (default port 8080). It owns nothing: every page is
made of the services' public gRPC API answers, and every action is one of their calls.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import uvicorn
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.console.app import create_app
from services.console.clients import Clients
from shared.channels import ClientSettings
from shared.logging import configure_logging

REPO_ROOT = Path(__file__).resolve().parents[2]


class ConsoleSettings(BaseSettings):
    """`RECSTACK_*` environment variables the console reads (the services' names where they
    mean the same: the peers' addresses and `RECSTACK_CLIENT__*`)."""

    model_config = SettingsConfigDict(
        env_prefix="RECSTACK_", env_nested_delimiter="__", extra="forbid"
    )

    service_name: str = "console"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_level: str = "INFO"
    # How the console reaches the services: TLS settings only; it sends the person's token.
    client: ClientSettings = ClientSettings()
    registry_addr: str = "127.0.0.1:50051"
    materialization_addr: str = "127.0.0.1:50052"
    serving_addr: str = "127.0.0.1:50053"
    recommend_addr: str = "127.0.0.1:50054"
    # Signs the session cookie. Unset: a random key per process (sessions end on restart);
    # set one shared key when several console replicas sit behind one address.
    console_session_secret: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)), min_length=16
    )
    # Mark the cookies Secure: set when the console is reached over HTTPS.
    console_secure_cookies: bool = False
    # Where htmx and Vega are: the npm packages `make setup` installs (node_modules).
    console_vendor_dir: Path = REPO_ROOT / "node_modules"

    @field_validator("console_session_secret", mode="before")
    @classmethod
    def _random_when_empty(cls, value: object) -> object:
        # An empty variable (compose's `${VAR:-}`) must not become an empty signing key.
        return value or secrets.token_urlsafe(32)

    def addresses(self) -> dict[str, str]:
        return {
            "registry": self.registry_addr,
            "materialization": self.materialization_addr,
            "serving": self.serving_addr,
            "recommend": self.recommend_addr,
        }


def main() -> None:
    settings = ConsoleSettings()
    configure_logging(settings.log_level, service=settings.service_name)
    clients = Clients(settings.addresses(), settings.client)
    app = create_app(settings, clients)
    try:
        # SIGTERM makes uvicorn finish the requests in flight, then stop.
        uvicorn.run(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    finally:
        clients.close()


if __name__ == "__main__":
    main()
