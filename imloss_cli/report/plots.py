"""The report's figures: accuracy curves, per-layer entropy, firing rates and synaptic operations,
the entropy of every layer over the epochs, and the K schedule; as PNG files or embedded in the HTML
page.

matplotlib is imported inside :func:`figures` only, so building or rendering a text report never
loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from imloss_cli.registry import Registry

from .build import Report
from .errors import ReportError
from .stats import mean_interval
from .study_views import pareto_figure

_MAX_LEGEND = 12  # more series than this get no legend


PLOTS: tuple[str, ...] = (
    "accuracy",
    "layer_entropy",
    "entropy_over_epochs",
    "firing_rates",
    "layer_sops",
    "k_schedule",
    "pareto_front",
)
"""The report's figures, in the order they are drawn and written (``pareto_front``: a study's only)."""


def figures(report: Report, registry: Registry) -> dict[str, Any]:
    """The report's figures as matplotlib ``Figure`` objects, by the names in :data:`PLOTS`.

    ``accuracy``: test accuracy per epoch, per configuration the mean over seeds with its 95%
    t-interval as a band (``report.stats.mean_interval``; none for a single seed); ``layer_entropy``, ``firing_rates`` and ``layer_sops``: the layer tables (entropy, firing
    rate, synaptic operations per image) as grouped bars, one colour per configuration (a layer x
    configuration heat map beyond 12);
    ``entropy_over_epochs``: one layer x epoch heat map of the entropy per configuration (mean
    over seeds; the paper's figure); ``k_schedule``: K per epoch, one line per distinct schedule;
    ``pareto_front``, for a study: its trials and front (``study_views.pareto_figure``).

    Args:
        report: from :func:`build_report`.
        registry: the registry it was built from (the per-epoch curves are read again).
    """
    # Figure without pyplot: no global backend switch, no figure registry to leak into.
    from matplotlib.figure import Figure

    runs = report.runs[["run_id", "config", "k_schedule"]]
    labels = list(dict.fromkeys(runs["config"]))
    ids = runs["run_id"].tolist()
    curves = registry.epoch_metrics(ids, names=["test_acc", "k"]).merge(runs, on="run_id")
    entropy = registry.layer_stats(ids, stats=["entropy"]).merge(runs, on="run_id")
    wide = max(7.0, 0.6 * len(report.layer_table) + 3)
    shown = labels[:_MAX_LEGEND]
    return {
        "accuracy": _accuracy_figure(Figure(figsize=(7, 4.5)), curves, labels),
        "layer_entropy": _layer_figure(
            Figure(figsize=(wide, 4.5)), report.layer_table, "entropy (bits)", "per-layer entropy (mean over seeds)"
        ),
        "entropy_over_epochs": _entropy_epochs_figure(
            Figure(figsize=(7, 1.0 + 2.6 * max(len(shown), 1))), entropy, shown, len(labels)
        ),
        "firing_rates": _layer_figure(
            Figure(figsize=(wide, 4.5)), report.rate_table, "firing rate", "per-layer firing rate (mean over seeds)"
        ),
        "layer_sops": _layer_figure(
            Figure(figsize=(wide, 4.5)),
            report.sops_table,
            "synaptic operations per image",
            "per-layer synaptic operations (mean over seeds)",
        ),
        "k_schedule": _k_figure(Figure(figsize=(7, 4.5)), curves),
        **({} if report.study is None else {"pareto_front": pareto_figure(Figure(figsize=(7, 5)), report.study)}),
    }


def write_plots(report: Report, registry: Registry, directory: Path | str) -> list[Path]:
    """Draw the report's figures (:func:`figures`) as ``NAME.png`` files in ``directory``.

    Returns:
        The paths written, in the order of :data:`PLOTS`.

    Raises:
        ReportError: the directory cannot be created.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create plot directory {directory}: {exc.strerror or exc}") from exc
    paths = []
    for name, figure in figures(report, registry).items():
        paths.append(directory / f"{name}.png")
        figure.savefig(paths[-1], dpi=120)
    return paths


def _accuracy_figure(fig: Any, curves: pd.DataFrame, labels: list[str]) -> Any:
    ax = fig.add_subplot()
    acc = curves[curves["name"] == "test_acc"]
    for label in labels:  # one line per configuration, a band where an epoch has two seeds or more
        per_epoch = acc[acc["config"] == label].groupby("epoch")["value"]
        if not len(per_epoch):
            continue
        intervals = [(int(e), mean_interval(v.tolist())) for e, v in per_epoch]
        epochs = [e for e, _ in intervals]
        (line,) = ax.plot(epochs, [i.mean * 100 for _, i in intervals], label=label)
        low, high = [i.low * 100 for _, i in intervals], [i.high * 100 for _, i in intervals]
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    title = "test accuracy (mean over seeds, band = 95% t-interval of the mean)"
    _finish(ax, "epoch", "test accuracy (%)", title, empty=acc.empty)
    return fig


def _layer_figure(fig: Any, layer_table: pd.DataFrame, ylabel: str, title: str) -> Any:
    ax = fig.add_subplot()
    n_layers, n_configs = layer_table.shape
    positions = pd.RangeIndex(n_layers).to_numpy()
    if n_configs > _MAX_LEGEND and n_layers:
        # Hundreds of thin bars are neither readable nor quick to draw: a layer x configuration
        # heat map shows the same numbers.
        image = ax.imshow(layer_table.to_numpy().T, aspect="auto", interpolation="nearest")
        fig.colorbar(image, ax=ax, label=ylabel)
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
    _finish(ax, "layer", ylabel, title, empty=layer_table.empty)
    return fig


def _entropy_epochs_figure(fig: Any, entropy: pd.DataFrame, labels: list[str], total: int) -> Any:
    """One heat map per configuration: rows are layers (in network order), columns epochs."""
    if entropy.empty or not labels:
        ax = fig.add_subplot()
        _finish(ax, "epoch", "layer", "per-layer entropy over the epochs", empty=True)
        return fig
    axes = fig.subplots(len(labels), 1, squeeze=False)[:, 0]
    for ax, label in zip(axes, labels):
        rows = entropy[entropy["config"] == label]
        ax.set_title(label, fontsize="small")
        if rows.empty:  # the ANN twin, or runs that logged no layers
            ax.text(0.5, 0.5, "no spiking layers logged", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        grid = rows.groupby(["layer_index", "layer", "epoch"])["value"].mean().unstack("epoch")
        image = ax.imshow(grid.to_numpy(), aspect="auto", interpolation="nearest", vmin=0.0, vmax=1.0, cmap="viridis")
        epochs = grid.columns.to_numpy()
        ticks = range(0, len(epochs), max(1, len(epochs) // 10))
        ax.set_xticks(list(ticks), [str(epochs[i]) for i in ticks])
        layer_names = grid.index.get_level_values("layer")
        ax.set_yticks(range(len(layer_names)), [str(n) for n in layer_names], fontsize="x-small")
        fig.colorbar(image, ax=ax, label="bits")
    axes[-1].set_xlabel("epoch")
    more = f" (first {len(labels)} of {total} configurations)" if total > len(labels) else ""
    fig.suptitle(f"per-layer entropy over the epochs, mean over seeds{more}", fontsize="medium")
    fig.tight_layout()
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
