"""Reading a recall stage's `params` (a JSON object) with the checks a scene save runs.

Every reader raises InvalidArgument naming `<path>.params.<key>`, so a bad scene is refused
at save with the field to fix. Numbers arrive as floats (protobuf Struct); an integer
parameter must hold a whole number.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from shared.errors import InvalidArgument

# A user or item feature reference, `view:feature` (as in rank features).
FEATURE_REF = re.compile(r"^[a-z][a-z0-9_]{0,62}:[A-Za-z_][A-Za-z0-9_]{0,62}$")
VIEW_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class Params:
    def __init__(self, params: Mapping[str, Any], path: str) -> None:
        self._params = params
        self._path = path

    def field(self, key: str) -> str:
        return f"{self._path}.params.{key}"

    def has(self, key: str) -> bool:
        return key in self._params

    def only(self, allowed: Collection[str]) -> None:
        unknown = sorted(set(self._params) - set(allowed))
        if unknown:
            raise InvalidArgument(
                f"{self._path}.params", f"unknown parameters {unknown}; use {sorted(allowed)}"
            )

    def string(self, key: str, default: str | None = None) -> str:
        value = self._params.get(key, default)
        if not isinstance(value, str) or not value:
            raise InvalidArgument(self.field(key), "is required (a non-empty string)")
        return value

    def view(self, key: str, default: str | None = None) -> str:
        value = self.string(key, default)
        if not VIEW_ID.match(value):
            raise InvalidArgument(self.field(key), f"{value!r} is not a feature view id")
        return value

    def ref(self, key: str, default: str | None = None) -> str:
        value = self.string(key, default)
        if not FEATURE_REF.match(value):
            raise InvalidArgument(self.field(key), f"{value!r} is not `view:feature`")
        return value

    def optional_ref(self, key: str) -> str | None:
        return self.ref(key) if key in self._params else None

    def choice(self, key: str, choices: Collection[str], default: str) -> str:
        value = self._params.get(key, default)
        if value not in choices:
            raise InvalidArgument(
                self.field(key), f"must be one of {sorted(choices)}, got {value!r}"
            )
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise InvalidArgument(self.field(key), f"must be a whole number, got {value!r}")
        if not low <= value <= high:
            raise InvalidArgument(self.field(key), f"must be {low}..{high}, got {int(value)}")
        return int(value)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(self.field(key), f"must be a number, got {value!r}")
        if not low <= value <= high:
            raise InvalidArgument(self.field(key), f"must be in [{low}, {high}], got {value}")
        return float(value)

    def exactly_one(self, *keys: str) -> str:
        given = [key for key in keys if key in self._params]
        if len(given) != 1:
            raise InvalidArgument(
                f"{self._path}.params",
                f"give exactly one of {list(keys)}, got {given or 'none'}",
            )
        return given[0]


def split_ref(ref: str) -> tuple[str, str]:
    view, feature = ref.split(":", 1)
    return view, feature
