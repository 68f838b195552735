"""TLS and bearer tokens for a test stack: a throwaway CA (trustme), a server certificate for
127.0.0.1 and localhost, and one token file the services accept and send."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from infra.local.postgres import create_source_role, drop_source_role
from shared.channels import ClientSettings


@dataclass(frozen=True)
class StackSecurity:
    """What every service of a test stack is started with, and what its clients use."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    token_file: Path | None = None

    @classmethod
    def generate(cls, directory: Path) -> StackSecurity:
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        files = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
        ca.cert_pem.write_to_path(str(files["ca"]))
        cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
        cert.private_key_pem.write_to_path(str(files["key"]))
        token_file = directory / "tokens.txt"
        token_file.write_text(f"{secrets.token_urlsafe(24)}\n")
        return cls(files["ca"], files["cert"], files["key"], token_file)

    @property
    def enabled(self) -> bool:
        return self.token_file is not None

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip() if self.token_file else ""

    def server_settings(self) -> dict[str, Any]:
        """Keyword arguments of a service's settings: TLS, accepted tokens, its own clients."""
        if not self.enabled:
            return {}
        return {
            "tls": {"cert_file": self.cert_file, "key_file": self.key_file},
            "auth_token_file": self.token_file,
            "client": {"tls_ca_file": self.ca_file},
        }

    def client(self, **overrides: Any) -> ClientSettings:
        settings = ClientSettings(tls_ca_file=self.ca_file, token_file=self.token_file)
        return settings.model_copy(update=overrides)

    def cli_env(self) -> dict[str, str]:
        """The environment the `recstack` CLI reads the same credentials from."""
        if not self.enabled:
            return {}
        return {
            "RECSTACK_TLS_CA_FILE": str(self.ca_file),
            "RECSTACK_AUTH_TOKEN_FILE": str(self.token_file),
        }


@dataclass
class SourceRoles:
    """Creates the project roles a test's POSTGRES sources run as; drops them all at the end
    (roles outlive the test database: they belong to the whole server)."""

    database_url: str
    template: str

    def __post_init__(self) -> None:
        self._created: list[str] = []

    def grant(self, project: str, schema: str | None = None) -> str:
        role = self.template.format(project=project)
        create_source_role(self.database_url, role, schema)
        self._created.append(role)
        return role

    def drop_all(self) -> None:
        for role in dict.fromkeys(self._created):
            drop_source_role(self.database_url, role)
