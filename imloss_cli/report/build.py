"""Building a report: runs selected, one epoch chosen per run, seeds pooled per configuration.

Only the registry's public methods are used, and they read only what the report needs:
the compared metric, mean_entropy and the operation counts of all selected runs in one call, the
layer statistics once per distinct selected epoch (only those statistics of that epoch), and
everything else is grouped pandas work. On a group of 1,000 runs x 100 epochs x 12 metrics x 20 layers x 5 statistics,
build_report takes about 0.5 s on two cores (benchmarks/report_speed.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from imloss_cli.recipe import EnergyConfig, RecipeError, load_energy
from imloss_cli.registry import FINISHED, Registry
from imloss_cli.snn.energy import energy_uj

from .compare import Baseline, choose_baseline, compare_configurations, conclusion
from .epochs import (
    COUNTS,
    ENERGY,
    ENTROPY_METRIC,
    SELECTIONS,
    VAL_METRIC,
    chosen_epochs,
    higher_is_better,
    read_layer_values,
    scored_columns,
)
from .errors import ReportError
from .paper import add_paper_columns
from .selection import (
    CONFIG_COLUMN,
    configurations,
    finished_runs,
    ids_text,
    provenance_warnings,
    runs_frame,
    select_runs,
)
from .study import StudyReport, is_study, study_section
from .text import _interval_text, subset_text

FORMATS: tuple[str, ...] = ("markdown", "csv", "latex", "json", "html")
EFFICIENCY = ("sops", ENERGY)  # the table's columns of operation counts, where the runs logged them


@dataclass(frozen=True, eq=False)  # a generated __eq__ would compare DataFrames ambiguously
class Report:
    """A comparison of configurations, ready to render.

    Attributes:
        title: what was compared, e.g. "group 3fa2c1d0e9ab (digits: im_weight x seed)".
        table: one row per configuration, sorted by the varying recipe fields. Columns: the
            varying recipe fields (dotted paths) or, when none varies, ``config``; then
            ``<metric>`` ("mean [95% interval]", accuracies in percent), ``n`` (seeds with a value),
            ``mean_entropy`` (bits); where the runs counted operations, ``sops`` (per image, in
            millions) and ``energy_uj`` (per image, µJ, from ``sops`` and ``macs`` with
            ``energy``); and the numbers ``<column>_mean``, ``<column>_std`` of the metric and
            of those (stored units, std with ddof=1), ``config_hash``, and the intervals and
            comparisons with the baseline of ``report.compare`` (``<column>_ci_low``, ``delta_<column>``,
            ``p_adj_<column>``, ...).
        baseline: the configuration every other row is compared with (None: one row only).
        notes: the lines under the table: what was tested, what not to conclude, how many seeds
            a difference would need when none is significant.
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
        study: for a study's group (``imloss tune``): its trials, Pareto front and importances.
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
    baseline: Baseline | None
    notes: list[str]
    study: StudyReport | None = None

    @property
    def compared(self) -> list[str]:
        """The columns compared with the baseline: the metric, then the efficiency columns."""
        return [self.metric, *self.efficiency]

    @property
    def efficiency(self) -> list[str]:
        """The operation-count columns of ``table`` ("sops", "energy_uj"), where the runs logged them."""
        return [c for c in EFFICIENCY if f"{c}_mean" in self.table.columns and c != self.metric]

    @property
    def energy_rule(self) -> str:
        """How the energy column was computed, in words."""
        e = self.energy
        source = (
            "45 nm figures: Horowitz 2014"
            if e == EnergyConfig()
            else "constants given with --e-mac/--e-ac, not the 45 nm figures of Horowitz 2014"
        )
        return f"energy per image E = MACs × {e.e_mac_pj:g} pJ + SOPs × {e.e_ac_pj:g} pJ ({source})"

    @property
    def selection_rule(self) -> str:
        """Which epoch of each run the numbers come from, in words a reader can judge."""
        return _selection_rule(self.metric, self.select)

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)

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
    group: str | Sequence[str] | None = None,
    last: bool = False,
    recipe_name: str | None = None,
    metric: str = "test_acc",
    select: str | None = None,
    energy: EnergyConfig | None = None,
    paper: bool = False,
    baseline: Sequence[str] | None = None,
) -> Report:
    """Compare the finished runs of an ablation group (or of a recipe, or all of them).

    Rows whose runs carry a paper figure (recipes/paper/) get the columns ``paper_top1`` and
    ``delta_pp``; ``paper=True`` requires them.

    Args:
        registry: the registry to read.
        group: an ablation group id or unique id prefix, or several (compared in one table).
        last: compare the most recently created group.
        recipe_name: keep runs whose recipe ``name`` is this (within the group if one is given).
        metric: an epoch metric name, e.g. "test_acc", "test_loss", "mean_firing_rate".
        select: "best" = each run's best epoch for the metric (lowest for losses, "im" and the
            operation counts, highest otherwise); "best-val" = each run's best validation epoch;
            "last" = each run's last logged epoch. None: "best-val" for a study's trials (what the
            study selected on), "best" otherwise.
        energy: the energy constants; None: the defaults of ``EnergyConfig``.
        baseline: ``["FIELD=VALUE", ...]`` naming the configuration the others are compared with;
            None: a study's baseline trial (``imloss tune --baseline``), else the first row (the
            smallest ablated values).

    Returns:
        The report; with neither ``group``, ``last`` nor ``recipe_name`` it covers the latest
        group if the registry has one, else all finished runs.

    Raises:
        ReportError: bad ``select``, both ``group`` and ``last``, unknown group, no finished
            runs in the selection, or a metric none of the selected runs logged.
    """
    if select is not None and select not in SELECTIONS:
        raise ReportError(f"unknown selection {select!r}; use one of: {', '.join(SELECTIONS)}")
    energy = energy if energy is not None else EnergyConfig()
    # 1. select: the runs, their configurations
    title, where, members = select_runs(registry, group=group, last=last, recipe_name=recipe_name)
    select = select or ("best-val" if is_study(members) else "best")
    finished, warnings = finished_runs(members, where)
    configs, varying = configurations(finished)
    runs = runs_frame(finished, configs)
    # 2. choose an epoch of each run, and read what the report shows there
    chosen = chosen_epochs(registry, runs["run_id"].tolist(), metric, select)
    layer_values = read_layer_values(registry, chosen)
    # 3. enrich: the energy at the report's constants, entropies of older runs, what is missing
    runs = _enrich(runs.merge(chosen, on="run_id", how="left"), layer_values, energy)
    warnings += _missing_warnings(runs, metric) + provenance_warnings(runs)
    study, study_warnings = study_section(registry, members)
    warnings += study_warnings
    # 4. tables: means and intervals, each configuration against the baseline
    table, compared = _aggregate(runs, configs, varying, metric)
    valid = runs.dropna(subset=[metric])
    warnings += _scored_on(table, valid, metric)
    base = choose_baseline(table, varying, baseline, _baseline_trial_row(study, runs, table))
    significant = compare_configurations(table, valid, compared, base)
    for c in compared:
        table[c] = [_interval_text(*v, c) for v in zip(table[f"{c}_mean"], table[f"{c}_ci_low"], table[f"{c}_ci_high"],
                                                        table[f"{c}_values"].map(len))]  # fmt: skip
    if "scored_on" in table:  # a capped evaluation's accuracy says so next to its number
        table[metric] = [f"{text} ({on})" if on else text for text, on in zip(table[metric], table["scored_on"])]
    warnings += add_paper_columns(table, finished, metric, required=paper)
    notes = conclusion(table, metric, base, _selection_rule(metric, select), significant)
    labels = list(configs["config"])

    def per_layer(stat: str) -> pd.DataFrame:
        return _layer_table(layer_values[layer_values["stat"] == stat], valid, labels)

    shown = [
        "run_id",
        "config_hash",
        "config",
        "seed",
        "epoch",
        *dict.fromkeys([metric, ENTROPY_METRIC, *COUNTS, ENERGY]),
    ]
    shown += ["code_version", "git_dirty", "k_schedule", "host", "duration_s"]
    left_out = pd.DataFrame(
        [(r.id, r.seed, r.display_status, r.host) for r in members if r.status != FINISHED],
        columns=["run_id", "seed", "status", "host"],
    )
    return Report(
        title=title,
        table=table,
        layer_table=per_layer("entropy"),
        rate_table=per_layer("firing_rate"),
        sops_table=per_layer("sops_per_image"),
        warnings=warnings,
        runs=runs[shown].reset_index(drop=True),
        left_out=left_out,
        metric=metric,
        select=select,
        energy=energy,
        study=study,
        baseline=base if len(table) > 1 else None,
        notes=notes,
    )


