"""The feature types: EasyRec's FG vocabulary, each a small class from one config entry.

Every type reads its inputs from `FeatureInputs` and returns its tensors with one row per
input entry (1 for a side given once, n for per-row sides); the generator broadcasts. Work
on a side given once is therefore done once per request, and the arithmetic per row is the
same whether the side came as one value or as a column: offline and online bits agree.

Missing values take the configured `default_value`; with none, an id-like output has no value
(-1) and a numeric one is 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from shared.feature_generator.config import ITEM, Entry, InputRef
from shared.feature_generator.errors import FeatureConfigError, FeatureValueError
from shared.feature_generator.inputs import (
    DENSE,
    FP32,
    ID,
    INT64,
    SEQUENCE,
    FeatureInputs,
    TensorSpec,
)
from shared.feature_generator.transforms import (
    INDEXER_KEYS,
    Indexer,
    Normalize,
    bucketize,
    indexer,
    normalizer,
)
from shared.feature_generator.values import (
    HashMemo,
    is_missing,
    mapping,
    number,
    numbers,
    pad,
    token,
    tokens,
)

COMMON_KEYS = frozenset({"feature_type", "feature_name"})
# Read by model builders, not by the FG: table sharing, table width, how several ids combine.
EMBEDDING_KEYS = frozenset({"embedding_name", "embedding_dimension", "combiner"})
COMBINERS = ("mean", "sum")
# The settings of an id-like feature (id_feature, combo_feature).
ID_KEYS = (
    COMMON_KEYS
    | EMBEDDING_KEYS
    | set(INDEXER_KEYS)
    | {"expression", "default_value", "separator", "value_dimension"}
)
VALUE_COMBINERS: Mapping[str, Callable[[list[float]], float]] = {
    "sum": lambda values: float(sum(values)),
    "mean": lambda values: float(sum(values)) / len(values),
    "max": max,
    "min": min,
}
# Joins the parts of a combo value, as EasyRec's combo_feature does.
COMBO_JOIN = "_"
# The category value of a match_feature that matches every category of the user's map.
MATCH_ALL = "ALL"
MATCH_KEY_JOIN = "^"

# What a feature needs of an input's stored type (checked against the feature set at load).
NUMBER, VECTOR, MAP, CATEGORICAL = "a number", "a list of numbers", "a map", "ids (scalar or list)"


@dataclass(frozen=True)
class Expectation:
    """An input a feature reads, what it must hold, and the config key naming it."""

    ref: InputRef
    kind: str
    key: str


class Feature(Protocol):
    name: str

    def inputs(self) -> tuple[InputRef, ...]: ...

    def expects(self) -> list[Expectation]:
        """What each input must hold, and the config key that names it."""
        ...

    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def lookup_inputs(self) -> tuple[InputRef, ...]:
        """Item inputs read through the item lookup (for items other than the candidates)."""
        ...

    def apply(self, inputs: FeatureInputs) -> dict[str, np.ndarray]:
        """Each output as an array [entries, *dims] (entries 1 or inputs.num_rows)."""
        ...


class ReadsCandidatesOnly:
    """The feature reads only the candidate items' own values, never the item lookup."""

    def lookup_inputs(self) -> tuple[InputRef, ...]:
        return ()


FeatureFactory = Callable[[Mapping[str, Any], str, HashMemo], Feature]


# --- shared pieces ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedding:
    """How a model builder embeds an id-like output (EMBEDDING_KEYS of the entry)."""

    name: str = ""
    dimension: int = 0
    combiner: str = "mean"

    @classmethod
    def read(cls, entry: Entry) -> Embedding:
        dimension = (
            entry.positive_int("embedding_dimension") if entry.has("embedding_dimension") else 0
        )
        return cls(
            entry.optional_text("embedding_name") or "",
            dimension,
            entry.choice("combiner", COMBINERS, "mean"),
        )

    def spec(self, name: str, dims: tuple[int, ...], kind: str, cardinality: int) -> TensorSpec:
        return TensorSpec(
            name, INT64, dims, kind, cardinality, self.name, self.dimension, self.combiner
        )


