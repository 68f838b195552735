"""Credentials by reference: secrets the operator declares to the services, each bound to the
endpoints it may be sent to. API callers only ever name a credential; they never choose which
secret a service reads, nor where a secret goes.

Declared in a service's environment, by name (lowercase; `a-z`, `0-9`, `_`):

    RECSTACK_CREDENTIAL__OPENAI__SECRET=sk-...
    RECSTACK_CREDENTIAL__OPENAI__ENDPOINTS='["https://api.openai.com/v1"]'
    RECSTACK_CREDENTIAL__OPENAI__PROJECTS='["shop"]'        # optional: who may reference it

or as files in `RECSTACK_CREDENTIALS_DIR` (a mounted Kubernetes Secret, for example): `<name>`
holds the secret, `<name>.endpoints` one URL prefix per line, `<name>.projects` optionally one
project per line.

A binding is a URL prefix: scheme, host and port must be equal (default ports filled in), the
path must start with the prefix's path at a `/` boundary, and a user named in the prefix must
be the URL's. The registry checks references at create time (INVALID_ARGUMENT); the services
that send a secret check them again at each call (FAILED_PRECONDITION), because declarations
can change after a definition was stored. The registry needs only names and endpoints; a
declaration there may leave the secret out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr

from shared.errors import ConfigurationError, FailedPrecondition, InvalidArgument, quoted

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "grpc": 0}
_SCHEME_ALIASES = {"postgres": "postgresql", "postgresql+psycopg": "postgresql"}
# libpq URL parameters that neither redirect the connection nor carry a secret; any other
# (`host`, `port`, `user`, `password`, `passfile`, `service`, `sslkey`, ...) is refused.
POSTGRES_QUERY_PARAMETERS = frozenset(
    {"sslmode", "connect_timeout", "application_name", "target_session_attrs"}
)


class CredentialSettings(BaseModel):
    """One declared credential (`RECSTACK_CREDENTIAL__<NAME>__<FIELD>`)."""

    model_config = ConfigDict(extra="forbid")

    secret: SecretStr | None = None
    endpoints: list[str] = []
    projects: list[str] = []


@dataclass(frozen=True)
class Endpoint:
    """A parsed URL (or URL prefix): what a binding compares."""

    scheme: str
    host: str
    port: int
    path: str
    user: str

    @classmethod
    def parse(cls, url: str, field: str) -> Endpoint:
        """Raises InvalidArgument naming `field` for URLs that cannot be bound safely."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise InvalidArgument(field, f"{quoted(url)} is not a URL") from None
        scheme = _SCHEME_ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
        if not scheme or not parts.hostname or "," in parts.netloc:
            raise InvalidArgument(field, f"{quoted(url)} is not a URL with one host")
        if parts.password is not None:
            raise InvalidArgument(
                field,
                "must not contain a password: declare it as a credential and reference it",
                reason="SECRET_IN_URL",
            )
        if scheme == "postgresql":
            for key, _ in parse_qsl(parts.query, keep_blank_values=True):
                if key not in POSTGRES_QUERY_PARAMETERS:
                    raise InvalidArgument(
                        field,
                        f"URL parameter {quoted(key)} is not allowed (allowed: "
                        f"{', '.join(sorted(POSTGRES_QUERY_PARAMETERS))})",
                        reason="URL_PARAMETER_NOT_ALLOWED",
                    )
        return cls(
            scheme,
            parts.hostname.lower(),
            port if port is not None else _DEFAULT_PORTS.get(scheme, 0),
            parts.path.rstrip("/"),
            parts.username or "",
        )

    def within(self, prefix: Endpoint) -> bool:
        if (self.scheme, self.host, self.port) != (prefix.scheme, prefix.host, prefix.port):
            return False
        if prefix.user and prefix.user != self.user:
            return False
        return self.path == prefix.path or self.path.startswith(f"{prefix.path}/")


def endpoint_within(url: str, prefixes: Sequence[str], field: str) -> bool:
    endpoint = Endpoint.parse(url, field)
    return any(endpoint.within(Endpoint.parse(prefix, "binding")) for prefix in prefixes)


