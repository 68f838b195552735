"""The OPENAI_COMPATIBLE provider against a real HTTP server speaking POST /v1/embeddings.

The server is tests/openai_api.py: deterministic vectors, a bearer token, scripted failures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from structlog.testing import capture_logs

from shared.credentials import Credential, Credentials
from shared.embeddings import (
    Embedder,
    EmbeddingMetrics,
    InMemoryEmbeddingCache,
    ModelSettings,
    Provider,
)
from shared.errors import DomainError, FailedPrecondition, Unavailable
from tests.openai_api import API_KEY, FakeAPI, Reply, serve, vector_of

CREDENTIAL = "reviews_key"
NAME = "projects/shop/embeddingModels/reviews"


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    with serve() as state:
        yield state


@pytest.fixture
def key() -> str:
    return API_KEY


def declared(api: FakeAPI, secret: str | None = API_KEY, **overrides) -> Credentials:
    """`reviews_key`, bound to the fake API's URL, as the operator would declare it."""
    values = {
        "secret": SecretStr(secret) if secret else None,
        "endpoints": (api.url,),
        "projects": frozenset(),
    }
    values.update(overrides)
    return Credentials({CREDENTIAL: Credential(CREDENTIAL, **values)})


def make_embedder(credentials: Credentials, sleeps: Sleeps) -> Embedder:
    return Embedder(
        InMemoryEmbeddingCache(),
        triton_address="127.0.0.1:1",
        metrics=EmbeddingMetrics(CollectorRegistry()),
        sleep=sleeps,
        jitter=lambda: 0.5,
        credentials=credentials,
    )


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def embedder(api: FakeAPI, sleeps: Sleeps) -> Iterator[Embedder]:
    instance = make_embedder(declared(api), sleeps)
    try:
        yield instance
    finally:
        instance.close()


def model(api: FakeAPI, **overrides) -> ModelSettings:
    values = {
        "name": NAME,
        "provider": Provider.OPENAI_COMPATIBLE,
        "model_name": "text-embedding-v4",
        "dimension": 8,
        "max_input_tokens": 8192,
        "batch_size": 3,
        "concurrency": 2,
        "endpoint": api.url,
        "credential": CREDENTIAL,
        "max_retries": 3,
        "initial_backoff_s": 0.01,
        "call_timeout_s": 5.0,
    }
    values.update(overrides)
    return ModelSettings(**values)


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert API_KEY not in text


def test_embeds_in_batches_with_model_input_dimensions_and_bearer_token(api, key, embedder):
    texts = ["Great  fit,\n true to size", "Runs small", None, "Fabric pills", "Runs small"]

    result = embedder.embed(model(api), texts)

    assert result.valid.tolist() == [True, True, False, True, True]
    assert result.vectors.shape == (5, 8)
    np.testing.assert_array_equal(
        result.vectors[0], np.float32(vector_of("Great fit, true to size", 8))
    )
    np.testing.assert_array_equal(result.vectors[1], result.vectors[4])
    assert not result.vectors[2].any()
    (request,) = api.requests
    assert request["path"] == "/v1/embeddings"
    assert request["auth"] == f"Bearer {key}"
    assert request["body"] == {
        "model": "text-embedding-v4",
        "input": ["Great fit, true to size", "Runs small", "Fabric pills"],
        "dimensions": 8,
        "encoding_format": "float",
    }
    assert (result.stats.texts, result.stats.embedded, result.stats.model_calls) == (4, 3, 1)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_endpoint_with_or_without_v1(api, key, embedder, suffix):
    embedder.embed(model(api, endpoint=api.url + suffix), ["a"])
    assert [r["path"] for r in api.requests] == ["/v1/embeddings"]


def test_many_batches_keep_row_order(api, key, embedder):
    texts = [f"review {i}" for i in range(20)]
    result = embedder.embed(model(api, batch_size=3, concurrency=4), texts)
    assert len(api.requests) == 7
    for row, text in enumerate(texts):
        np.testing.assert_array_equal(result.vectors[row], np.float32(vector_of(text, 8)))


def test_429_with_retry_after_is_retried_no_sooner_than_asked(api, key, embedder, sleeps):
    api.fail(2, Reply(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "2"}))

    result = embedder.embed(model(api), ["a"])

    assert len(api.requests) == 3
    assert sleeps == [2.0, 2.0]
    assert result.stats.retries == 2
    np.testing.assert_array_equal(result.vectors[0], np.float32(vector_of("a", 8)))


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_with_backoff(api, key, embedder, sleeps, status):
    api.fail(3, Reply(status, {"error": {"message": "upstream overloaded"}}))

    result = embedder.embed(model(api, initial_backoff_s=0.2), ["a"])

    assert len(api.requests) == 4
    assert sleeps == [pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.4)]
    assert (result.stats.retries, result.stats.model_calls) == (3, 1)


def test_exhausted_retries_raise_unavailable_without_the_key(api, key, embedder, sleeps):
    api.fail(10, Reply(503, {"error": {"message": f"overloaded (your key {API_KEY})"}}))

    with capture_logs() as logs, pytest.raises(Unavailable) as excinfo:
        embedder.embed(model(api, max_retries=2), ["a"])

    error = excinfo.value
    assert error.reason == "EMBEDDING_PROVIDER_UNAVAILABLE"
    assert NAME in error.message
    assert f"{api.url}/v1/embeddings" in error.message
    assert "3 attempt(s)" in error.message
    assert "HTTP 503" in error.message
    assert "overloaded (your key ***)" in error.message
    assert len(api.requests) == 3
    assert len(sleeps) == 2
    assert_no_key(error.message, str(error), repr(error), repr(error.metadata), repr(logs))


