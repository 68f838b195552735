"""The serving service with parts of its read path taken out, for `bench.serving_ablation`.

`RECSTACK_BENCH_WITHOUT` lists the parts (comma-separated), each replaced by what costs
next to nothing, so a run shows what that part costs inside a running server:
- `store`: the store read answers from a memo of one real read per request shape (no
  round trip to PostgreSQL);
- `encode`: the response bytes come from a memo of one real encoding per response shape;
- `validation`: requests reach the servicer unchecked;
- `metrics`: the per-view serving metrics are not recorded (the per-RPC ones still are).

Only reads of one view's fixed set of features are what the memos expect: the benchmark's.
Never a way to run serving: answers are not the data's.

    RECSTACK_BENCH_WITHOUT=store,encode python -m bench.serving_without
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from services.serving import server, servicer
from shared import grpc_server
from shared.online_store.postgres import PostgresOnlineStore

PARTS = ("store", "encode", "validation", "metrics")


class _Unrecorded:
    def read(self, *_arguments: Any) -> None:
        return None

    def write(self, *_arguments: Any) -> None:
        return None


def _memoized(compute: Callable[..., Any], shape: Callable[..., Any]) -> Callable[..., Any]:
    """`compute`, answered from its first result per `shape` of the arguments."""
    memo: dict[Any, Any] = {}

    def memoized(*arguments: Any) -> Any:
        key = shape(*arguments)
        if key not in memo:
            memo[key] = compute(*arguments)
        return memo[key]

    return memoized


def _read_shape(_store: Any, requests: Sequence[Any], keys: Sequence[Any]) -> Any:
    return len(keys), tuple((view.table_name, tuple(features)) for view, features in requests)


def without(parts: set[str]) -> None:
    unknown = parts - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    if "store" in parts:
        _replace(PostgresOnlineStore, "read", lambda read: _memoized(read, _read_shape))
    if "encode" in parts:
        _replace(
            servicer,
            "encode_response",
            lambda encode: _memoized(encode, lambda views: tuple(len(v.statuses) for v in views)),
        )
    if "validation" in parts:
        _replace(grpc_server, "_validated", lambda _validated: lambda request: request)
    if "metrics" in parts:
        _replace(server, "default_metrics", lambda _default: _Unrecorded)


def _replace(owner: object, name: str, replacement: Callable[[Any], Any]) -> None:
    """`owner.name` replaced by `replacement(owner.name)`; an error if serving no longer has
    it (a renamed part must not leave the benchmark measuring serving whole)."""
    setattr(owner, name, replacement(getattr(owner, name)))


def main() -> None:
    listed = os.environ.get("RECSTACK_BENCH_WITHOUT", "")
    without({part for part in listed.split(",") if part})
    server.main()


if __name__ == "__main__":
    main()