@dataclass
class IndexCache:
    """Raw scalar value → embedding row, remembered per feature: a request sees the same item
    ids and categories again and again. Python's equality makes 7, 7.0 and True/1 share an
    entry, matching their shared token."""

    indexer: Indexer
    _rows: dict[Any, int] = field(default_factory=dict)

    def token_row(self, text: str) -> int:
        return self.indexer.index(text)

    def scalar_row(self, value: Any) -> int | None:
        """The row of a hashable scalar value, None when the value is missing."""
        try:
            return self._rows[value]
        except (KeyError, TypeError):
            pass
        text = token(value)
        if text is None:
            return None
        row = self.indexer.index(text)
        if len(self._rows) < 100_000:
            self._rows[value] = row
        return row

    def value_rows(self, value: Any, separator: str | None, limit: int | None = None) -> list[int]:
        """The rows of one entry's tokens (see `values.tokens`; at most `limit`), each element
        looked up in the cache: a training set repeats the same ids millions of times."""
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, str) and separator:
            value = [part for part in value.split(separator) if part]
        if not isinstance(value, list | tuple):
            row = None if is_missing(value) else self.scalar_row(value)
            return [] if row is None else [row]
        rows = self._rows
        found = []
        for element in value:
            try:
                row = rows.get(element)
            except TypeError:  # unhashable: not a scalar; scalar_row says so
                row = None
            if row is None:
                row = self.scalar_row(element)
                if row is None:
                    continue
            found.append(row)
            if len(found) == limit:
                break
        return found


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | np.integer | np.floating | np.bool_)


def _value_error(feature: str, ref: InputRef, exc: Exception) -> FeatureValueError:
    return FeatureValueError(f"feature {feature!r}: input {ref}: {exc}")


def _dense(
    values: np.ndarray,
    normalize: Normalize | None,
    boundaries: tuple[float, ...] | None,
) -> np.ndarray:
    if normalize is not None:
        values = normalize(values)
    if boundaries is not None:
        return bucketize(values, boundaries)
    return values.astype(np.float32)


def _dense_spec(
    name: str, width: int, boundaries: tuple[float, ...] | None, embedding: Embedding
) -> TensorSpec:
    if boundaries is None:
        return TensorSpec(name, FP32, (width,))
    return embedding.spec(name, (width,), ID, len(boundaries) + 1)


def _normalizer(entry: Entry) -> Normalize | None:
    spec = entry.optional_text("normalizer")
    return None if spec is None else normalizer(spec, entry.at("normalizer"))


def _broadcast_rows(columns: Sequence[list[Any]]) -> list[tuple[Any, ...]]:
    """Rows of several inputs side by side; an input with one entry pairs with every row."""
    count = min(len(column) for column in columns) and max(len(column) for column in columns)
    if not count:
        return []
    # zip runs the loop in C: a request crosses one user entry with hundreds of items.
    spread = (
        column if len(column) > 1 else itertools.repeat(column[0], count) for column in columns
    )
    return list(zip(*spread, strict=True))


def _memoized(
    rows: list[tuple[Any, ...]], compute: Callable[..., Any], key: Callable[..., Hashable]
) -> list[Any]:
    """`compute(*row)` for every row, once per distinct `key(*row)`: a request pairs one user
    with hundreds of items that share a few categories, so most rows repeat an earlier one."""
    memo: dict[Hashable, Any] = {}
    found = []
    for row in rows:
        memo_key = key(*row)
        value = memo.get(memo_key, memo)
        if value is memo:
            value = memo[memo_key] = compute(*row)
        found.append(value)
    return found


# --- id_feature -------------------------------------------------------------------------------


