"""The value transforms the feature types share: id token → index, and numeric normalizers.

Indexers (EasyRec's three ways to turn an id into an embedding row):
- `hash_bucket_size: N`: a stable 64-bit hash of the token modulo N, rows 0..N-1;
- `vocab_list: [...]`: row i+1 for the i-th word, row 0 for anything else (out of vocabulary);
- `num_buckets: N`: the token is already an integer in 0..N-1; anything else has no row (-1).

Normalizers use EasyRec's notation, `method=<name>,<param>=<value>,...`:
- `method=log10,threshold=1e-10,default=-10`: log10(x) when x > threshold, else `default`;
- `method=log,...` the same with the natural log; `method=log1p`: ln(1 + max(x, 0));
- `method=zscore,mean=M,standard_deviation=S`: (x - M) / S;
- `method=minmax,min=A,max=B`: (x - A) / (B - A).
All arithmetic is float64 and is cast to float32 once at the end, so offline and online runs
round identically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shared.feature_generator.config import Entry
from shared.feature_generator.errors import FeatureConfigError
from shared.feature_generator.values import HashMemo

INDEXER_KEYS = ("hash_bucket_size", "vocab_list", "num_buckets")


class Indexer(Protocol):
    # Number of rows an embedding table for this feature needs.
    cardinality: int

    def index(self, text: str) -> int:
        """The row of one token, -1 when it has none."""
        ...

    def to_config(self) -> dict[str, object]: ...


@dataclass
class HashIndexer:
    cardinality: int
    memo: HashMemo

    def index(self, text: str) -> int:
        return self.memo(text) % self.cardinality

    def to_config(self) -> dict[str, object]:
        return {"hash_bucket_size": self.cardinality}


@dataclass
class VocabIndexer:
    words: tuple[str, ...]

    def __post_init__(self) -> None:
        self._rows = {word: row for row, word in enumerate(self.words, start=1)}
        self.cardinality = len(self.words) + 1

    def index(self, text: str) -> int:
        return self._rows.get(text, 0)

    def to_config(self) -> dict[str, object]:
        return {"vocab_list": list(self.words)}


@dataclass
class IdentityIndexer:
    cardinality: int

    def index(self, text: str) -> int:
        if not text.isdigit():
            return -1
        value = int(text)
        return value if value < self.cardinality else -1

    def to_config(self) -> dict[str, object]:
        return {"num_buckets": self.cardinality}


def indexer(entry: Entry, memo: HashMemo) -> Indexer:
    """The one indexer an id-like entry configures; exactly one of INDEXER_KEYS is required."""
    given = [key for key in INDEXER_KEYS if entry.has(key)]
    if len(given) != 1:
        raise FeatureConfigError(
            entry.path, f"needs exactly one of {list(INDEXER_KEYS)}, got {given or 'none'}"
        )
    key = given[0]
    if key == "hash_bucket_size":
        return HashIndexer(entry.positive_int(key), memo)
    if key == "vocab_list":
        return VocabIndexer(entry.strings(key))
    return IdentityIndexer(entry.positive_int(key))


Normalize = Callable[[np.ndarray], np.ndarray]
NormalizerFactory = Callable[[Mapping[str, float]], Normalize]


def _log(function: Callable[[np.ndarray], np.ndarray]) -> NormalizerFactory:
    def build(params: Mapping[str, float]) -> Normalize:
        threshold = params.get("threshold", 1e-10)
        default = params.get("default", -10.0)

        def normalize(x: np.ndarray) -> np.ndarray:
            above = x > threshold
            out = np.full_like(x, default)
            out[above] = function(x[above])
            return out

        return normalize

    return build


def _log1p(_params: Mapping[str, float]) -> Normalize:
    return lambda x: np.log1p(np.maximum(x, 0.0))


def _zscore(params: Mapping[str, float]) -> Normalize:
    mean, deviation = params.get("mean", 0.0), params.get("standard_deviation", 1.0)
    if deviation == 0:
        raise ValueError("standard_deviation must not be 0")
    return lambda x: (x - mean) / deviation


def _minmax(params: Mapping[str, float]) -> Normalize:
    low, high = params.get("min", 0.0), params.get("max", 1.0)
    if high <= low:
        raise ValueError("max must be greater than min")
    return lambda x: (x - low) / (high - low)


NORMALIZERS: Mapping[str, tuple[NormalizerFactory, frozenset[str]]] = {
    "log10": (_log(np.log10), frozenset({"threshold", "default"})),
    "log": (_log(np.log), frozenset({"threshold", "default"})),
    "log1p": (_log1p, frozenset()),
    "zscore": (_zscore, frozenset({"mean", "standard_deviation"})),
    "minmax": (_minmax, frozenset({"min", "max"})),
}


def normalizer(spec: str, path: str) -> Normalize:
    """Parse `method=<name>,<param>=<value>,...` into a vectorized float64 function."""
    params: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise FeatureConfigError(path, f"{part!r} is not `key=value`")
        params[key.strip()] = value.strip()
    method = params.pop("method", None)
    if method not in NORMALIZERS:
        raise FeatureConfigError(path, f"method {method!r} is not one of {sorted(NORMALIZERS)}")
    build, allowed = NORMALIZERS[method]
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise FeatureConfigError(path, f"method={method} takes {sorted(allowed)}, not {unknown}")
    try:
        return build({key: float(value) for key, value in params.items()})
    except ValueError as exc:
        raise FeatureConfigError(path, f"method={method}: {exc}") from None


def bucketize(values: np.ndarray, boundaries: tuple[float, ...]) -> np.ndarray:
    """Bucket index of each value: 0 below the first boundary, i for [b(i-1), b(i))."""
    return np.searchsorted(np.asarray(boundaries), values, side="right").astype(np.int64)
