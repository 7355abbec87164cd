"""Tests of imloss_cli.report on registries written directly through the Registry API.

The main fixture is an ablation group over loss.im_weight (0, 1, 2) x seed (0, 1), three epochs
each, with hand-picked test accuracies (see ACC) so that the best and the last epoch differ, and
per-layer entropies given by ``_entropy`` so every expected number can be worked out by hand.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from imloss_cli.recipe import Recipe, config_hash, load_recipe, run_fingerprint
from imloss_cli.registry import Registry
from imloss_cli.report import Report, ReportError, build_report, energy_constants, render, write_plots
from tests.planting import new_group, start_run

LAYERS = [(0, "stem.lif"), (1, "block.lif")]  # index order differs from name order on purpose
K = {1: 1.0, 2: 5.5, 3: 10.0}
# test_acc per epoch 1..3 for (im_weight, seed)
ACC = {
    (0.0, 0): [0.80, 0.90, 0.85],  # best 0.90 @2, last 0.85
    (0.0, 1): [0.82, 0.86, 0.88],  # best 0.88 @3, last 0.88
    (1.0, 0): [0.85, 0.95, 0.91],  # best 0.95 @2, last 0.91
    (1.0, 1): [0.87, 0.93, 0.93],  # best 0.93 @2 (tie: earliest epoch), last 0.93
    (2.0, 0): [0.70, 0.75, 0.80],  # best 0.80 @3, last 0.80
    (2.0, 1): [0.72, 0.78, 0.74],  # best 0.78 @2, last 0.74
}
BEST_EPOCH = {(0.0, 0): 2, (0.0, 1): 3, (1.0, 0): 2, (1.0, 1): 2, (2.0, 0): 3, (2.0, 1): 2}
STD_2 = 0.01 * 2**0.5  # sample std (ddof=1) of two values 0.02 apart
T_1 = 12.706204736174698  # Student's t, 0.975 quantile, 1 degree of freedom: the 95% interval of two seeds


def interval(mean: float, sd: float, digits: int = 2, n: int = 2, t: float = T_1) -> str:
    """The report's cell by the textbook: mean [mean - t s/sqrt(n), mean + t s/sqrt(n)]."""
    half = t * sd / n**0.5
    return f"{mean:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def _entropy(weight: float, seed: int, epoch: int, layer: int) -> float:
    return 0.3 * weight + 0.01 * seed + 0.2 * epoch + 0.5 * layer


def _recipe(weight: float, seed: int, **more: Any) -> Recipe:
    return load_recipe(None).with_overrides({"loss.im_weight": weight, "train.seed": seed, **more})


def _add_run(
    registry: Registry,
    recipe: Recipe,
    accs: list[float],
    *,
    group_id: str | None = None,
    status: str = "FINISHED",
    code_version: str = "0.1.0",
    git_dirty: bool = False,
) -> str:
    """Create a run of ``recipe`` with one logged epoch per accuracy, ended with ``status``."""
    seed = recipe.train.seed
    assert seed is not None
    run_id = start_run(
        registry,
        name=recipe.name,
        recipe=recipe.model_dump(mode="json"),
        config_hash=config_hash(recipe),
        fingerprint=run_fingerprint(recipe, seed, code_version),
        seed=seed,
        code_version=code_version,
        kind="ablate" if group_id else "train",
        group_id=group_id,
        git_commit="abc",
        git_dirty=git_dirty,
    )
    weight = recipe.loss.im_weight
    for epoch, acc in enumerate(accs, start=1):
        entropies = [_entropy(weight, seed, epoch, i) for i, _ in LAYERS]
        metrics = {
            "test_acc": acc,
            "test_loss": 1.0 - acc,
            "loss": 2.0 - acc,
            "k": K.get(epoch, 10.0),
            "mean_entropy": sum(entropies) / len(entropies),
            "lr": 0.1,
        }
        stats = [
            (i, name, {"entropy": e, "firing_rate": 0.1 * (i + 1), "membrane_mean": -1.0})
            for (i, name), e in zip(LAYERS, entropies)
        ]
        registry.log_epoch(run_id, epoch, metrics, stats, attempt=1)
    if status != "RUNNING":
        registry.finish_run(run_id, status, attempt=1)
    return run_id


