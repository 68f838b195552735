"""Held-out metrics: AUC and logloss per model output, next to a popularity-only baseline.

`probs_ctr` is judged on every test row (clicked or not); `probs_cvr`, a P(conversion |
click), on the clicked test rows only, where a conversion label means something. The
baseline scores an item by how many training clicks it had, calibrated to a probability by a
one-feature logistic regression on log(1 + clicks) fitted on the training rows: what ranking
by popularity alone would achieve on the same split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

CLICK_OUTPUT = "probs_ctr"


@dataclass(frozen=True)
class Scores:
    auc: float
    logloss: float
    rows: int


def score(labels: np.ndarray, predictions: np.ndarray) -> Scores:
    predictions = np.clip(predictions.astype(np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    labels = labels.reshape(-1)
    if len(np.unique(labels)) < 2:
        return Scores(float("nan"), float("nan"), len(labels))
    return Scores(
        float(roc_auc_score(labels, predictions)),
        float(log_loss(labels, predictions, labels=[0, 1])),
        len(labels),
    )


def evaluation_rows(output: str, clicked: np.ndarray) -> np.ndarray:
    """Which test rows an output is judged on: all for the click model, clicked ones else."""
    if output == CLICK_OUTPUT:
        return np.ones(len(clicked), dtype=bool)
    return clicked.reshape(-1) > 0.5


def popularity_baseline(
    train_items: np.ndarray,
    train_labels: Mapping[str, np.ndarray],
    test_items: np.ndarray,
    test_labels: Mapping[str, np.ndarray],
) -> dict[str, Scores]:
    clicked = train_labels.get(CLICK_OUTPUT, next(iter(train_labels.values())))
    keys, counts = np.unique(train_items[clicked > 0.5], return_counts=True)
    clicks = dict(zip(keys.tolist(), counts.tolist(), strict=True))

    def feature(items: np.ndarray) -> np.ndarray:
        return np.log1p([clicks.get(item, 0) for item in items.tolist()]).reshape(-1, 1)

    train_x, test_x = feature(train_items), feature(test_items)
    test_clicked = test_labels.get(CLICK_OUTPUT, next(iter(test_labels.values())))
    found = {}
    for output, labels in train_labels.items():
        fit_rows = evaluation_rows(output, clicked)
        eval_rows = evaluation_rows(output, test_clicked)
        regression = LogisticRegression().fit(train_x[fit_rows], labels[fit_rows])
        predicted = regression.predict_proba(test_x[eval_rows])[:, 1]
        found[output] = score(test_labels[output][eval_rows], predicted)
    return found


def metrics(model: Mapping[str, Scores], baseline: Mapping[str, Scores]) -> dict[str, float]:
    """Flat metrics for the ModelVersion: `{output}_auc`, `{output}_logloss`, and the same
    with a `baseline_popularity_` prefix."""
    flat: dict[str, float] = {}
    for prefix, scores in (("", model), ("baseline_popularity_", baseline)):
        for output, found in scores.items():
            flat[f"{prefix}{output}_auc"] = found.auc
            flat[f"{prefix}{output}_logloss"] = found.logloss
    return flat