@dataclass(frozen=True)
class Credential:
    name: str
    secret: SecretStr | None
    endpoints: tuple[str, ...]
    projects: frozenset[str]


class Credentials:
    """The credentials declared to this process, and the checks every use goes through."""

    def __init__(self, declared: Mapping[str, Credential] | None = None) -> None:
        self._declared = dict(declared or {})
        for credential in self._declared.values():
            for prefix in credential.endpoints:
                try:
                    Endpoint.parse(prefix, "endpoints")
                except InvalidArgument as exc:
                    raise ConfigurationError(
                        f"credential {credential.name}: endpoint {exc.description}"
                    ) from None

    @classmethod
    def from_settings(
        cls, declared: Mapping[str, CredentialSettings], directory: Path | None = None
    ) -> Credentials:
        """Environment declarations, then files in `directory` (a name in both: the files)."""
        credentials = {
            name.lower(): Credential(
                name.lower(), item.secret, tuple(item.endpoints), frozenset(item.projects)
            )
            for name, item in declared.items()
        }
        if directory is not None:
            credentials.update(_from_directory(directory))
        for name in credentials:
            if not NAME.match(name):
                raise ConfigurationError(f"credential name {name!r} must match {NAME.pattern}")
        return cls(credentials)

    @property
    def names(self) -> list[str]:
        return sorted(self._declared)

    def check(self, name: str, endpoint: str, project: str, field: str) -> Credential:
        """Create time: INVALID_ARGUMENT naming `field` unless `name` may go to `endpoint`."""
        credential = self._declared.get(name)
        if credential is None:
            declared = ", ".join(self.names) or "none"
            raise InvalidArgument(
                field,
                f"credential {quoted(name)} is not declared to the services (declared: "
                f"{declared}); an operator declares credentials with RECSTACK_CREDENTIAL__<NAME> "
                "or RECSTACK_CREDENTIALS_DIR",
                reason="CREDENTIAL_NOT_DECLARED",
            )
        if credential.projects and project not in credential.projects:
            raise InvalidArgument(
                field,
                f"credential {quoted(name)} is not declared for project {quoted(project)}",
                reason="CREDENTIAL_NOT_FOR_PROJECT",
            )
        if not endpoint_within(endpoint, credential.endpoints, field.rsplit(".", 1)[0]):
            raise InvalidArgument(
                field,
                f"credential {quoted(name)} may not be sent to {quoted(endpoint)}: it is bound "
                f"to {', '.join(credential.endpoints) or 'no endpoint'}",
                reason="CREDENTIAL_ENDPOINT_NOT_BOUND",
            )
        return credential

    def secret_for(self, name: str, endpoint: str, project: str, what: str) -> str:
        """Call time: the secret, or FAILED_PRECONDITION if the reference no longer holds."""
        try:
            credential = self.check(name, endpoint, project, "credential")
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"{what}: {exc.description}; nothing was sent", reason=exc.reason
            ) from None
        if credential.secret is None or not credential.secret.get_secret_value().strip():
            raise FailedPrecondition(
                f"{what}: credential {quoted(name)} is declared without a secret in this "
                "service; nothing was sent",
                reason="CREDENTIAL_SECRET_MISSING",
            )
        return credential.secret.get_secret_value().strip()


def _from_directory(directory: Path) -> dict[str, Credential]:
    try:
        files = sorted(path for path in directory.iterdir() if path.is_file())
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read RECSTACK_CREDENTIALS_DIR {directory}: {exc.strerror}"
        ) from None
    credentials = {}
    for path in files:
        # Kubernetes mounts keys through `..data` symlinks and dot-directories: skip them.
        if "." in path.name or path.name.startswith("_"):
            continue
        credentials[path.name] = Credential(
            path.name,
            SecretStr(path.read_text().strip()),
            tuple(_lines(path.with_name(f"{path.name}.endpoints"))),
            frozenset(_lines(path.with_name(f"{path.name}.projects"))),
        )
    return credentials


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
