"""The evaluation's bar chart: Recall@k and NDCG@k per system, side by side."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from bench.evaluate.metrics import K

BAR_WIDTH = 0.38
SERVED_COLOR = ("#4c72b0", "#8fa8d6")
BASELINE_COLOR = ("#7f7f7f", "#bfbfbf")


def draw(
    figures: Mapping[str, Mapping[str, Any]],
    baselines: set[str],
    title: str,
    path: Path,
) -> Path:
    """Two bars per system (Recall@K, NDCG@K), served systems in blue, baselines in grey."""
    matplotlib.use("Agg")  # files only: servers and CI have no display
    names = list(figures)
    x = np.arange(len(names))
    figure, axes = plt.subplots(figsize=(1.2 * len(names) + 2, 4.5))
    for offset, metric, shade in ((-1, "recall", 0), (1, "ndcg", 1)):
        values = [figures[name][f"{metric}_at_{K}"] for name in names]
        colors = [(BASELINE_COLOR if n in baselines else SERVED_COLOR)[shade] for n in names]
        bars = axes.bar(x + offset * BAR_WIDTH / 2, values, BAR_WIDTH, color=colors)
        axes.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    axes.set_xticks(x, names, rotation=20, ha="right")
    axes.set_ylabel(f"Recall@{K} (darker) / NDCG@{K} (lighter)")
    axes.set_title(title, fontsize=9)
    axes.margins(y=0.15)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
