"""Filter `rules`: keeps the candidates that satisfy declarative conditions.

params: `rules`, a list that must all hold (AND); an entry `{"any": [...]}` holds when one of
its rules does (OR). A rule is `{"field": F, "op": OP, "value": V}` or, to compare with a
request value, `{"field": F, "op": OP, "value_from": G}`:
- `F` is an item feature `view:feature` (or `item:view:feature`), a request context entry
  `context:name`, or a user feature `user:view:feature`; `G` is a context or user one;
- `OP` is one of `== != < <= > >=` or `in`, `not in` (V a list) or `contains` (the field a
  list holding V). On a list-valued field (an item's genres) `in` means any element is in V
  and `not in` that none is.
A missing value makes a rule false, except `!=` and `not in`, which a missing value
satisfies. Context and user rules hold or fail for the whole request, e.g.
`[{"any": [{"field": "context:adult_ok", "op": "==", "value": true},
{"field": "movie_attributes:genres", "op": "not in", "value": ["Adult"]}]}]`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.recommend.pipeline import (
    ITEM_ID,
    BuildContext,
    Candidates,
    ItemSource,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)
from shared.errors import InvalidArgument

COMPARISONS: Mapping[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
MEMBERSHIP = ("in", "not in", "contains")
OPERATORS = (*COMPARISONS, *MEMBERSHIP)
# Ops a missing value satisfies.
MISSING_HOLDS = frozenset({"!=", "not in"})
MAX_DEPTH = 3
ITEM, CONTEXT, USER = "item", "context", "user"


@dataclass(frozen=True)
class Field:
    side: str
    name: str  # `view:feature` for item and user fields, the entry for context

    @property
    def view(self) -> str:
        return self.name.partition(":")[0]

    @property
    def feature(self) -> str:
        return self.name.partition(":")[2]


@dataclass(frozen=True)
class Rule:
    field: Field
    op: str
    value: Any = None
    value_from: Field | None = None

    def holds(self, request: StageRequest, candidates: Candidates, items: _Items) -> np.ndarray:
        wanted = self.value if self.value_from is None else _request_value(self.value_from, request)
        if self.field.side == ITEM:
            values = items.column(self.field, candidates)
            return np.fromiter(
                (self._test(value, wanted) for value in values.tolist()), bool, len(candidates)
            )
        return np.full(len(candidates), self._test(_request_value(self.field, request), wanted))

    def _test(self, value: Any, wanted: Any) -> bool:
        if _missing(value) or _missing(wanted):
            return self.op in MISSING_HOLDS
        if self.op == "contains":
            return isinstance(value, list | tuple) and wanted in value
        if self.op in ("in", "not in"):
            members = set(wanted) if isinstance(wanted, list | tuple) else {wanted}
            found = (
                bool(members & set(value))
                if isinstance(value, list | tuple)
                else (value in members)
            )
            return found if self.op == "in" else not found
        try:
            return bool(COMPARISONS[self.op](value, wanted))
        except TypeError:  # text against a number: not comparable, the rule fails
            return False


@dataclass(frozen=True)
class AnyOf:
    rules: tuple[Rule | AnyOf, ...]

    def holds(self, request: StageRequest, candidates: Candidates, items: _Items) -> np.ndarray:
        kept = np.zeros(len(candidates), dtype=bool)
        for rule in self.rules:
            kept |= rule.holds(request, candidates, items)
        return kept


class _Items:
    """One request's item columns, each gathered from the item cache once."""

    def __init__(self, source: ItemSource, project: str) -> None:
        self._source = source
        self._project = project

    def column(self, field: Field, candidates: Candidates) -> np.ndarray:
        ids = candidates.item_ids.tolist()
        values = self._source.values(self._project, field.view, field.feature, ids)
        if values.dtype == np.float64:
            # NaN is how the cache marks a missing number.
            return np.array([None if np.isnan(v) else v for v in values], dtype=object)
        return values


@dataclass(frozen=True)
class RuleFilter:
    items: ItemSource
    project: str
    rules: tuple[Rule | AnyOf, ...]
    user_refs: tuple[str, ...]

    def keep(self, request: StageRequest, candidates: Candidates) -> np.ndarray:
        items = _Items(self.items, self.project)
        kept = np.ones(len(candidates), dtype=bool)
        for rule in self.rules:
            if not kept.any():
                break
            kept &= rule.holds(request, candidates, items)
        return kept


def _request_value(field: Field, request: StageRequest) -> Any:
    if field.side == CONTEXT:
        return request.context.get(field.name)
    return request.user.get(field.name)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


# --- parsing ---------------------------------------------------------------------------------