@dataclass
class IdFeature(ReadsCandidatesOnly):
    """A categorical value (or several) → embedding row(s): int64 [value_dimension]."""

    KEYS = ID_KEYS

    name: str
    ref: InputRef
    rows: IndexCache
    width: int
    default: str | None
    separator: str | None
    embedding: Embedding

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str, memo: HashMemo) -> IdFeature:
        entry = Entry(config, path, frozenset(cls.KEYS))
        default = entry.scalar("default_value")
        return cls(
            entry.text("feature_name"),
            entry.expression(),
            IndexCache(indexer(entry, memo)),
            entry.positive_int("value_dimension", 1),
            None if default is None else token(default),
            entry.optional_text("separator"),
            Embedding.read(entry),
        )

    def inputs(self) -> tuple[InputRef, ...]:
        return (self.ref,)

    def expects(self) -> list[Expectation]:
        return [Expectation(self.ref, CATEGORICAL, "expression")]

    def outputs(self) -> tuple[TensorSpec, ...]:
        return (self.embedding.spec(self.name, (self.width,), ID, self.rows.indexer.cardinality),)

    def apply(self, inputs: FeatureInputs) -> dict[str, np.ndarray]:
        values = inputs.rows(self.ref)
        if self.width == 1:
            return {self.name: self._single(values).reshape(-1, 1)}
        default = [] if self.default is None else [self.rows.token_row(self.default)]
        try:
            indices = [self.rows.value_rows(v, self.separator) or default for v in values]
        except TypeError as exc:
            raise _value_error(self.name, self.ref, exc) from None
        return {self.name: pad(indices, self.width)}

    def _single(self, values: list[Any]) -> np.ndarray:
        column = np.empty(len(values), dtype=np.int64)
        default_row = -1 if self.default is None else self.rows.token_row(self.default)
        for position, value in enumerate(values):
            row = None
            if _is_scalar(value) and not (self.separator and isinstance(value, str)):
                row = self.rows.scalar_row(value)
            elif not is_missing(value):
                try:
                    found = self._tokens(value)
                except TypeError as exc:
                    raise _value_error(self.name, self.ref, exc) from None
                row = self.rows.token_row(found[0]) if found else None
            column[position] = default_row if row is None else row
        return column

    def _tokens(self, value: Any) -> list[str]:
        found = tokens(value, self.separator)
        if not found and self.default is not None:
            return [self.default]
        return found


# --- raw_feature ------------------------------------------------------------------------------


@dataclass
class RawFeature(ReadsCandidatesOnly):
    """A number (or a fixed-length vector of numbers) → float32, optionally normalized, or
    bucketized by `boundaries` into an index."""

    KEYS = (
        COMMON_KEYS
        | EMBEDDING_KEYS
        | {
            "expression",
            "default_value",
            "value_dimension",
            "normalizer",
            "boundaries",
        }
    )

    name: str
    ref: InputRef
    default: float
    width: int
    normalize: Normalize | None
    boundaries: tuple[float, ...] | None
    embedding: Embedding

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str, memo: HashMemo) -> RawFeature:
        entry = Entry(config, path, frozenset(cls.KEYS))
        return cls(
            entry.text("feature_name"),
            entry.expression(),
            entry.number("default_value", 0.0),
            entry.positive_int("value_dimension", 1),
            _normalizer(entry),
            entry.boundaries(),
            Embedding.read(entry),
        )

    def inputs(self) -> tuple[InputRef, ...]:
        return (self.ref,)

    def expects(self) -> list[Expectation]:
        return [Expectation(self.ref, NUMBER if self.width == 1 else VECTOR, "expression")]

    def outputs(self) -> tuple[TensorSpec, ...]:
        return (_dense_spec(self.name, self.width, self.boundaries, self.embedding),)

    def apply(self, inputs: FeatureInputs) -> dict[str, np.ndarray]:
        values = self._values(inputs)
        values[np.isnan(values)] = self.default
        return {self.name: _dense(values, self.normalize, self.boundaries)}

    def _values(self, inputs: FeatureInputs) -> np.ndarray:
        if self.width == 1:
            column = inputs.floats(self.ref)
            if column is not None:
                return column.reshape(-1, 1).copy()
        rows = inputs.rows(self.ref)
        try:
            if self.width == 1:
                return np.array([[number(value)] for value in rows], dtype=np.float64)
            return _vectors(rows, self.width, self.name, self.ref)
        except TypeError as exc:
            raise _value_error(self.name, self.ref, exc) from None


