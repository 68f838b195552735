"""Run the real NVIDIA Triton Inference Server (CPU, Python backend) on a model repository.

The binary comes from the `nvidia-pytriton` wheel unpacked by `infra/triton/install.sh` into
`.tools/triton`; the Python backend runs `model.py` with the interpreter first on `PATH`, so the
backend venv `.venv-triton` (numpy<2, onnxruntime) is put there. Started the way NVIDIA Merlin's
tests start it: loopback addresses, free ports, readiness polled over gRPC, SIGINT to stop.

    python -m infra.local.tritonserver [--model-repository DIR ...] [--model NAME ...] ...

runs it in the foreground (what `make triton` does) until Ctrl-C. Several repositories may be
served together (model names must be unique across them): the repository's own models and
the trained model versions that the registry loads and unloads at run time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from infra.local.ports import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRITON_HOME = REPO_ROOT / ".tools" / "triton"
DEFAULT_BACKEND_VENV = REPO_ROOT / ".venv-triton"
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "infra" / "triton" / "models"
# Where training writes model versions (`{project}__{model}__v{N}/`) for the local stack
# (`recstack train`: RECSTACK_MODEL_REPOSITORY).
DEFAULT_TRAINED_REPOSITORY = REPO_ROOT / ".run" / "model-repository"
DEFAULT_LOG_DIR = REPO_ROOT / ".run" / "triton"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORTS = {"grpc": 8001, "http": 8000, "metrics": 8002}
SETUP_HINT = "run `make setup` (or `bash infra/triton/install.sh .tools/triton .venv-triton`)"
_LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.1


class TritonServerError(RuntimeError):
    """tritonserver could not be started, or exited or stalled before it was ready."""


def built_models(model_repository: Path) -> list[str]:
    """Models in the repository with at least one built version: a numeric version directory
    holding a `model.*` artifact other than the Python backend's own `model.py`."""
    names = []
    for config in sorted(model_repository.glob("*/config.pbtxt")):
        versions = [p for p in config.parent.iterdir() if p.is_dir() and p.name.isdigit()]
        if any(_has_artifact(version) for version in versions):
            names.append(config.parent.name)
    return names


def _has_artifact(version_dir: Path) -> bool:
    return any(p.name.startswith("model.") and p.name != "model.py" for p in version_dir.iterdir())


def _backend_library_dir(backend_venv: Path) -> Path | None:
    """The lib dir of the Python the backend venv was made from.

    The backend stub links `libpython3.11.so`; a Debian python3 has it on the default linker
    path, but a pyenv or uv build keeps it next to the interpreter, out of the linker's sight.
    """
    try:
        lines = (backend_venv / "pyvenv.cfg").read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home":
            lib_dir = Path(value.strip()).parent / "lib"
            return lib_dir if any(lib_dir.glob("libpython3*.so*")) else None
    return None


