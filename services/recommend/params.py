"""Reading a stage's `params` (a protobuf Struct as a dict) with errors naming the exact key.

Every stage's `check` reads its params through `Params`, so a scene with a typo or a wrong
type is refused when it is saved, as INVALID_ARGUMENT at `<stage path>.params.<key>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import InvalidArgument


class Params:
    def __init__(self, params: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise InvalidArgument(
                f"{path}.params", f"unknown parameters {unknown}; this stage takes {list(allowed)}"
            )
        self.params = params
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.params.{key}"

    def text(self, key: str, default: str | None = None) -> str:
        value = self.params.get(key, default)
        if not isinstance(value, str) or not value:
            raise InvalidArgument(self.at(key), "is required: a non-empty string")
        return value

    def ref(self, key: str) -> tuple[str, str]:
        """A `view:feature` reference, as (view, feature)."""
        text = self.text(key)
        view, _, feature = text.partition(":")
        if not view or not feature or ":" in feature:
            raise InvalidArgument(self.at(key), f"{text!r} is not `view:feature`")
        return view, feature

    def refs(self, key: str) -> list[str]:
        value = self.params.get(key)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise InvalidArgument(self.at(key), "is required: one `view:feature` or a list")
        for index, item in enumerate(value):
            view, _, feature = item.partition(":") if isinstance(item, str) else ("", "", "")
            if not view or not feature:
                raise InvalidArgument(f"{self.at(key)}[{index}]", f"{item!r} is not `view:feature`")
        return list(value)

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        value = self.params.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise InvalidArgument(self.at(key), f"must be a number in [{low:g}, {high:g}]")
        return float(value)

    def whole(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self.params.get(key, default)
        # Struct numbers are doubles: 3 arrives as 3.0.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidArgument(self.at(key), f"must be a whole number in [{low}, {high}]")
        return value

    def choice(self, key: str, options: Iterable[str], default: str) -> str:
        options = tuple(options)
        value = self.params.get(key, default)
        if value not in options:
            raise InvalidArgument(self.at(key), f"{value!r} is not one of {list(options)}")
        return str(value)

    def one_of(self, *keys: str) -> str:
        """The one of `keys` that is given (alternative ways to say one thing)."""
        given = [key for key in keys if key in self.params]
        if len(given) != 1:
            raise InvalidArgument(
                f"{self.path}.params", f"give exactly one of {list(keys)}, got {given or 'none'}"
            )
        return given[0]

    def boolean(self, key: str, default: bool) -> bool:
        value = self.params.get(key, default)
        if not isinstance(value, bool):
            raise InvalidArgument(self.at(key), "must be true or false")
        return value
