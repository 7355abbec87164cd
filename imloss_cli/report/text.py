"""How the report writes values: recipe values as typed after --set, numbers, mean ± std."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd


def _is_accuracy(metric: str) -> bool:
    return metric == "acc" or metric.endswith("_acc")


def _scale(metric: str) -> tuple[float, int, str]:
    """How a metric is shown: (factor, decimals, unit); accuracies in %, operation counts in millions."""
    if _is_accuracy(metric):
        return 100.0, 2, "%"
    if metric in ("sops", "macs"):
        return 1e-6, 4, "M"
    if metric == "energy_uj":
        return 1.0, 4, "µJ"
    return 1.0, 4, ""


def _header(metric: str) -> str:
    """A column header with its unit, e.g. "test_acc (%)", "sops (M)"."""
    unit = _scale(metric)[2]
    return f"{metric} ({unit})" if unit else metric


def _interval_text(mean: float, low: float, high: float, n: int, metric: str) -> str:
    """ "94.21 [93.80, 94.62]": the mean and its 95% interval in the metric's unit; n = 1 says it has none."""
    if n == 0 or pd.isna(mean):
        return "–"
    scale, digits, _ = _scale(metric)
    text = f"{mean * scale:.{digits}f}"
    if n == 1 or pd.isna(low):
        return f"{text} (n = 1: no interval)"
    return f"{text} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def _delta_text(delta: float, low: float, high: float, metric: str) -> str:
    """ "+0.30 [-0.10, +0.70]": a difference and its interval in the metric's unit (pp for accuracies)."""
    if pd.isna(delta):
        return "–"
    scale, digits, _ = _scale(metric)
    if pd.isna(low):
        return f"{delta * scale:+.{digits}f}"
    return f"{delta * scale:+.{digits}f} [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]"


def _p_text(p: float) -> str:
    """A p-value to three decimals, or in scientific notation below 0.001 (2e-05): no "<" to escape."""
    return "–" if pd.isna(p) else (f"{p:.0e}" if p < 0.001 else f"{p:.3f}")


def _number_text(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.3f}"


def _count_text(value: float) -> str:
    """An operation count in millions, to 4 significant digits: small layers keep their digits."""
    return "–" if pd.isna(value) else f"{value * 1e-6:.4g}"


def _value_text(value: Any) -> str:
    """A recipe value as one would type it after --set (TOML-like: 2.0, true, "esg" bare)."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if hasattr(value, "item"):  # numpy scalar from a pandas column
        value = value.item()
    return json.dumps(value)


SCORED_SETS = {"test": ("test_images", "test_images_total"), "val": ("val_images", "val_images_total")}
"""Per evaluation set, the epoch metrics that say how many of its images an accuracy is of."""


def subset_text(metric: str, images: float, total: float) -> str | None:
    """ "test_acc on 512 of 10,000 images" when ``metric`` was scored on a capped subset, else None."""
    if pd.isna(images) or pd.isna(total) or images >= total:
        return None
    return f"{metric} on {int(images):,} of {int(total):,} images"


def subset_notes(epochs: pd.DataFrame) -> list[str]:
    """What a run's last epoch (one row per epoch, one column per metric) was scored on, per capped set."""
    notes = []
    for split, (images, total) in SCORED_SETS.items():
        if images in epochs and total in epochs and len(epochs):
            last = epochs.iloc[-1]
            note = subset_text(f"{split}_acc", last[images], last[total])
            if note is not None:
                notes.append(note + " (train.max_eval_batches: a fixed, class-balanced subset)")
    return notes