class TritonServer:
    """One tritonserver process; a context manager that starts it and waits until it is ready.

    Paths default to this checkout's layout; ports left as None are chosen free. Models are
    loaded explicitly (`--model-control-mode=explicit`): at start `models`, by default every
    built model of every repository; later whatever a client loads (the registry deploying
    a model version).
    """

    def __init__(
        self,
        model_repository: Path | str | Sequence[Path | str] = DEFAULT_MODEL_REPOSITORY,
        *,
        models: Sequence[str] | None = None,
        triton_home: Path | str = DEFAULT_TRITON_HOME,
        backend_venv: Path | str = DEFAULT_BACKEND_VENV,
        host: str = DEFAULT_HOST,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        log_path: Path | str | None = None,
        console: bool = False,
        ready_timeout_s: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        repositories = (
            [model_repository] if isinstance(model_repository, str | Path) else model_repository
        )
        self.model_repositories = [_from_repo_root(path) for path in repositories]
        if not self.model_repositories:
            raise TritonServerError("give at least one model repository")
        self.triton_home = _from_repo_root(triton_home)
        self.backend_venv = _from_repo_root(backend_venv)
        self.host = host
        given = (grpc_port, http_port, metrics_port)
        chosen = iter(free_ports(given.count(None), host))
        self.grpc_port, self.http_port, self.metrics_port = (
            port if port is not None else next(chosen) for port in given
        )
        self.models = (
            list(models)
            if models is not None
            else [name for path in self.model_repositories for name in built_models(path)]
        )
        self.console = console
        self.log_path = (
            _from_repo_root(log_path)
            if log_path is not None
            else DEFAULT_LOG_DIR / f"tritonserver-{self.grpc_port}.log"
        )
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def model_repository(self) -> Path:
        """The first repository (the one with the repository's own models)."""
        return self.model_repositories[0]

    @property
    def server_dir(self) -> Path:
        return self.triton_home / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        return [
            str(self.binary),
            *(f"--model-repository={path}" for path in self.model_repositories),
            f"--backend-directory={self.server_dir / 'backends'}",
            "--model-control-mode=explicit",
            # Ready means the server answers: a model version that fails to load at run time
            # (a bad deploy) must not make the whole server, and every model on it, unready.
            "--strict-readiness=false",
            *(f"--load-model={name}" for name in self.models),
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The app venv's (numpy 2) packages must not reach the backend: numpy 2 there makes the
        # stub return empty tensors without an error.
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)
        env["PATH"] = os.pathsep.join([str(self.backend_venv / "bin"), env.get("PATH", "")])
        lib_dir = _backend_library_dir(self.backend_venv)
        if lib_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH", "")) if p
            )
        return env

    def start(self) -> Self:
        if self._process is not None:
            raise TritonServerError(f"tritonserver already started (pid {self._process.pid})")
        self._check_installed()
        if not self.console:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # Appended: a restart keeps the log of the run before it.
            self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            # Its own process group: a terminal's Ctrl-C reaches only us (we forward SIGINT),
            # and a final SIGKILL can take the backend stub processes with it.
            start_new_session=True,
        )
        return self

    def _check_installed(self) -> None:
        if not os.access(self.binary, os.X_OK):
            raise TritonServerError(f"tritonserver not found at {self.binary}: {SETUP_HINT}")
        if not (self.backend_venv / "bin" / "python3").exists():
            raise TritonServerError(
                f"the Triton backend venv {self.backend_venv} is missing: {SETUP_HINT}"
            )
        for path in self.model_repositories:
            if not path.is_dir():
                raise TritonServerError(f"model repository {path} does not exist")
        if not self.models:
            raise TritonServerError(
                f"no built model in {self.model_repository}: run `make models` "
                "(python infra/triton/build_models.py infra/triton/models)"
            )

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the server and every loaded model report ready over gRPC."""
        if self._process is None:
            raise TritonServerError("tritonserver was not started")
        timeout = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        client = triton_grpc.InferenceServerClient(self.grpc_address)
        try:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise TritonServerError(
                        f"tritonserver exited with code {code} before it was ready"
                        f"{self._log_hint()}"
                    )
                if self._ready(client):
                    return
                if time.monotonic() >= deadline:
                    raise TritonServerError(
                        f"tritonserver at {self.grpc_address} was not ready with models "
                        f"{self.models} after {timeout:.0f}s{self._log_hint()}"
                    )
                time.sleep(_POLL_INTERVAL_S)
        finally:
            client.close()

    def _ready(self, client: triton_grpc.InferenceServerClient) -> bool:
        try:
            return client.is_server_ready(client_timeout=1.0) and all(
                client.is_model_ready(name, client_timeout=1.0) for name in self.models
            )
        except InferenceServerException:
            return False

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        if self.console:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _log_hint(self) -> str:
        tail = self.log_tail()
        if not tail:
            return ""
        return f"; last lines of {self.log_path}:\n{tail}"

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGINT (Triton drains in-flight requests), then SIGTERM, then SIGKILL of the whole
        process group. Returns the exit code; a no-op when not running."""
        process = self._process
        if process is None:
            return None
        try:
            for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, grace_s / 2)):
                if process.poll() is not None:
                    break
                process.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(wait_s)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return process.returncode
        finally:
            # Stopped: `start` may run it again (same ports, a restart).
            self._process = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def wait(self) -> int:
        if self._process is None:
            raise TritonServerError("tritonserver was not started")
        return self._process.wait()

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _from_repo_root(path: Path | str) -> Path:
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run tritonserver in the foreground.")
    parser.add_argument(
        "--model-repository",
        type=Path,
        action="append",
        help=f"repeatable; default: {DEFAULT_MODEL_REPOSITORY.relative_to(REPO_ROOT)}",
    )
    parser.add_argument(
        "--model", action="append", help="model to load (repeatable); default: every built one"
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_PORTS["grpc"])
    parser.add_argument("--http-port", type=int, default=DEFAULT_PORTS["http"])
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_PORTS["metrics"])
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    server = TritonServer(
        args.model_repository or DEFAULT_MODEL_REPOSITORY,
        models=args.model,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        console=True,
        ready_timeout_s=args.ready_timeout,
    )
    # SIGTERM (e.g. from a process manager) stops the server as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with server:
            print(
                f"tritonserver ready: grpc {server.grpc_address}, http {server.http_address}, "
                f"metrics {server.metrics_url}, models {server.models} (Ctrl-C stops it)",
                file=sys.stderr,
                flush=True,
            )
            return server.wait()
    except KeyboardInterrupt:
        return 0
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