@pytest.fixture
def registry() -> Registry:
    """The im_weight x seed group: 6 FINISHED runs, 3 epochs each."""
    reg = Registry("sqlite://")
    base = load_recipe(None)
    group = new_group(
        reg,
        "digits: im_weight x seed",
        {"recipe": base.model_dump(mode="json")},
        {"loss.im_weight": [0.0, 1.0, 2.0], "train.seed": [0, 1]},
        ["ablate"],
    )
    for (weight, seed), accs in ACC.items():
        _add_run(reg, _recipe(weight, seed), accs, group_id=group)
    yield reg
    reg.close()


def _group_id(reg: Registry) -> str:
    group = reg.latest_group()
    assert group is not None
    return group.id


# ----------------------------------------------------------------------------- the table


def test_best_selection_pools_seeds_per_configuration(registry: Registry) -> None:
    report = build_report(registry)
    table = report.table
    assert report.title == f"group {_group_id(registry)} (digits: im_weight x seed)"
    assert list(table.columns[:4]) == ["loss.im_weight", "test_acc", "n", "mean_entropy"]
    assert list(table["loss.im_weight"]) == [0.0, 1.0, 2.0]
    assert list(table["n"]) == [2, 2, 2]
    assert table["test_acc_mean"].tolist() == pytest.approx([0.89, 0.94, 0.79])
    assert table["test_acc_std"].tolist() == pytest.approx([STD_2] * 3)
    assert list(table["test_acc"]) == [interval(m, 100 * STD_2) for m in (89.0, 94.0, 79.0)]
    assert list(table["test_acc"])[1] == "94.00 [81.29, 106.71]"  # 94 ± 12.706 * 1.414 / sqrt 2
    # mean_entropy at each run's best epoch: mean over layers (+0.25) of 0.3 w + 0.01 s + 0.2 e
    expected = [sum(0.3 * w + 0.01 * s + 0.2 * BEST_EPOCH[w, s] + 0.25 for s in (0, 1)) / 2 for w in (0.0, 1.0, 2.0)]
    assert table["mean_entropy"].tolist() == pytest.approx(expected)
    assert report.warnings == []
    runs = report.runs
    assert len(runs) == 6 and list(runs["seed"]) == [0, 1] * 3
    assert list(runs["epoch"]) == [BEST_EPOCH[w, s] for w in (0.0, 1.0, 2.0) for s in (0, 1)]
    assert runs["config"].tolist()[:2] == ["loss.im_weight=0.0"] * 2


def test_last_selection_uses_the_final_epoch(registry: Registry) -> None:
    table = build_report(registry, select="last").table
    assert table["test_acc_mean"].tolist() == pytest.approx([0.865, 0.92, 0.77])
    assert table["test_acc_std"].tolist() == pytest.approx([0.03 / 2**0.5, STD_2, 0.06 / 2**0.5])
    sds = [3 / 2**0.5, 100 * STD_2, 6 / 2**0.5]
    assert list(table["test_acc"]) == [interval(m, s) for m, s in zip((86.5, 92.0, 77.0), sds)]
    assert table["mean_entropy"].tolist() == pytest.approx([0.3 * w + 0.005 + 0.6 + 0.25 for w in (0, 1, 2)])


def test_loss_metrics_are_minimised_and_shown_with_four_decimals(registry: Registry) -> None:
    report = build_report(registry, metric="test_loss")
    assert report.table["test_loss_mean"].tolist() == pytest.approx([0.11, 0.06, 0.21])
    assert list(report.table["test_loss"]) == [interval(m, STD_2, digits=4) for m in (0.11, 0.06, 0.21)]
    assert list(report.runs["epoch"]) == [BEST_EPOCH[w, s] for w in (0.0, 1.0, 2.0) for s in (0, 1)]


