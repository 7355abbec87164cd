"""imloss tune: a space checked before anything runs, the Pareto front, and studies that real workers share.

The slow tests train real studies on the digits set (a few steps an epoch): two ``--jobs`` worker
processes on one study, a worker SIGKILLed in the middle of a trial, a median pruner, and two
one-worker studies from one seed.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.recipe import RecipeError, load_recipe
from imloss_cli.registry import FINISHED, LOST, PRUNED, RUNNING, Registry
from imloss_cli.tune.front import pareto_mask, selected_epochs
from imloss_cli.tune.space import StudySpec, check_study, parse_constraint, parse_objective, parse_param, trial_number

from .test_registry import postgres_admin, postgres_url  # noqa: F401  (fixtures)

runner = CliRunner()
TWO_OBJECTIVES = ["--objective", "val_acc:max", "--objective", "energy_uj:min"]
SPACE = ["--space", "loss.im_weight=float(0,4)", "--space", "optim.lr=log(0.01,0.3)"]


@pytest.fixture
def study_recipe(workdir: Path) -> Path:
    """Digits with a validation split, 1 epoch of 4 steps, test and validation scored on 2 batches."""
    path = workdir / "tiny.toml"
    path.write_text(
        'name = "tiny"\n[model]\ntimesteps = 2\n[data]\nval_fraction = 0.2\n'
        "[train]\nepochs = 1\nmax_steps_per_epoch = 4\nmax_eval_batches = 2\n"
    )
    return path


def tune(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["tune", *args])
    return result.exit_code, result.output


def spec(*space: str, objectives: tuple[str, ...] = ("val_acc:max",), pruner: str = "none", **kw: Any) -> StudySpec:
    return StudySpec.from_options(
        list(space), list(objectives), kw.get("constraints", []), pruner, kw.get("baseline", False)
    )


def registry_numbers(reg: Registry, run_ids: list[str], names: list[str]) -> dict[str, dict[str, float]]:
    """Per run, ``names`` at its best-validation epoch, straight from the registry."""
    metrics = reg.epoch_metrics(run_ids)
    out = {}
    for run_id in run_ids:
        own = metrics[metrics.run_id == run_id]
        val = own[own.name == "val_acc"].sort_values(["value", "epoch"], ascending=[False, True])
        epoch = int(val.epoch.iloc[0])
        at = own[own.epoch == epoch].set_index("name").value
        out[run_id] = {n: float(at[n]) for n in names} | {"epoch": epoch}
    return out


def brute_force_front(points: list[tuple[float, ...]], maximize: list[bool]) -> set[int]:
    """Indices that no other point dominates, by the definition, one pair at a time."""

    def at_least_as_good(a: float, b: float, up: bool) -> bool:
        return a >= b if up else a <= b

    front = set()
    for i, p in enumerate(points):
        dominated = any(
            all(at_least_as_good(q[k], p[k], maximize[k]) for k in range(len(p))) and q != p
            for j, q in enumerate(points)
            if j != i
        )
        if not dominated:
            front.add(i)
    return front


def optuna_study(registry: str, group_id: str) -> Any:
    from imloss_cli.tune.storage import load_study

    with Registry(registry, create=False, write=False) as reg:
        study = load_study(reg, group_id)
    assert study is not None
    return study


def assert_optuna_and_registry_agree(registry: str, group_id: str, trials: int) -> None:
    """Every trial finished once, told the registry's numbers, pointing at its run and back."""
    study = optuna_study(registry, group_id)
    reg = Registry(registry, create=False, write=False)
    runs = {trial_number(r.fingerprint): r for r in reg.list_runs(group_id=group_id)}
    assert sorted(runs) == list(range(trials)) and len(study.trials) == trials
    numbers = registry_numbers(reg, [r.id for r in runs.values()], ["val_acc", "energy_uj"])
    for t in study.trials:
        run = runs[t.number]
        assert (t.state.name, run.status, run.kind, run.name) == (
            "COMPLETE",
            FINISHED,
            "tune",
            f"tiny trial {t.number}",
        )
        assert t.user_attrs["imloss_run_id"] == run.id
        assert t.values == [numbers[run.id]["val_acc"], numbers[run.id]["energy_uj"]]
        assert t.user_attrs["imloss_epoch"] == numbers[run.id]["epoch"]
        assert {k: run.recipe[k.split(".")[0]][k.split(".")[1]] for k in t.params} == t.params
    reg.close()


