"""What a feature reads (`FeatureInputs`) and what it writes (`TensorSpec`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.feature_generator.config import ITEM, InputRef
from shared.feature_generator.values import float_column, rows

INT64 = "TYPE_INT64"
FP32 = "TYPE_FP32"
NUMPY_TYPES = {INT64: np.int64, FP32: np.float32}

# How a model consumes an output: `id` (embedding rows; several values are combined),
# `sequence` (embedding rows in behaviour order), `dense` (numbers as they are).
ID, SEQUENCE, DENSE = "id", "sequence", "dense"

# item ids → one input's values for those items (None where unknown): how a sequence feature
# reads the side features of the items in a user's history (the item cache online, the item
# table of the training set offline).
ItemLookup = Callable[[str, Sequence[str]], Sequence[Any]]


@dataclass(frozen=True)
class TensorSpec:
    """One generated model input: name, Triton dtype, dims (without the batch dim), and what a
    model builder needs to consume it. Index tensors use -1 for "no value"."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    kind: str = DENSE
    # Rows of the embedding table an id/sequence output indexes into (0 for dense outputs).
    cardinality: int = 0
    # Outputs with the same embedding_name share one table (a history of item ids and the
    # candidate's item id, say); empty means the output's own name.
    embedding_name: str = ""
    embedding_dimension: int = 0
    combiner: str = "mean"

    @property
    def numpy_dtype(self) -> type[np.generic]:
        return NUMPY_TYPES[self.dtype]

    @property
    def table(self) -> str:
        return self.embedding_name or self.name

    def signature(self) -> dict[str, Any]:
        """The part a model server checks: name, dtype and dims."""
        return {"name": self.name, "data_type": self.dtype, "dims": list(self.dims)}


@dataclass(frozen=True)
class FeatureInputs:
    """The raw values of one generate call.

    Each side maps input names to values. Sides in `per_row` hold a column per input (one
    entry per output row); the others hold one value per input, shared by every row: online,
    one user and one request context are scored against a batch of items, and the user's
    features are transformed once and broadcast.
    """

    num_rows: int
    sides: Mapping[str, Mapping[str, Any]]
    per_row: frozenset[str] = frozenset({ITEM})
    item_lookup: ItemLookup | None = None
    _cache: dict[InputRef, list[Any]] = field(default_factory=dict, compare=False, repr=False)

    def length(self, ref: InputRef) -> int:
        """Entries of this input: `num_rows` for per-row sides, else 1."""
        return self.num_rows if ref.side in self.per_row else 1

    def raw(self, ref: InputRef) -> Any:
        return self.sides.get(ref.side, {}).get(ref.name)

    def rows(self, ref: InputRef) -> list[Any]:
        """The input as a list of Python values, one per entry (see `length`)."""
        found = self._cache.get(ref)
        if found is None:
            value = self.raw(ref)
            found = rows(value, self.num_rows) if ref.side in self.per_row else [value]
            self._cache[ref] = found
        return found

    def floats(self, ref: InputRef) -> np.ndarray | None:
        """A per-row numeric column as float64 without a loop, None when it needs one."""
        if ref.side not in self.per_row:
            return None
        return float_column(self.raw(ref), self.num_rows)
