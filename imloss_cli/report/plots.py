"""The report's figures: accuracy curves, per-layer entropy and the K schedule, as PNG files.

matplotlib is imported inside :func:`write_plots` only, so building or rendering a report never
loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from imloss_cli.registry import Registry

from .build import Report, ReportError

_MAX_LEGEND = 12  # more series than this get no legend


def write_plots(report: Report, registry: Registry, directory: Path | str) -> list[Path]:
    """Draw the report's figures as PNG files.

    ``accuracy.png``: test accuracy per epoch, per configuration the mean over seeds with a
    min..max band; ``layer_entropy.png``: per-layer entropy (the layer table) as grouped bars,
    one colour per configuration (a layer x configuration heat map beyond 12 configurations);
    ``k_schedule.png``: the surrogate temperature K per epoch, one line per distinct schedule.
    Legends are drawn for up to 12 series.

    Args:
        report: from :func:`build_report`.
        registry: the registry it was built from (the per-epoch curves are read again).
        directory: where to write; created if missing.

    Returns:
        The paths written, in the order above.

    Raises:
        ReportError: the directory cannot be created.
    """
    # Figure without pyplot: no global backend switch, no figure registry to leak into.
    from matplotlib.figure import Figure

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create plot directory {directory}: {exc.strerror or exc}") from exc
    runs = report.runs[["run_id", "config", "k_schedule"]]
    labels = list(dict.fromkeys(runs["config"]))
    curves = registry.epoch_metrics(runs["run_id"].tolist(), names=["test_acc", "k"])
    curves = curves.merge(runs, on="run_id")

    paths = [directory / "accuracy.png", directory / "layer_entropy.png", directory / "k_schedule.png"]
    figures = [
        _accuracy_figure(Figure(figsize=(7, 4.5)), curves, labels),
        _entropy_figure(Figure(figsize=(max(7.0, 0.6 * len(report.layer_table) + 3), 4.5)), report.layer_table),
        _k_figure(Figure(figsize=(7, 4.5)), curves),
    ]
    for figure, path in zip(figures, paths):
        figure.savefig(path, dpi=120)
    return paths


def _accuracy_figure(fig: Any, curves: pd.DataFrame, labels: list[str]) -> Any:
    ax = fig.add_subplot()
    acc = curves[curves["name"] == "test_acc"]
    stats = acc.groupby(["config", "epoch"])["value"].agg(["mean", "min", "max"]) * 100
    for label in labels:  # one line per configuration; epochs are vectorised inside
        if label not in stats.index.get_level_values("config"):
            continue
        s = stats.loc[label]
        (line,) = ax.plot(s.index, s["mean"], label=label)
        ax.fill_between(s.index, s["min"], s["max"], color=line.get_color(), alpha=0.2, linewidth=0)
    _finish(ax, "epoch", "test accuracy (%)", "test accuracy (mean over seeds, band = min..max)", empty=acc.empty)
    return fig


def _entropy_figure(fig: Any, layer_table: pd.DataFrame) -> Any:
    ax = fig.add_subplot()
    n_layers, n_configs = layer_table.shape
    positions = pd.RangeIndex(n_layers).to_numpy()
    title = "per-layer entropy (mean over seeds)"
    if n_configs > _MAX_LEGEND:
        # Hundreds of thin bars are neither readable nor quick to draw: a layer x configuration
        # heat map shows the same numbers.
        image = ax.imshow(layer_table.to_numpy().T, aspect="auto", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="entropy (bits)")
        ax.set_xticks(positions, [str(name) for name in layer_table.index], rotation=45, ha="right")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"configuration (table row, {n_configs})")
        ax.set_title(title)
        fig.tight_layout()
        return fig
    width = 0.8 / max(n_configs, 1)
    for i, label in enumerate(layer_table.columns):
        ax.bar(
            positions + (i - (n_configs - 1) / 2) * width, layer_table[label].to_numpy(), width=width, label=str(label)
        )
    ax.set_xticks(positions, [str(name) for name in layer_table.index], rotation=45, ha="right")
    _finish(ax, "layer", "entropy (bits)", title, empty=layer_table.empty)
    return fig


def _k_figure(fig: Any, curves: pd.DataFrame) -> Any:
    ax = fig.add_subplot()
    k = curves[curves["name"] == "k"]
    # K depends on the schedule only, so configurations sharing a curve share a line.
    per_config = k.groupby(["config", "epoch"])["value"].mean().unstack("epoch").round(9)
    names = k.groupby("config")["k_schedule"].first()
    seen: dict[tuple[float, ...], list[str]] = {}
    for label, row in per_config.iterrows():
        seen.setdefault(tuple(row.tolist()), []).append(str(names[label]))
    epochs = per_config.columns.to_numpy()
    for values, schedule_names in seen.items():
        ax.plot(epochs, values, marker=".", label=", ".join(dict.fromkeys(schedule_names)))
    _finish(ax, "epoch", "K", "surrogate temperature K per epoch", empty=k.empty)
    return fig


def _finish(ax: Any, xlabel: str, ylabel: str, title: str, *, empty: bool) -> None:
    from matplotlib.ticker import MaxNLocator

    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    entries = len(ax.get_legend_handles_labels()[0])
    if empty:
        ax.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=ax.transAxes)
    elif entries > _MAX_LEGEND:
        # A legend of dozens of entries would cover the plot; the tables carry the labels.
        ax.set_title(f"{title}\n{entries} series, legend omitted", fontsize="medium")
    elif entries:
        ax.legend(fontsize="small")
    ax.figure.tight_layout()
