"""Whether a difference is real: intervals, paired and Welch tests, Holm, against the textbook by hand.

Student's t quantiles are the table's values (literals below); the p-values use the closed forms of
the t distribution's CDF for 2 and 4 degrees of freedom, F(t) = 1/2 + x/2 (2 df) and
F(t) = 1/2 + 3/4 x (1 - x²/3) (4 df), with x = t / sqrt(t² + df), so no test asks scipy for the
numbers it checks.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.recipe import config_hash, load_recipe, run_fingerprint
from imloss_cli.registry import FINISHED, Registry
from imloss_cli.report import ReportError, build_report, render
from imloss_cli.report.stats import compare, detectable_difference, holm, mean_interval, pooled_sd
from tests.planting import new_group, start_run

T975 = {2: 4.302652729749462, 4: 2.7764451051977934, 8: 2.306004135204166}  # Student's t, 0.975 quantile
T80_8 = 0.8888895177670202  # Student's t, 0.80 quantile, 8 degrees of freedom


def two_sided_p(t: float, df: int) -> float:
    x = abs(t) / math.sqrt(t * t + df)
    cdf = {2: 0.5 + x / 2, 4: 0.5 + 0.75 * x * (1 - x * x / 3)}[df]
    return 2 * (1 - cdf)


def test_a_three_seed_interval_is_mean_plus_minus_t_s_over_root_n() -> None:
    values = [94.0, 94.5, 93.6]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    got = mean_interval(values)
    assert (got.n, got.mean, got.sd) == (3, pytest.approx(mean), pytest.approx(sd))
    assert got.low == pytest.approx(mean - T975[2] * sd / math.sqrt(3))
    assert got.high == pytest.approx(mean + T975[2] * sd / math.sqrt(3))
    assert got.high - got.low == pytest.approx(2 * 1.120164, abs=1e-5)  # 4.3027 * 0.45092 / 1.7321, twice


def test_a_five_seed_interval_and_one_seed_has_none() -> None:
    values = [0.90, 0.91, 0.89, 0.92, 0.90]
    mean, sd = 0.904, math.sqrt((0.004**2 + 0.006**2 + 0.014**2 + 0.016**2 + 0.004**2) / 4)
    got = mean_interval(values)
    assert got.low == pytest.approx(mean - T975[4] * sd / math.sqrt(5))
    single = mean_interval([0.5])
    assert single.n == 1 and single.mean == 0.5 and math.isnan(single.low) and math.isnan(single.high)


def test_the_same_seeds_are_compared_pair_by_pair() -> None:
    base, other = {0: 0.90, 1: 0.88, 2: 0.91}, {0: 0.93, 1: 0.90, 2: 0.95}
    d = [0.03, 0.02, 0.04]  # per seed: other - base
    sd = 0.01
    t = 0.03 / (sd / math.sqrt(3))  # 5.196
    got = compare(base, other)
    assert (got.test, got.n, got.described) == ("paired", (3,), "paired, n = 3")
    assert got.delta == pytest.approx(sum(d) / 3)
    assert (got.low, got.high) == (
        pytest.approx(0.03 - T975[2] * sd / math.sqrt(3)),
        pytest.approx(0.03 + T975[2] * sd / math.sqrt(3)),
    )
    assert got.p == pytest.approx(two_sided_p(t, 2)) and got.p == pytest.approx(0.035099, abs=1e-6)


def test_a_paired_test_sees_a_difference_the_seeds_would_hide_from_welch() -> None:
    # Seeds move both rows alike (0.80 ... 0.96); lambda = 2 adds 0.01 on every seed, +-0.002.
    base = {s: 0.80 + 0.04 * s for s in range(5)}
    other = {s: v + 0.01 + 0.002 * (-1) ** s for s, v in base.items()}
    paired = compare(base, other)
    welch = compare(base, {s + 10: v for s, v in other.items()})  # other seeds: no pairs
    assert paired.test == "paired" and paired.p < 0.01
    assert welch.test == "Welch" and welch.p > 0.5 and welch.delta == pytest.approx(paired.delta)


def test_unequal_seed_sets_fall_back_to_welch() -> None:
    base, other = {0: 0.90, 1: 0.88, 2: 0.92}, {0: 0.95, 1: 0.93, 3: 0.97}  # seed 2 against seed 3
    se = math.sqrt(0.02**2 / 3 + 0.02**2 / 3)
    # equal variances and sizes: Welch-Satterthwaite's df = (2v)² / (2 v² / 2) = 4 exactly
    got = compare(base, other)
    assert (got.test, got.n, got.described) == ("Welch", (3, 3), "Welch, n = 3 / 3")
    assert got.delta == pytest.approx(0.05)
    assert got.low == pytest.approx(0.05 - T975[4] * se) and got.high == pytest.approx(0.05 + T975[4] * se)
    assert got.p == pytest.approx(two_sided_p(0.05 / se, 4)) and got.p == pytest.approx(0.037590, abs=1e-6)


def test_a_side_with_one_seed_gets_no_test() -> None:
    got = compare({0: 0.9}, {0: 0.95, 1: 0.96})
    assert got.test is None and math.isnan(got.p) and got.described == "no test (n < 2)"


def test_holm_on_three_p_values() -> None:
    # sorted 0.01, 0.03, 0.04: 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 1 x 0.04 = 0.04, raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])  # an untested row does not count


def test_the_smallest_detectable_difference_and_the_pooled_std() -> None:
    assert pooled_sd([[1.0, 3.0], [2.0, 2.0, 5.0]]) == pytest.approx(math.sqrt((1 * 2.0 + 2 * 3.0) / 3))
    # n = 5 a side, df = 8: a little above the shortcut (2.3060 + 0.8889) * sd * sqrt(2/5), which
    # the noncentral t's heavier tail makes too optimistic at few seeds; at 20 seeds they agree.
    shortcut = (T975[8] + T80_8) * 0.4 * math.sqrt(0.4)
    assert shortcut < detectable_difference(0.4, 5) < 1.03 * shortcut
    assert detectable_difference(0.4, 20) == pytest.approx(
        (2.0243941639119694 + 0.8511827564679453) * 0.4 * math.sqrt(2 / 20), rel=5e-3
    )  # t quantiles at df = 38
    assert math.isnan(detectable_difference(0.4, 1))


# ------------------------------------------------------------------------------ a planted registry

BASE = [0.900, 0.910, 0.890, 0.920, 0.900]
GAIN = [0.020, 0.025, 0.018, 0.022, 0.021]  # lambda = 2 over lambda = 0, per seed


def _plant(reg: Registry, values: dict[float, list[float]], seeds: range = range(5)) -> None:
    group = new_group(reg, "g", {}, {"loss.im_weight": list(values), "train.seed": list(seeds)}, ["test"])
    for weight, accs in values.items():
        for seed, acc in zip(seeds, accs):
            recipe = load_recipe(None, {"loss.im_weight": weight, "train.seed": seed})
            run_id = start_run(
                reg, name="digits", recipe=recipe.model_dump(mode="json"), config_hash=config_hash(recipe),
                fingerprint=run_fingerprint(recipe, seed, "v"), seed=seed, code_version="v", kind="ablate",
                group_id=group,
            )  # fmt: skip
            reg.log_epoch(run_id, 1, {"test_acc": acc, "mean_entropy": 0.5, "sops": 1e6 * (1 + weight),
                                      "macs": 1e6}, [], attempt=1)  # fmt: skip
            reg.finish_run(run_id, FINISHED, attempt=1)


@pytest.fixture
def planted(tmp_path: Path) -> str:
    db = str(tmp_path / "r.db")
    with Registry(db) as reg:
        _plant(reg, {0.0: BASE, 2.0: [b + g for b, g in zip(BASE, GAIN)]})
    return db


def test_a_known_difference_is_marked_in_every_format(planted: str) -> None:
    with Registry(planted) as reg:
        report = build_report(reg)
        texts = {fmt: render(report, fmt, reg) for fmt in ("markdown", "latex", "html", "csv", "json")}
    mean_gain, sd_gain = sum(GAIN) / 5, math.sqrt(sum((g - sum(GAIN) / 5) ** 2 for g in GAIN) / 4)
    half = T975[4] * sd_gain / math.sqrt(5)
    row = report.table.iloc[1]
    assert report.baseline is not None and report.baseline.label == "loss.im_weight=0.0"
    assert row["test_test_acc"] == "paired, n = 5" and bool(row["significant_test_acc"])
    assert row["delta_test_acc"] == pytest.approx(mean_gain)
    assert row["delta_test_acc_ci_low"] == pytest.approx(mean_gain - half)
    assert row["p_adj_test_acc"] == row["p_test_acc"]  # one comparison: Holm changes nothing
    delta_cell = f"+{mean_gain * 100:.2f} [+{(mean_gain - half) * 100:.2f}, +{(mean_gain + half) * 100:.2f}]"
    for fmt in ("markdown", "latex", "html"):
        assert delta_cell in texts[fmt] and "paired, n = 5" in texts[fmt], fmt
        assert "significant" in texts[fmt] and "not significant" not in texts[fmt].split("Tested:")[0], fmt
    markdown_row = next(line for line in texts["markdown"].splitlines() if line.startswith("| 2.0 |"))
    assert markdown_row.split(" | ")[6] == "significant"
    csv = pd.read_csv(io.StringIO(texts["csv"]))
    assert csv["significant_test_acc"].tolist() == [False, True]
    assert csv["delta_test_acc_pp"].iloc[1] == pytest.approx(mean_gain * 100)
    assert csv["test_acc_ci_low_pct"].iloc[0] == pytest.approx(100 * mean_interval(BASE).low)
    rows = json.loads(texts["json"])["rows"]
    assert rows[1]["significant_test_acc"] is True and rows[1]["p_adj_test_acc"] < 0.001
    assert rows[0]["seeds"] == [0, 1, 2, 3, 4] and rows[0]["test_acc_values_pct"] == pytest.approx(
        [b * 100 for b in BASE]
    )
    assert json.loads(texts["json"])["baseline"] == "loss.im_weight=0.0"


def test_nothing_significant_says_how_many_seeds_a_difference_would_need(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    noise = [0.010, -0.012, 0.008, -0.009, 0.002]
    with Registry(db) as reg:
        _plant(reg, {0.0: BASE, 1.0: [b + n for b, n in zip(BASE, noise)], 2.0: [b - n for b, n in zip(BASE, noise)]})
        report = build_report(reg)
    assert not report.table["significant_test_acc"].any()
    last = report.notes[-1]
    groups = [BASE, [b + n for b, n in zip(BASE, noise)], [b - n for b, n in zip(BASE, noise)]]
    mdd = detectable_difference(pooled_sd(groups), 5, alpha=0.05 / 2) * 100
    assert last.startswith("No difference in test_acc is significant. With n = 5 seeds a row")
    assert f"a difference needs about {mdd:.2f} pp" in last


def test_the_baseline_can_be_named_and_a_bad_one_is_a_report_error(planted: str) -> None:
    with Registry(planted) as reg:
        report = build_report(reg, baseline=["loss.im_weight=2"])
        assert report.baseline is not None and report.baseline.row == 1 and report.baseline.how == "given"
        assert report.table["delta_test_acc"].iloc[0] == pytest.approx(-sum(GAIN) / 5)
        with pytest.raises(ReportError, match=r"--baseline 'loss.im_weight=5': no configuration has it"):
            build_report(reg, baseline=["loss.im_weight=5"])
        with pytest.raises(ReportError, match=r"give FIELD=VALUE with one of the compared fields: loss\.im_weight"):
            build_report(reg, baseline=["lr=0.1"])
    result = CliRunner().invoke(app, ["report", "--baseline", "loss.im_weight=7", "--registry", planted])
    assert result.exit_code == 2 and "no configuration has it" in result.stderr


@pytest.mark.slow
def test_a_three_seed_digits_ablation_reports_intervals_and_paired_tests(tiny_recipe: Path, registry_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["ablate", str(tiny_recipe), "--im-weight", "0,2", "--seeds", "3",
                                 "--registry", registry_url])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", "--format", "json", "--registry", registry_url])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["n"] for r in rows] == [3, 3] and [r["seeds"] for r in rows] == [[0, 1, 2]] * 2
    for r in rows:
        assert r["test_acc_ci_low_pct"] < r["test_acc_mean_pct"] < r["test_acc_ci_high_pct"]
        assert len(r["test_acc_values_pct"]) == 3
    assert rows[0]["test_test_acc"] == "baseline" and rows[1]["test_test_acc"] == "paired, n = 3"
    assert 0 <= rows[1]["p_adj_test_acc"] <= 1
