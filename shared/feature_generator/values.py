"""Raw input values as the feature types read them: missing values, numbers, id tokens, maps.

Inputs arrive in several shapes for the same logical value: a training set read from Parquet
gives int64/float64 numpy columns, lists as numpy arrays and maps as lists of (key, value)
pairs; the online path gives float64 columns with NaN (the item cache), Python lists and dicts
(serving). Everything here maps those shapes onto one representation, so a value produces the
same feature bits whichever path it came by.

Id tokens are the canonical text of a value: integers (and floats holding an integer, as a
numeric column with NaN stores them) as decimal digits, other floats by their shortest
round-trip repr, bools as 1/0, text as is. So item 7 hashes to the same bucket whether it was
read as int64 7, float64 7.0 or the string "7".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from hashlib import blake2b
from typing import Any

import numpy as np

# The caches of token hashes and of tokens are bounded: ids seen once (long-tail items) must
# not grow them forever.
HASH_MEMO_LIMIT = 1_000_000
TOKEN_MEMO_LIMIT = 1_000_000


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return False


def token(value: Any) -> str | None:
    """The canonical text of one scalar value, None when it is missing."""
    exact = _EXACT_TOKENS.get(type(value))
    if exact is not None:
        return exact(value)
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return _float_token(float(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not a scalar id value")


def _float_token(number: float) -> str | None:
    if math.isnan(number):
        return None
    if number.is_integer():
        return str(int(number))
    return repr(number)


# Dispatch on the exact type for the values Python and `tolist()` give: most tokens are made
# here, millions per training set, and an isinstance chain costs more than the work.
_EXACT_TOKENS: dict[type, Callable[[Any], str | None]] = {
    str: lambda value: value,
    int: str,
    float: _float_token,
    bool: lambda value: "1" if value else "0",
}


# Raw list element → token. Equal values share a token (7, 7.0 and True/1 hash and compare
# equal, and their tokens are equal too), so a plain dict is a correct memo.
_TOKEN_MEMO: dict[Any, str] = {}


def tokens(value: Any, separator: str | None, limit: int | None = None) -> list[str]:
    """The id tokens of one row's value: a scalar gives one, a list or array gives one per
    present element (at most `limit`), a string splits on `separator` when one is
    configured."""
    if is_missing(value):
        return []
    if isinstance(value, str):
        if separator:
            return [part for part in value.split(separator) if part][:limit]
        return [value]
    if isinstance(value, list | tuple | np.ndarray):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        found = []
        memo = _TOKEN_MEMO
        for element in value:
            try:
                text = memo.get(element)
            except TypeError:  # unhashable: not a scalar; `token` says so
                text = None
            if text is None:
                text = token(element)
                if text is None:
                    continue
                if len(memo) < TOKEN_MEMO_LIMIT:
                    memo[element] = text
            found.append(text)
            if len(found) == limit:
                break
        return found
    text = token(value)
    return [] if text is None else [text]


def number(value: Any) -> float:
    """One numeric value as float64 (NaN when missing); TypeError for anything else."""
    if value is None:
        return math.nan
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not a number")


def numbers(value: Any) -> list[float] | None:
    """A numeric vector (list, tuple or array) as floats; None when missing."""
    if is_missing(value):
        return None
    if isinstance(value, list | tuple | np.ndarray):
        return [number(element) for element in value]
    raise TypeError(f"{type(value).__name__} is not a list of numbers")


def mapping(value: Any) -> Mapping[str, Any] | None:
    """A map value keyed by token: a dict, or the (key, value) pairs Arrow gives for a map."""
    if is_missing(value):
        return None
    pairs = value.items() if isinstance(value, Mapping) else value
    if not isinstance(pairs, Iterable) or isinstance(pairs, str | bytes):
        raise TypeError(f"{type(value).__name__} is not a map")
    found = {}
    for key, item in pairs:
        # Map keys are nearly always text already.
        text = key if type(key) is str else token(key)
        if text is not None:
            found[text] = item
    return found


def rows(values: Any, count: int) -> list[Any]:
    """`values` (a column of `count` entries) as a list of Python values, one per row."""
    if values is None:
        return [None] * count
    if isinstance(values, np.ndarray):
        return values.tolist() if values.dtype != object else list(values)
    return list(values)


def float_column(values: Any, count: int) -> np.ndarray | None:
    """A numeric numpy column as float64 without a Python loop; None when it needs one."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return values.astype(np.float64, copy=False)
    if values is None:
        return np.full(count, np.nan)
    return None


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that is the same in every process and on every platform
    (Python's own `hash` is salted per process)."""
    return int.from_bytes(blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class HashMemo:
    """Token → 64-bit hash, remembered: a request hashes the same item ids again and again."""

    def __init__(self, limit: int = HASH_MEMO_LIMIT) -> None:
        self._hashes: dict[str, int] = {}
        self._limit = limit

    def __call__(self, text: str) -> int:
        found = self._hashes.get(text)
        if found is None:
            found = stable_hash(text)
            if len(self._hashes) >= self._limit:
                self._hashes.clear()
            self._hashes[text] = found
        return found


def pad(indices: Iterable[Sequence[int]], width: int) -> np.ndarray:
    """Rows of indices as an int64 [rows, width] matrix, cut to `width`, padded with -1."""
    rows_list = list(indices)
    matrix = np.full((len(rows_list), width), -1, dtype=np.int64)
    if width == 1:
        firsts = [values[0] if values else -1 for values in rows_list]
        matrix[:, 0] = firsts
        return matrix
    # One masked assignment in row order instead of a slice assignment per row.
    kept = [values[:width] for values in rows_list]
    lengths = np.fromiter(map(len, kept), np.int64, len(kept))
    matrix[np.arange(width) < lengths[:, None]] = [value for values in kept for value in values]
    return matrix
