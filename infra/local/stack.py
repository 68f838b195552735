"""The local stack behind `make up`, `make status` and `make down`.

    python -m infra.local.stack up|status|down

`up` starts PostgreSQL (embedded, unless `RECSTACK_DATABASE_URL` is set), Triton, the four
services and the web console (http://127.0.0.1:8080), each in its own session so it outlives
the command, with its output in `<run_dir>/logs/<name>.log`. Every process it starts is
recorded in `<run_dir>/stack.json` with its kernel start time; `down` signals a recorded pid
only while that start time still matches, so a pid the kernel has since handed to another
process is never touched.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import psycopg
from pydantic import ValidationError
from sqlalchemy import make_url

from infra.local.postgres import EmbeddedPostgres, create_source_role, resolve_run_dir
from infra.local.tritonserver import (
    DEFAULT_MODEL_REPOSITORY,
    DEFAULT_TRAINED_REPOSITORY,
    TritonServer,
    TritonServerError,
    built_models,
)
from shared.channels import ClientSettings
from shared.errors import Unavailable
from shared.healthcheck import check
from shared.model_server import TritonModelServer
from shared.settings import ServiceSettings, available_cores

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
POSTGRES = "postgres"
TRITON = "triton"
TRITON_PORTS = {"grpc": 8001, "http": 8000, "metrics": 8002}
# The web console: an HTTP server that only calls the four services (services/console).
CONSOLE = "console"
CONSOLE_PORTS = {"http": 8080}
STATE_VERSION = 1
SERVICE_TIMEOUT_S = 60.0
# Loading the Python-backend models (onnxruntime) takes a while on a 2-core laptop.
TRITON_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
# How much longer than a service's shutdown grace `down` waits before SIGKILL: a supervisor
# of worker processes (shared/workers.py) waits the grace plus its own 5 s margin for them.
STOP_MARGIN_S = 10.0
GRACE_ENV = "RECSTACK_SHUTDOWN_GRACE_SECONDS"
KILL_TIMEOUT_S = 5.0
POLL_S = 0.25
# The project of examples/feature_repo.
EXAMPLE_PROJECT = "shop"
LOG_TAIL_LINES = 20


class StackError(Exception):
    """A failure reported as one message and a non-zero exit."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int
    metrics_port: int
    # Whether it runs one server process per core (RECSTACK_WORKERS, shared/workers.py).
    scales_with_cores: bool = False
    # What the service is started with unless the shell sets RECSTACK_SHUTDOWN_GRACE_SECONDS:
    # materialization lets its running jobs reach a chunk boundary.
    shutdown_grace_s: float = 5.0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", f"services.{self.name}.server"]

    @property
    def ports(self) -> dict[str, int]:
        return {"grpc": self.port, "metrics": self.metrics_port}


# Start order: each service after the ones it calls. Serving reads feature views from the
# registry, materialization reads the registry and writes the online store, and recommend
# calls all three (and Triton, which starts before any service).
SERVICES = (
    ServiceSpec("registry", 50051, 9091),
    ServiceSpec("serving", 50053, 9093, scales_with_cores=True),
    ServiceSpec("materialization", 50052, 9092, shutdown_grace_s=20.0),
    ServiceSpec("recommend", 50054, 9094, scales_with_cores=True),
)


@dataclass
class ProcessRecord:
    """A process `up` started. `pid` also names its process group (it was started with setsid)."""

    name: str
    pid: int
    # Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid, it names one process.
    start_time: int
    command: list[str]
    ports: dict[str, int]
    # How long `down` waits after SIGTERM before SIGKILL: above the process's shutdown grace.
    stop_timeout_s: float = STOP_TIMEOUT_S


@dataclass
class StackState:
    """The contents of `<run_dir>/stack.json`: records in the order they were started."""

    processes: list[ProcessRecord] = field(default_factory=list)

    def get(self, name: str) -> ProcessRecord | None:
        return next((r for r in self.processes if r.name == name), None)

    def put(self, record: ProcessRecord) -> None:
        """Replace the record of the same name in place (keeping start order), or append."""
        for index, existing in enumerate(self.processes):
            if existing.name == record.name:
                self.processes[index] = record
                return
        self.processes.append(record)

    def remove(self, name: str) -> None:
        self.processes = [r for r in self.processes if r.name != name]