def test_layer_table_is_per_layer_entropy_at_the_selected_epoch(registry: Registry) -> None:
    best = build_report(registry).layer_table
    assert list(best.index) == ["stem.lif", "block.lif"]
    assert list(best.columns) == ["loss.im_weight=0.0", "loss.im_weight=1.0", "loss.im_weight=2.0"]
    for w, label in zip((0.0, 1.0, 2.0), best.columns):
        for i, name in LAYERS:
            want = sum(_entropy(w, s, BEST_EPOCH[w, s], i) for s in (0, 1)) / 2
            assert best.loc[name, label] == pytest.approx(want)
    assert best.loc["stem.lif", "loss.im_weight=0.0"] == pytest.approx((0.4 + 0.61) / 2)
    last = build_report(registry, select="last").layer_table
    assert last.loc["block.lif", "loss.im_weight=2.0"] == pytest.approx(0.6 + 0.005 + 0.6 + 0.5)


def test_one_configuration_gets_a_config_column() -> None:
    with Registry("sqlite://") as reg:
        ids = [_add_run(reg, _recipe(2.0, seed), [0.5, 0.6 + 0.1 * seed]) for seed in (0, 1, 2)]
        report = build_report(reg, select="last")
        recipe = _recipe(2.0, 0)
        assert report.title == "all finished runs"
        assert list(report.table.columns[:4]) == ["config", "test_acc", "n", "mean_entropy"]
        assert report.table["config"].tolist() == [f"digits ({config_hash(recipe)})"]
        assert report.table["test_acc_mean"].tolist() == pytest.approx([0.7])
        assert report.table["test_acc_std"].tolist() == pytest.approx([0.1])
        assert sorted(report.runs["run_id"]) == sorted(ids)
        assert list(report.layer_table.columns) == [f"digits ({config_hash(recipe)})"]


def test_single_seed_shows_only_the_mean() -> None:
    with Registry("sqlite://") as reg:
        _add_run(reg, _recipe(0.0, 0), [0.5, 0.75])
        _add_run(reg, _recipe(1.0, 0), [0.5, 0.25])
        report = build_report(reg)
        assert list(report.table["test_acc"]) == ["75.00 (n = 1: no interval)", "50.00 (n = 1: no interval)"]
        assert report.table["test_acc_std"].isna().all()
        assert json.loads(render(report, "json"))["rows"][0]["test_acc_std_pct"] is None


def test_only_semantic_fields_that_differ_become_columns() -> None:
    with Registry("sqlite://") as reg:
        # device and notes are non-semantic: same configuration, seeds pooled.
        _add_run(reg, _recipe(1.0, 0, **{"train.device": "cpu", "notes": "a"}), [0.5])
        _add_run(reg, _recipe(1.0, 1, **{"train.device": "cuda"}), [0.7])
        _add_run(reg, _recipe(1.0, 0, **{"surrogate.schedule": "fixed"}), [0.9])
        report = build_report(reg)
        assert list(report.table.columns[:2]) == ["surrogate.schedule", "test_acc"]
        assert list(report.table["surrogate.schedule"]) == ["esg", "fixed"]
        assert list(report.table["n"]) == [2, 1]
        assert list(report.layer_table.columns) == ["surrogate.schedule=esg", "surrogate.schedule=fixed"]


def test_runs_without_the_metric_are_left_out_of_the_means(registry: Registry) -> None:
    empty = _add_run(registry, _recipe(0.0, 2), [], group_id=_group_id(registry))
    report = build_report(registry)
    assert list(report.table["n"]) == [2, 2, 2]
    assert report.table["test_acc_mean"].tolist() == pytest.approx([0.89, 0.94, 0.79])
    assert report.warnings == [f"1 finished run has no test_acc value and is left out of the means: {empty}"]


