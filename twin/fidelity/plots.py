"""Predicted against measured, one figure per metric, one panel per twin (the one-period prediction)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MAX_POINTS = 4000


def plot_predictions(samples: dict[str, dict], directory: str | os.PathLike, k: int = 1) -> list[Path]:
    """`samples[twin][(k, metric)] = (predicted, measured)`; writes `<metric>.png` per metric with samples."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    twins = list(samples)
    metrics = sorted({metric for per_twin in samples.values() for (kk, metric) in per_twin if kk == k})
    written = []
    rng = np.random.default_rng(0)
    for metric in metrics:
        fig, axes = plt.subplots(1, len(twins), figsize=(3.2 * len(twins), 3.2), squeeze=False)
        for ax, twin in zip(axes[0], twins):
            predicted, measured = (np.asarray(a, dtype=float) for a in samples[twin].get((k, metric), ([], [])))
            if predicted.size > MAX_POINTS:
                keep = rng.choice(predicted.size, MAX_POINTS, replace=False)
                predicted, measured = predicted[keep], measured[keep]
            ax.scatter(measured, predicted, s=4, alpha=0.4)
            if measured.size:
                low, high = min(measured.min(), predicted.min()), max(measured.max(), predicted.max())
                ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
            ax.set_title(twin, fontsize=9)
            ax.set_xlabel(f"measured {metric}", fontsize=8)
            ax.set_ylabel("predicted", fontsize=8)
        fig.suptitle(f"{metric}, k = {k}", fontsize=10)
        fig.tight_layout()
        path = directory / f"{metric}.png"
        fig.savefig(path, dpi=72)
        plt.close(fig)
        written.append(path)
    return written