def _vectors(rows: list[Any], width: int, feature: str, ref: InputRef) -> np.ndarray:
    """Rows of numeric vectors as float64 [rows, width]; a missing row is all NaN."""
    matrix = np.full((len(rows), width), np.nan)
    for position, value in enumerate(rows):
        vector = numbers(value)
        if vector is None:
            continue
        if len(vector) != width:
            raise FeatureValueError(
                f"feature {feature!r}: input {ref} has {len(vector)} values in row "
                f"{position}, the config declares value_dimension {width}"
            )
        matrix[position] = vector
    return matrix


# --- combo_feature ----------------------------------------------------------------------------


@dataclass
class ComboFeature(ReadsCandidatesOnly):
    """The cross of two or more categorical inputs (`user:gender` with `item:genre`), indexed
    like an id feature; multi-valued inputs give every combination, up to value_dimension."""

    KEYS = ID_KEYS

    name: str
    refs: tuple[InputRef, ...]
    rows: IndexCache
    width: int
    default: str | None
    separator: str | None
    embedding: Embedding

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str, memo: HashMemo) -> ComboFeature:
        entry = Entry(config, path, frozenset(cls.KEYS))
        default = entry.scalar("default_value")
        return cls(
            entry.text("feature_name"),
            entry.expressions("expression", minimum=2),
            IndexCache(indexer(entry, memo)),
            entry.positive_int("value_dimension", 1),
            None if default is None else token(default),
            entry.optional_text("separator"),
            Embedding.read(entry),
        )

    def inputs(self) -> tuple[InputRef, ...]:
        return self.refs

    def expects(self) -> list[Expectation]:
        return [
            Expectation(ref, CATEGORICAL, f"expression[{index}]")
            for index, ref in enumerate(self.refs)
        ]

    def outputs(self) -> tuple[TensorSpec, ...]:
        return (self.embedding.spec(self.name, (self.width,), ID, self.rows.indexer.cardinality),)

    def apply(self, inputs: FeatureInputs) -> dict[str, np.ndarray]:
        columns = [inputs.rows(ref) for ref in self.refs]
        try:
            # Tokens of each input entry once, then combined per output row.
            parts = [[tokens(value, self.separator) for value in column] for column in columns]
        except TypeError as exc:
            raise _value_error(self.name, self.refs[0], exc) from None
        indices = _memoized(
            _broadcast_rows(parts), self._rows, lambda *row: tuple(tuple(part) for part in row)
        )
        return {self.name: pad(indices, self.width)}

    def _rows(self, *parts: list[str]) -> list[int]:
        combos = [COMBO_JOIN.join(combo) for combo in itertools.product(*parts)]
        if not combos and self.default is not None:
            combos = [self.default]
        return [self.rows.token_row(text) for text in combos[: self.width]]


# --- lookup_feature ---------------------------------------------------------------------------