def test_mean_entropy_as_the_metric_is_not_repeated(registry: Registry) -> None:
    report = build_report(registry, metric="mean_entropy", select="last")
    assert list(report.table.columns[:6]) == [
        "loss.im_weight",
        "mean_entropy",
        "n",
        "mean_entropy_mean",
        "mean_entropy_std",
        "config_hash",
    ]  # then the row labels, the intervals and the comparisons with the baseline
    assert report.table["mean_entropy_mean"].tolist() == pytest.approx(
        [0.3 * w + 0.005 + 0.6 + 0.25 for w in (0, 1, 2)]
    )
    sd = 0.005 * 2**0.5  # the two seeds 0.01 apart
    assert list(report.table["mean_entropy"]) == [interval(m, sd, digits=4) for m in (0.855, 1.155, 1.455)]
    assert f"| 0.0 | {interval(0.855, sd, digits=4)} | 2 | baseline |" in render(report, "markdown")


# ----------------------------------------------------------------------------- selection


def test_runs_are_selected_by_group_prefix_last_or_recipe_name(registry: Registry) -> None:
    group = _group_id(registry)
    _add_run(registry, _recipe(5.0, 0), [0.1])  # outside the group
    assert len(build_report(registry, group=group[:6]).table) == 3
    assert len(build_report(registry, last=True).table) == 3
    assert len(build_report(registry).table) == 3  # default: the latest group
    other = _recipe(5.0, 0, name="other")
    _add_run(registry, other, [0.3])
    by_name = build_report(registry, recipe_name="other")
    assert by_name.title == "recipe 'other', all finished runs"
    assert by_name.table["test_acc_mean"].tolist() == pytest.approx([0.3])
    assert len(build_report(registry, recipe_name="digits").table) == 4
    with pytest.raises(ReportError, match="no group matches 'zzz'"):
        build_report(registry, group="zzz")
    with pytest.raises(ReportError, match="either a group or last"):
        build_report(registry, group=group, last=True)


def test_unfinished_runs_are_left_out_with_a_warning(registry: Registry) -> None:
    group = _group_id(registry)
    _add_run(registry, _recipe(0.0, 2), [0.1], group_id=group, status="FAILED")
    _add_run(registry, _recipe(1.0, 2), [0.1], group_id=group, status="RUNNING")
    report = build_report(registry)
    assert list(report.table["n"]) == [2, 2, 2]
    assert report.table["test_acc_mean"].tolist() == pytest.approx([0.89, 0.94, 0.79])
    assert report.warnings == [f"2 runs in group {group} are not finished (1 FAILED, 1 RUNNING) and are left out"]


def test_no_finished_runs_is_an_error() -> None:
    with Registry("sqlite://") as reg:
        with pytest.raises(ReportError, match="no finished runs in the registry"):
            build_report(reg)
        with pytest.raises(ReportError, match="no ablation groups"):
            build_report(reg, last=True)
        group = new_group(reg, "g", {}, {}, [])
        _add_run(reg, _recipe(0.0, 0), [0.5], group_id=group, status="FAILED")
        with pytest.raises(ReportError, match=rf"no finished runs in group {group} \(1 unfinished: 1 FAILED\)"):
            build_report(reg, group=group)


def test_unknown_metric_and_options_are_errors(registry: Registry) -> None:
    with pytest.raises(ReportError) as info:
        build_report(registry, metric="tst_acc")
    assert str(info.value) == ("unknown metric 'tst_acc'; known: k, loss, lr, mean_entropy, test_acc, test_loss")
    with pytest.raises(ReportError, match="unknown selection 'worst'"):
        build_report(registry, select="worst")
    with pytest.raises(ReportError, match="unknown format 'docx'"):
        render(build_report(registry), "docx")


