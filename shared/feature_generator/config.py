"""Reading one feature's entry of the FG document, with errors that name the exact key."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.feature_generator.errors import FeatureConfigError

USER = "user"
ITEM = "item"
CONTEXT = "context"
SIDES = (USER, ITEM, CONTEXT)


@dataclass(frozen=True, order=True)
class InputRef:
    """One raw input: the side it is read from and its name on that side (`age`, or
    `user_profile:age` when the name alone is ambiguous)."""

    side: str
    name: str

    def __str__(self) -> str:
        return f"{self.side}:{self.name}"

    @classmethod
    def parse(cls, expression: str, path: str) -> InputRef:
        side, _, name = expression.partition(":")
        if side not in SIDES or not name:
            raise FeatureConfigError(
                path, f"{expression!r} is not `<side>:<input>` with side one of {list(SIDES)}"
            )
        return cls(side, name)


class Entry:
    """One feature config object; every getter raises FeatureConfigError under `path`."""

    def __init__(self, config: Any, path: str, allowed: frozenset[str]) -> None:
        if not isinstance(config, Mapping):
            raise FeatureConfigError(path, "must be an object")
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise FeatureConfigError(
                f"{path}.{unknown[0]}",
                f"is not a setting of {config.get('feature_type')!r}; it takes {sorted(allowed)}",
            )
        self.config = config
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return key in self.config

    def text(self, key: str, default: str | None = None) -> str:
        value = self.config.get(key, default)
        if not isinstance(value, str) or not value:
            raise FeatureConfigError(self.at(key), "is required: a non-empty string")
        return value

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if key in self.config else None

    def choice(self, key: str, options: Sequence[str], default: str) -> str:
        value = self.config.get(key, default)
        if value not in options:
            raise FeatureConfigError(self.at(key), f"{value!r} is not one of {list(options)}")
        return str(value)

    def positive_int(self, key: str, default: int | None = None) -> int:
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FeatureConfigError(self.at(key), f"must be a positive integer, got {value!r}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FeatureConfigError(self.at(key), f"must be a number, got {value!r}")
        return float(value)

    def scalar(self, key: str) -> str | int | float | None:
        """An id-like default value (text or number), None when not configured."""
        value = self.config.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise FeatureConfigError(self.at(key), f"must be a string or a number, got {value!r}")
        return value

    def expression(self, key: str = "expression") -> InputRef:
        return InputRef.parse(self.text(key), self.at(key))

    def expressions(self, key: str, minimum: int) -> tuple[InputRef, ...]:
        value = self.config.get(key)
        if not isinstance(value, list) or len(value) < minimum:
            raise FeatureConfigError(
                self.at(key), f"must be a list of at least {minimum} `<side>:<input>` strings"
            )
        refs = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise FeatureConfigError(f"{self.at(key)}[{index}]", "must be a string")
            refs.append(InputRef.parse(item, f"{self.at(key)}[{index}]"))
        return tuple(refs)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.config.get(key)
        if not isinstance(value, list) or not value:
            raise FeatureConfigError(self.at(key), "must be a non-empty list of strings")
        if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in value):
            raise FeatureConfigError(self.at(key), "must hold only strings (or integers)")
        texts = tuple(str(item) for item in value)
        if len(set(texts)) != len(texts):
            raise FeatureConfigError(self.at(key), "must not repeat a value")
        return texts

    def boundaries(self, key: str = "boundaries") -> tuple[float, ...] | None:
        if key not in self.config:
            return None
        value = self.config[key]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in value)
        ):
            raise FeatureConfigError(self.at(key), "must be a non-empty list of numbers")
        if any(b >= c for b, c in itertools.pairwise(value)):
            raise FeatureConfigError(self.at(key), "must be strictly increasing")
        return tuple(float(b) for b in value)