@dataclass
class LookupFeature(ReadsCandidatesOnly):
    """A value from a map input keyed by another input: the user's clicks per genre looked up
    with the item's genres (`map: user:genre_counts`, `key: item:genres`). Several keys combine
    by `combiner` (sum by default); no key found gives `default_value`."""

    KEYS = COMMON_KEYS | {
        "map",
        "key",
        "combiner",
        "default_value",
        "separator",
        "normalizer",
        "boundaries",
        "embedding_name",
        "embedding_dimension",
    }

    name: str
    map_ref: InputRef
    key_ref: InputRef
    combine: Callable[[list[float]], float]
    default: float
    separator: str | None
    normalize: Normalize | None
    boundaries: tuple[float, ...] | None
    embedding: Embedding

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str, memo: HashMemo) -> LookupFeature:
        entry = Entry(config, path, frozenset(cls.KEYS))
        combiner = entry.choice("combiner", tuple(VALUE_COMBINERS), "sum")
        return cls(
            entry.text("feature_name"),
            entry.expression("map"),
            entry.expression("key"),
            VALUE_COMBINERS[combiner],
            entry.number("default_value", 0.0),
            entry.optional_text("separator"),
            _normalizer(entry),
            entry.boundaries(),
            Embedding(entry.optional_text("embedding_name") or "", 0, "mean"),
        )

    def inputs(self) -> tuple[InputRef, ...]:
        return (self.map_ref, self.key_ref)

    def expects(self) -> list[Expectation]:
        return [
            Expectation(self.map_ref, MAP, "map"),
            Expectation(self.key_ref, CATEGORICAL, "key"),
        ]

    def outputs(self) -> tuple[TensorSpec, ...]:
        return (_dense_spec(self.name, 1, self.boundaries, self.embedding),)

    def apply(self, inputs: FeatureInputs) -> dict[str, np.ndarray]:
        try:
            maps = [mapping(value) for value in inputs.rows(self.map_ref)]
        except TypeError as exc:
            raise _value_error(self.name, self.map_ref, exc) from None
        try:
            keys = [tokens(value, self.separator) for value in inputs.rows(self.key_ref)]
        except TypeError as exc:
            raise _value_error(self.name, self.key_ref, exc) from None
        try:
            found = _memoized(
                _broadcast_rows([maps, keys]),
                self._value,
                lambda found, wanted: (id(found), tuple(wanted)),
            )
        except TypeError as exc:
            raise _value_error(self.name, self.map_ref, exc) from None
        values = np.array(found, dtype=np.float64).reshape(-1, 1)
        return {self.name: _dense(values, self.normalize, self.boundaries)}

    def _value(self, found: Mapping[str, Any] | None, wanted: list[str]) -> float:
        hits = [number(found[key]) for key in wanted if found and key in found]
        return self.combine(hits) if hits else self.default


# --- match_feature ----------------------------------------------------------------------------


@dataclass
class MatchFeature(ReadsCandidatesOnly):
    """A user-side nested map (category → item → value) matched against an item's category
    and item attribute. The map is a flat MAP<STRING, DOUBLE> keyed `category^item`
    (EasyRec's notation); `category: ALL` matches the map's `ALL^item` entries. `match_type`
    `hit` gives 1/0 for a match, `value` the matched value (summed over several)."""

    KEYS = COMMON_KEYS | {
        "user",
        "category",
        "item",
        "match_type",
        "default_value",
        "separator",
        "normalizer",
        "boundaries",
        "embedding_name",
        "embedding_dimension",
    }

    name: str
    user_ref: InputRef
    category_ref: InputRef | None  # None: the category is ALL
    item_ref: InputRef
    hit: bool
    default: float
    separator: str | None
    normalize: Normalize | None
    boundaries: tuple[float, ...] | None
    embedding: Embedding

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str, memo: HashMemo) -> MatchFeature:
        entry = Entry(config, path, frozenset(cls.KEYS))
        category = entry.text("category")
        return cls(
            entry.text("feature_name"),
            entry.expression("user"),
            None if category == MATCH_ALL else entry.expression("category"),
            entry.expression("item"),
            entry.choice("match_type", ("hit", "value"), "value") == "hit",
            entry.number("default_value", 0.0),
            entry.optional_text("separator"),
            _normalizer(entry),
            entry.boundaries(),
            Embedding(entry.optional_text("embedding_name") or "", 0, "mean"),
        )

    def inputs(self) -> tuple[InputRef, ...]:
        refs = [self.user_ref, self.item_ref]
        if self.category_ref is not None:
            refs.insert(1, self.category_ref)
        return tuple(refs)

    def expects(self) -> list[Expectation]:
        found = [Expectation(self.user_ref, MAP, "user")]
        if self.category_ref is not None:
            found.append(Expectation(self.category_ref, CATEGORICAL, "category"))
        return [*found, Expectation(self.item_ref, CATEGORICAL, "item")]

    def outputs(self) -> tuple[TensorSpec, ...]:
        return (_dense_spec(self.name, 1, self.boundaries, self.embedding),)

    def apply(self, inputs: FeatureInputs) -> dict[str, np.ndarray]:
        try:
            maps = [mapping(value) for value in inputs.rows(self.user_ref)]
            items = [tokens(value, self.separator) for value in inputs.rows(self.item_ref)]
            categories: list[list[str]] = [[MATCH_ALL]]
            if self.category_ref is not None:
                categories = [
                    tokens(value, self.separator) for value in inputs.rows(self.category_ref)
                ]
            found = _memoized(
                _broadcast_rows([maps, categories, items]),
                self._value,
                lambda found, cats, attrs: (id(found), tuple(cats), tuple(attrs)),
            )
        except TypeError as exc:
            raise _value_error(self.name, self.user_ref, exc) from None
        values = np.array(found, dtype=np.float64).reshape(-1, 1)
        return {self.name: _dense(values, self.normalize, self.boundaries)}

    def _value(self, found: Mapping[str, Any] | None, cats: list[str], attrs: list[str]) -> float:
        hits = [
            number(found[key])
            for cat in cats
            for attr in attrs
            if found and (key := f"{cat}{MATCH_KEY_JOIN}{attr}") in found
        ]
        if self.hit:
            return 1.0 if hits else 0.0
        return float(sum(hits)) if hits else self.default