def journal_finishes(journal: Path) -> dict[int, int]:
    """How often each trial was finished in Optuna's journal (a state change to anything but RUNNING)."""
    from optuna.storages.journal._storage import JournalOperation
    from optuna.trial import TrialState

    counts: dict[int, int] = {}
    for line in journal.read_text().splitlines():
        op = json.loads(line)
        if op["op_code"] == JournalOperation.SET_TRIAL_STATE_VALUES and op["state"] != TrialState.RUNNING:
            counts[op["trial_id"]] = counts.get(op["trial_id"], 0) + 1
    return counts


# ------------------------------------------------------------------------------ the space


def test_space_items_read_as_their_distributions_and_back() -> None:
    cases = {
        "loss.im_weight=float(0,4)": ("float", 0, 4, ()),
        "optim.lr=log(1e-3, 0.1)": ("log", 0.001, 0.1, ()),
        "model.timesteps=int(1,8)": ("int", 1, 8, ()),
        "surrogate.schedule=choice(esg,fixed,guo)": ("choice", None, None, ("esg", "fixed", "guo")),
        "neuron.detach_reset=choice(true,false)": ("choice", None, None, (True, False)),
    }
    for item, (dist, low, high, choices) in cases.items():
        p = parse_param(item)
        assert (p.dist, p.low, p.high, p.choices) == (dist, low, high, choices)
        assert parse_param(f"{p.field}={p.text}") == p
    assert parse_objective("energy_uj:min").maximize is False
    c = parse_constraint("energy_uj <= 0.2")
    assert (c.metric, c.op, c.bound, c.violation(0.25), c.violation(0.1)) == (
        "energy_uj",
        "<=",
        0.2,
        0.25 - 0.2,
        0.1 - 0.2,
    )
    assert parse_constraint("val_acc>=0.9").violation(0.95) == pytest.approx(-0.05)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--space", "optim.lr=uniform(0,1)"], "unknown distribution 'uniform'"),
        (["--space", "optim.lr=float(0.5,0.1)"], "low 0.5 must be below high 0.1"),
        (["--space", "optim.lr=log(0,0.1)"], "log needs bounds above 0"),
        (["--space", "model.timesteps=int(1,2.5)"], "int bounds are integers"),
        (["--space", "surrogate.schedule=choice(esg)"], "choice needs two or more values"),
        (["--space", "optim.lr"], "expected KEY=DIST"),
        (["--objective", "val_acc:up"], "expected METRIC:max or METRIC:min"),
        (["--objective", "test_acc:max"], "test_acc is measured on the test set"),
        (["--objective", "val_ac:max"], "unknown metric 'val_ac' (did you mean 'val_acc'?)"),
        (["--constraint", "energy_uj<0.2"], "expected METRIC<=X or METRIC>=X"),
        (["--pruner", "medain"], "--pruner 'medain': use one of none, median, hyperband (did you mean 'median'?)"),
    ],
)
def test_malformed_options_are_refused_with_the_reason(option: list[str], message: str) -> None:
    args = {
        "--space": ["optim.lr=log(0.01,0.3)"],
        "--objective": ["val_acc:max"],
        "--constraint": [],
        "--pruner": "none",
    }
    key = option[0]
    args[key] = option[1] if key == "--pruner" else [option[1]]
    with pytest.raises(RecipeError) as e:
        StudySpec.from_options(args["--space"], args["--objective"], args["--constraint"], args["--pruner"], False)
    assert message in str(e.value)