# ----------------------------------------------------------------------------- warnings


def test_mixed_code_versions_and_dirty_trees_are_warned_about() -> None:
    with Registry("sqlite://") as reg:
        _add_run(reg, _recipe(0.0, 0), [0.5], code_version="0.1.0+gabc")
        _add_run(reg, _recipe(0.0, 1), [0.5], code_version="0.1.0+gabc")
        a = _add_run(reg, _recipe(2.0, 0), [0.5], code_version="0.1.0+gdef", git_dirty=True)
        b = _add_run(reg, _recipe(2.0, 1), [0.5], code_version="0.1.0+gabc", git_dirty=True)
        report = build_report(reg)
        assert report.warnings == [
            "row loss.im_weight=2.0 mixes code versions 0.1.0+gabc, 0.1.0+gdef",
            f"2 runs come from a dirty working tree (uncommitted changes): {a}, {b}",
        ]
        markdown = render(report, "markdown")
        assert "> warning: row loss.im_weight=2.0 mixes code versions" in markdown
        assert json.loads(render(report, "json"))["warnings"] == report.warnings
        assert "warning" not in render(report, "csv")


# ----------------------------------------------------------------------------- formats


def test_csv_is_the_numeric_main_table_accuracy_in_percent_as_named(registry: Registry) -> None:
    frame = pd.read_csv(io.StringIO(render(build_report(registry), "csv")))
    assert list(frame.columns[:5]) == ["loss.im_weight", "test_acc_mean_pct", "test_acc_std_pct", "n", "mean_entropy"]
    assert list(frame.columns[5:7]) == ["scored_images", "scored_images_total"]  # NaN: logged before they existed
    assert list(frame.columns[7:11]) == ["test_acc_ci_low_pct", "test_acc_ci_high_pct", "test_acc_values_pct", "seeds"]
    assert "delta_test_acc_pp" in frame and "p_adj_test_acc" in frame and frame.columns[-1] == "config_hash"
    assert len(frame) == 3 and pd.api.types.is_float_dtype(frame["test_acc_mean_pct"])
    assert frame["test_acc_mean_pct"].tolist() == pytest.approx([89.0, 94.0, 79.0])
    assert frame["n"].tolist() == [2, 2, 2]


def test_json_has_rows_layers_and_numbers(registry: Registry) -> None:
    report = build_report(registry, select="last")
    data = json.loads(render(report, "json"))
    assert data["title"] == report.title and data["metric"] == "test_acc" and data["select"] == "last"
    assert [row["loss.im_weight"] for row in data["rows"]] == [0.0, 1.0, 2.0]
    assert data["rows"][1]["test_acc_mean_pct"] == pytest.approx(92.0)
    assert data["rows"][1]["n"] == 2
    assert [layer["layer"] for layer in data["layers"]] == ["stem.lif", "block.lif"]
    assert data["layers"][1]["loss.im_weight=2.0"] == pytest.approx(1.705)
    assert data["warnings"] == []


def test_markdown_prints_both_tables(registry: Registry) -> None:
    text = render(build_report(registry), "markdown")
    lines = text.splitlines()
    header = "| loss.im_weight | test_acc (%) | n | Δ test_acc (pp) | test | p (Holm) | verdict | mean_entropy |"
    assert header in lines
    # both seeds gain exactly 5 pp over lambda = 0 (95 - 90, 93 - 88): an interval of width 0, nothing to test
    row = f"| 1.0 | {interval(94.0, 100 * STD_2)} | 2 | +5.00 [+5.00, +5.00] | paired, n = 2 | – | no test | 0.955 |"
    assert row in lines
    last_row = next(i for i, line in enumerate(lines) if line.startswith("| 2.0 |"))
    assert lines[last_row + 1] == "" and lines[last_row + 2].startswith("Tested: every configuration against")
    assert lines[last_row + 3] == "" and lines[last_row + 4].startswith("Not to conclude:")
    caption = next(i for i, line in enumerate(lines) if line.startswith("Per-layer entropy (bits)"))
    assert lines[caption - 1] == "" and lines[caption - 2].startswith("No difference in test_acc is significant.")
    assert "| layer | loss.im_weight=0.0 | loss.im_weight=1.0 | loss.im_weight=2.0 |" in lines
    assert "| stem.lif | 0.505 | 0.705 | 1.105 |" in lines


