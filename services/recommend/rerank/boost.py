"""Rerank `boost`: multiplies the score of the candidates a rule matches, then re-sorts.

params: `rules` (the `rules` filter's language, see `filter.rules`) and `factor` (> 1 boosts,
< 1 demotes, 0 sinks them). E.g. new releases first: `{"rules": [{"field":
"movie_attributes:release_year", "op": ">=", "value": 1998}], "factor": 1.5}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.recommend.filter.rules import (
    AnyOf,
    Rule,
    RuleFilter,
    parse,
    refs_of,
    user_refs,
    views_of,
)
from services.recommend.params import Params
from services.recommend.pipeline import (
    ITEM_ID,
    SCORE,
    BuildContext,
    Candidates,
    StageKind,
    StageRequest,
    StageSettings,
    StageType,
)

MAX_FACTOR = 1_000.0


@dataclass(frozen=True)
class Boost:
    matches: RuleFilter
    factor: float

    @property
    def user_refs(self) -> tuple[str, ...]:
        return self.matches.user_refs

    def rerank(self, request: StageRequest, candidates: Candidates) -> Candidates:
        hit = self.matches.keep(request, candidates)
        scores = np.where(hit, candidates.columns[SCORE] * self.factor, candidates.columns[SCORE])
        boosted = candidates.with_columns(**{SCORE: scores})
        # Stable: equal scores keep the order they came in.
        return boosted.take(np.argsort(-scores, kind="stable"))


def _factor(settings: StageSettings, path: str) -> float:
    return Params({"factor": settings.params.get("factor")}, path, ("factor",)).number(
        "factor", 1.0, low=0.0, high=MAX_FACTOR
    )


def _rules(settings: StageSettings, path: str) -> tuple[Rule | AnyOf, ...]:
    return parse({"rules": settings.params.get("rules")}, path)


def build(settings: StageSettings, context: BuildContext) -> Boost:
    rules = _rules(settings, settings.name)
    matches = RuleFilter(context.deps.items, context.scene.project, rules, user_refs(rules))
    return Boost(matches, _factor(settings, settings.name))


def check(settings: StageSettings, path: str) -> None:
    Params(settings.params, path, ("rules", "factor"))
    _rules(settings, path)
    _factor(settings, path)


STAGE = StageType(
    StageKind.RERANK,
    "boost",
    build,
    needs=frozenset({ITEM_ID, SCORE}),
    check=check,
    item_views=lambda settings: views_of(_rules(settings, settings.name)),
    references=lambda settings: refs_of(_rules(settings, settings.name)),
)