def test_the_space_is_checked_against_the_recipe_model() -> None:
    base = load_recipe(None, {"data.val_fraction": 0.2})
    check_study(
        base, spec("loss.im_weight=float(0,4)", "model.timesteps=int(1,8)", "surrogate.schedule=choice(esg,fixed)")
    )
    problems = {
        "loss.im_wieght=float(0,4)": "loss.im_wieght: unknown key; did you mean 'im_weight'?",
        "model.timesteps=float(1,8)": "model.timesteps: Input should be a valid integer",  # an int field draws ints
        "surrogate.schedule=choice(esg,magic)": "surrogate.schedule: 'magic' is not one of",
        "optim.lr=log(0.01,500)": "optim.lr: Input should be less than or equal to 100",
    }
    for item, message in problems.items():
        with pytest.raises(RecipeError) as e:
            check_study(base, spec(item))
        assert message in str(e.value) and f"--space {item.split('=')[0]}=" in str(e.value)
    with pytest.raises(RecipeError, match=r"data\.val_fraction is 0: a study selects trials on a validation split"):
        check_study(load_recipe(None), spec("loss.im_weight=float(0,4)"))
    with pytest.raises(RecipeError, match=r"--baseline: the recipe's optim.lr = 0.1 is outside log\(0.001,0.01\)"):
        check_study(base, spec("optim.lr=log(0.001,0.01)", baseline=True))
    with pytest.raises(RecipeError, match="Optuna prunes single-objective studies only"):
        spec("optim.lr=log(0.001,0.01)", objectives=("val_acc:max", "energy_uj:min"), pruner="median")


@pytest.mark.parametrize(
    "space, message",
    [
        ("loss.im_wieght=float(0,4)", "did you mean 'im_weight'?"),
        ("optim.lr=float(0.3,0.01)", "low 0.3 must be below high 0.01"),
        ("optim.lr=log(-1,0.1)", "log needs bounds above 0"),
        ("model.timesteps=choice(2,four)", "model.timesteps: Input should be a valid integer"),
    ],
    ids=["unknown-field", "low-above-high", "log-of-negative", "choice-the-type-refuses"],
)
def test_a_bad_space_exits_2_and_writes_nothing(study_recipe: Path, workdir: Path, space: str, message: str) -> None:
    code, out = tune(str(study_recipe), "--space", space, *TWO_OBJECTIVES, "--trials", "3", "--registry", "reg.db")
    assert code == 2 and message in out, out
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.toml"]  # no registry, no journal, no runs/


def test_a_multi_objective_study_with_a_pruner_and_a_recipe_without_validation_exit_2(
    study_recipe: Path, workdir: Path
) -> None:
    code, out = tune(str(study_recipe), *SPACE, *TWO_OBJECTIVES, "--pruner", "median", "--trials", "3")
    assert code == 2 and "Optuna prunes single-objective studies only" in out
    code, out = tune(str(study_recipe), *SPACE, *TWO_OBJECTIVES, "--set", "data.val_fraction=0", "--trials", "3")
    assert code == 2 and "data.val_fraction is 0" in out
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.toml"]


# ------------------------------------------------------------------------------ the front


def test_the_pareto_mask_equals_a_brute_force_filter() -> None:
    rng = np.random.default_rng(0)
    for n, k in itertools.product((1, 2, 7, 40), (1, 2, 3)):
        points = rng.integers(0, 5, size=(n, k)).astype(float)  # small integers: many ties and equal points
        maximize = list(rng.integers(0, 2, size=k).astype(bool))
        mask = pareto_mask(points, maximize)
        assert set(np.flatnonzero(mask)) == brute_force_front([tuple(p) for p in points], maximize)
    points = np.array([[0.9, 0.3], [0.8, 0.1], [0.95, 0.5], [np.nan, 0.0]])
    # The best and cheapest point is infeasible: never on the front, and it dominates nothing.
    assert pareto_mask(points, [True, False], eligible=np.array([True, False, True, True])).tolist() == [
        True, False, True, False,
    ]  # fmt: skip


