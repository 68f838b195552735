"""Declared credentials and their endpoint bindings (shared/credentials.py), and the registry's
policy checks that use them (services/registry/policy.py)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from recstack.registry.v1 import data_source_pb2, embedding_model_pb2

from services.registry.kinds import DATA_SOURCE, EMBEDDING_MODEL
from services.registry.policy import DefinitionPolicy, present
from shared.credentials import Credential, Credentials, CredentialSettings, endpoint_within
from shared.errors import ConfigurationError, FailedPrecondition, InvalidArgument

EM = embedding_model_pb2.EmbeddingModel


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("https://api.example.com/v1", True),
        ("https://API.example.com:443/v1/embeddings", True),
        ("https://api.example.com/v1/", True),
        ("https://api.example.com/v10", False),
        ("https://api.example.com", False),
        ("http://api.example.com/v1", False),
        ("https://api.example.com:8443/v1", False),
        ("https://api.example.com.attacker.net/v1", False),
        ("https://attacker.net/api.example.com/v1", False),
    ],
)
def test_a_binding_is_a_url_prefix_at_path_boundaries(url, inside):
    assert endpoint_within(url, ["https://api.example.com/v1"], "endpoint") is inside


def test_a_binding_that_names_a_user_binds_that_user():
    prefix = ["postgresql://reader@db.example.com/sales"]
    assert endpoint_within("postgres://reader@db.example.com:5432/sales", prefix, "url")
    assert not endpoint_within("postgresql://postgres@db.example.com/sales", prefix, "url")


def test_urls_with_passwords_or_several_hosts_are_refused():
    with pytest.raises(InvalidArgument) as caught:
        endpoint_within("https://u:pw@api.example.com/v1", ["https://api.example.com"], "f")
    assert caught.value.reason == "SECRET_IN_URL"
    with pytest.raises(InvalidArgument, match="is not a URL"):
        endpoint_within("postgresql://u@a:5432,b:5432/db", ["postgresql://a"], "f")


def test_a_secrets_directory_declares_credentials_and_their_bindings(tmp_path):
    (tmp_path / "openai").write_text("sk-dir-secret\n")
    (tmp_path / "openai.endpoints").write_text("# bound to\nhttps://api.openai.com/v1\n")
    (tmp_path / "openai.projects").write_text("shop\n")
    (tmp_path / "..data").mkdir()  # how Kubernetes mounts a Secret's keys
    credentials = Credentials.from_settings(
        {"other": CredentialSettings(secret=SecretStr("x"), endpoints=["https://o.example"])},
        tmp_path,
    )
    assert credentials.names == ["openai", "other"]
    url = "https://api.openai.com/v1/embeddings"
    assert credentials.secret_for("openai", url, "shop", "m") == "sk-dir-secret"
    with pytest.raises(FailedPrecondition) as caught:
        credentials.secret_for("openai", url, "other_project", "m")
    assert caught.value.reason == "CREDENTIAL_NOT_FOR_PROJECT"


def test_bad_declarations_stop_the_service(tmp_path):
    with pytest.raises(ConfigurationError, match="must match"):
        Credentials.from_settings({"Bad-Name": CredentialSettings()})
    with pytest.raises(ConfigurationError, match="credential k: endpoint"):
        Credentials({"k": Credential("k", None, ("not a url",), frozenset())})
    with pytest.raises(ConfigurationError, match="cannot read RECSTACK_CREDENTIALS_DIR"):
        Credentials.from_settings({}, tmp_path / "missing")


POLICY = DefinitionPolicy(
    Credentials(
        {
            "openai": Credential(
                "openai", None, ("https://api.openai.com/v1",), frozenset({"shop"})
            ),
            "sales": Credential(
                "sales", None, ("postgresql://reader@db.example.com/sales",), frozenset()
            ),
        }
    ),
    embedding_endpoints=("https://api.openai.com/v1", "grpc://triton:8001"),
)


def _model(**fields):
    return EM(provider=EM.PROVIDER_OPENAI_COMPATIBLE, model_name="m", **fields)


@pytest.mark.parametrize(
    ("model", "field", "reason"),
    [
        (_model(endpoint="https://api.openai.com/v1", credential="openai"), None, None),
        (EM(provider=EM.PROVIDER_TRITON, endpoint="triton:8001"), None, None),
        (
            EM(provider=EM.PROVIDER_TRITON, endpoint="elsewhere:8001"),
            "endpoint",
            "EMBEDDING_ENDPOINT_NOT_ALLOWED",
        ),
        (
            EM(provider=EM.PROVIDER_TRITON, endpoint="triton:8001", credential="openai"),
            "credential",
            "INVALID_ARGUMENT",
        ),
        (
            _model(endpoint="https://evil.example.com/v1"),
            "endpoint",
            "EMBEDDING_ENDPOINT_NOT_ALLOWED",
        ),
        (_model(credential="openai"), "credential", "INVALID_ARGUMENT"),
        (_model(endpoint="ftp://api.openai.com/v1"), "endpoint", "INVALID_ARGUMENT"),
    ],
)
def test_embedding_model_policy(model, field, reason):
    if field is None:
        POLICY.check(EMBEDDING_MODEL.key, "shop", model)
        return
    with pytest.raises(InvalidArgument) as caught:
        POLICY.check(EMBEDDING_MODEL.key, "shop", model)
    assert (caught.value.field, caught.value.reason) == (f"embedding_model.{field}", reason)


def test_a_credential_declared_for_other_projects_is_refused():
    with pytest.raises(InvalidArgument) as caught:
        model = _model(endpoint="https://api.openai.com/v1", credential="openai")
        POLICY.check(EMBEDDING_MODEL.key, "other", model)
    assert caught.value.reason == "CREDENTIAL_NOT_FOR_PROJECT"


def _postgres(**fields):
    return data_source_pb2.DataSource(
        postgres=data_source_pb2.PostgresSource(table="t", **fields), event_timestamp_column="ts"
    )


def test_postgres_source_policy():
    POLICY.check(DATA_SOURCE.key, "shop", _postgres())
    POLICY.check(
        DATA_SOURCE.key,
        "shop",
        _postgres(
            url="postgresql://reader@db.example.com/sales?sslmode=require", credential="sales"
        ),
    )
    for source, field, reason in (
        (_postgres(credential="sales"), "credential", "INVALID_ARGUMENT"),
        (
            _postgres(url="postgresql://postgres@db.example.com/sales", credential="sales"),
            "credential",
            "CREDENTIAL_ENDPOINT_NOT_BOUND",
        ),
        (
            _postgres(url="mysql://reader@db.example.com/sales", credential="sales"),
            "url",
            "INVALID_ARGUMENT",
        ),
    ):
        with pytest.raises(InvalidArgument) as caught:
            POLICY.check(DATA_SOURCE.key, "shop", source)
        assert (caught.value.field, caught.value.reason) == (
            f"data_source.postgres.{field}",
            reason,
        )


def test_a_password_stored_before_they_were_refused_is_never_returned():
    stored = _postgres(url="postgresql://app:s3cret@db.example.com:5432/sales")
    shown = present(DATA_SOURCE, stored)
    assert shown.postgres.url == "postgresql://app:***@db.example.com:5432/sales"
    assert "s3cret" in stored.postgres.url  # the stored definition itself is untouched
    plain = _postgres(url="postgresql://app@db.example.com/sales")
    assert present(DATA_SOURCE, plain) is plain