def test_latex_is_booktabs_with_the_best_mean_in_bold(registry: Registry) -> None:
    report = build_report(registry)
    latex = render(report, "latex")
    assert latex.count("\\begin{tabular}") == 2 and latex.count("\\end{tabular}") == 2
    assert latex.count("\\toprule") == latex.count("\\midrule") == latex.count("\\bottomrule") == 2
    assert "\\hline" not in latex
    assert (
        r"loss.im\_weight & test\_acc (\%) & n & $\Delta$ test\_acc (pp) & test & p (Holm) & verdict & mean\_entropy \\"
        in latex
    )
    # lambda=1 has the best mean (94.00, seeds at 95 and 93): bold, the others not
    assert r"1.0 & \textbf{94.00 [81.29, 106.71]} & 2" in latex and latex.count("\\textbf") == 1


def test_html_is_one_page_with_every_table_and_no_network(registry: Registry) -> None:
    report = build_report(registry)
    page = render(report, "html", registry)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # comparison, layer entropy, layer firing rate, runs
    assert page.count("<table") == 4 and "94.00 [81.29, 106.71]" in page and "stem.lif" in page
    assert page.count('<img alt="') == 6 and page.count('src="data:image/svg+xml;base64,') == 6
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    assert page.count('<td class="best"') == 1 and re.search(
        r'<td class="best" data-sort="0\.9[34]\d*">94\.00 \[81\.29, 106\.71\]</td>', page
    )
    assert "optimistic" in page  # the selection rule says what the best test epoch means
    for run_id in report.runs["run_id"]:
        assert run_id in page
    assert render(report, "html").count("<img") == 0  # without a registry: the tables alone


# ----------------------------------------------------------------------------- plots


def test_write_plots_writes_six_pngs(registry: Registry, tmp_path: Path) -> None:
    report: Report = build_report(registry)
    paths = write_plots(report, registry, tmp_path / "plots" / "here")
    assert [p.name for p in paths] == [
        "accuracy.png",
        "layer_entropy.png",
        "entropy_over_epochs.png",
        "firing_rates.png",
        "layer_sops.png",
        "k_schedule.png",
    ]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_many_configurations_plot_as_a_heat_map(tmp_path: Path) -> None:
    with Registry("sqlite://") as reg:
        for weight in range(14):
            _add_run(reg, _recipe(float(weight), 0), [0.5, 0.6])
        report = build_report(reg)
        assert len(report.table) == 14 and report.layer_table.shape == (2, 14)
        for path in write_plots(report, reg, tmp_path):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- operation counts

# (neuron, seed) -> per epoch (test_acc, sops per image); MACs per image are fixed by the network.
COUNTED = {
    ("lif", 0): [(0.80, 3.0e6), (0.90, 2.0e6)],  # best epoch 2
    ("lif", 1): [(0.92, 2.2e6), (0.85, 1.0e6)],  # best epoch 1
    ("relu", 0): [(0.95, 0.0), (0.97, 0.0)],
    ("relu", 1): [(0.96, 0.0), (0.94, 0.0)],
}
MACS = {"lif": 1.0e6, "relu": 5.0e6}  # the SNN's stem on pixels; every layer of the ANN twin