# --- sequence_feature -------------------------------------------------------------------------


@dataclass
class SideFeature:
    """An item attribute looked up for every item of a sequence (the genre of each movie in
    the user's history)."""

    name: str
    ref: InputRef
    rows: IndexCache
    embedding: Embedding


@dataclass
class SequenceFeature:
    """A user's behaviour sequence (recent item ids, newest first) → int64 [sequence_length]
    rows, padded with -1; each side feature adds `{name}__{side}` with the looked-up item
    attribute's row at the same positions."""

    KEYS = (
        COMMON_KEYS
        | EMBEDDING_KEYS
        | set(INDEXER_KEYS)
        | {
            "expression",
            "sequence_length",
            "separator",
            "side_features",
        }
    )
    SIDE_KEYS = COMMON_KEYS | EMBEDDING_KEYS | set(INDEXER_KEYS) | {"expression"}

    name: str
    ref: InputRef
    length: int
    rows: IndexCache
    separator: str | None
    side_features: tuple[SideFeature, ...]
    embedding: Embedding

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str, memo: HashMemo) -> SequenceFeature:
        entry = Entry(config, path, frozenset(cls.KEYS))
        name = entry.text("feature_name")
        sides = config.get("side_features", [])
        if not isinstance(sides, list):
            raise FeatureConfigError(entry.at("side_features"), "must be a list of objects")
        return cls(
            name,
            entry.expression(),
            entry.positive_int("sequence_length"),
            IndexCache(indexer(entry, memo)),
            entry.optional_text("separator"),
            tuple(
                _side_feature(side, f"{entry.at('side_features')}[{index}]", name, memo)
                for index, side in enumerate(sides)
            ),
            Embedding.read(entry),
        )

    def inputs(self) -> tuple[InputRef, ...]:
        return (self.ref, *(side.ref for side in self.side_features))

    def expects(self) -> list[Expectation]:
        return [
            Expectation(self.ref, CATEGORICAL, "expression"),
            *(
                Expectation(side.ref, CATEGORICAL, f"side_features[{index}].expression")
                for index, side in enumerate(self.side_features)
            ),
        ]

    def lookup_inputs(self) -> tuple[InputRef, ...]:
        return tuple(side.ref for side in self.side_features)

    def outputs(self) -> tuple[TensorSpec, ...]:
        dims = (self.length,)
        own = self.embedding.spec(self.name, dims, SEQUENCE, self.rows.indexer.cardinality)
        return (
            own,
            *(
                side.embedding.spec(side.name, dims, SEQUENCE, side.rows.indexer.cardinality)
                for side in self.side_features
            ),
        )

    def apply(self, inputs: FeatureInputs) -> dict[str, np.ndarray]:
        values = inputs.rows(self.ref)
        try:
            rows = [self.rows.value_rows(value, self.separator, self.length) for value in values]
            histories = (
                [tokens(value, self.separator, self.length) for value in values]
                if self.side_features
                else []
            )
        except TypeError as exc:
            raise _value_error(self.name, self.ref, exc) from None
        outputs = {self.name: pad(rows, self.length)}
        for side in self.side_features:
            outputs[side.name] = self._side(side, histories, inputs)
        return outputs

    def _side(
        self, side: SideFeature, histories: list[list[str]], inputs: FeatureInputs
    ) -> np.ndarray:
        if inputs.item_lookup is None:
            raise FeatureValueError(
                f"feature {self.name!r}: side feature {side.name!r} needs the item attributes "
                "of the history, and no item lookup was given"
            )
        wanted = list(dict.fromkeys(t for history in histories for t in history))
        try:
            found = dict(zip(wanted, inputs.item_lookup(side.ref.name, wanted), strict=True))
            rows = {}
            for item, value in found.items():
                attribute = tokens(value, None)
                rows[item] = side.rows.token_row(attribute[0]) if attribute else -1
        except TypeError as exc:
            raise _value_error(side.name, side.ref, exc) from None
        return pad(([rows[t] for t in history] for history in histories), self.length)


