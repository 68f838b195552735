"""Services run as their own command, with several worker processes (shared/workers.py).

In-process fixtures cannot fork workers (the test process already runs gRPC), so a service
under `RECSTACK_WORKERS` above 1 runs as `python -m services.<name>.server` with its settings
given as RECSTACK_* variables, exactly as an operator would start it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local.ports import free_port
from shared.channels import ClientSettings
from shared.healthcheck import check

REPO = Path(__file__).resolve().parents[1]
WORKERS_ENV = "RECSTACK_WORKERS"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def session_workers() -> int:
    """The test run's RECSTACK_WORKERS: above 1, serving runs as that many worker processes."""
    return int(os.environ.get(WORKERS_ENV, "").strip() or 1)


def settings_env(values: Mapping[str, Any]) -> dict[str, str]:
    """RECSTACK_* variables that give a service these settings (nested ones as JSON)."""
    return {
        f"RECSTACK_{name.upper()}": value
        if isinstance(value, str)
        else json.dumps(value, default=str)
        for name, value in values.items()
        if value is not None
    }


@dataclass
class ServiceProcess:
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self, event: str) -> list[dict[str, Any]]:
        lines = (line for line in self.log().splitlines() if line.startswith("{"))
        return [record for record in map(json.loads, lines) if record.get("event") == event]


@contextmanager
def service_process(
    service: str,
    values: Mapping[str, Any],
    log_path: Path,
    client: ClientSettings,
    *,
    port: int | None = None,
) -> Iterator[ServiceProcess]:
    """`python -m services.<service>.server` on `port` (default: a free one), SERVING before
    it is yielded; stopped with SIGTERM (killed if it outlives `STOP_TIMEOUT_S`) afterwards."""
    port = port or free_port()
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RECSTACK_")}
    env = {**clean, **settings_env({**values, "grpc_host": "127.0.0.1", "grpc_port": port})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}.server"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = ServiceProcess(f"127.0.0.1:{port}", process, log_path)
    try:
        _wait_serving(running, client, int(values.get("workers", 1)))
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_serving(running: ServiceProcess, client: ClientSettings, workers: int) -> None:
    """SERVING, and every worker started (the first one up already answers health)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"{running.address} exited early:\n{running.log()[-4000:]}")
        started = len(running.log_events("server_started"))
        if started >= workers and check(running.address, timeout_s=1.0, client=client) == (
            "SERVING"
        ):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{running.address} not SERVING after {START_TIMEOUT_S:.0f}s")
