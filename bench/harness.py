"""What every benchmark shares: a scratch database, service processes, statistics, results.

Rules (../shared/BENCHMARKS.md): loopback only, a database of its own that is dropped at the
end, loads from a separate process, nearest-rank percentiles, a readable table and one JSON
file `bench/results/<name>.json`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.local.postgres import any_server
from shared.db import create_database, drop_database, normalize_url
from shared.healthcheck import check

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DATABASE_ENV = "RECSTACK_DATABASE_URL"


# --- database --------------------------------------------------------------------------------


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new database (URL) on RECSTACK_DATABASE_URL's server, else the local server on 5432
    if it answers, else a temporary embedded one; dropped on exit whatever happened."""
    with _server_url() as server_url:
        name = f"{prefix}_{secrets.token_hex(4)}"
        url = create_database(server_url, name)
        try:
            yield url
        finally:
            drop_database(server_url, name)


@contextmanager
def _server_url() -> Iterator[str]:
    configured = os.environ.get(DATABASE_ENV, "").strip()
    with any_server(normalize_url(configured) if configured else "") as url:
        yield url


# --- processes -------------------------------------------------------------------------------


def file_roots_env(scratch: Path, *more: Path) -> dict[str, str]:
    """Services of a benchmark: their offline store under `scratch`, which is also every
    project's file root, with `more` (the registry needs both to check FILE sources)."""
    return {
        "RECSTACK_OFFLINE_STORE_URI": str(scratch / "offline"),
        "RECSTACK_FILES__ROOTS": json.dumps({"*": [str(scratch), *map(str, more)]}),
    }


@contextmanager
def service_process(
    module: str, env: Mapping[str, str], log_path: Path, *, args: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m module` with a clean RECSTACK_* environment; stopped with SIGTERM on exit.

    One server process unless `env` sets RECSTACK_WORKERS: a benchmark compares a service with
    bare single-process limits unless it measures workers on purpose (bench.serving does).
    """
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RECSTACK_")}
    clean["RECSTACK_WORKERS"] = "1"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO_ROOT,
            env={**clean, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Poll gRPC health until SERVING; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{address}: process exited with {process.returncode}")
        if check(address, timeout_s=1.0) == "SERVING":
            return
        time.sleep(0.1)
    raise TimeoutError(f"{address} not SERVING within {timeout_s:.0f}s")


def wait_port(address: str, timeout_s: float = 30) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {address} after {timeout_s:.0f}s")


# --- statistics and results ------------------------------------------------------------------


def nearest_rank(sorted_values: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile: the smallest value with at least `percent`% at or below."""
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_figure(seconds: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(nearest_rank(ordered, 50) * 1000, 4),
        "p99_ms": round(nearest_rank(ordered, 99) * 1000, 4),
        "n": len(ordered),
    }


def write_result(
    name: str,
    figures: Mapping[str, Any],
    ratios: Mapping[str, float],
    targets: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    result = {
        "benchmark": name,
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "figures": dict(figures),
        "ratios": {key: round(value, 3) for key, value in ratios.items()},
        "targets": dict(targets),
        **(extra or {}),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def print_table(
    figures: Mapping[str, Any], ratios: Mapping[str, float], targets: Mapping[str, str]
) -> None:
    print(f"\n{'figure':<16}{'p50 ms':>10}{'p99 ms':>10}{'n':>9}{'per s':>12}{'rows/s':>12}")
    for name, figure in figures.items():
        print(
            f"{name:<16}{_cell(figure, 'p50_ms', '.3f'):>10}{_cell(figure, 'p99_ms', '.3f'):>10}"
            f"{_cell(figure, 'n', 'd'):>9}{_cell(figure, 'per_s', ',.0f'):>12}"
            f"{_cell(figure, 'rows_per_s', ',.0f'):>12}"
        )
    print(f"\n{'ratio':<24}{'value':>8}  target")
    for name, value in ratios.items():
        target = targets.get(name, "")
        verdict = "" if not target else ("ok" if meets(value, target) else "MISSED")
        print(f"{name:<24}{value:>8.3f}  {target:<8}{verdict}")


def _cell(figure: Mapping[str, Any], key: str, spec: str) -> str:
    return format(figure[key], spec) if key in figure else ""


def meets(value: float, target: str) -> bool:
    """Whether `value` satisfies a target such as `<= 2` or `>= 1.5`."""
    operator, bound = target.split(" ", 1)
    return value <= float(bound) if operator == "<=" else value >= float(bound)