def test_400_fails_at_once_quoting_the_provider(api, key, embedder, sleeps):
    api.fail(
        1,
        Reply(
            400,
            {
                "error": {
                    "message": "Range of input length should be [1, 8192]",
                    "type": "invalid_request_error",
                    "code": "InvalidParameter",
                }
            },
        ),
    )
    with pytest.raises(FailedPrecondition) as excinfo:
        embedder.embed(model(api), ["a very long text"])
    assert excinfo.value.reason == "EMBEDDING_REQUEST_REJECTED"
    assert "HTTP 400" in excinfo.value.message
    assert "Range of input length should be [1, 8192]" in excinfo.value.message
    assert "input limit" in excinfo.value.message
    assert len(api.requests) == 1
    assert sleeps == []


def test_a_wrong_key_is_an_auth_failure_naming_the_credential_not_the_key(api, sleeps):
    embedder = make_embedder(declared(api, "sk-wrong-key-1234"), sleeps)
    with pytest.raises(FailedPrecondition) as excinfo:
        embedder.embed(model(api), ["a"])
    embedder.close()
    assert excinfo.value.reason == "EMBEDDING_PROVIDER_AUTH_FAILED"
    assert CREDENTIAL in excinfo.value.message
    assert "Incorrect API key provided" in excinfo.value.message
    assert "sk-wrong-key-1234" not in excinfo.value.message
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        (lambda api: Credentials(), "CREDENTIAL_NOT_DECLARED"),
        (
            lambda api: declared(api, endpoints=("http://127.0.0.1:9/v1",)),
            "CREDENTIAL_ENDPOINT_NOT_BOUND",
        ),
        (lambda api: declared(api, projects=frozenset({"other"})), "CREDENTIAL_NOT_FOR_PROJECT"),
        (lambda api: declared(api, secret=None), "CREDENTIAL_SECRET_MISSING"),
    ],
)
def test_a_reference_that_does_not_hold_at_call_time_sends_nothing(
    api, sleeps, credentials, reason
):
    embedder = make_embedder(credentials(api), sleeps)
    with pytest.raises(FailedPrecondition) as excinfo:
        embedder.embed(model(api), ["a"])
    embedder.close()
    assert excinfo.value.reason == reason
    assert "nothing was sent" in excinfo.value.message
    assert api.requests == []


def test_a_model_without_a_credential_sends_no_authorization(api, embedder):
    api.require_key = False
    embedder.embed(model(api, credential=""), ["a"])
    assert [request["auth"] for request in api.requests] == [""]


def test_wrong_dimension_reply(api, key, embedder):
    api.wrong_dimension = True
    with pytest.raises(FailedPrecondition) as excinfo:
        embedder.embed(model(api, dimension=8), ["a"])
    assert excinfo.value.reason == "WRONG_VECTOR_DIMENSION"
    assert "returned 9-dimensional vectors; it is declared with dimension 8" in str(excinfo.value)


def test_a_malformed_body_is_a_bad_response(api, key, embedder):
    api.fail(1, Reply(200, "<html>proxy error</html>"))
    with pytest.raises(DomainError) as excinfo:
        embedder.embed(model(api), ["a"])
    assert excinfo.value.reason == "EMBEDDING_PROVIDER_BAD_RESPONSE"


def test_a_slow_answer_times_out_and_is_retried(api, key, embedder, sleeps):
    api.fail(1, Reply(200, delay_s=1.0))
    started = time.monotonic()
    result = embedder.embed(model(api, call_timeout_s=0.2), ["a"])
    assert time.monotonic() - started < 1.0
    assert result.stats.retries == 1
    assert len(sleeps) == 1


def test_connection_refused_is_retried_then_unavailable(key, embedder, sleeps):
    refused = model(FakeAPI(url="http://127.0.0.1:9"), credential="")
    with pytest.raises(Unavailable) as excinfo:
        embedder.embed(refused, ["a"])
    assert "connection to http://127.0.0.1:9/v1/embeddings failed" in excinfo.value.message
    assert "4 attempt(s)" in excinfo.value.message
    assert len(sleeps) == 3


def test_no_endpoint_or_a_bad_url_is_a_failed_precondition(key, embedder):
    with pytest.raises(FailedPrecondition, match="has no endpoint"):
        embedder.embed(model(FakeAPI(url="")), ["a"])
    with pytest.raises(FailedPrecondition) as excinfo:
        embedder.embed(model(FakeAPI(url="ftp://example.com"), credential=""), ["a"])
    assert excinfo.value.reason == "EMBEDDING_ENDPOINT_INVALID"


def test_reprs_and_logs_never_hold_the_key(api, key, embedder):
    api.fail(1, Reply(500, {"error": {"message": "boom"}}))
    with capture_logs() as logs:
        embedder.embed(model(api), ["private review"])
    assert_no_key(repr(model(api)), repr(embedder), repr(logs))
    assert "private review" not in repr(logs)
