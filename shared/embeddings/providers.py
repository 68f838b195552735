"""The providers that turn a batch of texts into vectors: our Triton, or any OpenAI-style API.

A provider makes one call and translates its vendor's failures at this edge: a failure worth
retrying (HTTP 429/408/5xx, connection errors, timeouts, gRPC UNAVAILABLE, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED) becomes `RetryableError`, for the embedder to retry with backoff; anything
else becomes a `shared.errors` domain error and fails at once. No httpx, grpc or tritonclient
type leaves this module.

Triton contract (model `minilm` in infra/triton/models): input `text` TYPE_STRING dims [1]
(UTF-8 bytes, shape (n, 1)); outputs `embedding` FP32 (n, dimension) and `truncated` BOOL
(n, 1); request parameter `max_input_tokens` makes the model cut each text with its own
tokenizer (at most the model's own limit).

OpenAI-compatible APIs get the text as is: we do not have a remote model's tokenizer, so the
provider's own input limit applies (it truncates or rejects; a rejection is an HTTP 400 that
surfaces as FailedPrecondition quoting the provider's message).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from shared.credentials import Credentials
from shared.embeddings.model_settings import ModelSettings, Provider, normalize_endpoint
from shared.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from shared.model_server import TritonModelServer

TRITON_INPUT = "text"
TRITON_OUTPUTS = ("embedding", "truncated")
TRITON_TRUNCATION_PARAMETER = "max_input_tokens"
# Provider error bodies are quoted in messages, up to this many characters.
MAX_QUOTED_CHARS = 500
_RETRYABLE_HTTP = frozenset({408, 429})


@dataclass(frozen=True)
class ProviderReply:
    """One call's answer: float32 vectors (n, dimension) in input order."""

    vectors: np.ndarray
    truncated: int = 0


class RetryableError(Exception):
    """A failure that may pass if the same call is repeated later."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class EmbeddingProvider(Protocol):
    def embed(self, model: ModelSettings, texts: Sequence[str], timeout_s: float) -> ProviderReply:
        """Vectors of `texts` in one call of at most `timeout_s`; raises RetryableError or
        a domain error."""
        ...

    def describe(self, model: ModelSettings) -> str:
        """Who serves `model`, for messages (e.g. "Triton at 127.0.0.1:8001")."""
        ...

    def close(self) -> None: ...


def wrong_dimension(model: ModelSettings, got: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"embedding model {model.name} returned {got}-dimensional vectors; it is declared with "
        f"dimension {model.dimension}: fix the dimension in the registry (a new model resource "
        "if vectors were already stored) or point it at the intended model",
        reason="WRONG_VECTOR_DIMENSION",
        metadata={"model": model.name, "returned": str(got), "declared": str(model.dimension)},
    )


def bad_response(model: ModelSettings, where: str, problem: str) -> DomainError:
    return DomainError(
        f"embedding model {model.name}: {where} answered with {problem}",
        reason="EMBEDDING_PROVIDER_BAD_RESPONSE",
        metadata={"model": model.name},
    )


class TritonProvider:
    """Models on a Triton server: `endpoint`, or the platform's address when it is empty."""

    def __init__(
        self,
        default_address: str,
        *,
        server_factory: Callable[[str], TritonModelServer] = TritonModelServer,
    ) -> None:
        self._default_address = default_address
        self._server_factory = server_factory
        self._servers: dict[str, TritonModelServer] = {}
        self._lock = threading.Lock()

    def address(self, model: ModelSettings) -> str:
        return normalize_endpoint(Provider.TRITON, model.endpoint) or self._default_address

    def describe(self, model: ModelSettings) -> str:
        return f"Triton at {self.address(model)}"

    def embed(self, model: ModelSettings, texts: Sequence[str], timeout_s: float) -> ProviderReply:
        server = self._server(model)
        batch = np.empty((len(texts), 1), dtype=np.object_)
        batch[:, 0] = [text.encode("utf-8") for text in texts]
        try:
            outputs = server.infer(
                model.model_name,
                {TRITON_INPUT: batch},
                TRITON_OUTPUTS,
                parameters={TRITON_TRUNCATION_PARAMETER: model.max_input_tokens},
                timeout_s=timeout_s,
            )
        except (Unavailable, DeadlineExceeded, ResourceExhausted) as exc:
            raise RetryableError(exc.message) from None
        except (NotFound, InvalidArgument) as exc:
            raise FailedPrecondition(
                f"embedding model {model.name}: {exc.message}. The Triton model must take input "
                f"'{TRITON_INPUT}' (TYPE_STRING, dims [1]) and return {list(TRITON_OUTPUTS)}",
                reason="EMBEDDING_PROVIDER_REJECTED",
                metadata={"model": model.name},
            ) from None
        except DomainError as exc:
            raise DomainError(
                f"embedding model {model.name}: {exc.message}",
                reason=exc.reason,
                metadata={"model": model.name},
            ) from None
        vectors = np.asarray(outputs["embedding"], dtype=np.float32)
        truncated = int(np.count_nonzero(outputs["truncated"]))
        return ProviderReply(vectors, truncated)

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close()

    def _server(self, model: ModelSettings) -> TritonModelServer:
        address = self.address(model)
        if not address:
            raise FailedPrecondition(
                f"embedding model {model.name} is served by Triton but has no endpoint and no "
                "platform Triton address is configured (RECSTACK_TRITON_ADDR)",
                reason="EMBEDDING_ENDPOINT_MISSING",
                metadata={"model": model.name},
            )
        server = self._servers.get(address)
        if server is None:
            with self._lock:
                server = self._servers.get(address)
                if server is None:
                    server = self._servers[address] = self._server_factory(address)
        return server