def save_state(path: Path, state: StackState) -> None:
    """Write atomically, or delete the file when nothing is recorded."""
    if not state.processes:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": STATE_VERSION, "processes": [asdict(r) for r in state.processes]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def load_state(path: Path) -> StackState:
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        return StackState()
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read {path} ({exc}); stop leftover processes by hand") from exc
    if payload.get("version") != STATE_VERSION:
        raise StackError(f"{path} has unknown version {payload.get('version')!r}")
    return StackState([ProcessRecord(**record) for record in payload["processes"]])


# --- process identity (proc(5)) ----------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    state: str
    pgrp: int
    start_time: int


def read_proc_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) is parenthesised and may contain spaces or ')': split after the last ')'.
    # fields[0] is then field 3 (state), fields[2] field 5 (pgrp), fields[19] field 22.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(state=fields[0], pgrp=int(fields[2]), start_time=int(fields[19]))


def process_start_time(pid: int) -> int | None:
    stat = read_proc_stat(pid)
    return stat.start_time if stat is not None else None


def is_ours(record: ProcessRecord) -> bool:
    """True while the recorded process runs: same pid, same start time, not a zombie."""
    stat = read_proc_stat(record.pid)
    return stat is not None and stat.start_time == record.start_time and stat.state != "Z"


def live_group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = read_proc_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and stat.state != "Z":
                members.append(int(entry.name))
    return members


def owns_group(record: ProcessRecord) -> bool:
    """Whether process group `record.pid` holds only processes we started.

    Linux keeps a pid allocated while a process group of that id has members, so the group is
    ours if its leader still has the recorded start time, or if the leader has exited and
    members remain (e.g. a backend stub of a crashed tritonserver).
    """
    stat = read_proc_stat(record.pid)
    if stat is not None:
        return stat.start_time == record.start_time and stat.pgrp == record.pid
    return bool(live_group_members(record.pid))


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while live_group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop_process(record: ProcessRecord, timeout_s: float | None = None) -> str:
    """SIGTERM the leader (servers shut down gracefully and take their children along), or the
    group if the leader has already exited; SIGKILL the group if anything is left after
    `timeout_s` (default: the record's own, above its shutdown grace). Returns what happened."""
    if timeout_s is None:
        timeout_s = record.stop_timeout_s
    if not owns_group(record):
        return f"pid {record.pid} is gone or belongs to another process now: left alone"
    leader_alive = is_ours(record)
    if not leader_alive and not live_group_members(record.pid):
        return f"pid {record.pid} had already exited"
    with suppress(ProcessLookupError):
        if leader_alive:
            os.kill(record.pid, signal.SIGTERM)
        else:
            os.killpg(record.pid, signal.SIGTERM)
    if wait_group_gone(record.pid, timeout_s):
        if leader_alive:
            return f"stopped pid {record.pid}"
        return f"stopped the processes pid {record.pid} left behind"
    if owns_group(record):
        with suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)
    if wait_group_gone(record.pid, KILL_TIMEOUT_S):
        return f"killed pid {record.pid} (no exit {timeout_s:.0f}s after SIGTERM)"
    raise StackError(f"{record.name}: process group {record.pid} survived SIGKILL")


# --- ports ---------------------------------------------------------------------------------


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Without it, TIME_WAIT connections of a server just stopped would count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                # cols[1] is local "ADDR:PORT" in hex, cols[3] the state (0A = LISTEN).
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    return inodes


def port_owner(port: int) -> str | None:
    """`pid N (comm)` of the process listening on `port`, if /proc lets us see it."""
    targets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with suppress(OSError):
            if any(str(fd.readlink()) in targets for fd in fd_dir.iterdir()):
                comm = (fd_dir.parent / "comm").read_text().strip()
                return f"pid {fd_dir.parent.name} ({comm})"
    return None


def port_conflicts(wanted: dict[str, dict[str, int]]) -> list[str]:
    """One line per port in `wanted` ({component: {label: port}}) that something holds."""
    lines = []
    for name, ports in wanted.items():
        for label, port in ports.items():
            if port_in_use(port):
                owner = port_owner(port) or "a process this stack did not start"
                lines.append(f"port {port} ({name} {label}) is in use by {owner}")
    return lines


# --- health --------------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def display_address(url: str) -> str:
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}"


def postgres_problem(url: str) -> str | None:
    """None when the server answers `select 1`, else the first line of psycopg's error."""
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=2) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        return next(iter(str(exc).strip().splitlines()), type(exc).__name__)
    return None


