"""Bare gRPC servers: the floor under any recstack RPC on loopback.

Same thread pool and channel options as `shared.grpc_server.create_grpc_server` with default
settings, but no interceptors, servicer or protobuf:
- `/bench.Echo/Echo`: request bytes come straight back;
- `/bench.Echo/Lookup` (when a database is given): the request is little-endian int64 keys;
  the handler runs the bare prepared binary lookup of `bench.serving_load` (`= key` for one,
  `= ANY` for more) on its thread's own connection and answers the request bytes. It is the
  composition of the two limits (echo + lookup) with nothing of recstack in between;
- `/bench.Echo/LookupAnswering` (with a database): the same lookup, answered with the bytes
  last sent to `/bench.Echo/SetAnswer` (a real `GetOnlineFeaturesResponse` of serving, which
  the client parses as serving's clients do). The floor of a read that must also carry
  serving's response: its size on the wire and its parsing are the contract's, not ours.

With `--workers N` (N > 1) it runs N such servers on the one port with SO_REUSEPORT, each its
own process (the same command with `--worker`), as `RECSTACK_WORKERS` runs a service: the bare
limit of several processes.

    python -m bench.echo_server [--workers N] PORT [CONNINFO TABLE KEY_COLUMN COLUMN,COLUMN,...]
"""

from __future__ import annotations

import array
import signal
import subprocess
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
import psycopg
from psycopg import sql

from shared.settings import ServiceSettings

ECHO = "/bench.Echo/Echo"
LOOKUP = "/bench.Echo/Lookup"
LOOKUP_ANSWERING = "/bench.Echo/LookupAnswering"
SET_ANSWER = "/bench.Echo/SetAnswer"


def lookup_statements(
    conn: psycopg.Connection[Any], table: str, key: str, columns: list[str]
) -> tuple[bytes, bytes]:
    """The bare one-key and `= ANY` lookups, rendered once."""
    target = sql.SQL(".").join(map(sql.Identifier, table.split(".")))
    selected = sql.SQL(", ").join(map(sql.Identifier, [*columns, "event_ts"]))
    one = sql.SQL("SELECT {} FROM {} WHERE {} = %b")
    many = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%b)")
    return (
        one.format(selected, target, sql.Identifier(key)).as_bytes(conn),
        many.format(selected, target, sql.Identifier(key)).as_bytes(conn),
    )


def _echo(request: bytes, _context: grpc.ServicerContext) -> bytes:
    return request


class _Lookup:
    def __init__(self, conninfo: str, table: str, key: str, columns: list[str]) -> None:
        self._conninfo = conninfo
        self._table, self._key, self._columns = table, key, columns
        self._local = threading.local()
        # Per width in keys: the answer LookupAnswering gives.
        self._answers: dict[int, bytes] = {}

    def set_answer(self, request: bytes, _context: grpc.ServicerContext) -> bytes:
        width = int.from_bytes(request[:4], "little")
        self._answers[width] = request[4:]
        return b""

    def answering(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self(request, context)
        return self._answers[len(request) // 8]

    def __call__(self, request: bytes, _context: grpc.ServicerContext) -> bytes:
        keys = array.array("q", request).tolist()
        cursor, one, many = self._cursor()
        if len(keys) == 1:
            cursor.execute(one, (keys[0],), prepare=True)
        else:
            cursor.execute(many, (keys,), prepare=True)
        cursor.fetchall()
        return request

    def _cursor(self) -> tuple[psycopg.Cursor[Any], bytes, bytes]:
        state = getattr(self._local, "state", None)
        if state is None:
            conn = psycopg.connect(self._conninfo, autocommit=True, prepare_threshold=0)
            one, many = lookup_statements(conn, self._table, self._key, self._columns)
            state = self._local.state = (conn.cursor(binary=True), one, many)
        return state


def serve(port: int, database: list[str], *, reuse_port: bool = False) -> None:
    settings = ServiceSettings()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers),
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    methods = {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    if database:
        conninfo, table, key, columns = database
        lookup = _Lookup(conninfo, table, key, columns.split(","))
        methods["Lookup"] = grpc.unary_unary_rpc_method_handler(lookup)
        methods["LookupAnswering"] = grpc.unary_unary_rpc_method_handler(lookup.answering)
        methods["SetAnswer"] = grpc.unary_unary_rpc_method_handler(lookup.set_answer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", methods),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stopping.wait()
    server.stop(0).wait()


def serve_workers(workers: int, args: list[str]) -> None:
    """`workers` copies of this server on one port; SIGTERM stops them all."""
    command = [sys.executable, "-m", "bench.echo_server", "--worker", *args]
    processes = [subprocess.Popen(command) for _ in range(workers)]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stopping.wait()
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait()


def main(argv: list[str]) -> None:
    if argv[:1] == ["--workers"] and int(argv[1]) > 1:
        serve_workers(int(argv[1]), argv[2:])
    elif argv[:1] == ["--workers"]:
        serve(int(argv[2]), argv[3:])
    elif argv[:1] == ["--worker"]:
        serve(int(argv[1]), argv[2:], reuse_port=True)
    else:
        serve(int(argv[0]), argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
