"""How the report writes values: recipe values as typed after --set, numbers, mean ± std."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd


def _is_accuracy(metric: str) -> bool:
    return metric == "acc" or metric.endswith("_acc")


def _mean_std_text(mean: float, std: float, n: int, metric: str) -> str:
    if n == 0 or pd.isna(mean):
        return "–"
    scale, digits = (100.0, 2) if _is_accuracy(metric) else (1.0, 4)
    text = f"{mean * scale:.{digits}f}"
    return text if n == 1 or pd.isna(std) else f"{text} ± {std * scale:.{digits}f}"


def _number_text(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.3f}"


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
