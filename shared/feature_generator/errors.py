"""The two ways a feature generator fails: a bad document at load, a bad value at generate."""

from __future__ import annotations


class FeatureConfigError(ValueError):
    """The FG document is malformed; `path` names the offending entry (e.g.
    `features[3].hash_bucket_size`) so the message leads straight to the line to fix."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.description = message


class FeatureValueError(ValueError):
    """An input value cannot become the configured feature (text for a raw feature, a vector
    of the wrong length); the message names the feature and the input."""
