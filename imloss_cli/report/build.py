"""Building a report: runs selected, one epoch chosen per run, seeds pooled per configuration.

Only the registry's public methods are used, and they read only what the report needs:
the compared metric, mean_entropy and the operation counts of all selected runs in one call, the
layer statistics once per distinct selected epoch (only those statistics of that epoch), and
everything else is grouped pandas work. On a group of 1,000 runs x 100 epochs x 12 metrics x 20 layers x 5 statistics,
build_report takes about 0.5 s on two cores (benchmarks/report_speed.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from imloss_cli.recipe import NON_SEMANTIC_FIELDS, EnergyConfig, RecipeError, load_energy
from imloss_cli.registry import FINISHED, Registry, RegistryError, RunInfo
from imloss_cli.snn.energy import energy_uj

from .text import _is_accuracy, _mean_std_text, _value_text

FORMATS: tuple[str, ...] = ("markdown", "csv", "latex", "json", "html")
SELECTIONS: tuple[str, ...] = ("best", "last", "best-val")
_VAL_METRIC = "val_acc"  # what best-val selects on: accuracy on the held-out part of the training set

_ENTROPY_METRIC = "mean_entropy"  # logged per epoch by the engine: mean over hidden layers
_COUNTS = ("sops", "macs")  # operations per image, logged per epoch; the energy is recomputed from them
_ENERGY = "energy_uj"
_EFFICIENCY = ("sops", _ENERGY)  # the table's columns of operation counts, where the runs logged them
_LAYER_STATS = ("entropy", "firing_rate", "sops_per_image")  # the layer tables
_CONFIG_COLUMN = "config"  # label column used when no recipe field varies between rows
_SHOWN_IDS = 5  # run ids listed in one warning before "..."


class ReportError(Exception):
    """A report that cannot be built or rendered: no runs, unknown metric, bad option."""


@dataclass(frozen=True, eq=False)  # a generated __eq__ would compare DataFrames ambiguously
class Report:
    """A comparison of configurations, ready to render.

    Attributes:
        title: what was compared, e.g. "group 3fa2c1d0e9ab (digits: im_weight x seed)".
        table: one row per configuration, sorted by the varying recipe fields. Columns: the
            varying recipe fields (dotted paths) or, when none varies, ``config``; then
            ``<metric>`` ("mean ± std", accuracies in percent), ``n`` (seeds with a value),
            ``mean_entropy`` (bits); where the runs counted operations, ``sops`` (per image, in
            millions) and ``energy_uj`` (per image, µJ, from ``sops`` and ``macs`` with
            ``energy``); and the numbers ``<column>_mean``, ``<column>_std`` of the metric and
            of those (stored units, std with ddof=1) and ``config_hash``.
        layer_table: index = layer names in layer_index order, one column per configuration
            (labelled like "loss.im_weight=2.0"); mean over seeds of each layer's entropy (bits)
            at each run's selected epoch.
        rate_table: the same for each layer's firing rate.
        sops_table: the same for each layer's synaptic operations per image (empty when the
            runs logged none).
        energy: the constants the energy column was computed with.
        warnings: things a reader of the numbers must know (left-out runs, mixed code versions,
            dirty working trees).
        runs: one row per finished run: run_id, config_hash, config (row label), seed, epoch
            (the selected one), ``<metric>``, mean_entropy, sops, macs, energy_uj, code_version,
            git_dirty, k_schedule, host, duration_s; in table row order.
        left_out: the selected runs that are not finished: run_id, seed, status (as displayed),
            host; newest first.
        metric: the compared metric.
        select: "best" or "last".
    """

    title: str
    table: pd.DataFrame
    layer_table: pd.DataFrame
    rate_table: pd.DataFrame
    sops_table: pd.DataFrame
    warnings: list[str]
    runs: pd.DataFrame
    left_out: pd.DataFrame
    metric: str
    select: str
    energy: EnergyConfig

    @property
    def efficiency(self) -> list[str]:
        """The operation-count columns of ``table`` ("sops", "energy_uj"), where the runs logged them."""
        return [c for c in _EFFICIENCY if f"{c}_mean" in self.table.columns and c != self.metric]

    @property
    def energy_rule(self) -> str:
        """How the energy column was computed, in words."""
        e = self.energy
        return (
            f"energy per image E = MACs × {e.e_mac_pj:g} pJ + SOPs × {e.e_ac_pj:g} pJ "
            "(45 nm figures: Horowitz 2014, unless changed with --e-mac/--e-ac)"
        )

    @property
    def selection_rule(self) -> str:
        """Which epoch of each run the numbers come from, in words a reader can judge."""
        if self.select == "last":
            return f"each run's last epoch ({self.metric} there)"
        if self.select == "best-val":
            return (
                f"each run's best epoch by {_VAL_METRIC} on a validation set held out of its training data, "
                f"{self.metric} there: the test set only scores the chosen epoch"
            )
        return (
            f"each run's best epoch by {self.metric} on the test set: what papers usually print, and optimistic, "
            "since the test set both picks the epoch and scores it"
        )

    @property
    def higher_is_better(self) -> bool:
        return _higher_is_better(self.metric)

    @property
    def best_row(self) -> int | None:
        """Position in ``table`` of the configuration with the best mean (None if none has one)."""
        means = self.table[f"{self.metric}_mean"]
        if not means.notna().any():
            return None
        return int(means.to_numpy().argmax() if self.higher_is_better else means.to_numpy().argmin())


def build_report(
    registry: Registry,
    *,
    group: str | None = None,
    last: bool = False,
    recipe_name: str | None = None,
    metric: str = "test_acc",
    select: str = "best",
    energy: EnergyConfig | None = None,
    paper: bool = False,
) -> Report:
    """Compare the finished runs of an ablation group (or of a recipe, or all of them).

    Rows whose runs carry a paper figure (recipes/paper/) get the columns ``paper_top1`` and
    ``delta_pp``; ``paper=True`` requires them.

    Args:
        registry: the registry to read.
        group: an ablation group id or unique id prefix.
        last: compare the most recently created group.
        recipe_name: keep runs whose recipe ``name`` is this (within the group if one is given).
        metric: an epoch metric name, e.g. "test_acc", "test_loss", "mean_firing_rate".
        select: "best" = each run's best epoch for the metric (lowest for losses, "im" and the
            operation counts, highest otherwise); "last" = each run's last logged epoch.
        energy: the energy constants; None: the defaults of ``EnergyConfig``.

    Returns:
        The report; with neither ``group``, ``last`` nor ``recipe_name`` it covers the latest
        group if the registry has one, else all finished runs.

    Raises:
        ReportError: bad ``select``, both ``group`` and ``last``, unknown group, no finished
            runs in the selection, or a metric none of the selected runs logged.
    """
    if select not in SELECTIONS:
        raise ReportError(f"unknown selection {select!r}; use one of: {', '.join(SELECTIONS)}")
    energy = energy if energy is not None else EnergyConfig()
    title, where, members = _select_runs(registry, group=group, last=last, recipe_name=recipe_name)
    warnings: list[str] = []
    finished = [r for r in members if r.status == FINISHED]
    unfinished, detail = _unfinished(members)
    if not finished:
        raise ReportError(f"no finished runs {where}" + (f" ({unfinished} unfinished: {detail})" if unfinished else ""))
    if unfinished:
        warnings.append(
            f"{unfinished} run{'' if unfinished == 1 else 's'} {where} "
            f"{'is' if unfinished == 1 else 'are'} not finished ({detail}) and "
            f"{'is' if unfinished == 1 else 'are'} left out"
        )

    configs, varying = _configurations(finished)
    runs = _runs_frame(finished, configs)
    # Only the metrics the report uses: a fraction of the rows of a typical run.
    chooser = [_VAL_METRIC] if select == "best-val" else []
    metrics = registry.epoch_metrics(
        runs["run_id"].tolist(), names=list(dict.fromkeys([metric, _ENTROPY_METRIC, *_COUNTS, *chooser]))
    )
    if not (metrics["name"] == metric).any():
        known = sorted(registry.epoch_metrics(runs["run_id"].tolist())["name"].unique())
        raise ReportError(
            f"unknown metric {metric!r}; known: " + (", ".join(known) or "none (the selected runs logged no epochs)")
        )

    if select == "best-val":
        without = sorted(set(runs["run_id"]) - set(metrics.loc[metrics["name"] == _VAL_METRIC, "run_id"]))
        if without:
            raise ReportError(
                f"--select best-val needs runs trained with data.val_fraction > 0; {_ids(without)} logged no {_VAL_METRIC}"
            )
    chosen = _choose_epochs(metrics, metric, select)
    layer_values = _layer_values(registry, chosen)
    layers = layer_values[layer_values["stat"] == "entropy"]
    runs = runs.merge(chosen, on="run_id", how="left")
    runs["epoch"] = runs["epoch"].astype("Int64")  # missing where a run never logged the metric
    # The energy with the report's constants, from the counts the run logged (the logged energy_uj
    # used the defaults). As a metric it picks the same epochs: MACs do not change between epochs.
    runs[_ENERGY] = [energy_uj(m, s, energy) for m, s in zip(runs["macs"], runs["sops"])]
    # Runs logged before mean_entropy existed: the same quantity from the layer statistics.
    from_layers = layers.groupby("run_id")["value"].mean()
    runs[_ENTROPY_METRIC] = runs[_ENTROPY_METRIC].fillna(runs["run_id"].map(from_layers))
    missing = runs.loc[runs[metric].isna(), "run_id"].tolist()
    if missing:
        one = len(missing) == 1
        warnings.append(
            f"{len(missing)} finished run{'' if one else 's'} ha{'s' if one else 've'} "
            f"no {metric} value and {'is' if one else 'are'} left out of the means: "
            f"{_ids(missing)}"
        )
    warnings += _provenance_warnings(runs)

    table = _aggregate(runs, configs, varying, metric)
    _add_paper_columns(table, finished, metric, required=paper)
    valid = runs.dropna(subset=[metric])
    labels = list(configs["config"])
    layer_table = _layer_table(layers, valid, labels)
    rate_table = _layer_table(layer_values[layer_values["stat"] == "firing_rate"], valid, labels)
    sops_table = _layer_table(layer_values[layer_values["stat"] == "sops_per_image"], valid, labels)
    runs = runs[
        [
            "run_id",
            "config_hash",
            "config",
            "seed",
            "epoch",
            *dict.fromkeys([metric, _ENTROPY_METRIC, *_COUNTS, _ENERGY]),
            "code_version",
            "git_dirty",
            "k_schedule",
            "host",
            "duration_s",
        ]
    ].reset_index(drop=True)
    left_out = pd.DataFrame(
        [(r.id, r.seed, r.display_status, r.host) for r in members if r.status != FINISHED],
        columns=["run_id", "seed", "status", "host"],
    )
    return Report(
        title=title,
        table=table,
        layer_table=layer_table,
        rate_table=rate_table,
        sops_table=sops_table,
        warnings=warnings,
        runs=runs,
        left_out=left_out,
        metric=metric,
        select=select,
        energy=energy,
    )


def energy_constants(e_mac_pj: float | None = None, e_ac_pj: float | None = None) -> EnergyConfig:
    """The energy constants of a report: the given ones, the defaults of ``EnergyConfig`` for None.

    Raises:
        ReportError: a constant out of range.
    """
    try:
        return load_energy({"e_mac_pj": e_mac_pj, "e_ac_pj": e_ac_pj})
    except RecipeError as exc:
        raise ReportError(str(exc)) from None


def _select_runs(
    registry: Registry, *, group: str | None, last: bool, recipe_name: str | None
) -> tuple[str, str, list[RunInfo]]:
    """(title, "in ..." phrase for messages, member runs of any status)."""
    if group is not None and last:
        raise ReportError("give either a group or last, not both")
    if group is not None:
        try:
            info = registry.get_group(group)
        except RegistryError as exc:
            raise ReportError(str(exc)) from exc
    else:
        # Without any choice the latest group is the natural subject (what `ablate` just ran);
        # a recipe name alone means "across the whole registry".
        info = registry.latest_group() if last or recipe_name is None else None
        if last and info is None:
            raise ReportError("the registry has no ablation groups")
    if info is not None:
        members = registry.list_runs(group_id=info.id)
        title, where = f"group {info.id} ({info.name})", f"in group {info.id}"
    else:
        members = registry.list_runs()
        title, where = "all finished runs", "in the registry"
    if recipe_name is not None:
        members = [r for r in members if r.recipe.get("name") == recipe_name]
        title = f"recipe '{recipe_name}', " + ("all finished runs" if info is None else title)
        where = f"of recipe '{recipe_name}' {where}"
    return title, where, members


def _unfinished(members: Sequence[RunInfo]) -> tuple[int, str]:
    """How many runs are not FINISHED, and "1 FAILED, 1 RUNNING" (display status, so LOST shows)."""
    counts = Counter(r.display_status for r in members if r.status != FINISHED)
    return sum(counts.values()), ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _configurations(runs: Sequence[RunInfo]) -> tuple[pd.DataFrame, list[str]]:
    """One row per config_hash (sorted by the varying fields) and the varying field names.

    Columns: config_hash, the varying fields, config (the row label).
    """
    first: dict[str, RunInfo] = {}
    for run in reversed(runs):  # list_runs is newest first: the oldest run stands for its config
        first.setdefault(run.config_hash, run)
    hashes = list(first)
    flat = pd.json_normalize([first[h].recipe for h in hashes], sep=".")
    # Non-semantic fields and sections (a section such as [paper] flattens to paper.row, paper.top1).
    flat = flat.drop(
        columns=[c for c in flat.columns if any(c == f or c.startswith(f + ".") for f in NON_SEMANTIC_FIELDS)]
    )
    for column in flat.columns:  # lists (data.mean, data.std) become hashable tuples
        if flat[column].map(lambda v: isinstance(v, list)).any():
            flat[column] = flat[column].map(lambda v: tuple(v) if isinstance(v, list) else v)
    varying = [c for c in flat.columns if flat[c].nunique(dropna=False) > 1]
    configs = flat[varying].copy()
    configs.insert(0, "config_hash", hashes)
    if varying:
        try:
            configs = configs.sort_values(varying, na_position="last", kind="stable")
        except TypeError:  # a field holding values of different types in different recipes
            configs = configs.sort_values(varying, key=lambda s: s.astype(str), kind="stable")
        configs["config"] = [
            ", ".join(f"{f}={_value_text(v)}" for f, v in zip(varying, row))
            for row in configs[varying].itertuples(index=False)
        ]
    else:
        names = [first[h].recipe.get("name", "?") for h in configs["config_hash"]]
        configs["config"] = [f"{n} ({h})" for n, h in zip(names, configs["config_hash"])]
    return configs.reset_index(drop=True), varying


def _runs_frame(runs: Sequence[RunInfo], configs: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "run_id": [r.id for r in runs],
            "config_hash": [r.config_hash for r in runs],
            "seed": [r.seed for r in runs],
            "code_version": [r.code_version for r in runs],
            "git_dirty": pd.Series([r.git_dirty for r in runs], dtype=object),
            "k_schedule": [_schedule_text(r.recipe) for r in runs],
            "host": [r.host for r in runs],
            "duration_s": [r.duration.total_seconds() if r.duration is not None else float("nan") for r in runs],
        }
    )
    order = {h: i for i, h in enumerate(configs["config_hash"])}
    frame["config"] = frame["config_hash"].map(dict(zip(configs["config_hash"], configs["config"])))
    frame = frame.assign(_row=frame["config_hash"].map(order)).sort_values(["_row", "seed", "run_id"])
    return frame.drop(columns="_row")[
        ["run_id", "config_hash", "config", "seed", "code_version", "git_dirty", "k_schedule", "host", "duration_s"]
    ]


def _choose_epochs(metrics: pd.DataFrame, metric: str, select: str) -> pd.DataFrame:
    """Per run: the selected epoch, the metric there, and mean_entropy, sops and macs there (NaN if not logged)."""
    rows = metrics.loc[metrics["name"] == metric, ["run_id", "epoch", "value"]]
    if select == "last":
        rows = rows.sort_values(["run_id", "epoch"]).drop_duplicates("run_id", keep="last")
    elif select == "best-val":  # the epoch of the best validation accuracy (ties: the earliest), the metric there
        val = metrics.loc[metrics["name"] == _VAL_METRIC, ["run_id", "epoch", "value"]].dropna(subset=["value"])
        best = val.sort_values(["run_id", "value", "epoch"], ascending=[True, False, True]).drop_duplicates("run_id")
        rows = best[["run_id", "epoch"]].merge(rows, on=["run_id", "epoch"], how="left")
    else:
        # Ties go to the earliest epoch: the stable sort keeps epoch order within equal values.
        rows = (
            rows.dropna(subset=["value"])
            .sort_values(["run_id", "value", "epoch"], ascending=[True, not _higher_is_better(metric), True])
            .drop_duplicates("run_id", keep="first")
        )
    rows = rows.rename(columns={"value": metric})
    for name in (_ENTROPY_METRIC, *_COUNTS):
        if name == metric:
            continue
        values = metrics.loc[metrics["name"] == name, ["run_id", "epoch", "value"]]
        rows = rows.merge(values.rename(columns={"value": name}), on=["run_id", "epoch"], how="left")
    return rows


def _add_paper_columns(table: pd.DataFrame, runs: Sequence[RunInfo], metric: str, *, required: bool) -> None:
    """``paper_top1`` and ``delta_pp`` (our mean - the paper's, in percentage points) where runs carry a figure.

    Raises:
        ReportError: ``required`` and no run carries a paper figure, or the metric is not an accuracy.
    """
    figures = {r.config_hash: r.recipe["paper"]["top1"] for r in runs if r.recipe.get("paper")}
    if required and not figures:
        raise ReportError("no run here carries a paper figure: train the rows of recipes/paper/ (imloss paper)")
    if required and not _is_accuracy(metric):
        raise ReportError(f"the paper prints top-1 accuracy: compare test_acc (or another *_acc), not {metric!r}")
    if not figures or not _is_accuracy(metric):
        return
    table["paper_top1"] = table["config_hash"].map(figures).astype("float64")
    table["delta_pp"] = table[f"{metric}_mean"] * 100.0 - table["paper_top1"]


def _layer_values(registry: Registry, chosen: pd.DataFrame) -> pd.DataFrame:
    """run_id, layer_index, layer, stat, value: each run's ``_LAYER_STATS`` at its selected epoch.

    The registry can filter layer statistics by one epoch for many runs, so runs are batched by
    their selected epoch: at most one query per distinct epoch, never a run's other epochs.
    """
    frames = [
        registry.layer_stats(list(ids), epoch=int(epoch), stats=list(_LAYER_STATS))
        for epoch, ids in chosen.groupby("epoch")["run_id"]
    ]
    columns = ["run_id", "layer_index", "layer", "stat", "value"]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else object) for c in columns})
    stats = pd.concat(frames, ignore_index=True)
    return stats[columns]


def _provenance_warnings(runs: pd.DataFrame) -> list[str]:
    warnings = []
    versions = runs.groupby("config", sort=False)["code_version"].unique()
    for label, values in versions.items():
        if len(values) > 1:
            warnings.append(f"row {label} mixes code versions {', '.join(sorted(values))}")
    dirty = runs.loc[runs["git_dirty"].eq(True), "run_id"].tolist()
    if dirty:
        one = len(dirty) == 1
        warnings.append(
            f"{len(dirty)} run{'' if one else 's'} come{'s' if one else ''} from a dirty "
            f"working tree (uncommitted changes): {_ids(dirty)}"
        )
    return warnings


def _aggregate(runs: pd.DataFrame, configs: pd.DataFrame, varying: list[str], metric: str) -> pd.DataFrame:
    valid = runs.dropna(subset=[metric])
    # Operation counts where any run logged them (runs from before they existed have none).
    counted = [c for c in _EFFICIENCY if c != metric and valid[c].notna().any()]
    columns = [metric, *counted]
    grouped = valid.groupby("config_hash")
    stats = grouped[columns].agg(["mean", "std"]).reindex(configs["config_hash"])
    n = grouped[metric].size().reindex(configs["config_hash"]).fillna(0).astype("int64").to_numpy()
    entropy = grouped[_ENTROPY_METRIC].mean().reindex(configs["config_hash"])
    table = configs[varying or [_CONFIG_COLUMN]].copy()
    texts = {c: _texts(stats[c]["mean"], stats[c]["std"], valid, c) for c in columns}
    table[metric] = texts[metric]
    table["n"] = n
    if metric != _ENTROPY_METRIC:  # else it would repeat the metric column
        table[_ENTROPY_METRIC] = entropy.to_numpy()
    for c in counted:
        table[c] = texts[c]
    for c in columns:
        table[f"{c}_mean"] = stats[c]["mean"].to_numpy()
        table[f"{c}_std"] = stats[c]["std"].to_numpy()
    table["config_hash"] = configs["config_hash"].to_numpy()
    return table


def _texts(means: pd.Series, stds: pd.Series, valid: pd.DataFrame, column: str) -> list[str]:
    """ "mean ± std" per configuration, the std over the seeds that have a value of ``column``."""
    n = valid.dropna(subset=[column]).groupby("config_hash").size().reindex(means.index).fillna(0).astype("int64")
    return [_mean_std_text(m, s, k, column) for m, s, k in zip(means, stds, n)]


def _layer_table(layers: pd.DataFrame, valid_runs: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    frame = layers.merge(valid_runs[["run_id", "config"]], on="run_id")
    if frame.empty:
        return pd.DataFrame(columns=labels, index=pd.Index([], name="layer"), dtype="float64")
    table = frame.groupby(["layer_index", "layer", "config"])["value"].mean().unstack("config")
    table = table.reindex(columns=[c for c in labels if c in table.columns])
    table.index = table.index.get_level_values("layer")
    table.columns.name = None
    return table


# ---------------------------------------------------------------------------------- helpers


def _higher_is_better(metric: str) -> bool:
    return not ("loss" in metric or metric in ("im", *_COUNTS, _ENERGY))


def _schedule_text(recipe: dict[str, Any]) -> str:
    if (recipe.get("model") or {}).get("neuron") == "relu":
        return "none (ReLU twin)"
    surrogate = recipe.get("surrogate") or {}
    if surrogate.get("schedule") == "fixed":
        return f"fixed K={surrogate.get('k_fixed')}"
    if surrogate.get("schedule") == "esg":
        return f"ESG K {surrogate.get('k_min')}→{surrogate.get('k_max')}"
    return str(surrogate.get("schedule", "unknown schedule"))


def _ids(run_ids: Sequence[str]) -> str:
    shown = ", ".join(run_ids[:_SHOWN_IDS])
    return shown + (f", … ({len(run_ids) - _SHOWN_IDS} more)" if len(run_ids) > _SHOWN_IDS else "")