def parse(params: Mapping[str, Any], path: str) -> tuple[Rule | AnyOf, ...]:
    unknown = sorted(set(params) - {"rules"})
    if unknown:
        raise InvalidArgument(f"{path}.params", f"unknown parameters {unknown}; use ['rules']")
    rules = params.get("rules")
    if not isinstance(rules, list) or not rules:
        raise InvalidArgument(f"{path}.params.rules", "is required: a non-empty list of rules")
    return tuple(_rule(rule, f"{path}.params.rules[{i}]", 1) for i, rule in enumerate(rules))


def _rule(entry: Any, path: str, depth: int) -> Rule | AnyOf:
    if not isinstance(entry, Mapping):
        raise InvalidArgument(path, 'must be an object: a rule or {"any": [...]}')
    if "any" in entry:
        if set(entry) != {"any"} or not isinstance(entry["any"], list) or not entry["any"]:
            raise InvalidArgument(f"{path}.any", "must be the entry's only key: a list of rules")
        if depth >= MAX_DEPTH:
            raise InvalidArgument(path, f"nests deeper than {MAX_DEPTH} levels")
        return AnyOf(
            tuple(_rule(r, f"{path}.any[{i}]", depth + 1) for i, r in enumerate(entry["any"]))
        )
    unknown = sorted(set(entry) - {"field", "op", "value", "value_from"})
    if unknown:
        raise InvalidArgument(path, f"unknown keys {unknown}; a rule has field, op, value")
    op = entry.get("op")
    if op not in OPERATORS:
        raise InvalidArgument(f"{path}.op", f"{op!r} is not one of {list(OPERATORS)}")
    field = _field(entry.get("field"), f"{path}.field", item_allowed=True)
    if ("value" in entry) == ("value_from" in entry):
        raise InvalidArgument(path, "give exactly one of value and value_from")
    if "value_from" in entry:
        return Rule(field, op, value_from=_field(entry["value_from"], f"{path}.value_from"))
    value = entry["value"]
    if op in ("in", "not in") and not (isinstance(value, list) and value):
        raise InvalidArgument(f"{path}.value", f"`{op}` needs a non-empty list")
    if op in COMPARISONS and isinstance(value, list | dict):
        raise InvalidArgument(f"{path}.value", f"`{op}` needs a single value")
    # Struct numbers are doubles; 1990 arrives as 1990.0 and compares equal either way.
    return Rule(field, op, tuple(value) if isinstance(value, list) else value)


def _field(text: Any, path: str, *, item_allowed: bool = False) -> Field:
    if not isinstance(text, str) or not text:
        raise InvalidArgument(
            path, "is required: `view:feature`, `context:name` or `user:view:feature`"
        )
    side, _, rest = text.partition(":")
    if side == CONTEXT and rest:
        return Field(CONTEXT, rest)
    if side in (USER, ITEM) and rest.count(":") == 1:
        if side == ITEM and not item_allowed:
            raise InvalidArgument(path, "compares with a request value: `context:` or `user:`")
        return Field(side, rest)
    if item_allowed and text.count(":") == 1 and side not in (USER, CONTEXT):
        return Field(ITEM, text)
    raise InvalidArgument(
        path, f"{text!r} is not `view:feature`, `context:name` or `user:view:feature`"
    )


def _fields(rules: Sequence[Rule | AnyOf]) -> list[Field]:
    found: list[Field] = []
    for rule in rules:
        if isinstance(rule, AnyOf):
            found += _fields(rule.rules)
        else:
            found += [rule.field, *([rule.value_from] if rule.value_from else [])]
    return found


def user_refs(rules: Sequence[Rule | AnyOf]) -> tuple[str, ...]:
    """The user features the rules read."""
    return tuple(dict.fromkeys(f.name for f in _fields(rules) if f.side == USER))


def build(settings: StageSettings, context: BuildContext) -> RuleFilter:
    rules = parse(settings.params, settings.name)
    return RuleFilter(context.deps.items, context.scene.project, rules, user_refs(rules))


def check(settings: StageSettings, path: str) -> None:
    parse(settings.params, path)


def views_of(rules: Sequence[Rule | AnyOf]) -> list[str]:
    """The item feature views the rules read."""
    return list(dict.fromkeys(f.view for f in _fields(rules) if f.side == ITEM))


def item_views(settings: StageSettings) -> list[str]:
    return views_of(parse(settings.params, settings.name))


def refs_of(rules: Sequence[Rule | AnyOf]) -> list[str]:
    """The `view:feature` refs (item and user) the rules read."""
    return list(dict.fromkeys(f.name for f in _fields(rules) if f.side in (ITEM, USER)))


STAGE = StageType(
    StageKind.FILTER,
    "rules",
    build,
    needs=frozenset({ITEM_ID}),
    check=check,
    item_views=item_views,
    references=lambda settings: refs_of(parse(settings.params, settings.name)),
)
