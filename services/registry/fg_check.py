"""The check of a model version's FG config against the inputs it was trained on.

The registry calls an `FgConfigCheck` when a version is created (an error is
INVALID_ARGUMENT at `model_version.fg_config.<field>`) and again before it is activated (an
error is FAILED_PRECONDITION). `check_fg_config` is the default: the structure of the
document and the inputs its `expression`s name. A full feature-generator validation (types,
dimensions, per-type settings, the inputs of other keys such as a lookup's `map`) plugs in
through the same signature.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from recstack.common.v1 import feature_ref_pb2

from shared.errors import InvalidArgument

# Request context features (`context:hour`) arrive with each request, not from a feature set.
FEATURE_SIDES = ("user", "item")
SIDES = (*FEATURE_SIDES, "context")


@dataclass(frozen=True)
class PinnedFeature:
    """One feature of a model version, pinned to the feature-view version it was trained on."""

    ref: feature_ref_pb2.FeatureRef
    # recstack.common.v1.ValueType of the field in that view version.
    value_type: int
    # Entity id of the view, e.g. `user`.
    entity: str

    @property
    def text(self) -> str:
        return f"{self.ref.feature_view}:{self.ref.feature}"


@dataclass(frozen=True)
class FgInputs:
    """What a version's FG may read besides request context."""

    # The feature set's features as the version pinned them.
    features: tuple[PinnedFeature, ...]
    # The join keys of the feature set's entities (`user:user_id`, `item:item_id`), in the
    # set's `entities` order: `ref.feature_view` is empty and `ref.feature` the join key.
    keys: tuple[PinnedFeature, ...] = ()


# Raises InvalidArgument whose `field` is a path inside the document, e.g.
# `features[2].expression`, and whose message names the offending feature.
FgConfigCheck = Callable[[Mapping[str, Any], FgInputs], None]


def check_fg_config(fg_config: Mapping[str, Any], inputs: FgInputs) -> None:
    entries = fg_config.get("features")
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(
            "features", 'list the generated features: {"features": [{"feature_type": …}, …]}'
        )
    names: set[str] = set()
    for index, entry in enumerate(entries):
        path = f"features[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidArgument(path, "must be an object with feature_type and feature_name")
        for key in ("feature_type", "feature_name"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise InvalidArgument(f"{path}.{key}", "is required and must be a string")
        name = entry["feature_name"]
        if name in names:
            raise InvalidArgument(f"{path}.feature_name", f"duplicate feature_name {name!r}")
        names.add(name)
        if "expression" in entry:
            _check_expressions(entry["expression"], f"{path}.expression", name, inputs)


def _check_expressions(expression: Any, path: str, feature_name: str, inputs: FgInputs) -> None:
    if isinstance(expression, str):
        _check_expression(expression, path, feature_name, inputs)
        return
    if not isinstance(expression, list) or not expression:
        raise InvalidArgument(path, f"feature {feature_name!r}: must be a string or a list of them")
    for index, item in enumerate(expression):
        if not isinstance(item, str):
            raise InvalidArgument(f"{path}[{index}]", f"feature {feature_name!r}: not a string")
        _check_expression(item, f"{path}[{index}]", feature_name, inputs)


def _check_expression(expression: str, path: str, feature_name: str, inputs: FgInputs) -> None:
    side, _, name = expression.partition(":")
    if side not in SIDES or not name:
        raise InvalidArgument(
            path,
            f"feature {feature_name!r}: {expression!r} is not `side:name` with side "
            f"{', '.join(SIDES)}",
        )
    if side not in FEATURE_SIDES:
        return
    view, _, feature = name.rpartition(":")
    # An entity's own id is an input too, and wins over a view field of the same name.
    if not view and any(key.ref.feature == feature for key in inputs.keys):
        return
    features = inputs.features
    matches = [
        pinned
        for pinned in features
        if pinned.ref.feature == feature and view in ("", pinned.ref.feature_view)
    ]
    if len(matches) == 1:
        return
    known = [pinned.text for pinned in features] + [
        f"{key.entity} key {key.ref.feature}" for key in inputs.keys
    ]
    if matches:
        raise InvalidArgument(
            path,
            f"feature {feature_name!r}: {expression!r} is ambiguous, the feature set has "
            f"{', '.join(pinned.text for pinned in matches)}: write {side}:VIEW:{feature}",
        )
    close = difflib.get_close_matches(name, known + [pinned.ref.feature for pinned in features])
    hint = f"; did you mean {side}:{close[0]}?" if close else ""
    raise InvalidArgument(
        path,
        f"feature {feature_name!r}: {expression!r} names no feature of the model's feature set "
        f"(it has {_listing(known)}){hint}",
    )


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