def _baseline_trial_row(study: StudyReport | None, runs: pd.DataFrame, table: pd.DataFrame) -> int | None:
    """The table row of a study's baseline trial (the recipe's own values), if it has a finished one."""
    if study is None or not study.trials["baseline"].any():
        return None
    run_id = study.trials.loc[study.trials["baseline"], "run_id"].iloc[0]
    hashes = runs.loc[runs["run_id"] == run_id, "config_hash"].tolist()
    rows = [i for i, h in enumerate(table["config_hash"]) if hashes and h == hashes[0]]
    return rows[0] if rows else None


def _selection_rule(metric: str, select: str) -> str:
    if select == "last":
        return f"each run's last epoch ({metric} there)"
    if select == "best-val":
        return (
            f"each run's best epoch by {VAL_METRIC} on a validation set held out of its training data, "
            f"{metric} there: the test set only scores the chosen epoch"
        )
    return (
        f"each run's best epoch by {metric} on the test set: what papers usually print, and optimistic, "
        "since the test set both picks the epoch and scores it"
    )


def _enrich(runs: pd.DataFrame, layer_values: pd.DataFrame, energy: EnergyConfig) -> pd.DataFrame:
    """The runs with their chosen epoch's energy at the report's constants and, for runs logged before
    mean_entropy existed, that quantity from the layer statistics."""
    runs = runs.copy()
    runs["epoch"] = runs["epoch"].astype("Int64")  # missing where a run never logged the metric
    # The logged energy_uj used the default constants. As a metric it picks the same epochs: MACs
    # do not change between epochs.
    runs[ENERGY] = [energy_uj(m, s, energy) for m, s in zip(runs["macs"], runs["sops"])]
    entropy = layer_values[layer_values["stat"] == "entropy"].groupby("run_id")["value"].mean()
    runs[ENTROPY_METRIC] = runs[ENTROPY_METRIC].fillna(runs["run_id"].map(entropy))
    return runs


