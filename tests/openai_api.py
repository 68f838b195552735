"""A local HTTP server that speaks the OpenAI embeddings protocol (POST /v1/embeddings).

It returns deterministic vectors (from a hash of each text), in reverse order with their
`index`, checks the bearer token, and plays scripted failures (429, 5xx, 400, slow answers)
first. Used by the OPENAI_COMPATIBLE provider's tests and the embedding-production tests.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

API_KEY = "sk-test-5f3b9c1e-never-show-me"
# Secrets of credentials bound elsewhere: no request to this server may ever carry them.
OTHER_SECRETS = ("sk-elsewhere-0c7d1a-never-here", "sk-stale-93be44-never-here")
EMBEDDINGS_PATH = "/v1/embeddings"


def vector_of(text: str, dimension: int) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    values = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return [float(v) for v in values]


@dataclass
class Reply:
    status: int
    body: dict | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class FakeAPI:
    """What the server saw and what it will answer."""

    url: str = ""
    script: list[Reply] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    wrong_dimension: bool = False
    # False: answer without a key too (a local server without authentication).
    require_key: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, times: int, reply: Reply) -> None:
        self.script.extend([reply] * times)


def make_handler(api: FakeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            with api.lock:
                api.requests.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization", ""),
                        "headers": dict(self.headers.items()),
                        "body": body,
                    }
                )
                scripted = api.script.pop(0) if api.script else None
            if scripted is not None:
                time.sleep(scripted.delay_s)
                if scripted.status != 200 or scripted.body:
                    return self.answer(scripted.status, scripted.body, scripted.headers)
            # Any prefix: one server stands for endpoints bound to different credentials.
            if not self.path.endswith(EMBEDDINGS_PATH):
                return self.answer(404, {"error": {"message": f"no route {self.path}"}})
            if api.require_key and self.headers.get("Authorization") != f"Bearer {API_KEY}":
                return self.answer(
                    401, {"error": {"message": "Incorrect API key provided", "type": "auth"}}
                )
            dimension = body["dimensions"] + (1 if api.wrong_dimension else 0)
            data = [
                {"object": "embedding", "index": i, "embedding": vector_of(text, dimension)}
                for i, text in enumerate(body["input"])
            ]
            data.reverse()  # clients must order by `index`
            return self.answer(200, {"object": "list", "data": data, "model": body["model"]})

        def answer(self, status: int, body: dict | str, headers: dict | None = None) -> None:
            payload = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # the timeout test hangs up on purpose: a broken pipe here is expected


@contextmanager
def serve() -> Iterator[FakeAPI]:
    state = FakeAPI()
    server = Server(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
