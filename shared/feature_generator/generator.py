"""`FeatureGenerator`: one FG document → the model's named input tensors.

Training (over exported training sets) and online ranking (per request) run the same
`FeatureGenerator`, so one raw input gives bit-identical model inputs offline and online —
the consistency EasyRec's FG exists for (seeds/001). The document uses EasyRec's vocabulary:

    {"features": [
        {"feature_type": "id_feature", "feature_name": "item_id",
         "expression": "item:item_id", "hash_bucket_size": 100000},
        {"feature_type": "raw_feature", "feature_name": "age",
         "expression": "user:age", "boundaries": [18, 25, 35, 45, 56]},
        {"feature_type": "lookup_feature", "feature_name": "genre_affinity",
         "map": "user:genre_counts", "key": "item:genres", "separator": "|"}
    ]}

An expression is `<side>:<input>` with side `user`, `item` or `context` (request features such
as the hour). Every feature becomes one (or, for sequences with side features, several) model
input tensors named after it: int64 embedding rows (-1 = no value) or float32 values.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from shared.feature_generator.config import CONTEXT, ITEM, SIDES, USER, InputRef
from shared.feature_generator.errors import FeatureConfigError, FeatureValueError
from shared.feature_generator.features import FEATURE_TYPES, Feature
from shared.feature_generator.inputs import FP32, FeatureInputs, ItemLookup, TensorSpec
from shared.feature_generator.values import HashMemo

Outputs = dict[str, np.ndarray]


class FeatureGenerator:
    def __init__(self, features: Sequence[Feature], config: Mapping[str, Any]) -> None:
        self._features = tuple(features)
        self._config = config
        self.signature: tuple[TensorSpec, ...] = tuple(
            spec for feature in self._features for spec in feature.outputs()
        )
        names = [spec.name for spec in self.signature]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise FeatureConfigError("features", f"output names must be unique: {repeated}")
        self.inputs: tuple[InputRef, ...] = tuple(
            sorted({ref for feature in self._features for ref in feature.inputs()})
        )
        # Item inputs read for items other than the candidates (a history's side features).
        self.lookup_inputs: tuple[InputRef, ...] = tuple(
            sorted({ref for feature in self._features for ref in feature.lookup_inputs()})
        )

    def expectations(self) -> list[tuple[str, InputRef, str]]:
        """(config path of the input's key, input, what it must hold) for every input of
        every feature."""
        return [
            (f"features[{index}].{expected.key}", expected.ref, expected.kind)
            for index, feature in enumerate(self._features)
            for expected in feature.expects()
        ]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FeatureGenerator:
        """Build and validate; FeatureConfigError names the first bad entry."""
        if not isinstance(config, Mapping):
            raise FeatureConfigError("features", "the FG document must be an object")
        unknown = sorted(set(config) - {"features"})
        if unknown:
            raise FeatureConfigError(unknown[0], "is not a setting of an FG document")
        entries = _integral(config.get("features"))
        if not isinstance(entries, list):
            raise FeatureConfigError("features", "must be a list of feature configs")
        memo = HashMemo()
        features = [_feature(entry, f"features[{i}]", memo) for i, entry in enumerate(entries)]
        return cls(features, {"features": [dict(entry) for entry in entries]})

    def to_config(self) -> dict[str, Any]:
        return {"features": [dict(entry) for entry in self._config["features"]]}

    @property
    def features(self) -> tuple[Feature, ...]:
        return self._features

    def subset(self, names: Collection[str]) -> FeatureGenerator:
        """The generator of these features alone. It holds the same feature objects, so each
        of its outputs is exactly the whole generator's output of that name."""
        chosen = set(names)
        entries = self._config["features"]
        return FeatureGenerator(
            [feature for feature in self._features if feature.name in chosen],
            {"features": [entry for entry in entries if entry.get("feature_name") in chosen]},
        )

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.signature)

    def generate(
        self,
        user: Mapping[str, Any],
        items: Mapping[str, Any],
        context: Mapping[str, Any] | None = None,
        *,
        num_items: int | None = None,
        item_lookup: ItemLookup | None = None,
    ) -> Outputs:
        """Model inputs for one user (and request context) and a batch of items, online.

        `user` and `context` map input names to one value each; `items` maps them to columns
        (numpy arrays or lists; None or NaN for missing) of one entry per item. `num_items`
        is needed only when no item column is given.
        """
        count = _item_count(items, num_items)
        sides = {USER: user, ITEM: items, CONTEXT: context or {}}
        return self._run(FeatureInputs(count, sides, frozenset({ITEM}), item_lookup))

    def generate_rows(
        self,
        columns: Mapping[str, Mapping[str, Any]],
        num_rows: int,
        *,
        item_lookup: ItemLookup | None = None,
    ) -> Outputs:
        """Model inputs for `num_rows` rows that each carry their own user, item and context
        (a training set): `columns[side][input]` is a column of `num_rows` entries."""
        unknown = sorted(set(columns) - set(SIDES))
        if unknown:
            raise FeatureValueError(f"sides must be {list(SIDES)}, got {unknown}")
        return self._run(FeatureInputs(num_rows, columns, frozenset(SIDES), item_lookup))

    def matrix(self, outputs: Outputs) -> np.ndarray:
        """All outputs side by side as one float32 matrix, for models that take a single
        dense input (every output must be float32)."""
        dense = [spec for spec in self.signature if spec.dtype == FP32]
        if len(dense) != len(self.signature):
            raise FeatureConfigError(
                "features", "a single-matrix model input takes float outputs only"
            )
        count = next(iter(outputs.values())).shape[0] if outputs else 0
        return np.concatenate(
            [outputs[spec.name] for spec in self.signature] or [np.empty((count, 0))], axis=1
        ).astype(np.float32)

    def _run(self, inputs: FeatureInputs) -> Outputs:
        outputs: Outputs = {}
        for feature in self._features:
            for name, array in feature.apply(inputs).items():
                outputs[name] = _rows_of(array, inputs.num_rows)
        return outputs


def _integral(value: Any) -> Any:
    """The document with integral floats as ints: a document stored as a protobuf Struct
    (or parsed by some JSON readers) turns `"hash_bucket_size": 1000` into 1000.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _integral(item) for key, item in value.items()}
    return value


def _feature(entry: Any, path: str, memo: HashMemo) -> Feature:
    if not isinstance(entry, Mapping):
        raise FeatureConfigError(path, "must be an object")
    feature_type = entry.get("feature_type")
    factory = FEATURE_TYPES.get(feature_type) if isinstance(feature_type, str) else None
    if factory is None:
        raise FeatureConfigError(
            f"{path}.feature_type", f"{feature_type!r} is not one of {sorted(FEATURE_TYPES)}"
        )
    return factory(entry, path, memo)


def _rows_of(array: np.ndarray, count: int) -> np.ndarray:
    """The output with `count` rows: computed once for a side given once, then repeated."""
    if array.shape[0] == count:
        return np.ascontiguousarray(array)
    return np.ascontiguousarray(np.broadcast_to(array, (count, *array.shape[1:])))


def _item_count(items: Mapping[str, Any], num_items: int | None) -> int:
    lengths = {len(column) for column in items.values() if column is not None}
    if num_items is not None:
        lengths.add(num_items)
    if len(lengths) != 1:
        raise FeatureValueError(
            f"item columns and num_items must agree on one item count, got {sorted(lengths)}"
        )
    return lengths.pop()
