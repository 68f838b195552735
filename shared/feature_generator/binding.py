"""Binding an FG's user and item inputs to the features of a model feature set.

An FG expression names an input by its feature name (`user:age`) or, when several views of
the side's entity have a feature of that name, by `view:feature` (`user:user_profile:age`).
Binding resolves every such name to exactly one `view:feature` of the model's feature set and
checks that the stored type fits the feature type (a raw feature needs a number, a lookup a
map). A config naming a feature the set lacks fails here, at load, naming the entry. Context
inputs come from the request and are not bound.

A side's entity key is an input too (`item:item_id`, `user:user_id`): the candidate's or the
user's own id, the most common id feature of a ranking model. It binds to a key feature (view
""), read from the request and the candidates online and from the labelled rows offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from recstack.common.v1 import value_pb2

from shared.feature_generator.config import CONTEXT, ITEM, USER, InputRef
from shared.feature_generator.errors import FeatureConfigError
from shared.feature_generator.features import CATEGORICAL, MAP, NUMBER, VECTOR
from shared.feature_generator.generator import FeatureGenerator

VT = value_pb2.ValueType
ACCEPTED: Mapping[str, frozenset[int]] = {
    NUMBER: frozenset(
        {VT.VALUE_TYPE_INT64, VT.VALUE_TYPE_FLOAT, VT.VALUE_TYPE_DOUBLE, VT.VALUE_TYPE_BOOL}
    ),
    VECTOR: frozenset(
        {VT.VALUE_TYPE_FLOAT_LIST, VT.VALUE_TYPE_DOUBLE_LIST, VT.VALUE_TYPE_INT64_LIST}
    ),
    MAP: frozenset({VT.VALUE_TYPE_STRING_DOUBLE_MAP}),
    CATEGORICAL: frozenset(
        {
            VT.VALUE_TYPE_INT64,
            VT.VALUE_TYPE_STRING,
            VT.VALUE_TYPE_BOOL,
            VT.VALUE_TYPE_FLOAT,
            VT.VALUE_TYPE_DOUBLE,
            VT.VALUE_TYPE_INT64_LIST,
            VT.VALUE_TYPE_STRING_LIST,
        }
    ),
}


@dataclass(frozen=True)
class AvailableFeature:
    """One feature of a model feature set: its `view:feature` ref, entity and stored type."""

    view: str
    feature: str
    entity: str
    value_type: int

    @property
    def ref(self) -> str:
        return f"{self.view}:{self.feature}"

    @property
    def is_key(self) -> bool:
        """The entity's join key itself, not a feature of a view."""
        return not self.view

    @classmethod
    def key(cls, join_key: str, entity: str, key_type: int) -> AvailableFeature:
        return cls("", join_key, entity, key_type)


@dataclass(frozen=True)
class InputBinding:
    """Each bound user/item input → the `view:feature` it is read from."""

    refs: Mapping[InputRef, AvailableFeature]

    def side(self, side: str) -> dict[str, AvailableFeature]:
        """Input name → feature, for one side."""
        return {ref.name: found for ref, found in self.refs.items() if ref.side == side}


def bind_inputs(
    generator: FeatureGenerator,
    available: Sequence[AvailableFeature],
    *,
    user_entity: str,
    item_entity: str,
    keys: Sequence[AvailableFeature] = (),
) -> InputBinding:
    """`keys` are the user and item entities' join keys (`AvailableFeature.key`)."""
    entities = {USER: user_entity, ITEM: item_entity}
    refs: dict[InputRef, AvailableFeature] = {}
    for path, ref, expected in generator.expectations():
        if ref.side == CONTEXT:
            continue
        entity = entities[ref.side]
        key = next((k for k in keys if k.entity == entity and k.feature == ref.name), None)
        found = key or _resolve(ref, entity, available, path)
        if found.value_type not in ACCEPTED[expected]:
            raise FeatureConfigError(
                path,
                f"input {ref} is {VT.Name(found.value_type).removeprefix('VALUE_TYPE_')} "
                f"({found.ref}); this feature needs {expected}",
            )
        refs[ref] = found
    return InputBinding(refs)


def _resolve(
    ref: InputRef, entity: str, available: Sequence[AvailableFeature], path: str
) -> AvailableFeature:
    side_features = [feature for feature in available if feature.entity == entity]
    if ":" in ref.name:
        matches = [feature for feature in side_features if feature.ref == ref.name]
    else:
        matches = [feature for feature in side_features if feature.feature == ref.name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        offered = sorted(feature.ref for feature in side_features)
        raise FeatureConfigError(
            path,
            f"input {ref} is not a feature of the model feature set's {ref.side} entity "
            f"{entity!r} (it has {offered})",
        )
    raise FeatureConfigError(
        path,
        f"input {ref} is ambiguous: {sorted(f.ref for f in matches)} all have it; write "
        f"`{ref.side}:<view>:{ref.name}`",
    )
