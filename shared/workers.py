"""Several processes of one service on one port: `RECSTACK_WORKERS=N`.

CPython runs one thread of Python at a time, so one server process uses about one core. With
N workers the process a person (or an orchestrator) starts becomes a small supervisor of N
server processes that bind the same port with SO_REUSEPORT; the kernel spreads incoming
connections over them. This is the pattern of grpc's own multiprocessing example, with one
difference: workers are fresh interpreters running the same command (`python -m
services.serving.server`), not forks. A service's module imports gRPC and prometheus_client
before its `main()` runs, gRPC state must never be inherited by a fork, and prometheus_client
picks its multiprocess value store when it is imported, so each worker starts as clean as a
single-process service: its own connection pool, registry cache, threads and health.

The supervisor
- reserves the port first (port 0 picks a free one), holding it with SO_REUSEPORT so that
  its workers, and only they, bind exactly that port;
- serves the Prometheus endpoint on `metrics_port` for all workers at once: each worker
  writes its metrics to files in a fresh PROMETHEUS_MULTIPROC_DIR (prometheus_client's
  multiprocess mode) and one scrape sums them (gauges: one series per live worker, by pid);
- forwards SIGTERM/SIGINT to every worker, which stops like a single server does (health
  NOT_SERVING, in-flight calls finish within `shutdown_grace_seconds`), waits for them and
  kills any still running `STOP_MARGIN_S` after the grace;
- replaces a worker that dies, unless it exits for bad settings (code 2: everything stops,
  exit 2) or keeps dying (more than `MAX_RESTARTS` in `RESTART_WINDOW_S`: exit 1).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from shared.settings import ServiceSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_MARGIN_S = 5.0
RESTART_WINDOW_S = 60.0
MAX_RESTARTS = 5
CONFIGURATION_EXIT = 2
POLL_S = 0.2

log = structlog.get_logger(__name__)


@contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Hold `host:port` (0: a free port) for the workers to share, and say which port it is.

    It is first bound without SO_REUSEPORT, so a port another process already holds is
    refused here, plainly, instead of silently sharing its traffic.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
        port = probe.getsockname()[1]
    holder = socket.socket(family, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, port))
        yield port
    finally:
        holder.close()


@contextmanager
def metrics_directory() -> Iterator[str]:
    """An empty directory for the workers' metric files, removed at the end; the operator's
    PROMETHEUS_MULTIPROC_DIR if set (emptied first: files of an earlier run would count)."""
    configured = os.environ.get(MULTIPROC_ENV, "").strip()
    if configured:
        Path(configured).mkdir(parents=True, exist_ok=True)
        for stale in Path(configured).glob("*.db"):
            stale.unlink()
        yield configured
        return
    directory = tempfile.mkdtemp(prefix="recstack-metrics-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]


@dataclass
class Supervisor:
    """Starts `settings.workers` copies of `command` on one port and watches them."""

    settings: ServiceSettings
    command: Sequence[str]
    _stopping: threading.Event = field(default_factory=threading.Event)
    _workers: list[_Worker] = field(default_factory=list)
    _restarts: list[float] = field(default_factory=list)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0) or until workers cannot be kept running (1 or 2)."""
        settings = self.settings
        with (
            reserved_port(settings.grpc_host, settings.grpc_port) as port,
            metrics_directory() as directory,
        ):
            metrics = self._serve_metrics(directory)
            env = self._worker_env(port, directory)
            self._install_signal_handlers()
            try:
                for index in range(settings.workers):
                    self._workers.append(self._spawn(index, env))
                log.info(
                    "workers_started",
                    port=port,
                    workers=[worker.process.pid for worker in self._workers],
                    metrics_port=settings.metrics_port or None,
                )
                code = self._watch(env, directory)
            finally:
                self._stop_all()
                if metrics is not None:
                    metrics.shutdown()
        log.info("workers_stopped", code=code)
        return code

    def _serve_metrics(self, directory: str) -> object | None:
        if not self.settings.metrics_port:
            return None
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        server, _thread = start_http_server(
            self.settings.metrics_port, addr=self.settings.grpc_host, registry=registry
        )
        return server

    def _worker_env(self, port: int, directory: str) -> dict[str, str]:
        return {
            **os.environ,
            "RECSTACK_WORKERS": str(self.settings.workers),
            "RECSTACK_GRPC_PORT": str(port),
            # The supervisor serves every worker's metrics; workers serve none of their own.
            "RECSTACK_METRICS_PORT": "0",
            MULTIPROC_ENV: directory,
        }

    def _spawn(self, index: int, env: dict[str, str]) -> _Worker:
        process = subprocess.Popen(
            list(self.command), env={**env, "RECSTACK_WORKER_INDEX": str(index)}
        )
        return _Worker(index, process)

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: object) -> None:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self._stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def _watch(self, env: dict[str, str], directory: str) -> int:
        while not self._stopping.wait(POLL_S):
            for position, worker in enumerate(self._workers):
                code = worker.process.poll()
                if code is None:
                    continue
                multiprocess.mark_process_dead(worker.process.pid, directory)
                verdict = self._after_exit(worker, code)
                if verdict is not None:
                    return verdict
                self._workers[position] = self._spawn(worker.index, env)
        return 0

    def _after_exit(self, worker: _Worker, code: int) -> int | None:
        """None to replace the worker, else the supervisor's exit code."""
        log.error("worker_exited", worker=worker.index, pid=worker.process.pid, code=code)
        if code == CONFIGURATION_EXIT:
            return CONFIGURATION_EXIT
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S]
        if len(self._restarts) >= MAX_RESTARTS:
            log.error("workers_keep_exiting", restarts=len(self._restarts))
            return 1
        self._restarts.append(now)
        return None

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for the grace and a margin, then kill what is left."""
        running = [w.process for w in self._workers if w.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + STOP_MARGIN_S
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker_killed", pid=process.pid)
                process.kill()
                process.wait()


def stop_with_supervisor(poll_seconds: float = 1.0) -> None:
    """In a worker: SIGTERM itself (a graceful stop) once its supervisor is gone, so a killed
    supervisor never leaves workers holding the port."""
    supervisor = os.getppid()

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(poll_seconds)
        log.warning("supervisor_gone", supervisor=supervisor)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def supervises(settings: ServiceSettings) -> bool:
    """Whether this process is to supervise workers rather than serve itself."""
    return settings.workers > 1 and settings.worker_index is None


def supervise(settings: ServiceSettings) -> int:
    """Run this process's own command line as `settings.workers` workers on one port."""
    return Supervisor(settings, [sys.executable, *sys.orig_argv[1:]]).run()