def test_a_trials_numbers_are_read_at_its_best_validation_epoch() -> None:
    import pandas as pd

    rows = [(1, "val_acc", 0.5), (1, "energy_uj", 3.0), (2, "val_acc", 0.7), (2, "energy_uj", 2.0),
            (3, "val_acc", 0.7), (3, "energy_uj", 1.0)]  # fmt: skip
    metrics = pd.DataFrame([("r", e, n, v) for e, n, v in rows], columns=["run_id", "epoch", "name", "value"])
    chosen = selected_epochs(metrics, ["val_acc", "energy_uj"])
    assert chosen.to_dict("records") == [
        {"run_id": "r", "epoch": 2, "val_acc": 0.7, "energy_uj": 2.0}
    ]  # ties: earliest


# ------------------------------------------------------------------------------ studies (slow: they train)


@pytest.mark.slow
def test_a_six_trial_two_objective_study_with_two_jobs_trains_each_trial_once_and_reports_its_front(
    study_recipe: Path, workdir: Path
) -> None:
    url = str(workdir / "reg.db")
    code, out = tune(str(study_recipe), *SPACE, *TWO_OBJECTIVES, "--trials", "6", "--jobs", "2", "--registry", url)
    assert code == 0, out
    reg = Registry(url)
    (group,) = {r.group_id for r in reg.list_runs()}
    runs = reg.list_runs(group_id=group)
    assert len(runs) == 6 and {(r.status, r.attempt, r.kind) for r in runs} == {(FINISHED, 1, "tune")}
    assert sorted(trial_number(r.fingerprint) for r in runs) == list(range(6))
    assert os.getpid() not in {r.pid for r in runs}  # the two --jobs processes trained them all
    assert all(url not in " ".join(r.argv) for r in runs)  # the registry reached them by environment
    assert_optuna_and_registry_agree(url, group, 6)

    result = runner.invoke(app, ["report", "--group", group, "--format", "json", "--registry", url])
    assert result.exit_code == 0, result.output
    study = json.loads(result.stdout)["study"]
    numbers = registry_numbers(reg, [r.id for r in runs], ["val_acc", "energy_uj"])
    ids = sorted(numbers)
    expected = brute_force_front([(numbers[i]["val_acc"], numbers[i]["energy_uj"]) for i in ids], [True, False])
    front = {row["run_id"] for row in study["front"]}
    assert front and front == {ids[i] for i in expected}
    assert {t.number for t in optuna_study(url, group).best_trials} == {row["trial"] for row in study["front"]}
    assert not any("differs from Optuna's best_trials" in w for w in json.loads(result.stdout)["warnings"])
    assert [row["val_acc_pct"] for row in study["trials"]] == [
        pytest.approx(numbers[row["run_id"]]["val_acc"] * 100) for row in study["trials"]
    ]

    page = runner.invoke(app, ["report", "--group", group, "--format", "html", "--registry", url])
    assert page.exit_code == 0 and '<figure id="pareto_front">' in page.stdout and "<h2>Study</h2>" in page.stdout
    assert all(run_id in page.stdout for run_id in front)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_it_to_another_which_resumes_it_and_tells_optuna_once(
    study_recipe: Path, workdir: Path
) -> None:
    url = str(workdir / "reg.db")
    longer = ["--set", "train.epochs=3", "--set", "train.max_steps_per_epoch=25", "--heartbeat", "0.5"]
    command = [sys.executable, "-m", "imloss_cli", "tune", str(study_recipe), *SPACE, *TWO_OBJECTIVES, "--trials", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", IMLOSS_REGISTRY=url)
    first = subprocess.Popen(
        [*command, *longer], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline, victim = time.monotonic() + 240, None
    while victim is None and time.monotonic() < deadline:  # a trial that has stored an epoch, mid-run
        if (workdir / "reg.db").exists():
            with Registry(url, create=False, write=False) as reg:
                held = [r for r in reg.list_runs(status=RUNNING) if reg.epoch_attempts(r.id)]
                victim = held[0].id if held else None
        time.sleep(0.1)
    assert victim is not None, first.communicate(timeout=60)[0]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    with Registry(url, create=False, write=False) as reg:
        assert reg.get_run(victim).display_status == LOST
        group = reg.get_run(victim).group_id
    assert (
        optuna_study(url, group).trials[trial_number(Registry(url).get_run(victim).fingerprint)].state.name == "RUNNING"
    )

    second = subprocess.run([*command, *longer], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    reg = Registry(url)
    killed = reg.get_run(victim)
    assert (killed.status, killed.attempt) == (FINISHED, 2)
    assert killed.attempts[1]["how"].startswith("resumed from ") and killed.attempts[1]["how"].endswith("last.pt")
    written = reg.epoch_attempts(victim)
    assert sorted(written) == [1, 2, 3] and written[1] == 1  # each epoch stored once, the first by the killed worker
    assert list(written.values()) == sorted(written.values()) and set(written.values()) <= {1, 2}
    assert {r.attempt for r in reg.list_runs(group_id=group) if r.id != victim} == {1}
    assert_optuna_and_registry_agree(url, group, 3)
    assert sorted(journal_finishes(workdir / "reg.db.optuna.journal").values()) == [1, 1, 1]  # told once each


@pytest.mark.slow
def test_a_single_objective_study_with_the_median_pruner_prunes_a_run_keeping_its_epochs(
    study_recipe: Path, workdir: Path
) -> None:
    url = str(workdir / "reg.db")
    epochs = ["--set", "train.epochs=3", "--set", "train.max_steps_per_epoch=6"]
    code, out = tune(str(study_recipe), "--space", "optim.lr=log(0.0001,0.3)", "--objective", "val_acc:max",
                     "--pruner", "median", "--trials", "9", *epochs, "--registry", url)  # fmt: skip
    assert code == 0, out
    reg = Registry(url)
    runs = reg.list_runs()
    pruned = [r for r in runs if r.status == PRUNED]
    assert len(runs) == 9 and pruned, [(r.status, r.recipe["optim"]["lr"]) for r in runs]
    assert {r.status for r in runs} <= {FINISHED, PRUNED}
    for run in pruned:
        kept = sorted(reg.epoch_attempts(run.id))
        assert kept == list(range(1, len(kept) + 1)) and 1 <= len(kept) < 3
        assert run.error_message.startswith(f"pruned after epoch {len(kept)} by the median pruner (val_acc ")
        assert run.error_type == "RunPruned" and run.traceback is None
    states = {t.user_attrs["imloss_run_id"]: t.state.name for t in optuna_study(url, runs[0].group_id).trials}
    assert states == {r.id: "PRUNED" if r.status == PRUNED else "COMPLETE" for r in runs}
    assert "pruned" in out and f"{len(pruned)} pruned" in out


@pytest.mark.slow
def test_one_worker_repeats_a_study_from_its_seed_also_when_continued_by_a_rerun(
    study_recipe: Path, workdir: Path
) -> None:
    quick = ["--set", "train.max_steps_per_epoch=2", "--set", "train.max_eval_batches=1"]

    def params(registry: str, *runs: tuple[str, ...]) -> list[dict[str, Any]]:
        for extra in runs:
            code, out = tune(str(study_recipe), *SPACE, *TWO_OBJECTIVES, *quick, *extra, "--registry", registry)
            assert code == 0, out
        reg = Registry(registry)
        (group,) = {r.group_id for r in reg.list_runs()}
        return [t.params for t in optuna_study(registry, group).trials]

    at_once = params("a.db", ("--trials", "3", "--seed", "7"))
    continued = params("b.db", ("--trials", "2", "--seed", "7"), ("--trials", "3", "--seed", "7"))
    other_seed = params("c.db", ("--trials", "3", "--seed", "8"))
    assert len(at_once) == 3 and at_once == continued
    assert other_seed != at_once
    runs = Registry("b.db").list_runs()
    assert len(runs) == 3 and {(r.status, r.attempt) for r in runs} == {(FINISHED, 1)}  # the rerun trained one more


@pytest.mark.slow
def test_a_study_on_postgresql_keeps_optunas_tables_in_a_schema_of_their_own(
    study_recipe: Path, workdir: Path, postgres_url: str, postgres_admin: Any
) -> None:
    from sqlalchemy import create_engine, inspect, make_url

    schema = make_url(postgres_url).query["options"].removeprefix("-csearch_path=")
    try:
        code, out = tune(str(study_recipe), *SPACE, *TWO_OBJECTIVES, "--trials", "3", "--jobs", "2",
                         "--registry", postgres_url)  # fmt: skip
        assert code == 0, out
        reg = Registry(postgres_url)
        (group,) = {r.group_id for r in reg.list_runs()}
        assert_optuna_and_registry_agree(postgres_url, group, 3)
        password = make_url(postgres_url).password
        assert password and not any(password in " ".join(r.argv) for r in reg.list_runs())
        with postgres_admin.connect() as conn:
            tables = inspect(conn).get_table_names
            assert "trials" in tables(schema=f"{schema}_optuna") and "runs" not in tables(schema=f"{schema}_optuna")
            assert "trials" not in tables(schema=schema) and "runs" in tables(schema=schema)
        result = runner.invoke(app, ["report", "--format", "json", "--registry", postgres_url])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["study"]["front"] and not any("best_trials" in w for w in report["warnings"])
    finally:
        create_engine(postgres_url).dispose()
        with postgres_admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema}_optuna CASCADE")


@pytest.mark.slow
def test_a_studys_report_selects_on_validation_and_compares_with_its_baseline_trial(
    study_recipe: Path, workdir: Path
) -> None:
    quick = ["--set", "train.max_steps_per_epoch=2", "--set", "train.max_eval_batches=1"]
    code, out = tune(str(study_recipe), *SPACE, *TWO_OBJECTIVES, *quick, "--baseline", "--trials", "2")
    assert code == 0, out
    reg = Registry("runs/imloss.db")
    runs = {trial_number(r.fingerprint): r for r in reg.list_runs()}
    assert (runs[0].recipe["loss"]["im_weight"], runs[0].recipe["optim"]["lr"]) == (2.0, 0.1)  # the recipe's own

    result = runner.invoke(app, ["report", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["select"] == "best-val"  # what the study selected on, not the test set
    assert report["baseline"] == "loss.im_weight=2.0, optim.lr=0.1"
    given = runner.invoke(app, ["report", "--format", "json", "--select", "best"])
    assert json.loads(given.stdout)["select"] == "best"


def test_a_trials_label_host_and_error_from_the_registry_print_as_text_not_markup() -> None:
    from rich.console import Console

    from imloss_cli.cli.tune import TuneView
    from imloss_cli.registry import FAILED
    from imloss_cli.tune.worker import TrialOutcome

    console = Console(record=True, width=300, color_system=None)
    view = TuneView(console)
    hostile = TrialOutcome(
        3, "a" * 12, FAILED, {"data.root": "[/x]"}, error="[bold]boom[/]", elsewhere="[red]h (pid 1)"
    )
    view.outcome(hostile)
    view.waiting([hostile])
    text = console.export_text()
    assert "root=[/x]" in text and ": [bold]boom[/]" in text and "on [red]h (pid 1)" in text, text
