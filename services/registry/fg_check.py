"""The check of a model version's FG config against the features it was trained on.

The registry calls an `FgConfigCheck` when a version is created (an error is
INVALID_ARGUMENT at `model_version.fg_config.<field>`) and again before it is activated (an
error is FAILED_PRECONDITION). `check_fg_config` is the default: the structure of the
document and the features its expressions name. A full feature-generator validation (types,
dimensions, per-type settings) plugs in through the same signature.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
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


# Raises InvalidArgument whose `field` is a path inside the document, e.g.
# `features[2].expression`, and whose message names the offending feature.
FgConfigCheck = Callable[[Mapping[str, Any], Sequence[PinnedFeature]], None]


def check_fg_config(fg_config: Mapping[str, Any], features: Sequence[PinnedFeature]) -> None:
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
            _check_expressions(entry["expression"], f"{path}.expression", name, features)


def _check_expressions(
    expression: Any, path: str, feature_name: str, features: Sequence[PinnedFeature]
) -> None:
    if isinstance(expression, str):
        _check_expression(expression, path, feature_name, features)
        return
    if not isinstance(expression, list) or not expression:
        raise InvalidArgument(path, f"feature {feature_name!r}: must be a string or a list of them")
    for index, item in enumerate(expression):
        if not isinstance(item, str):
            raise InvalidArgument(f"{path}[{index}]", f"feature {feature_name!r}: not a string")
        _check_expression(item, f"{path}[{index}]", feature_name, features)


def _check_expression(
    expression: str, path: str, feature_name: str, features: Sequence[PinnedFeature]
) -> None:
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
    matches = [
        pinned
        for pinned in features
        if pinned.ref.feature == feature and view in ("", pinned.ref.feature_view)
    ]
    if len(matches) == 1:
        return
    known = [pinned.text for pinned in features]
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
