"""The rank stage's feature generator split by what each output depends on, so a request
pays only for what its user changes.

A ranking request pairs one user with hundreds of items from a catalogue that changes slowly:
- an output that reads the item alone (its id, genres, year, popularity) is the same for that
  item in every request until its row changes, so it is computed once per row and kept
  beside the item cache's table (`RowOutputs`, carried over incremental refreshes with the
  changed rows recomputed);
- an output that crosses one item input with user or context values (the user's count for
  the item's genres, gender x genres) depends on the item only through that value, which
  many items share: each row's value is coded once per table (`ValueCodes`), and the output
  is computed once per code and per distinct user/context value of the feature's own inputs
  (`CodeOutputs`: one gender crossed with each genre list, for every user of that gender);
- the rest (user-only outputs, computed once and broadcast; histories, which read other
  items) runs over the request as a whole.
Every part runs the whole FG's own feature objects (`FeatureGenerator.subset`), so the
tensors are the ones the whole FG would give, bit for bit (tests compare them).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.recommend.item_cache import ItemTable
from shared.feature_generator import (
    CONTEXT,
    ITEM,
    USER,
    AvailableFeature,
    FeatureGenerator,
    InputRef,
)

Outputs = dict[str, np.ndarray]
# (view, item ids) → the view's table and the row of each item in it (-1: none).
TableLookup = Callable[[str, list[str]], tuple[ItemTable, np.ndarray]]


class CandidateItems:
    """One request's candidates as the split FG reads them: each FG item input's values from
    the item tables (`inputs` binds input names to view features or the item key), each
    view's table looked up once."""

    def __init__(
        self,
        item_ids: np.ndarray,
        inputs: Mapping[str, AvailableFeature],
        lookup: TableLookup,
    ) -> None:
        self.item_ids = item_ids
        self._ids = item_ids.tolist()
        self._inputs = inputs
        self._lookup = lookup
        self._rows: dict[str, tuple[ItemTable, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def rows(self, view: str) -> tuple[ItemTable, np.ndarray]:
        found = self._rows.get(view)
        if found is None:
            found = self._rows[view] = self._lookup(view, self._ids)
        return found

    def columns(self, names: Sequence[str], positions: np.ndarray | None = None) -> dict[str, Any]:
        """Each input's values for the candidates (or those at `positions`)."""
        found = {}
        for name in names:
            feature = self._inputs[name]
            if feature.is_key:
                column = self.item_ids
            else:
                table, rows = self.rows(feature.view)
                column = table.column(feature.feature, rows)
            found[name] = column if positions is None else column[positions]
        return found

    def lookup(self, name: str, ids: Sequence[str]) -> list[Any]:
        """An input's values for other items (a history's side features)."""
        feature = self._inputs[name]
        if feature.is_key:
            return list(ids)
        table, rows = self._lookup(feature.view, list(ids))
        return table.column(feature.feature, rows).tolist()


@dataclass(frozen=True)
class SplitGenerator:
    """An FG split three ways for online ranking (see the module docstring)."""

    generator: FeatureGenerator
    # Item view → the features that read only that view's columns and the item's key.
    per_row: Mapping[str, FeatureGenerator]
    # The features that cross one item input with user/context inputs.
    per_value: tuple[ValueFeature, ...]
    # Everything else, or None.
    rest: FeatureGenerator | None

    @classmethod
    def split(
        cls, generator: FeatureGenerator, item_inputs: Mapping[str, AvailableFeature]
    ) -> SplitGenerator:
        views = list(dict.fromkeys(f.view for f in item_inputs.values() if not f.is_key))
        per_row: dict[str, list[str]] = {}
        per_value: list[ValueFeature] = []
        rest: list[str] = []
        for feature in generator.features:
            items = [ref.name for ref in feature.inputs() if ref.side == ITEM]
            others = [ref for ref in feature.inputs() if ref.side != ITEM]
            read = {item_inputs[name].view for name in items if not item_inputs[name].is_key}
            if feature.lookup_inputs() or not items:
                rest.append(feature.name)
            elif not others and len(read) <= 1 and views:
                per_row.setdefault(read.pop() if read else views[0], []).append(feature.name)
            elif others and len(items) == 1 and not item_inputs[items[0]].is_key:
                per_value.append(
                    ValueFeature(
                        items[0],
                        item_inputs[items[0]].view,
                        item_inputs[items[0]].feature,
                        generator.subset([feature.name]),
                        tuple(others),
                    )
                )
            else:
                rest.append(feature.name)
        return cls(
            generator,
            {view: generator.subset(names) for view, names in per_row.items()},
            tuple(per_value),
            generator.subset(rest) if rest else None,
        )

    def generate(
        self, user: Mapping[str, Any], context: Mapping[str, Any], items: CandidateItems
    ) -> Outputs:
        outputs: Outputs = {}
        for view, generator in self.per_row.items():
            table, rows = items.rows(view)
            # Keyed by the generator itself, which the key keeps alive: an id() could be
            # reused by another model version's generator.
            cached = table.derived((generator, view), lambda t, g=generator: RowOutputs(g, len(t)))
            outputs |= cached.gather(
                rows,
                lambda positions, g=generator: g.generate(
                    {}, items.columns(_names(g), positions), context, num_items=len(positions)
                ),
            )
        for feature in self.per_value:
            outputs |= feature.generate(user, context, items)
        if self.rest is not None:
            outputs |= self.rest.generate(
                user,
                items.columns(_names(self.rest)),
                context,
                num_items=len(items),
                item_lookup=items.lookup,
            )
        return {name: outputs[name] for name in self.generator.output_names}


class CodeOutputs:
    """One feature's outputs per value code, per distinct value of its user/context inputs;
    bounded (a full cache starts over). Codes never change meaning (`ValueCodes` only adds),
    so entries stay valid across item-table refreshes."""

    MAX_KEYS = 4096

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[np.ndarray, Outputs]] = {}
        self._lock = threading.Lock()

    def gather(
        self,
        key: Hashable,
        codes: np.ndarray,
        compute: Callable[[np.ndarray], Outputs],
        generator: FeatureGenerator,
    ) -> Outputs:
        size = int(codes.max()) + 1 if len(codes) else 0
        with self._lock:
            computed, arrays = self._entry(key, size, generator)
        missing = codes[~computed[codes]]
        if len(missing):
            fresh = compute(missing)
            with self._lock:
                for name, array in arrays.items():
                    array[missing] = fresh[name]
                computed[missing] = True
        return {name: array[codes] for name, array in arrays.items()}

    def _entry(
        self, key: Hashable, size: int, generator: FeatureGenerator
    ) -> tuple[np.ndarray, Outputs]:
        entry = self._entries.get(key)
        if entry is not None and len(entry[0]) >= size:
            return entry
        capacity = max(size, 2 * len(entry[0]) if entry else 64)
        computed = np.zeros(capacity, dtype=bool)
        arrays = _zeros(generator, capacity)
        if entry is not None:
            old_computed, old_arrays = entry
            computed[: len(old_computed)] = old_computed
            for name, array in old_arrays.items():
                arrays[name][: len(array)] = array
        if len(self._entries) >= self.MAX_KEYS:
            self._entries.clear()
        self._entries[key] = (computed, arrays)
        return computed, arrays


def _zeros(generator: FeatureGenerator, size: int) -> Outputs:
    """Room for `size` rows of each of the generator's outputs."""
    return {
        spec.name: np.zeros((size, *spec.dims), dtype=spec.numpy_dtype)
        for spec in generator.signature
    }


def _names(generator: FeatureGenerator) -> list[str]:
    return [ref.name for ref in generator.inputs if ref.side == ITEM]


@dataclass(frozen=True)
class ValueFeature:
    """A feature crossing the item input `name` (`view:column`) with user/context inputs."""

    name: str
    view: str
    column: str
    generator: FeatureGenerator
    others: tuple[InputRef, ...]
    outputs: CodeOutputs = field(default_factory=CodeOutputs)

    def generate(
        self, user: Mapping[str, Any], context: Mapping[str, Any], items: CandidateItems
    ) -> Outputs:
        table, rows = items.rows(self.view)
        codes = table.derived((ValueCodes, self.column), lambda t: ValueCodes(len(t)))
        found = codes.codes(
            rows, lambda positions: items.columns([self.name], positions)[self.name]
        )
        sides = {USER: user, CONTEXT: context}
        key = _hashable(tuple(sides[ref.side].get(ref.name) for ref in self.others))
        if found is None or key is _UNHASHABLE:
            # Values that cannot be told apart: every item computes its own.
            column = items.columns([self.name])[self.name]
            return self.generator.generate(user, {self.name: column}, context, num_items=len(rows))
        distinct, inverse = np.unique(found, return_inverse=True)

        def compute(missing: np.ndarray) -> Outputs:
            values = codes.values(missing)
            return self.generator.generate(
                user, {self.name: values}, context, num_items=len(values)
            )

        by_code = self.outputs.gather(key, distinct, compute, self.generator)
        return {output: array[inverse] for output, array in by_code.items()}


class RowOutputs:
    """One FG part's outputs for every row of an item table, computed on first request."""

    def __init__(self, generator: FeatureGenerator, size: int) -> None:
        self._computed = np.zeros(size, dtype=bool)
        self._arrays = _zeros(generator, size)
        self._lock = threading.Lock()

    def carried(self, replaced_rows: np.ndarray, size: int) -> RowOutputs:
        copy = RowOutputs.__new__(RowOutputs)
        with self._lock:
            grow = size - len(self._computed)
            copy._computed = np.concatenate([self._computed, np.zeros(grow, dtype=bool)])
            copy._arrays = {
                name: np.concatenate([array, np.zeros((grow, *array.shape[1:]), array.dtype)])
                for name, array in self._arrays.items()
            }
        copy._computed[replaced_rows] = False
        copy._lock = threading.Lock()
        return copy

    def gather(self, rows: np.ndarray, compute: Callable[[np.ndarray], Outputs]) -> Outputs:
        """The outputs at `rows`, computing (by `compute(positions)`, positions into `rows`)
        those not yet computed; rows of -1 (items the table lacks) are computed every time."""
        known = rows >= 0
        safe = np.where(known, rows, 0)
        missing = np.flatnonzero(~known | ~self._computed[safe])
        fresh = compute(missing) if len(missing) else {}
        if len(missing):
            stored = known[missing]
            with self._lock:
                for name, array in self._arrays.items():
                    array[rows[missing[stored]]] = fresh[name][stored]
                self._computed[rows[missing[stored]]] = True
        gathered = {name: array[safe] for name, array in self._arrays.items()}
        for name, values in fresh.items():
            gathered[name][missing] = values
        return gathered


class ValueCodes:
    """Each row's value of one item input as a code, equal values alike (`_hashable`), and
    one value per code: computed on first request, carried over incremental refreshes."""

    def __init__(self, size: int) -> None:
        self._codes = np.full(size, -1, dtype=np.int64)
        # Shared along a table's refreshes: codes only ever get added.
        self._first: dict[Hashable, int] = {}
        self._values: list[Any] = []
        self._lock = threading.Lock()

    def carried(self, replaced_rows: np.ndarray, size: int) -> ValueCodes:
        copy = ValueCodes.__new__(ValueCodes)
        with self._lock:
            grow = size - len(self._codes)
            copy._codes = np.concatenate([self._codes, np.full(grow, -1, dtype=np.int64)])
        copy._codes[replaced_rows] = -1
        copy._first, copy._values, copy._lock = self._first, self._values, self._lock
        return copy

    def codes(self, rows: np.ndarray, values_at: Callable[[np.ndarray], Any]) -> np.ndarray | None:
        """The code of each row's value (rows of -1 coded every time), reading the values of
        uncoded ones with `values_at(positions)`; None when a value cannot be hashed."""
        known = rows >= 0
        found = np.where(known, self._codes[np.where(known, rows, 0)], -1)
        missing = np.flatnonzero(found < 0)
        if not len(missing):
            return found
        values = values_at(missing)
        with self._lock:
            for position, value in zip(missing.tolist(), list(values), strict=True):
                key = _hashable(value)
                if key is _UNHASHABLE:
                    return None
                code = self._first.get(key)
                if code is None:
                    code = self._first[key] = len(self._values)
                    self._values.append(value)
                found[position] = code
                if known[position]:
                    self._codes[rows[position]] = code
        return found

    def values(self, codes: np.ndarray) -> list[Any]:
        return [self._values[code] for code in codes.tolist()]


_UNHASHABLE = object()


def _hashable(value: Any) -> Hashable:
    """A key equal only for values the FG cannot tell apart: equal values of one type (1 and
    1.0 may tokenize alike, but nothing is lost by computing them apart; NaN equals NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return (float, "nan")
    if isinstance(value, list | tuple):
        parts = tuple(_hashable(part) for part in value)
        return _UNHASHABLE if _UNHASHABLE in parts else (type(value), parts)
    if isinstance(value, np.ndarray):
        return _hashable(value.tolist())
    if isinstance(value, dict):
        items = tuple(sorted((key, _hashable(item)) for key, item in value.items()))
        return _UNHASHABLE if any(item is _UNHASHABLE for _, item in items) else (dict, items)
    if value is None or isinstance(value, str | int | float | bool):
        return (type(value), value)
    return _UNHASHABLE