class OpenAICompatibleProvider:
    """`POST {endpoint}/v1/embeddings`, one pooled, thread-safe httpx.Client per endpoint.

    The API key is the secret of the model's `credential`, sent only when the operator declared
    that credential to this service and bound it to an endpoint the call URL lies within
    (checked at each call). It is never kept, logged or quoted: provider messages are scrubbed
    of it. Redirects are not followed, so a bound endpoint cannot forward the key elsewhere.
    """

    def __init__(
        self,
        *,
        transport: httpx.BaseTransport | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        # `transport` lets tests substitute httpx.MockTransport.
        self._transport = transport
        self._credentials = credentials or Credentials()
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def url(self, model: ModelSettings) -> str:
        base = normalize_endpoint(Provider.OPENAI_COMPATIBLE, model.endpoint)
        return f"{base}/v1/embeddings" if base else ""

    def describe(self, model: ModelSettings) -> str:
        return f"the OpenAI-compatible API at {self.url(model) or '(no endpoint)'}"

    def embed(self, model: ModelSettings, texts: Sequence[str], timeout_s: float) -> ProviderReply:
        url = self.url(model)
        if not url:
            raise FailedPrecondition(
                f"embedding model {model.name} is OPENAI_COMPATIBLE but has no endpoint: set "
                "its endpoint (e.g. https://api.example.com/v1) in the registry",
                reason="EMBEDDING_ENDPOINT_MISSING",
                metadata={"model": model.name},
            )
        key = self._api_key(model, url)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {
            "model": model.model_name,
            "input": list(texts),
            "dimensions": model.dimension,
            "encoding_format": "float",
        }
        try:
            response = self._client(url).post(url, json=body, headers=headers, timeout=timeout_s)
        except httpx.TimeoutException:
            raise RetryableError(
                f"no answer from {url} within the call timeout of {timeout_s:g}s"
            ) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise FailedPrecondition(
                f"embedding model {model.name}: endpoint {model.endpoint!r} is not a usable "
                f"http(s) URL ({_scrub(str(exc), key)})",
                reason="EMBEDDING_ENDPOINT_INVALID",
                metadata={"model": model.name},
            ) from None
        except httpx.TransportError as exc:
            detail = _scrub(str(exc), key) or type(exc).__name__
            raise RetryableError(f"connection to {url} failed: {detail}") from None
        if response.is_success:
            return self._reply(model, response, len(texts))
        raise self._failure(model, response, key, len(texts))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _api_key(self, model: ModelSettings, url: str) -> str:
        if not model.credential:
            return ""  # a local server without authentication
        return self._credentials.secret_for(
            model.credential, url, model.project, f"embedding model {model.name}"
        )

    def _client(self, url: str) -> httpx.Client:
        client = self._clients.get(url)
        if client is None:
            with self._lock:
                client = self._clients.get(url)
                if client is None:
                    # Each model's own thread pool bounds its calls in flight; the client must
                    # not queue them a second time.
                    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
                    client = self._clients[url] = httpx.Client(
                        limits=limits, transport=self._transport, follow_redirects=False
                    )
        return client

    def _reply(self, model: ModelSettings, response: httpx.Response, count: int) -> ProviderReply:
        where = self.url(model)
        try:
            data = response.json()["data"]
        except (ValueError, KeyError, TypeError):
            raise bad_response(model, where, "a body without a `data` list") from None
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else "no"
            raise bad_response(model, where, f"{got} embeddings for {count} texts")
        vectors = np.empty((count, model.dimension), dtype=np.float32)
        seen = np.zeros(count, dtype=bool)
        for position, item in enumerate(data):
            try:
                index = item.get("index", position)
                vector = _vector(item["embedding"])
            except (AttributeError, KeyError, TypeError, ValueError):
                raise bad_response(model, where, f"a malformed `data[{position}]`") from None
            if not isinstance(index, int) or not 0 <= index < count or seen[index]:
                raise bad_response(model, where, f"a bad or repeated index {index!r}")
            if vector.shape != (model.dimension,):
                raise wrong_dimension(model, vector.size)
            vectors[index] = vector
            seen[index] = True
        return ProviderReply(vectors)

    def _failure(
        self, model: ModelSettings, response: httpx.Response, key: str, count: int
    ) -> Exception:
        status = response.status_code
        message = _scrub(_error_message(response), key)
        if status in _RETRYABLE_HTTP or status >= 500:
            return RetryableError(
                f"HTTP {status} from {self.url(model)}: {message}",
                retry_after_s=_retry_after(response),
            )
        where = f"{self.describe(model)} answered HTTP {status} for embedding model {model.name}"
        if status in (401, 403):
            return FailedPrecondition(
                f"{where}: {message}. Check the secret of credential "
                f"{model.credential or '(none referenced: set the model credential)'}",
                reason="EMBEDDING_PROVIDER_AUTH_FAILED",
                metadata={"model": model.name},
            )
        if status == 404:
            return FailedPrecondition(
                f"{where}: {message}. Check the endpoint and model_name '{model.model_name}'",
                reason="EMBEDDING_MODEL_NOT_FOUND",
                metadata={"model": model.name},
            )
        return FailedPrecondition(
            f"{where} on a batch of {count} texts: {message}. Texts longer than the provider's "
            "own input limit are its to reject or truncate (recstack cannot count a remote "
            "model's tokens)",
            reason="EMBEDDING_REQUEST_REJECTED",
            metadata={"model": model.name, "http_status": str(status)},
        )


def _vector(embedding: Any) -> np.ndarray:
    if isinstance(embedding, str):  # a server that answers base64 whatever was asked
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32).reshape(-1)


def _error_message(response: httpx.Response) -> str:
    """The provider's own words: OpenAI's {"error": {"message"}}, or a common variant."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    message: Any = None
    if isinstance(payload, dict):
        error = payload.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or payload.get("message") or payload.get("detail")
    text = str(message) if message else response.text.strip() or response.reason_phrase
    return text[:MAX_QUOTED_CHARS]


def _retry_after(response: httpx.Response) -> float | None:
    """A numeric Retry-After (seconds); the HTTP-date form is ignored."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text