def _side_feature(config: Any, path: str, sequence: str, memo: HashMemo) -> SideFeature:
    entry = Entry(config, path, frozenset(SequenceFeature.SIDE_KEYS))
    ref = entry.expression()
    if ref.side != ITEM:
        raise FeatureConfigError(
            entry.at("expression"), f"a side feature is an item attribute (`item:...`), got {ref}"
        )
    return SideFeature(
        f"{sequence}__{entry.text('feature_name')}",
        ref,
        IndexCache(indexer(entry, memo)),
        Embedding.read(entry),
    )


# --- embedding --------------------------------------------------------------------------------


@dataclass
class EmbeddingFeature(ReadsCandidatesOnly):
    """An ARRAY<FLOAT> input (a text embedding, a tower's output) passed through as float32
    [value_dimension]; a missing vector is `default_value` in every position."""

    KEYS = COMMON_KEYS | {"expression", "value_dimension", "default_value"}

    name: str
    ref: InputRef
    width: int
    default: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str, memo: HashMemo) -> EmbeddingFeature:
        entry = Entry(config, path, frozenset(cls.KEYS))
        return cls(
            entry.text("feature_name"),
            entry.expression(),
            entry.positive_int("value_dimension"),
            entry.number("default_value", 0.0),
        )

    def inputs(self) -> tuple[InputRef, ...]:
        return (self.ref,)

    def expects(self) -> list[Expectation]:
        return [Expectation(self.ref, VECTOR, "expression")]

    def outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec(self.name, FP32, (self.width,), DENSE),)

    def apply(self, inputs: FeatureInputs) -> dict[str, np.ndarray]:
        try:
            matrix = _vectors(inputs.rows(self.ref), self.width, self.name, self.ref)
        except TypeError as exc:
            raise _value_error(self.name, self.ref, exc) from None
        matrix[np.isnan(matrix)] = self.default
        return {self.name: matrix.astype(np.float32)}


# Read-only: a new feature type is a new entry here, never a branch in the generator.
FEATURE_TYPES: Mapping[str, FeatureFactory] = MappingProxyType(
    {
        "id_feature": IdFeature.from_config,
        "raw_feature": RawFeature.from_config,
        "combo_feature": ComboFeature.from_config,
        "lookup_feature": LookupFeature.from_config,
        "match_feature": MatchFeature.from_config,
        "sequence_feature": SequenceFeature.from_config,
        "embedding": EmbeddingFeature.from_config,
    }
)
