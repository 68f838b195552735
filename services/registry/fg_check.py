"""The check of a model version's FG config against the inputs it was trained on.

The registry calls an `FgConfigCheck` when a version is created (an error is
INVALID_ARGUMENT at `model_version.fg_config.<field>`) and again before it is activated (an
error is FAILED_PRECONDITION). `check_fg_config`, the default, is the feature generator's own
load: the same code that training and the rank stage run, so a version the registry accepts
is one they can build.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from recstack.common.v1 import feature_ref_pb2

from shared.errors import InvalidArgument
from shared.feature_generator import (
    AvailableFeature,
    FeatureConfigError,
    FeatureGenerator,
    bind_inputs,
)


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
    """The feature generator's own validation (`shared.feature_generator`): every feature
    type's settings, then every input bound to the pinned features with a type the feature
    can read. The feature set's first entity is the user side, its last the item side (a
    ranking model's set lists `[user, item]`); a set of one entity has an item side only."""
    entities = [key.entity for key in inputs.keys]
    try:
        generator = FeatureGenerator.from_config(fg_config)
        bind_inputs(
            generator,
            [
                AvailableFeature(p.ref.feature_view, p.ref.feature, p.entity, p.value_type)
                for p in inputs.features
            ],
            user_entity=entities[0] if len(entities) > 1 else "",
            item_entity=entities[-1] if entities else "",
            keys=[AvailableFeature.key(k.ref.feature, k.entity, k.value_type) for k in inputs.keys],
        )
    except FeatureConfigError as exc:
        raise InvalidArgument(exc.path, exc.description) from None