def _scored_on(table: pd.DataFrame, valid: pd.DataFrame, metric: str) -> list[str]:
    """Where ``train.max_eval_batches`` capped the evaluation: per row, the images the metric was scored on
    (``scored_images`` of ``scored_images_total``, the fewest over its runs) and "test_acc on 16 of 80
    images" in ``scored_on``; and a warning naming the rows."""
    columns = scored_columns(metric)
    if columns is None or not all(c in valid for c in columns):
        return []
    images, total = (valid.groupby("config_hash")[c].min().reindex(table["config_hash"]) for c in columns)
    table["scored_images"], table["scored_images_total"] = images.to_numpy(), total.to_numpy()
    table["scored_on"] = [subset_text(metric, i, t) or "" for i, t in zip(images, total)]
    capped = [label for label, on in zip(table["config"], table["scored_on"]) if on]
    if not capped:
        return []
    return [
        f"{len(capped)} configuration{'s' if len(capped) > 1 else ''} scored {metric} on a fixed, class-balanced "
        f"subset (train.max_eval_batches), not the whole set: {', '.join(capped)}"
    ]


def _missing_warnings(runs: pd.DataFrame, metric: str) -> list[str]:
    missing = runs.loc[runs[metric].isna(), "run_id"].tolist()
    if not missing:
        return []
    one = len(missing) == 1
    return [
        f"{len(missing)} finished run{'' if one else 's'} ha{'s' if one else 've'} "
        f"no {metric} value and {'is' if one else 'are'} left out of the means: {ids_text(missing)}"
    ]


def energy_constants(e_mac_pj: float | None = None, e_ac_pj: float | None = None) -> EnergyConfig:
    """The energy constants of a report: the given ones, the defaults of ``EnergyConfig`` for None.

    Raises:
        ReportError: a constant out of range.
    """
    try:
        return load_energy({"e_mac_pj": e_mac_pj, "e_ac_pj": e_ac_pj})
    except RecipeError as exc:
        raise ReportError(str(exc)) from None


def _aggregate(
    runs: pd.DataFrame, configs: pd.DataFrame, varying: list[str], metric: str
) -> tuple[pd.DataFrame, list[str]]:
    """The table's rows and their means and stds (text cells filled in later), and the compared columns."""
    valid = runs.dropna(subset=[metric])
    # Operation counts where any run logged them (runs from before they existed have none).
    counted = [c for c in EFFICIENCY if c != metric and valid[c].notna().any()]
    columns = [metric, *counted]
    grouped = valid.groupby("config_hash")
    stats = grouped[columns].agg(["mean", "std"]).reindex(configs["config_hash"])
    n = grouped[metric].size().reindex(configs["config_hash"]).fillna(0).astype("int64").to_numpy()
    entropy = grouped[ENTROPY_METRIC].mean().reindex(configs["config_hash"])
    table = configs[varying or [CONFIG_COLUMN]].copy()
    table[metric] = ""
    table["n"] = n
    if metric != ENTROPY_METRIC:  # else it would repeat the metric column
        table[ENTROPY_METRIC] = entropy.to_numpy()
    for c in counted:
        table[c] = ""
    for c in columns:
        table[f"{c}_mean"] = stats[c]["mean"].to_numpy()
        table[f"{c}_std"] = stats[c]["std"].to_numpy()
    table["config_hash"] = configs["config_hash"].to_numpy()
    if "config" not in table:  # the row labels, for naming the baseline
        table["config"] = configs["config"].to_numpy()
    return table, columns


def _layer_table(layers: pd.DataFrame, valid_runs: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    frame = layers.merge(valid_runs[["run_id", "config"]], on="run_id")
    if frame.empty:
        return pd.DataFrame(columns=labels, index=pd.Index([], name="layer"), dtype="float64")
    table = frame.groupby(["layer_index", "layer", "config"])["value"].mean().unstack("config")
    table = table.reindex(columns=[c for c in labels if c in table.columns])
    table.index = table.index.get_level_values("layer")
    table.columns.name = None
    return table
