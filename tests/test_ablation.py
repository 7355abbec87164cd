"""Ablations and reports through the CLI, and runs that several processes write at once."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.registry import Registry
from imloss_cli.snn.stats import STAT_NAMES

pytestmark = pytest.mark.slow  # every test here trains

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    """Exit code and stdout (warnings go to stderr, so machine formats parse as they are)."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """lambda 0, 1, 2 x 2 seeds on digits, 2 epochs each: a real 6-run group, trained once per module."""
    home = tmp_path_factory.mktemp("ablation")
    recipe = home / "tiny.toml"
    recipe.write_text(f'name = "tiny"\n[model]\ntimesteps = 2\n[train]\nepochs = 2\noutput_dir = "{home / "runs"}"\n')
    url = f"sqlite:///{home / 'reg.db'}"
    code, out = invoke("ablate", str(recipe), "--im-weight", "0,1,2", "--seeds", "2", "--registry", url)
    assert code == 0, out
    return recipe, url


def test_ablation_gives_six_runs_and_a_three_row_report_of_their_means(ablation: tuple[Path, str]) -> None:
    _, registry_url = ablation
    reg = Registry(registry_url)
    group = reg.latest_group()
    runs = reg.list_runs(group_id=group.id)
    assert len(runs) == 6 and {r.status for r in runs} == {"FINISHED"}
    assert sorted((r.recipe["loss"]["im_weight"], r.seed) for r in runs) == [
        (w, s) for w in (0.0, 1.0, 2.0) for s in (0, 1)
    ]

    code, out = invoke("report", "--format", "csv", "--registry", registry_url)
    assert code == 0, out
    table = pd.read_csv(io.StringIO(out))
    assert list(table["loss.im_weight"]) == [0.0, 1.0, 2.0]
    assert list(table["n"]) == [2, 2, 2]
    metrics = reg.epoch_metrics([r.id for r in runs])
    best = metrics[metrics.name == "test_acc"].groupby("run_id").value.max()
    for weight, mean in zip(table["loss.im_weight"], table["test_acc_mean_pct"]):
        ids = [r.id for r in runs if r.recipe["loss"]["im_weight"] == weight]
        assert mean == pytest.approx(best[ids].mean() * 100, abs=1e-10)

    code, markdown = invoke("report", "--registry", registry_url)
    assert code == 0
    rows = [line for line in markdown.splitlines() if re.match(r"\| [0-9.]+ \| [0-9.]+ \[[0-9.]+, [0-9.]+\] \|", line)]
    assert len(rows) == 3 and all("| 2 |" in row for row in rows)  # mean [95% interval], n = 2 seeds


def test_rerunning_the_same_ablation_trains_nothing(ablation: tuple[Path, str]) -> None:
    tiny_recipe, registry_url = ablation
    before = {r.id: r.ended_at for r in Registry(registry_url).list_runs()}
    code, out = invoke("ablate", str(tiny_recipe), "--im-weight", "0,1,2", "--seeds", "2", "--registry", registry_url)
    assert code == 0, out
    assert out.count("skipped (finished before)") == 6
    assert "epoch" not in out.split("group")[0]
    after = {r.id: r.ended_at for r in Registry(registry_url).list_runs()}
    assert after == before
    assert len({r.group_id for r in Registry(registry_url).list_runs()}) == 1


def test_report_formats_parse_and_plots_are_written(ablation: tuple[Path, str], workdir: Path) -> None:
    _, registry_url = ablation
    code, out = invoke("report", "--format", "json", "--registry", registry_url)
    assert code == 0 and len(json.loads(out)["rows"]) == 3
    code, out = invoke("report", "--format", "latex", "--registry", registry_url)
    assert code == 0 and "\\begin{tabular}" in out
    code, out = invoke(
        "report", "--format", "html", "--output", "r.html", "--plots", "figs", "--registry", registry_url
    )
    assert code == 0, out
    page = (workdir / "r.html").read_text()
    # comparison, layer entropy, firing rate and SOPs (the trained runs counted them), runs
    assert page.startswith("<!DOCTYPE html>") and page.count("<table") == 6 and page.count("<img") == 6
    pngs = sorted((workdir / "figs").glob("*.png"))
    assert [p.name for p in pngs] == [
        "accuracy.png",
        "entropy_over_epochs.png",
        "firing_rates.png",
        "k_schedule.png",
        "layer_entropy.png",
        "layer_sops.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000 for p in pngs)


def test_ablate_without_recipe_uses_the_latest_train_run(tiny_recipe: Path, registry_url: str) -> None:
    code, out = invoke("train", str(tiny_recipe), "--seed", "5", "--set", "train.epochs=1", "--registry", registry_url)
    assert code == 0, out
    code, out = invoke("ablate", "--im-weight", "0,2", "--registry", registry_url, "--dry-run")
    assert code == 0, out
    assert "ablating the recipe of run" in out
    assert "2 trials" in out
    assert len(Registry(registry_url).list_runs()) == 1  # a dry run records nothing


def test_a_failing_trial_is_reported_and_the_group_goes_on(tiny_recipe: Path, registry_url: str, workdir: Path) -> None:
    code, out = invoke(
        "ablate", str(tiny_recipe), "--grid", "data.dataset=cifar10,digits", "--set", f"data.root={workdir / 'none'}",
        "--set", "train.epochs=1", "--registry", registry_url,
    )  # fmt: skip
    assert code == 1, out
    assert "FAILED" in out and "CIFAR-10 not found" in out
    statuses = sorted(r.status for r in Registry(registry_url).list_runs())
    assert statuses == ["FAILED", "FINISHED"]


def _sigint_as_in_a_terminal() -> None:
    # A shell that runs pytest in the background (nohup, `&` in a script) starts it with SIGINT
    # ignored, which children inherit and Python then keeps: give the child Ctrl-C's default back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train_process(recipe: Path, registry: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "imloss_cli", "train", str(recipe), "--registry", registry, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_sigint_as_in_a_terminal,
    )


def test_two_processes_training_into_one_sqlite_file_both_land_every_row(tiny_recipe: Path, registry_url: str) -> None:
    procs = [train_process(tiny_recipe, registry_url, "--seed", str(s), "--set", "train.epochs=3") for s in (0, 1)]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reg = Registry(registry_url)
    runs = reg.list_runs()
    assert sorted(r.seed for r in runs) == [0, 1] and {r.status for r in runs} == {"FINISHED"}
    metrics = reg.epoch_metrics([r.id for r in runs])
    assert sorted(metrics.groupby("run_id").epoch.nunique().tolist()) == [3, 3]
    assert len(reg.layer_stats([r.id for r in runs])) == 2 * 3 * 3 * len(STAT_NAMES)  # runs x epochs x layers x stats


def wait_for_epochs(registry_url: str, count: int, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = Registry(registry_url).list_runs() if Path(registry_url.removeprefix("sqlite:///")).exists() else []
        if runs:
            m = Registry(registry_url).epoch_metrics([runs[0].id])
            if len(m) and m.epoch.max() >= count:
                return runs[0].id
        time.sleep(0.05)
    raise TimeoutError(f"no run reached epoch {count}")


def test_sigint_marks_the_run_killed_and_keeps_its_epochs(tiny_recipe: Path, registry_url: str) -> None:
    proc = train_process(tiny_recipe, registry_url, "--seed", "0", "--set", "train.epochs=50")
    run_id = wait_for_epochs(registry_url, 2)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, out
    assert "KILLED" in out
    run = Registry(registry_url).get_run(run_id)
    assert run.status == "KILLED" and run.ended_at is not None
    assert Registry(registry_url).epoch_metrics([run_id]).epoch.max() >= 2


def test_sigterm_also_marks_the_run_killed(tiny_recipe: Path, registry_url: str) -> None:
    proc = train_process(tiny_recipe, registry_url, "--seed", "0", "--set", "train.epochs=50")
    run_id = wait_for_epochs(registry_url, 1)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    assert Registry(registry_url).get_run(run_id).status == "KILLED"


def test_ablating_the_neuron_gives_the_snn_and_ann_rows_with_their_energy(tiny_recipe: Path, registry_url: str) -> None:
    code, out = invoke(
        "ablate", str(tiny_recipe), "--grid", "model.neuron=lif,relu", "--im-weight", "0,2",
        "--set", "train.epochs=1", "--registry", registry_url,
    )  # fmt: skip
    assert code == 0, out
    reg = Registry(registry_url)
    runs = reg.list_runs()
    assert len(runs) == 3 and {r.status for r in runs} == {"FINISHED"}  # the twin once: it sets lambda = 0
    code, out = invoke("report", "--format", "csv", "--e-mac", "3.1", "--e-ac", "0.1", "--registry", registry_url)
    assert code == 0, out
    table = pd.read_csv(io.StringIO(out))
    assert table[["loss.im_weight", "model.neuron", "model.timesteps"]].values.tolist() == [
        [0.0, "lif", 2],
        [0.0, "relu", 1],
        [2.0, "lif", 2],
    ]
    twin = next(r.id for r in runs if r.recipe["model"]["neuron"] == "relu")
    macs = reg.epoch_metrics([twin], names=["macs"]).value.item()
    assert table["sops_mean"].tolist()[1] == 0.0 and min(table["sops_mean"][[0, 2]]) > 0
    assert table["energy_uj_mean"].tolist()[1] == pytest.approx(macs * 3.1e-6)
    code, out = invoke("report", "--e-mac", "3.1", "--e-ac", "0.1", "--registry", registry_url)
    assert code == 0 and "E = MACs × 3.1 pJ + SOPs × 0.1 pJ" in out
