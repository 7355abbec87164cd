"""The paper's rows: every recipe under recipes/paper/ validates and carries its figure; `imloss paper` runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.paper import paper_rows
from imloss_cli.recipe import config_hash
from imloss_cli.registry import Registry

from .test_data import make_cifar10

# (table, label, top-1 %) of every row, as Guo et al. print them
PAPER = {
    "cifar10-resnet19-t2": ("main", 93.85),
    "cifar10-resnet19-t4": ("main", 95.40),
    "cifar10-resnet19-t6": ("main", 95.49),
    "cifar100-vgg16-t5": ("main", 70.18),
    "imagenet-resnet34-t6": ("main", 67.43),
    "cifar10dvs-resnet19-t10": ("main", 72.60),
    "ablation-baseline": ("ablation", 91.23),
    "ablation-im": ("ablation", 94.29),
    "ablation-esg": ("ablation", 94.44),
    "ablation-im-esg": ("ablation", 94.64),
    "ablation-im-esg-tdbn": ("ablation", 95.40),
    # the methods the main table compares with, as it prints them
    "comparison-tdbn-resnet19-t2": ("comparison", 92.34),
    "comparison-tdbn-resnet19-t4": ("comparison", 92.92),
    "comparison-tdbn-resnet19-t6": ("comparison", 93.16),
    "comparison-tet-resnet19-t2": ("comparison", 94.16),
    "comparison-tet-resnet19-t4": ("comparison", 94.44),
    "comparison-tet-resnet19-t6": ("comparison", 94.50),
    "comparison-tdbn-cifar10dvs-resnet19-t10": ("comparison", 67.80),
}
CIFAR10_ROWS = [n for n in PAPER if n.startswith(("cifar10-", "ablation-"))]


def test_every_paper_recipe_validates_and_carries_its_figure() -> None:
    rows = paper_rows()
    assert {n: (r.recipe.paper.table, r.recipe.paper.top1) for n, r in rows.items()} == PAPER
    t4 = rows["cifar10-resnet19-t4"].recipe
    assert (t4.model.arch, t4.model.timesteps, t4.loss.im_weight, t4.surrogate.schedule) == ("resnet19", 4, 2.0, "esg")
    baseline = rows["ablation-baseline"].recipe
    assert (baseline.loss.im_weight, baseline.surrogate.schedule, baseline.model.norm) == (0.0, "fixed", "bn")
    tet = rows["comparison-tet-resnet19-t4"].recipe
    # a controlled comparison: the IM-Loss row's settings but for the method's own fields
    assert (tet.loss.objective, tet.loss.im_weight, tet.model.norm) == ("tet", 0.0, "bn")
    differs = {k for k, v in tet.model_dump().items() if v != t4.model_dump()[k]}
    assert differs == {"name", "model", "surrogate", "loss", "paper"}
    assert (tet.data, tet.optim, tet.train) == (t4.data, t4.optim, t4.train)
    # the figure is outside the config hash: the same row with another figure pools with it
    assert config_hash(t4) == config_hash(t4.with_overrides({"paper.top1": 50.0, "paper.row": "x"}))


def test_an_unknown_row_exits_2_and_lists_the_known_ones(workdir: Path) -> None:
    result = CliRunner().invoke(app, ["paper", "cifar10-resnet19-t3", "--registry", str(workdir / "r.db")])
    assert result.exit_code == 2
    assert (
        "unknown paper row 'cifar10-resnet19-t3'; known rows: cifar10-resnet19-t2, cifar10-resnet19-t4" in result.output
    )
    assert not (workdir / "r.db").exists()


@pytest.mark.slow
def test_paper_runs_the_cifar10_rows_and_the_report_prints_each_rows_figure(workdir: Path) -> None:
    make_cifar10(workdir / "gen", n_train=4, n_test=4)  # 20 training and 4 test images
    registry = str(workdir / "paper.db")
    args = ["paper", *CIFAR10_ROWS, "cifar100-vgg16-t5", "--epochs", "1", "--registry", registry]
    quick = ["train.max_steps_per_epoch=1", "data.batch_size=2", "data.eval_batch_size=4", "data.num_workers=0"]
    args += [a for q in [*quick, f"data.root={workdir / 'gen'}"] for a in ("--set", q)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "no data  cifar100-vgg16-t5: CIFAR-100" in result.output  # listed with how to get it; the rest went on
    reg = Registry(registry)
    runs = reg.list_runs()
    assert len(runs) == len(CIFAR10_ROWS) and {r.status for r in runs} == {"FINISHED"}
    assert all(r.recipe["train"]["epochs"] == 1 for r in runs)  # --epochs is recorded
    groups = {reg.get_group(r.group_id).name: r.group_id for r in reg.list_runs() if r.group_id}
    assert set(groups) == {"paper: main table", "paper: ablation table"}
    for name, rows in (("main", CIFAR10_ROWS[:3]), ("ablation", CIFAR10_ROWS[3:])):
        out = CliRunner().invoke(app, ["report", "--paper", "--group", groups[f"paper: {name} table"],
                                       "--format", "json", "--registry", registry])  # fmt: skip
        assert out.exit_code == 0, out.output
        table = json.loads(out.stdout)["rows"]
        assert sorted(r["paper_top1"] for r in table) == sorted(PAPER[n][1] for n in rows)
        for r in table:
            assert r["delta_pp"] == pytest.approx(r["test_acc_mean_pct"] - r["paper_top1"])
    text = CliRunner().invoke(app, ["report", "--group", groups["paper: main table"], "--registry", registry]).output
    assert re.search(r"\| paper \| delta \(pp\) \|", text) and "| 95.49 |" in text
    again = CliRunner().invoke(app, args)  # a rerun resumes the groups: nothing trains twice
    assert again.exit_code == 0 and again.output.count("skipped (finished before)") == len(CIFAR10_ROWS)
