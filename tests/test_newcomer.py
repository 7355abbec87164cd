"""What a newcomer meets following the README: each place where it and the program once disagreed,
pinned through the real CLI (exit code, output, registry state)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.data.loaders import loader_workers
from imloss_cli.recipe import config_hash, load_recipe
from imloss_cli.registry import Registry
from tests.planting import start_run

from .conftest import REPO
from .test_data import make_cifar10

runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one command."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# 1. --set without '=' ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["train"], ["validate"], ["ablate", "--im-weight", "0,1"]])
@pytest.mark.parametrize("bad", ["loss.im_weight", "=3"])
def test_a_set_without_key_and_value_is_one_line_and_exit_2(command: list[str], bad: str, workdir: Path) -> None:
    code, out, err = (
        cli(*command, "--set", bad, "--registry", str(workdir / "r.db"))
        if command[0] != "validate"
        else (cli(*command, "--set", bad))
    )
    assert code == 2
    assert one_line_error(err) == f"error: --set {bad!r}: expected KEY=VALUE, e.g. loss.im_weight=0"
    assert "Traceback" not in out + err and not (workdir / "r.db").exists()


# 2. SIGTERM to the process group while DataLoader workers run --------------------------------------


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_loader_workers_records_killed_with_exit_143(workdir: Path) -> None:
    make_cifar10(workdir / "cifar", n_train=40, n_test=10)
    recipe = workdir / "cifar.toml"
    recipe.write_text(
        f'[model]\ntimesteps = 1\n[data]\ndataset = "cifar10"\nroot = "{workdir / "cifar"}"\nbatch_size = 8\n'
        "num_workers = 2\n[train]\nepochs = 500\n"
    )
    for attempt in range(2):  # the race between the workers' and the parent's SIGTERM, twice
        db = workdir / f"r{attempt}.db"
        proc = subprocess.Popen(
            [sys.executable, "-m", "imloss_cli", "train", str(recipe), "--registry", str(db)],
            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if db.exists() and Registry(str(db), create=False, write=False).list_runs(status="RUNNING"):
                break
        time.sleep(1.0)  # into the epochs, workers running
        os.killpg(proc.pid, signal.SIGTERM)  # what timeout, scancel and a cluster's time limit send
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
        assert one_line_error(err) == "error: SIGTERM: the run is recorded as KILLED"
        assert "Traceback" not in out + err
        (run,) = Registry(str(db)).list_runs()
        assert (run.status, run.error_type) == ("KILLED", "KeyboardInterrupt")


# 3. evaluation: a cap a user can set, recorded, and progress ------------------------------------


@pytest.mark.slow
def test_max_eval_batches_caps_the_test_pass_and_is_recorded(tiny_recipe: Path, workdir: Path) -> None:
    from imloss_cli.train.loop import Trainer
    from imloss_cli.train.sink import Callbacks

    recipe = load_recipe(tiny_recipe, {"train.max_eval_batches": 2, "data.eval_batch_size": 50, "train.seed": 0})
    seen: list[tuple[int, int]] = []
    trainer = Trainer(recipe, 0, callbacks=Callbacks(on_eval_batch=lambda done, total: seen.append((done, total))))
    metrics, _ = trainer.evaluate()
    assert seen == [(1, 2), (2, 2)]  # 2 of the test set's 9 batches, with the progress to show
    subset = trainer.test_subset  # 100 images, 10 of each class, chosen from the seed (test_capped.py)
    assert subset is not None and len(subset) == 100 and metrics["test_images"] == 100
    x = torch.stack([trainer.data.test[int(i)][0] for i in subset])
    y = torch.tensor([int(trainer.data.test[int(i)][1]) for i in subset])
    with torch.no_grad():
        expected = (trainer.model(x).argmax(1) == y).double().mean().item()
    assert metrics["test_acc"] == pytest.approx(expected, abs=1e-12)  # those 100 images, no more
    code, _, err = cli("train", str(tiny_recipe), "--set", "train.max_eval_batches=2", "--set", "train.epochs=1",
                         "--registry", str(workdir / "r.db"))  # fmt: skip
    assert code == 0, err
    (run,) = Registry(str(workdir / "r.db")).list_runs()
    assert run.recipe["train"]["max_eval_batches"] == 2


# 8. report --paper: the row's label, and budget runs flagged ---------------------------------------


def _paper_run(registry: Registry, changes: dict[str, object], acc: float) -> None:
    recipe = load_recipe(REPO / "recipes" / "paper" / "cifar10-resnet19-t2.toml", changes)
    run_id = start_run(registry,
        name=recipe.name, recipe=recipe.model_dump(mode="json"), config_hash=config_hash(recipe),
        fingerprint=f"fp-{changes}", seed=0, code_version="v",
    )  # fmt: skip
    registry.log_epoch(run_id, 1, {"test_acc": acc}, [], attempt=1)
    registry.finish_run(run_id, "FINISHED", attempt=1)


def test_report_paper_names_the_row_and_flags_runs_that_are_not_the_papers_setting(workdir: Path) -> None:
    db = str(workdir / "r.db")
    with Registry(db) as registry:
        _paper_run(registry, {}, 0.9385)
        _paper_run(registry, {"train.epochs": 1}, 0.40)
    code, out, err = cli("report", "--paper", "--recipe", "paper-cifar10-resnet19-t2", "--registry", db)
    assert code == 0, err
    rows = [line for line in out.splitlines() if "CIFAR-10 ResNet-19 T=2" in line and line.startswith("|")]
    assert len(rows) == 2
    budget = next(r for r in rows if "40.00" in r)
    faithful = next(r for r in rows if "93.85 (n = 1: no interval) |" in r.split("CIFAR-10 ResNet-19 T=2")[0])
    assert "-53.85 (not the paper's setting)" in budget and "+0.00 |" in faithful
    assert "CIFAR-10 ResNet-19 T=2: not the paper's setting (train.epochs 1 (paper: 300))" in err
    code, out, _ = cli(
        "report", "--paper", "--format", "json", "--recipe", "paper-cifar10-resnet19-t2", "--registry", db
    )
    deviations = {r["train.epochs"]: r["paper_deviation"] for r in json.loads(out)["rows"]}
    assert deviations == {1: "train.epochs 1 (paper: 300)", 300: ""}


# 9. --nproc: data.batch_size is the global batch -----------------------------------------------------


def test_nproc_with_a_batch_that_does_not_divide_is_exit_2_before_anything(tiny_recipe: Path, workdir: Path) -> None:
    code, _, err = cli("train", str(tiny_recipe), "--nproc", "3", "--registry", str(workdir / "r.db"))
    assert code == 2
    assert one_line_error(err).startswith(
        "error: data.batch_size = 64 is the global batch and must divide among the 3 processes"
    )
    assert not (workdir / "r.db").exists() and not (workdir / "runs").exists()


@pytest.mark.slow
def test_nproc_2_trains_the_steps_of_one_process(tiny_recipe: Path, workdir: Path) -> None:
    one = subprocess.run(
        [sys.executable, "-m", "imloss_cli", "train", str(tiny_recipe), "--set", "train.epochs=1",
         "--registry", str(workdir / "one.db")],
        cwd=workdir, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    two = subprocess.run(
        [sys.executable, "-m", "imloss_cli", "train", str(tiny_recipe), "--set", "train.epochs=1", "--nproc", "2",
         "--registry", str(workdir / "two.db")],
        cwd=workdir, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == two.returncode == 0, two.stdout + two.stderr
    steps = [re.search(r"1 epochs x (\d+) steps", p.stdout).group(1) for p in (one, two)]  # type: ignore[union-attr]
    assert steps == ["22", "22"]  # 1347 digits images, a global batch of 64


# 10. the energy constants a report used are credited truly ------------------------------------------


def test_report_with_other_energy_constants_does_not_credit_horowitz(workdir: Path) -> None:
    db = str(workdir / "r.db")
    with Registry(db) as registry:
        run_id = start_run(registry, name="r", recipe={"name": "r"}, config_hash="c", fingerprint="f", seed=0,
                                     code_version="v")  # fmt: skip
        registry.log_epoch(run_id, 1, {"test_acc": 0.5, "sops": 2e6, "macs": 1e6, "mean_entropy": 0.5}, [], attempt=1)
        registry.finish_run(run_id, "FINISHED", attempt=1)
    _, default, _ = cli("report", "--registry", db)
    _, other, _ = cli("report", "--e-mac", "3.1", "--e-ac", "0.1", "--registry", db)
    assert "MACs × 4.6 pJ + SOPs × 0.9 pJ (45 nm figures: Horowitz 2014)" in default
    assert "MACs × 3.1 pJ + SOPs × 0.1 pJ (constants given with --e-mac/--e-ac, not the 45 nm figures" in other
    assert "(45 nm figures: Horowitz 2014)" not in other


# 11. commands that read or resume never create a registry ------------------------------------------


@pytest.mark.parametrize("command", [["resume", "abc"], ["ablate", "--group", "g1"], ["ablate", "--im-weight", "0,1"]])
def test_commands_that_read_or_resume_refuse_a_missing_registry(command: list[str], workdir: Path) -> None:
    missing = workdir / "typo.db"
    code, _, err = cli(*command, "--registry", str(missing))
    assert code == 2
    assert one_line_error(err) == f"error: no registry at {missing}"
    assert not missing.exists()


# 12. machine-readable stdout holds only the data ---------------------------------------------------


def test_report_json_with_plots_keeps_stdout_parseable_and_output_creates_its_folder(workdir: Path) -> None:
    db = str(workdir / "r.db")
    with Registry(db) as registry:
        for seed, acc in enumerate((0.5, 0.7)):
            run_id = start_run(registry, name="r", recipe={"name": "r"}, config_hash="c", fingerprint=f"f{seed}",
                                         seed=seed, code_version="v")  # fmt: skip
            registry.log_epoch(run_id, 1, {"test_acc": acc, "k": 1.0, "mean_entropy": 0.5},
                               [(0, "l", {"entropy": 0.5, "firing_rate": 0.2})], attempt=1)  # fmt: skip
            registry.finish_run(run_id, "FINISHED", attempt=1)
    code, out, err = cli("report", "--format", "json", "--plots", str(workdir / "figs"), "--registry", db)
    assert code == 0, err
    assert json.loads(out)["rows"][0]["test_acc_mean_pct"] == pytest.approx(60.0)  # stdout is the JSON alone
    assert "wrote " in err
    code, _, err = cli("report", "--output", str(workdir / "new" / "deep" / "t.md"), "--registry", db)
    assert code == 0, err
    assert (workdir / "new" / "deep" / "t.md").read_text().startswith("### ")


# 13. imloss paper without any row's data -------------------------------------------------------------


def test_paper_without_data_for_any_row_is_exit_2_and_creates_no_group(workdir: Path) -> None:
    db = workdir / "r.db"
    code, out, err = cli("paper", "cifar10-resnet19-t2", "--registry", str(db))
    assert code == 2
    assert "no data" in out and "cifar10-resnet19-t2" in out
    assert err.strip().startswith("error: no row has its data on this machine (cifar10-resnet19-t2)")
    assert not db.exists()
    code, out, _ = cli("paper", "--dry-run", "cifar10-resnet19-t2", "cifar10-resnet19-t4")
    assert code == 0
    assert "row=cifar10-resnet19-t2 seed=0  (no data here)" in out and "2 row(s) would be left out" in out


# 14, 15. help texts and hints --------------------------------------------------------------------


def test_ablate_help_says_what_an_omitted_recipe_means() -> None:
    code, out, _ = cli("ablate", "--help")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    assert "omitted: the recipe of the last `imloss train` run" in text
    assert "embedded digits default" not in text


def test_a_recipe_named_without_its_path_and_an_option_that_is_a_field_get_hints() -> None:
    os.chdir(REPO)
    code, _, err = cli("train", "digits")
    assert (
        code == 2 and one_line_error(err) == "error: recipe file not found: digits; did you mean recipes/digits.toml?"
    )
    code, _, err = cli("train", "--epochs", "2")
    assert code == 2 and "--set train.epochs=VALUE" in " ".join(err.replace("│", " ").split())


def test_usage_errors_are_not_called_invalid_recipes(tiny_recipe: Path, workdir: Path) -> None:
    code, _, err = cli(
        "ablate", str(tiny_recipe), "--im-weight", "0", "--seeds", "0", "--registry", str(workdir / "r.db")
    )
    assert code == 2
    assert one_line_error(err) == "error: --seeds: must be at least 1, got 0"


def test_loader_workers_are_capped_at_the_cores_available() -> None:
    cores = len(os.sched_getaffinity(0))
    assert loader_workers(128) == cores and loader_workers(0) == 0 and loader_workers(1) == 1


# 7. recipes/cifar10.toml is the paper's setting -----------------------------------------------------


def test_the_cifar10_recipe_is_the_papers_t2_row() -> None:
    ours = load_recipe(REPO / "recipes" / "cifar10.toml")
    row = load_recipe(REPO / "recipes" / "paper" / "cifar10-resnet19-t2.toml")
    assert config_hash(ours) == config_hash(row)  # the same run; only names, placement and the figure differ


# 5, 6. make demo installs the package alone and says how to reach `imloss` ---------------------------


def test_make_demo_installs_only_the_package_and_prints_how_to_use_imloss() -> None:
    plan = subprocess.run(["make", "-n", "-B", "demo"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "pip install -q -e ." in plan and "[test]" not in plan
    assert "source .venv/bin/activate" in plan
