"""Feature generator (FG): raw user, item and context features → a ranking model's inputs.

One implementation used by training and by the online rank stage (see `generator`); the
feature types are in `features`, their value handling in `values` and `transforms`, and
`binding` ties an FG document to a model feature set.
"""

from shared.feature_generator.binding import AvailableFeature, InputBinding, bind_inputs
from shared.feature_generator.config import CONTEXT, ITEM, SIDES, USER, InputRef
from shared.feature_generator.errors import FeatureConfigError, FeatureValueError
from shared.feature_generator.features import FEATURE_TYPES
from shared.feature_generator.generator import FeatureGenerator, Outputs
from shared.feature_generator.inputs import (
    DENSE,
    FP32,
    ID,
    INT64,
    SEQUENCE,
    FeatureInputs,
    ItemLookup,
    TensorSpec,
)
from shared.feature_generator.values import stable_hash

__all__ = [
    "CONTEXT",
    "DENSE",
    "FEATURE_TYPES",
    "FP32",
    "ID",
    "INT64",
    "ITEM",
    "SEQUENCE",
    "SIDES",
    "USER",
    "AvailableFeature",
    "FeatureConfigError",
    "FeatureGenerator",
    "FeatureInputs",
    "FeatureValueError",
    "InputBinding",
    "InputRef",
    "ItemLookup",
    "Outputs",
    "TensorSpec",
    "bind_inputs",
    "stable_hash",
]
