"""What the operator allows definitions to point at: declared credentials and the endpoints they
are bound to, and an optional allow-list of embedding endpoints.

Checked at create and update time, after a definition's own validation, so a caller learns at
once (INVALID_ARGUMENT naming the field) that a reference cannot work; the services that act on
a definition check again at call time, since declarations may change after it was stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from google.protobuf.message import Message
from recstack.registry.v1 import data_source_pb2, embedding_model_pb2

from services.registry.kinds import DATA_SOURCE, EMBEDDING_MODEL, Kind
from shared.credentials import Credentials, Endpoint, endpoint_within
from shared.errors import InvalidArgument, quoted
from shared.paths import FileRoots

EmbeddingModel = embedding_model_pb2.EmbeddingModel


@dataclass(frozen=True)
class DefinitionPolicy:
    credentials: Credentials = field(default_factory=Credentials)
    # Empty: any endpoint. Else the URL prefixes (`grpc://host:port` for Triton) models may call.
    embedding_endpoints: tuple[str, ...] = ()
    # Where FILE sources may point; None leaves paths unchecked (unit tests of other rules).
    files: FileRoots | None = None

    def check(self, kind_key: str, project: str, spec: Message) -> None:
        check = _CHECKS.get(kind_key)
        if check is not None:
            check(self, project, spec)


def present(kind: Kind, spec: Message) -> Message:
    """`spec` as Get and List return it: a password that a definition stored before passwords
    were refused is masked, never returned."""
    if kind.key != DATA_SOURCE.key or spec.WhichOneof("kind") != "postgres":
        return spec
    parts = urlsplit(spec.postgres.url)
    if parts.password is None:
        return spec
    masked = type(spec)()
    masked.CopyFrom(spec)
    netloc = f"{parts.username or ''}:***@{parts.netloc.rsplit('@', 1)[1]}"
    masked.postgres.url = urlunsplit(parts._replace(netloc=netloc))
    return masked


def triton_url(endpoint: str) -> str:
    """A Triton gRPC address as a URL, for bindings and allow-lists."""
    return endpoint if "://" in endpoint else f"grpc://{endpoint}"


def _embedding_model(policy: DefinitionPolicy, project: str, model: EmbeddingModel) -> None:
    if model.api_key_env:
        raise InvalidArgument(
            "embedding_model.api_key_env",
            "is no longer supported (it let a caller choose which of the service's environment "
            "variables is sent): leave it empty and set `credential` to a credential the "
            "operator declared for this endpoint",
            reason="API_KEY_ENV_UNSUPPORTED",
        )
    triton = model.provider == EmbeddingModel.PROVIDER_TRITON
    if triton and model.credential:
        raise InvalidArgument(
            "embedding_model.credential", "a PROVIDER_TRITON model sends no credential"
        )
    if not model.endpoint:
        if model.credential:
            raise InvalidArgument(
                "embedding_model.credential", "a credential needs the model's endpoint"
            )
        return
    url = triton_url(model.endpoint) if triton else model.endpoint
    parsed = Endpoint.parse(url, "embedding_model.endpoint")
    if not triton and parsed.scheme not in ("http", "https"):
        raise InvalidArgument("embedding_model.endpoint", "must be an http(s) URL")
    if policy.embedding_endpoints and not endpoint_within(
        url, policy.embedding_endpoints, "embedding_model.endpoint"
    ):
        raise InvalidArgument(
            "embedding_model.endpoint",
            f"{quoted(model.endpoint)} is not among the embedding endpoints the operator "
            f"allows ({', '.join(policy.embedding_endpoints)})",
            reason="EMBEDDING_ENDPOINT_NOT_ALLOWED",
        )
    if model.credential:
        policy.credentials.check(model.credential, url, project, "embedding_model.credential")


def _data_source(
    policy: DefinitionPolicy, project: str, source: data_source_pb2.DataSource
) -> None:
    if source.WhichOneof("kind") == "file" and policy.files is not None:
        policy.files.readable(source.file.path, project, "data_source.file.path")
    if source.WhichOneof("kind") != "postgres":
        return
    postgres = source.postgres
    if not postgres.url:
        if postgres.credential:
            raise InvalidArgument(
                "data_source.postgres.credential",
                "the platform's database needs none: sources without a url run under the "
                "project's own role",
            )
        return
    if Endpoint.parse(postgres.url, "data_source.postgres.url").scheme != "postgresql":
        raise InvalidArgument("data_source.postgres.url", "must be a postgresql:// URL")
    if not postgres.credential:
        raise InvalidArgument(
            "data_source.postgres.credential",
            "is required with a url: reference the credential the operator declared for that "
            "database (its secret is the url user's password)",
            reason="CREDENTIAL_REQUIRED",
        )
    policy.credentials.check(
        postgres.credential, postgres.url, project, "data_source.postgres.credential"
    )


_CHECKS: dict[str, Callable[[DefinitionPolicy, str, Message], None]] = {
    EMBEDDING_MODEL.key: _embedding_model,
    DATA_SOURCE.key: _data_source,
}
