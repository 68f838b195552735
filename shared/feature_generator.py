"""Feature generator (FG): raw user and item features → the ranking model's input matrix.

Training (over exported training sets) and online ranking (per request) call the same
`FeatureGenerator.generate`, so one input gives bit-identical model inputs offline and online,
the consistency the EasyRec processor's FG exists for (seeds/001). The generator is built from
one JSON-able document stored with the model, in EasyRec's vocabulary:

    {"features": [
        {"feature_type": "raw_feature", "feature_name": "age",
         "expression": "user:user_profile:age"},
        {"feature_type": "raw_feature", "feature_name": "ctr",
         "expression": "item:item_stats:ctr", "default_value": 0.0}
    ]}

`expression` is `<side>:<input>`: the side (`user`, `item`) says which mapping the input is read
from, the input is the key in that mapping (recstack passes `view:feature` refs). Each feature
type is one small class behind `FEATURE_TYPES`; id, combo, lookup, match and sequence features
join that map without touching the generator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

USER = "user"
ITEM = "item"
SIDES = (USER, ITEM)


class FeatureConfigError(ValueError):
    """The FG document is malformed; `path` names the offending entry."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.description = message


class FeatureValueError(ValueError):
    """An input value cannot be turned into the configured feature (e.g. text for a raw one)."""


@dataclass(frozen=True)
class FeatureInputs:
    """The raw inputs of one generate call: one user's values, and item columns of equal length."""

    user: Mapping[str, Any]
    item: Mapping[str, Any]
    num_items: int

    def values(self, side: str, name: str) -> Any:
        """The user scalar or the item column for `name` (None when absent: all missing)."""
        return (self.user if side == USER else self.item).get(name)


class Feature(Protocol):
    """One configured feature: `width` output columns computed from the raw inputs."""

    name: str
    width: int

    def apply(self, inputs: FeatureInputs) -> np.ndarray:
        """A float64 array [num_items, width]."""
        ...

    def to_config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RawFeature:
    """A numeric input passed through as one column; missing values become `default_value`."""

    name: str
    side: str
    input: str
    default_value: float = 0.0
    width: int = 1

    @classmethod
    def from_config(cls, config: Mapping[str, Any], path: str) -> RawFeature:
        name = _required_str(config, "feature_name", path)
        side, input_name = _expression(config, path)
        default = config.get("default_value", 0.0)
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise FeatureConfigError(f"{path}.default_value", "must be a number")
        return cls(name, side, input_name, float(default))

    def apply(self, inputs: FeatureInputs) -> np.ndarray:
        raw = inputs.values(self.side, self.input)
        if self.side == USER:
            column = np.full(inputs.num_items, _scalar(raw, self), dtype=np.float64)
        else:
            column = _column(raw, inputs.num_items, self)
        # NaN is how columnar stores mark a missing value.
        column[np.isnan(column)] = self.default_value
        return column.reshape(-1, 1)

    def to_config(self) -> dict[str, Any]:
        return {
            "feature_type": "raw_feature",
            "feature_name": self.name,
            "expression": f"{self.side}:{self.input}",
            "default_value": self.default_value,
        }


FeatureFactory = Callable[[Mapping[str, Any], str], Feature]

# Read-only: adding a feature type is a new entry here, never a branch in the generator.
FEATURE_TYPES: Mapping[str, FeatureFactory] = MappingProxyType(
    {"raw_feature": RawFeature.from_config}
)


class FeatureGenerator:
    """Turns raw features into the float32 matrix [num_items, num_outputs] a model consumes."""

    def __init__(self, features: Sequence[Feature]) -> None:
        names = [feature.name for feature in features]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise FeatureConfigError("features", f"feature names must be unique: {duplicates}")
        self._features = tuple(features)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FeatureGenerator:
        entries = config.get("features")
        if not isinstance(entries, list):
            raise FeatureConfigError("features", "must be a list of feature configs")
        return cls([_feature(entry, f"features[{i}]") for i, entry in enumerate(entries)])

    def to_config(self) -> dict[str, Any]:
        return {"features": [feature.to_config() for feature in self._features]}

    @property
    def output_names(self) -> tuple[str, ...]:
        """One name per matrix column; a feature of width w > 1 gives `name[0]`…`name[w-1]`."""
        names: list[str] = []
        for feature in self._features:
            if feature.width == 1:
                names.append(feature.name)
            else:
                names += [f"{feature.name}[{i}]" for i in range(feature.width)]
        return tuple(names)

    def generate(
        self,
        user_features: Mapping[str, Any],
        item_features: Mapping[str, Any],
        *,
        num_items: int | None = None,
    ) -> np.ndarray:
        """The model input for one user and a batch of items.

        `user_features` maps input names to one value each; `item_features` maps them to columns
        (numpy arrays or lists, None or NaN for missing) of one entry per item. `num_items` is
        needed only when no item column is given.
        """
        count = _item_count(item_features, num_items)
        inputs = FeatureInputs(user_features, item_features, count)
        width = sum(feature.width for feature in self._features)
        matrix = np.empty((count, width), dtype=np.float32)
        offset = 0
        for feature in self._features:
            matrix[:, offset : offset + feature.width] = feature.apply(inputs)
            offset += feature.width
        return matrix


def _feature(entry: Any, path: str) -> Feature:
    if not isinstance(entry, Mapping):
        raise FeatureConfigError(path, "must be an object")
    feature_type = entry.get("feature_type")
    factory = FEATURE_TYPES.get(feature_type) if isinstance(feature_type, str) else None
    if factory is None:
        raise FeatureConfigError(
            f"{path}.feature_type", f"{feature_type!r} is not one of {sorted(FEATURE_TYPES)}"
        )
    return factory(entry, path)


def _required_str(config: Mapping[str, Any], key: str, path: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise FeatureConfigError(f"{path}.{key}", "is required")
    return value


def _expression(config: Mapping[str, Any], path: str) -> tuple[str, str]:
    expression = _required_str(config, "expression", path)
    side, _, input_name = expression.partition(":")
    if side not in SIDES or not input_name:
        raise FeatureConfigError(
            f"{path}.expression", f"{expression!r} is not `<side>:<input>` with side in {SIDES}"
        )
    return side, input_name


def _item_count(item_features: Mapping[str, Any], num_items: int | None) -> int:
    lengths = {len(column) for column in item_features.values() if column is not None}
    if num_items is not None:
        lengths.add(num_items)
    if len(lengths) != 1:
        raise FeatureValueError(
            f"item columns and num_items must agree on one item count, got {sorted(lengths)}"
        )
    return lengths.pop()


def _scalar(value: Any, feature: RawFeature) -> float:
    if value is None:
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FeatureValueError(
            f"raw feature {feature.name!r} needs a number for {feature.side} input "
            f"{feature.input!r}, got {type(value).__name__}"
        ) from None


def _column(values: Any, count: int, feature: RawFeature) -> np.ndarray:
    if values is None:
        return np.full(count, np.nan, dtype=np.float64)
    try:
        # numpy reads None as NaN and bools as 0/1 when asked for float64.
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise FeatureValueError(
            f"raw feature {feature.name!r} needs numbers for item input {feature.input!r}"
        ) from None
