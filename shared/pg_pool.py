"""A psycopg connection pool that survives a PostgreSQL restart and fails fast while it is down.

psycopg_pool alone hands out pooled connections without checking them, so after a restart each
dead one fails a request; and it reconnects with an exponential backoff that, after a few
minutes of outage, leaves the pool empty for minutes more once the server is back. Here:
- a connection-level failure marks the pool suspect; the next checkout first probes the server
  with one direct connection (refused in about a millisecond while it is down), failing at once
  with UNAVAILABLE instead of waiting on the pool, and once the probe connects, the pool is
  replaced by a fresh one (the old one closes its connections as they come back);
- `retrying` runs an idempotent operation again once when its connection turned out to be dead,
  so no call fails after the server is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import structlog
from psycopg import errors

from shared.errors import Aborted, Unavailable
from shared.request_context import seconds_remaining

T = TypeVar("T")
log = structlog.get_logger(__name__)
POOL_WAIT_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 1


class ConnectionLost(Unavailable):
    """The database connection failed (server down, restarted, or the link dropped)."""


class ResilientPool:
    def __init__(
        self,
        conninfo: str,
        *,
        name: str,
        min_size: int = 1,
        max_size: int = 10,
        kwargs: dict[str, Any] | None = None,
        configure: Callable[[psycopg.Connection[Any]], None] | None = None,
        what: str = "database",
    ) -> None:
        self._conninfo = conninfo
        self._options = {
            "min_size": min_size,
            "max_size": max_size,
            "kwargs": kwargs or {},
            "configure": configure,
            "name": name,
        }
        self._what = what
        self._pool = self._new_pool()
        self._suspect = False
        self._recovering = threading.Lock()

    def _new_pool(self) -> psycopg_pool.ConnectionPool:
        return psycopg_pool.ConnectionPool(self._conninfo, open=True, **self._options)

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; `ConnectionLost` when the server cannot be reached, `Aborted`
        for a deadlock or serialization conflict."""
        if self._suspect:
            self._recover()
        pool = self._pool
        remaining = seconds_remaining()
        timeout = POOL_WAIT_SECONDS if remaining is None else min(POOL_WAIT_SECONDS, remaining)
        try:
            conn = pool.getconn(timeout=timeout)
        except psycopg_pool.PoolTimeout as exc:
            self._suspect = True
            raise Unavailable(
                f"no {self._what} connection within {timeout:.1f}s: the database is down or "
                "every pooled connection is busy (RECSTACK_DB_POOL_SIZE)"
            ) from exc
        # getconn/putconn rather than `pool.connection()`: the hot read saves ~6 us, and the
        # pool still rolls back and checks (or replaces) a connection returned mid-transaction
        # or broken.
        try:
            yield conn
        except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
            # Both subclass OperationalError: caught first, they are conflicts, not outages.
            raise Aborted(f"concurrent {self._what} write conflict; retry: {exc}") from exc
        except psycopg.OperationalError as exc:
            if conn.broken or conn.closed:
                self._suspect = True
                raise ConnectionLost(f"{self._what} database connection failed: {exc}") from exc
            raise Unavailable(f"{self._what} database connection failed: {exc}") from exc
        finally:
            pool.putconn(conn)

    def retrying(self, operation: Callable[[], T]) -> T:
        """Run an idempotent `operation` (which takes its own connection), once more if its
        connection was dead: the retry probes the server and gets a fresh pool."""
        try:
            return operation()
        except ConnectionLost:
            return operation()

    def _recover(self) -> None:
        """Fail fast while the server is down; once it answers, start over with a new pool."""
        with self._recovering:
            if not self._suspect:
                return
            started = time.monotonic()
            try:
                psycopg.connect(self._conninfo, connect_timeout=PROBE_TIMEOUT_SECONDS).close()
            except psycopg.OperationalError as exc:
                raise ConnectionLost(
                    f"{self._what} database is unreachable: {str(exc).strip().splitlines()[0]}"
                ) from exc
            stale, self._pool = self._pool, self._new_pool()
            self._suspect = False
        # Connections still lent out are closed as they are returned to the closed pool.
        threading.Thread(target=stale.close, name="stale-pool-close", daemon=True).start()
        log.info(
            "database_pool_renewed", pool=self._options["name"], probe_s=time.monotonic() - started
        )