@pytest.fixture
def counted() -> Registry:
    """A spiking network and its ANN twin, 2 seeds each, with operation counts as the trainer logs them."""
    reg = Registry("sqlite://")
    for (neuron, seed), epochs in COUNTED.items():
        recipe = _recipe(2.0, seed, **{"model.neuron": neuron})
        run_id = start_run(
            reg,
            name=recipe.name,
            recipe=recipe.model_dump(mode="json"),
            config_hash=config_hash(recipe),
            fingerprint=run_fingerprint(recipe, seed, "0.1.0"),
            seed=seed,
            code_version="0.1.0",
        )
        for epoch, (acc, sops) in enumerate(epochs, start=1):
            macs = MACS[neuron]
            metrics = {"test_acc": acc, "sops": sops, "macs": macs, "energy_uj": (macs * 4.6 + sops * 0.9) * 1e-6}
            layers = [] if neuron == "relu" else [(0, "stem.lif", {"sops_per_image": sops / 4, "entropy": 0.5}),
                                                  (1, "block.lif", {"sops_per_image": 3 * sops / 4, "entropy": 0.7})]  # fmt: skip
            reg.log_epoch(run_id, epoch, metrics, layers, attempt=1)
        reg.finish_run(run_id, "FINISHED", attempt=1)
    yield reg
    reg.close()


def test_sops_and_energy_are_columns_of_mean_and_std_at_the_selected_epoch(counted: Registry) -> None:
    report = build_report(counted)
    table = report.table
    assert list(table.columns[:8]) == [  # the varying fields in the registry's (sorted) order
        "loss.im_weight",
        "model.neuron",
        "model.timesteps",
        "test_acc",
        "n",
        "mean_entropy",
        "sops",
        "energy_uj",
    ]
    # the twin was recorded with the lambda = 0 and T = 1 it ran with, so it sorts first
    assert list(table["model.neuron"]) == ["relu", "lif"] and list(table["model.timesteps"]) == [1, 4]
    # lif: seed 0 at epoch 2 (2.0 M), seed 1 at epoch 1 (2.2 M); in millions per image
    assert table["sops_mean"].tolist() == pytest.approx([0.0, 2.1e6])
    assert list(table["sops"]) == [interval(0.0, 0.0, digits=4), interval(2.1, 0.1 * 2**0.5, digits=4)]
    # E = MACs * 4.6 pJ + SOPs * 0.9 pJ: relu 5e6 * 4.6 pJ = 23 µJ; lif 4.6 + 1.8 and 4.6 + 1.98 µJ
    assert table["energy_uj_mean"].tolist() == pytest.approx([23.0, 6.49])
    assert list(table["energy_uj"]) == [interval(23.0, 0.0, digits=4), interval(6.49, 0.09 * 2**0.5, digits=4)]
    assert report.efficiency == ["sops", "energy_uj"]
    assert report.runs["k_schedule"].tolist()[:2] == ["none (ReLU twin)"] * 2
    # the SOPs per layer of the spiking configuration; the twin has no spiking layer
    assert list(report.sops_table.columns) == ["loss.im_weight=2.0, model.neuron=lif, model.timesteps=4"]
    assert report.sops_table.iloc[:, 0].tolist() == pytest.approx([2.1e6 / 4, 3 * 2.1e6 / 4])