def triton_ready(address: str) -> bool:
    server = TritonModelServer(address, timeout_s=2.0)
    try:
        return server.is_ready()
    finally:
        server.close()


def service_serving(address: str, client: ClientSettings | None = None) -> bool:
    return check(address, client=client) == "SERVING"


def console_ready(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- up ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    run_dir: Path
    # RECSTACK_DATABASE_URL; None means the embedded server under `run_dir`.
    database_url: str | None
    # RECSTACK_CLIENT__*: how health checks reach services started with TLS.
    client: ClientSettings = field(default_factory=ClientSettings)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Context:
        url = settings.database_url
        return cls(
            resolve_run_dir(settings.run_dir),
            url.get_secret_value() if url else None,
            settings.client_settings(),
        )

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    def log_path(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"


@dataclass(frozen=True)
class Launch:
    """How to start one component and tell that it is ready."""

    name: str
    address: str
    ready_label: str
    probe: Callable[[], bool]
    spawn: Callable[[], ProcessRecord]
    timeout_s: float
    log_path: Path


def record_for(
    name: str,
    pid: int,
    command: list[str],
    ports: dict[str, int],
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> ProcessRecord:
    start_time = process_start_time(pid)
    if start_time is None:
        raise StackError(f"{name}: pid {pid} vanished right after it was started")
    return ProcessRecord(name, pid, start_time, command, dict(ports), stop_timeout_s)


def stop_timeout(env: dict[str, str]) -> float:
    """How long `down` gives a service started with `env`: its shutdown grace plus a margin."""
    raw = env.get(GRACE_ENV)
    if raw is None:
        return STOP_TIMEOUT_S
    try:
        grace = float(raw)
    except ValueError:
        raise StackError(f"{GRACE_ENV}={raw!r} is not a number of seconds") from None
    return grace + STOP_MARGIN_S


def spawn_command(
    name: str, command: list[str], env: dict[str, str], ports: dict[str, int], log_path: Path
) -> ProcessRecord:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return record_for(name, process.pid, command, ports, stop_timeout(env))


def spawn_triton(log_path: Path) -> ProcessRecord:
    DEFAULT_TRAINED_REPOSITORY.mkdir(parents=True, exist_ok=True)
    server = TritonServer(
        [DEFAULT_MODEL_REPOSITORY, DEFAULT_TRAINED_REPOSITORY],
        # Trained model versions are loaded by the registry when they are deployed.
        models=built_models(DEFAULT_MODEL_REPOSITORY),
        grpc_port=TRITON_PORTS["grpc"],
        http_port=TRITON_PORTS["http"],
        metrics_port=TRITON_PORTS["metrics"],
        log_path=log_path,
    )
    try:
        server.start()
    except TritonServerError as exc:
        raise StackError(f"{TRITON}: {exc}") from exc
    if server.pid is None:
        raise StackError(f"{TRITON}: tritonserver did not start")
    return record_for(TRITON, server.pid, server.command(), TRITON_PORTS)


def service_env(ctx: Context, spec: ServiceSpec, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    # File roots, unless the shell sets its own: each project its folder under the run dir,
    # and every project the example feature repository.
    env.setdefault("RECSTACK_FILES__ROOT_TEMPLATE", str(ctx.run_dir / "projects" / "{project}"))
    env.setdefault("RECSTACK_FILES__ROOTS", json.dumps({"*": [str(REPO_ROOT / "examples")]}))
    env.setdefault(GRACE_ENV, str(spec.shutdown_grace_s))
    env.update({f"RECSTACK_{s.name.upper()}_ADDR": s.address for s in SERVICES})
    # Serving and recommend: one worker per core unless the shell says how many; the
    # registry and materialization run as one process.
    if spec.scales_with_cores:
        env.setdefault("RECSTACK_WORKERS", str(available_cores()))
    else:
        env["RECSTACK_WORKERS"] = "1"
    env.update(
        PYTHONUNBUFFERED="1",
        RECSTACK_GRPC_HOST=HOST,
        RECSTACK_GRPC_PORT=str(spec.port),
        RECSTACK_METRICS_PORT=str(spec.metrics_port),
        RECSTACK_DATABASE_URL=database_url,
        RECSTACK_RUN_DIR=str(ctx.run_dir),
        RECSTACK_OFFLINE_STORE_URI=str(ctx.run_dir / "offline"),
        RECSTACK_TRITON_ADDR=f"{HOST}:{TRITON_PORTS['grpc']}",
    )
    return env


def triton_launch(ctx: Context) -> Launch:
    address = f"{HOST}:{TRITON_PORTS['grpc']}"
    log_path = ctx.log_path(TRITON)
    return Launch(
        name=TRITON,
        address=address,
        ready_label="ready",
        probe=partial(triton_ready, address),
        spawn=partial(spawn_triton, log_path),
        timeout_s=TRITON_TIMEOUT_S,
        log_path=log_path,
    )


def service_launch(ctx: Context, spec: ServiceSpec, database_url: str) -> Launch:
    log_path = ctx.log_path(spec.name)
    env = service_env(ctx, spec, database_url)
    spawn = partial(spawn_command, spec.name, spec.command, env, spec.ports, log_path)
    return Launch(
        name=spec.name,
        address=spec.address,
        ready_label="SERVING",
        probe=partial(service_serving, spec.address, ctx.client),
        spawn=spawn,
        timeout_s=SERVICE_TIMEOUT_S,
        log_path=log_path,
    )


def console_launch(ctx: Context) -> Launch:
    address = f"{HOST}:{CONSOLE_PORTS['http']}"
    log_path = ctx.log_path(CONSOLE)
    env = dict(os.environ)
    env.update({f"RECSTACK_{s.name.upper()}_ADDR": s.address for s in SERVICES})
    env.update(
        PYTHONUNBUFFERED="1", RECSTACK_HTTP_HOST=HOST, RECSTACK_HTTP_PORT=str(CONSOLE_PORTS["http"])
    )
    command = [sys.executable, "-m", "services.console.server"]
    return Launch(
        name=CONSOLE,
        address=address,
        ready_label="serving pages",
        probe=partial(console_ready, address),
        spawn=partial(spawn_command, CONSOLE, command, env, CONSOLE_PORTS, log_path),
        timeout_s=SERVICE_TIMEOUT_S,
        log_path=log_path,
    )


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"\n  (no log at {path})"
    tail = "\n".join(f"  | {line}" for line in text.splitlines()[-lines:])
    return f"\n  last lines of {path}:\n{tail}"


def wait_ready(launch: Launch, record: ProcessRecord) -> float:
    """Seconds until `launch.probe` passes; StackError with the log tail if the process exits
    or the timeout passes first."""
    began = time.monotonic()
    while not launch.probe():
        if not is_ours(record):
            raise StackError(f"{launch.name} exited during start-up{log_tail(launch.log_path)}")
        if time.monotonic() - began > launch.timeout_s:
            raise StackError(
                f"{launch.name} was not {launch.ready_label} on {launch.address} within "
                f"{launch.timeout_s:.0f}s{log_tail(launch.log_path)}"
            )
        time.sleep(POLL_S)
    return time.monotonic() - began


def ensure_running(
    ctx: Context, state: StackState, launch: Launch, started: list[ProcessRecord]
) -> None:
    """Start `launch` unless its recorded process runs; either way, wait until it is ready."""
    record = state.get(launch.name)
    if record is not None and is_ours(record):
        if launch.probe():
            print(f"{launch.name}: already running, pid {record.pid}, {launch.address}")
            return
        print(f"{launch.name}: pid {record.pid} runs but is not {launch.ready_label}; waiting")
    else:
        record = launch.spawn()
        state.put(record)
        save_state(ctx.state_file, state)
        started.append(record)
        print(f"{launch.name}: started pid {record.pid}, log {launch.log_path}", flush=True)
    seconds = wait_ready(launch, record)
    print(f"{launch.name}: {launch.ready_label} on {launch.address} ({seconds:.1f}s)", flush=True)


def postmaster_record(server: EmbeddedPostgres) -> ProcessRecord:
    # First line of PostgreSQL's postmaster.pid is the postmaster's pid.
    pid = int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])
    command = ["pg_ctl", "start", "-D", str(server.data_dir), "-o", f"-p {server.port}"]
    return record_for(POSTGRES, pid, command, {"postgres": server.port})


def ensure_embedded_postgres(ctx: Context, state: StackState, started: list[ProcessRecord]) -> str:
    server = EmbeddedPostgres(ctx.run_dir)
    was_running = server.running_port() is not None
    try:
        url = server.start()
    except Unavailable as exc:
        raise StackError(f"{POSTGRES}: {exc.message}") from exc
    if was_running:
        record = state.get(POSTGRES)
        note = "" if record and is_ours(record) else " (not started by `up`; `down` leaves it)"
        print(f"{POSTGRES}: already running on {HOST}:{server.port}{note}")
        return url
    record = postmaster_record(server)
    state.put(record)
    save_state(ctx.state_file, state)
    started.append(record)
    print(f"{POSTGRES}: started embedded server pid {record.pid} on {HOST}:{server.port}")
    return url


def ensure_postgres(ctx: Context, state: StackState, started: list[ProcessRecord]) -> str:
    """The database URL the services get; starts the embedded server if none is configured."""
    url = ctx.database_url or ensure_embedded_postgres(ctx, state, started)
    # No retry loop: `pg_ctl start -w` returns once the embedded server accepts connections.
    problem = postgres_problem(url)
    if problem is not None:
        raise StackError(
            f"{POSTGRES}: {display_address(url)} does not answer `select 1` ({problem}); start "
            "it or fix RECSTACK_DATABASE_URL, or unset it to use the embedded server"
        )
    if ctx.database_url:
        print(f"{POSTGRES}: using RECSTACK_DATABASE_URL, {display_address(url)} ready")
    return url


def prune_exited(state: StackState) -> None:
    """Forget records whose process has exited, stopping any children they left behind."""
    for record in list(state.processes):
        if is_ours(record):
            continue
        if record.name != POSTGRES and owns_group(record):
            print(f"{record.name}: pid {record.pid} exited; {stop_process(record)}")
        else:
            print(f"{record.name}: recorded pid {record.pid} is no longer running")
        state.remove(record.name)


def ports_to_claim(ctx: Context, state: StackState) -> dict[str, dict[str, int]]:
    """Ports of every component `up` would start now."""
    wanted: dict[str, dict[str, int]] = {}
    server = EmbeddedPostgres(ctx.run_dir)
    if ctx.database_url is None and server.running_port() is None:
        wanted[POSTGRES] = {"postgres": server.port}
    components = [(TRITON, TRITON_PORTS), *((s.name, s.ports) for s in SERVICES)]
    for name, ports in [*components, (CONSOLE, CONSOLE_PORTS)]:
        record = state.get(name)
        if record is None or not is_ours(record):
            wanted[name] = ports
    return wanted


def ensure_source_role(database_url: str) -> None:
    """The example project's POSTGRES-source role (materialization's default template), with
    read access to schema `shop_data` only; other projects get theirs with
    `python -m infra.local.postgres grant-project PROJECT`."""
    role = f"recstack_src_{EXAMPLE_PROJECT}"
    try:
        create_source_role(database_url, role, f"{EXAMPLE_PROJECT}_data")
    except psycopg.Error as exc:
        problem = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        print(f"{POSTGRES}: could not create source role {role} ({problem}); skipped")
        return
    print(f"{POSTGRES}: source role {role} reads schema {EXAMPLE_PROJECT}_data")


def bring_up(ctx: Context, state: StackState, started: list[ProcessRecord]) -> None:
    database_url = ensure_postgres(ctx, state, started)
    ensure_source_role(database_url)
    (ctx.run_dir / "offline").mkdir(parents=True, exist_ok=True)
    ensure_running(ctx, state, triton_launch(ctx), started)
    for spec in SERVICES:
        ensure_running(ctx, state, service_launch(ctx, spec, database_url), started)
    ensure_running(ctx, state, console_launch(ctx), started)


def stop_record(ctx: Context, record: ProcessRecord) -> str:
    if record.name != POSTGRES:
        return stop_process(record)
    if not is_ours(record):
        return f"pid {record.pid} is gone or belongs to another process now: left alone"
    try:
        EmbeddedPostgres(ctx.run_dir).stop()
    except Unavailable as exc:
        raise StackError(f"{POSTGRES}: {exc.message}") from exc
    return f"stopped embedded server pid {record.pid}"


def start_rank(record: ProcessRecord) -> int:
    """Position in the dependency order; a restarted service keeps its place."""
    order = [POSTGRES, TRITON, *(s.name for s in SERVICES), CONSOLE]
    return order.index(record.name) if record.name in order else len(order)


def stop_records(ctx: Context, state: StackState, records: list[ProcessRecord]) -> None:
    """Stop `records` dependents first, forgetting each once it is stopped."""
    for record in sorted(records, key=start_rank, reverse=True):
        print(f"{record.name}: {stop_record(ctx, record)}", flush=True)
        state.remove(record.name)
        save_state(ctx.state_file, state)


@contextmanager
def exclusive(ctx: Context) -> Iterator[None]:
    """One `up` or `down` at a time per run directory."""
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.run_dir / "stack.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `up` or `down` is running on {ctx.run_dir}") from None
        yield


def cmd_up(ctx: Context) -> int:
    state = load_state(ctx.state_file)
    prune_exited(state)
    save_state(ctx.state_file, state)
    conflicts = port_conflicts(ports_to_claim(ctx, state))
    if conflicts:
        lines = "\n".join(f"  {line}" for line in conflicts)
        raise StackError(f"refusing to start; stop these first or free the ports:\n{lines}")
    started: list[ProcessRecord] = []
    try:
        bring_up(ctx, state, started)
    except BaseException:
        if started:
            print("up failed: stopping what this call started", file=sys.stderr, flush=True)
            stop_records(ctx, state, started)
        raise
    if not started:
        print("stack already up: nothing to do")
    else:
        print(f"stack up: started {', '.join(r.name for r in started)}; `make down` stops it")
    return 0


def cmd_down(ctx: Context) -> int:
    state = load_state(ctx.state_file)
    if not state.processes:
        print(f"nothing to stop: no processes recorded in {ctx.state_file}")
        return 0
    stop_records(ctx, state, list(state.processes))
    print("stack down")
    return 0


# --- status --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusRow:
    name: str
    pid: str
    address: str
    health: str
    healthy: bool

    def line(self) -> str:
        return f"{self.name:<16} {self.pid:>8}  {self.address:<22} {self.health}"


def pid_label(state: StackState, name: str) -> str:
    record = state.get(name)
    return str(record.pid) if record is not None and is_ours(record) else "-"


def postgres_row(ctx: Context, state: StackState) -> StatusRow:
    if ctx.database_url is not None:
        url = ctx.database_url
    else:
        server = EmbeddedPostgres(ctx.run_dir)
        server.port = server.running_port() or server.port
        url = server.url
    ready = postgres_problem(url) is None
    health = "ready" if ready else "down"
    return StatusRow(POSTGRES, pid_label(state, POSTGRES), display_address(url), health, ready)


def triton_row(state: StackState) -> StatusRow:
    address = f"{HOST}:{TRITON_PORTS['grpc']}"
    ready = triton_ready(address)
    health = "ready" if ready else "not ready"
    return StatusRow(TRITON, pid_label(state, TRITON), address, health, ready)


def service_row(ctx: Context, state: StackState, spec: ServiceSpec) -> StatusRow:
    health = check(spec.address, client=ctx.client)
    serving = health == "SERVING"
    return StatusRow(spec.name, pid_label(state, spec.name), spec.address, health, serving)


def console_row(state: StackState) -> StatusRow:
    address = f"{HOST}:{CONSOLE_PORTS['http']}"
    ready = console_ready(address)
    health = "serving pages" if ready else "down"
    return StatusRow(CONSOLE, pid_label(state, CONSOLE), f"http://{address}", health, ready)


def cmd_status(ctx: Context) -> int:
    state = load_state(ctx.state_file)
    rows = [postgres_row(ctx, state), triton_row(state)]
    rows += [service_row(ctx, state, spec) for spec in SERVICES]
    rows.append(console_row(state))
    print(StatusRow("component", "pid", "address", "health", True).line())
    for row in rows:
        print(row.line())
    return 0 if all(row.healthy for row in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.stack",
        description="Start, inspect or stop the local recstack (PostgreSQL, Triton, services).",
    )
    parser.add_argument("command", choices=("up", "status", "down"))
    args = parser.parse_args(argv)
    # Progress lines must appear as they happen, also when `make` output goes to a pipe.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        ctx = Context.from_settings(ServiceSettings())
    except ValidationError as exc:
        print(f"{args.command}: invalid RECSTACK_* environment: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "status":
            return cmd_status(ctx)
        with exclusive(ctx):
            return cmd_up(ctx) if args.command == "up" else cmd_down(ctx)
    except StackError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