def test_the_report_recomputes_the_energy_with_the_constants_it_is_given(counted: Registry) -> None:
    report = build_report(counted, energy=energy_constants(e_mac_pj=3.1, e_ac_pj=0.1))
    # relu: 15.5 µJ; lif: 3.1 + 0.2 and 3.1 + 0.22 µJ
    assert report.table["energy_uj_mean"].tolist() == pytest.approx([15.5, 3.31])
    text = render(report, "markdown")
    assert "energy per image E = MACs × 3.1 pJ + SOPs × 0.1 pJ" in text
    assert (
        "| loss.im_weight | model.neuron | model.timesteps | test_acc (%) | n | Δ test_acc (pp) | test | p (Holm) "
        "| verdict | mean_entropy | sops (M) | energy_uj (µJ) |" in text
    )
    lif = [interval(91.0, 100 * STD_2), interval(2.1, 0.1 * 2**0.5, digits=4), interval(3.31, 0.01 * 2**0.5, digits=4)]
    assert f"| 2.0 | lif | 4 | {lif[0]} | 2 |" in text and f"| 0.600 | {lif[1]} | {lif[2]} |" in text
    assert "Per-layer synaptic operations per image (millions)" in text and "| stem.lif | 0.525 |" in text
    assert json.loads(render(report, "json"))["energy"] == {"e_mac_pj": 3.1, "e_ac_pj": 0.1}
    frame = pd.read_csv(io.StringIO(render(report, "csv")))
    assert {"sops_mean", "sops_std", "sops_ci_low", "energy_uj_mean", "delta_energy_uj", "p_adj_sops"} <= set(frame)
    assert list(frame.columns)[-1] == "config_hash"
    page = render(report, "html", counted)  # + the differences in operations and energy
    assert page.count("<table") == 6 and "MACs × 3.1 pJ + SOPs × 0.1 pJ" in page
    assert page.count('<img alt="') == 6
    assert r"3.1 pJ" in render(report, "latex")


def test_energy_as_the_metric_is_minimised_with_the_report_constants(counted: Registry) -> None:
    report = build_report(counted, metric="energy_uj", energy=energy_constants(e_ac_pj=0.1))
    # the lowest energy of each run is its epoch of fewest SOPs, whatever the constants
    assert report.runs["epoch"].tolist() == [1, 1, 2, 2]  # the twin's SOPs tie at 0: the earliest epoch
    assert report.table["energy_uj_mean"].tolist() == pytest.approx([23.0, 4.6 + 0.15])
    assert report.best_row == 1 and "energy_uj" not in report.efficiency
    assert list(report.table["sops"]) == [interval(0.0, 0.0, digits=4), interval(1.5, 0.5 * 2**0.5, digits=4)]


def test_a_bad_energy_constant_is_a_report_error() -> None:
    with pytest.raises(ReportError, match="e_ac_pj: Input should be greater than 0"):
        energy_constants(e_ac_pj=0.0)


def test_best_val_reports_the_test_accuracy_at_the_best_validation_epoch() -> None:
    reg = Registry("sqlite://")
    base = load_recipe(None).with_overrides({"data.val_fraction": 0.2})
    group = new_group(reg, "g", {}, {"train.seed": [0, 1]}, [])
    # (val_acc, test_acc) per epoch: validation picks epoch 2 and 1, the test set would pick 3 and 3
    for seed, epochs in {
        0: [(0.70, 0.80), (0.90, 0.82), (0.85, 0.95)],
        1: [(0.88, 0.70), (0.80, 0.75), (0.86, 0.99)],
    }.items():
        recipe = base.with_overrides({"train.seed": seed})
        run_id = _add_run(reg, recipe, [t for _, t in epochs], group_id=group, status="RUNNING")
        for epoch, (val, test) in enumerate(epochs, start=1):
            reg.log_epoch(run_id, epoch, {"test_acc": test, "val_acc": val, "mean_entropy": 0.5}, [], attempt=1)
        reg.finish_run(run_id, "FINISHED", attempt=1)  # a run's epochs are written before it ends
    report = build_report(reg, select="best-val")
    assert list(report.runs["epoch"]) == [2, 1]
    assert report.table["test_acc_mean"].item() == pytest.approx((0.82 + 0.70) / 2)
    assert "validation set held out of its training data" in render(report, "markdown")
    test_picked = build_report(reg)
    assert test_picked.table["test_acc_mean"].item() == pytest.approx((0.95 + 0.99) / 2)
    assert "optimistic" in render(test_picked, "markdown")


def test_best_val_without_validation_runs_is_an_error(registry: Registry) -> None:
    with pytest.raises(ReportError, match=r"--select best-val needs runs trained with data.val_fraction > 0"):
        build_report(registry, select="best-val")
