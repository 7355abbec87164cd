"""A registry a lab shares: no password leaves the process, and a row is input, never trusted.

The password tests run real processes on a PostgreSQL role with a password (skipped, with the
reason, without a server); the hostile-row tests write rows straight into a registry, as anyone who
can write it could, and check with sentinel files that nothing outside the intended folders is
written or deleted.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, make_url, text
from typer.testing import CliRunner

from imloss_cli import REGISTRY_ENV
from imloss_cli.cli.app import app
from imloss_cli.files import write_atomically
from imloss_cli.recipe import config_hash, load_recipe
from imloss_cli.registry import FINISHED, KILLED, Claim, Registry, RegistryError
from imloss_cli.registry.values import public_url, without_passwords
from imloss_cli.report.escape import csv_cells, latex_comment, markdown_cell
from imloss_cli.train.checkpoint import save_checkpoint
from tests.planting import start_run

from .test_registry import postgres_admin, postgres_url  # noqa: F401  (fixtures: a schema per test)

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


# ------------------------------------------------------------------------------ no secret leaves


def test_stored_argv_hides_every_url_password_however_given() -> None:
    argv = [
        "imloss", "ablate", "--registry", "postgresql+psycopg://lab:s3cret@db/runs",
        "--registry=postgresql://lab:s3cret@db/runs", "--mlflow", "postgresql://u@db/x?password=s3cret&sslmode=require",
        "runs/imloss.db", "--set", "loss.im_weight=2",
    ]  # fmt: skip
    shown = without_passwords(argv)
    assert not any("s3cret" in a for a in shown)
    assert shown[3] == "postgresql+psycopg://lab:***@db/runs"
    assert shown[4] == "--registry=postgresql://lab:***@db/runs"
    assert "password=***" in shown[6] and "sslmode=require" in shown[6]
    assert shown[7:] == argv[7:]  # paths and recipe fields as given


def test_registry_url_and_errors_never_show_the_password() -> None:
    shown = public_url(make_url("postgresql+psycopg://lab@db/runs?password=s3cret&sslmode=require"))
    assert shown == "postgresql+psycopg://lab@db/runs?password=***&sslmode=require"
    with pytest.raises(RegistryError) as bad:
        Registry("postgresql+psycopg://lab:s3cret@db:notaport/runs")  # malformed: the parser's message quotes it
    assert "s3cret" not in str(bad.value) and "lab:***@" in str(bad.value)
    with pytest.raises(RegistryError) as refused:
        Registry("postgresql+psycopg://lab:s3cret@127.0.0.1:1/runs", create=False)  # nothing listens on port 1
    assert "s3cret" not in str(refused.value) and "cannot connect to registry" in str(refused.value)


def _cmdlines() -> list[bytes]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes())
            except OSError:
                continue
    return out


def _run_watching_cmdlines(command: list[str], env: dict[str, str], secret: str, cwd: Path) -> tuple[str, int]:
    """Run ``command`` to its end, reading every process's command line meanwhile; output and how many
    command lines held the secret."""
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = 0
    while proc.poll() is None:
        seen += sum(secret.encode() in c for c in _cmdlines())
        time.sleep(0.05)
    return proc.communicate()[0], seen


def _everything_stored(url: str) -> str:
    """Every value of every table of the registry, as text."""
    engine = create_engine(url)
    with engine.connect() as conn:
        tables = inspect(conn).get_table_names()
        dump = "\n".join(repr(row) for t in tables for row in conn.execute(text(f'select * from "{t}"')))
    engine.dispose()
    return dump


def _everything_written(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_a_jobs_ablation_and_an_nproc_run_never_show_or_store_the_password(
    postgres_url: str,
    tiny_recipe: Path,
    workdir: Path,
) -> None:
    url = make_url(postgres_url)
    secret = url.password
    assert secret, "the PostgreSQL test role must have a password"
    # The password both ways: in the URL, and (second command) as ?password=.
    as_query = url.set(password=None).update_query_dict({"password": secret}).render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", REGISTRY_ENV: postgres_url}
    base = [sys.executable, "-m", "imloss_cli"]
    quick = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=4"]
    out, seen = _run_watching_cmdlines(
        [*base, "ablate", str(tiny_recipe), "--im-weight", "0,1", "--jobs", "2", *quick], env, secret, workdir
    )
    assert "Traceback" not in out and seen == 0, out
    out, seen = _run_watching_cmdlines(
        [*base, "train", str(tiny_recipe), "--nproc", "2", *quick], {**env, REGISTRY_ENV: as_query}, secret, workdir
    )
    assert "Traceback" not in out and seen == 0, out
    assert secret not in out

    with Registry(postgres_url) as reg:
        runs = reg.list_runs()
        assert sorted(r.status for r in runs) == [FINISHED] * 3
        assert any("--nproc" in r.argv for r in runs)
    assert secret not in _everything_stored(postgres_url)
    shown = [runner.invoke(app, ["runs", "--registry", as_query]), runner.invoke(app, ["show", runs[0].id[:6]],
             env={REGISTRY_ENV: postgres_url})]  # fmt: skip
    for fmt in ("markdown", "csv", "latex", "json", "html"):
        shown.append(runner.invoke(app, ["report", "--format", fmt, "--registry", postgres_url]))
    shown.append(runner.invoke(app, ["export", "--tensorboard", str(workdir / "tb"), "--registry", postgres_url]))
    shown.append(
        runner.invoke(app, ["export", "--mlflow", f"sqlite:///{workdir / 'ml.db'}", "--registry", postgres_url])
    )
    for result in shown:
        assert result.exit_code == 0, result.output
        assert secret not in result.output
    assert secret.encode() not in _everything_written(workdir)  # logs, checkpoints, recipe.toml, exports


# ------------------------------------------------------------------------------ rows are input


def _planted(registry: Registry, run_name: str = "r", *, status: str = FINISHED, **recipe_changes: object) -> str:
    recipe = load_recipe(None, {"train.epochs": 1, "train.max_steps_per_epoch": 2, "train.seed": 0,
                                **recipe_changes})  # fmt: skip
    run_id = start_run(
        registry, name=run_name, recipe=recipe.model_dump(mode="json"), config_hash=config_hash(recipe),
        fingerprint=f"fp-{run_name}", seed=0, code_version="v",
    )  # fmt: skip
    registry.log_epoch(run_id, 1, {"test_acc": 0.5, "mean_entropy": 0.4}, [(0, "l", {"entropy": 0.4})], attempt=1)
    registry.finish_run(run_id, status, attempt=1)
    return run_id


def _set_column(db: Path, run_id: str, column: str, value: object) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, run_id))
        if column == "id":
            for table in ("epoch_metrics", "layer_stats"):
                conn.execute(f"UPDATE {table} SET run_id = ? WHERE run_id = ?", (value, run_id))


@pytest.mark.parametrize("planted", ["absolute", "relative"])
def test_a_run_id_that_is_a_path_is_refused_by_every_reader_and_nothing_is_deleted(workdir: Path, planted: str) -> None:
    db = workdir / "r.db"
    (workdir / "tb").mkdir()
    victim = workdir / "victim"
    planted_id = str(victim.resolve()) if planted == "absolute" else "../victim"  # relative to tb/
    target = victim
    target.mkdir(parents=True, exist_ok=True)
    (target / "sentinel").write_text("keep me")
    with Registry(str(db)) as reg:
        run_id = _planted(reg)
    _set_column(db, run_id, "id", planted_id)
    commands = [["runs"], ["show", planted_id], ["report"], ["export", "--tensorboard", str(workdir / "tb")],
                ["export", planted_id, "--nir", str(workdir / "x.nir")], ["resume", planted_id],
                ["reproduce", planted_id]]  # fmt: skip
    for command in commands:
        result = runner.invoke(app, [*command, "--registry", str(db)])
        assert result.exit_code == 2, (command, result.output)
        assert f"run {planted_id!r} in the registry has an invalid id" in result.stderr, result.stderr
    assert (target / "sentinel").read_text() == "keep me"
    assert not (workdir / "tb").exists() or not any((workdir / "tb").iterdir())


def test_resume_writes_only_in_its_own_folder_whatever_the_row_records(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imloss_cli.train.lifecycle as lifecycle
    from imloss_cli.train.environment import GitState

    db = workdir / "r.db"
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    for name in ("epoch-0001.pt", "epoch-0002.pt", "last.pt"):
        (elsewhere / name).write_text("not yours")
    with Registry(str(db)) as reg:
        run_id = _planted(reg, status=KILLED)  # a run that ended KILLED: resumable
    _set_column(db, run_id, "checkpoint_dir", str(elsewhere))
    own = workdir / "runs" / run_id
    own.mkdir(parents=True)
    diff_target = workdir / "diff-target"
    diff_target.write_text("keep me")
    (own / "code.diff").symlink_to(diff_target)
    monkeypatch.setattr(lifecycle, "git_state", lambda: GitState("abc", True, "a diff"))

    result = runner.invoke(app, ["resume", run_id, "--registry", str(db)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in elsewhere.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt", "last.pt"]
    assert all(p.read_text() == "not yours" for p in elsewhere.iterdir())
    assert diff_target.read_text() == "keep me"  # the planted link was replaced, not followed
    assert not (own / "code.diff").is_symlink() and (own / "code.diff").read_text() == "a diff"
    assert (own / "last.pt").is_file()
    with Registry(str(db)) as reg:
        info = reg.get_run(run_id)
    assert info.checkpoint_dir == str(Path("runs") / run_id)
    assert (
        info.attempts[-1]["how"]
        == f"restarted: its checkpoints were recorded in {elsewhere}, not in runs/{run_id} here"
    )


def test_a_checkpoint_folder_that_is_a_symlink_is_refused(workdir: Path) -> None:
    db = workdir / "r.db"
    with Registry(str(db)) as reg:
        run_id = _planted(reg, status=KILLED)
    outside = workdir / "outside"
    outside.mkdir()
    (workdir / "runs").mkdir()
    (workdir / "runs" / run_id).symlink_to(outside)
    result = runner.invoke(app, ["resume", run_id, "--registry", str(db)])
    assert result.exit_code == 2
    assert f"its checkpoint folder runs/{run_id} is a symbolic link" in result.stderr
    assert list(outside.iterdir()) == []


def test_names_from_rows_are_text_in_every_output(workdir: Path) -> None:
    db = workdir / "r.db"
    names = {"markup": "[/x]", "formula": "=1+1", "latex": "a\n\\input{/etc/passwd}"}
    with Registry(str(db)) as reg:
        ids = {k: _planted(reg, v, **{"name": v}) for k, v in names.items()}
    result = runner.invoke(app, ["runs", "--registry", str(db)])
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.stdout and "=1+1" in result.stdout
    for run_id in ids.values():
        result = runner.invoke(app, ["show", run_id, "--registry", str(db)])
        assert result.exit_code == 0, result.output
    assert "[/x]" in runner.invoke(app, ["show", ids["markup"], "--registry", str(db)]).stdout

    reports = {fmt: runner.invoke(app, ["report", "--recipe", "=1+1", "--format", fmt, "--registry", str(db)])
               for fmt in ("csv", "markdown", "latex", "html", "json")}  # fmt: skip
    assert all(r.exit_code == 0 for r in reports.values()), {k: r.output for k, r in reports.items()}
    assert "'=1+1" in reports["csv"].stdout and not re.search(r"(^|,)=1\+1", reports["csv"].stdout, re.M)
    latex = runner.invoke(app, ["report", "--recipe", names["latex"], "--format", "latex", "--registry", str(db)])
    assert latex.exit_code == 0, latex.output
    assert not any(line.lstrip().startswith("\\input") for line in latex.stdout.splitlines())
    markdown = runner.invoke(app, ["report", "--recipe", names["latex"], "--format", "markdown", "--registry", str(db)])
    assert markdown.stdout.splitlines()[0].startswith("### ") and "\\input" in markdown.stdout.splitlines()[0]


def test_report_text_escaping_per_format() -> None:
    import pandas as pd

    frame = csv_cells(pd.DataFrame({"name": ["=1+1", "+x", "-y", "@z", "ok"], "acc": [-1.0, 2.0, 3.0, 4.0, 5.0]}))
    assert frame["name"].tolist() == ["'=1+1", "'+x", "'-y", "'@z", "ok"]
    assert frame["acc"].tolist() == [-1.0, 2.0, 3.0, 4.0, 5.0]  # numbers stay numbers
    assert latex_comment("t\n\\input{x}") == "t \\input{x}"
    assert markdown_cell("a|b\n<script>") == "a\\|b &lt;script&gt;"


def test_html_report_escapes_names(workdir: Path) -> None:
    db = workdir / "r.db"
    with Registry(str(db)) as reg:
        _planted(reg, "<script>alert(1)</script>", name="<script>alert(1)</script>")
    result = runner.invoke(app, ["report", "--recipe", "<script>alert(1)</script>", "--format", "html",
                                 "--registry", str(db)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "<script>alert(1)" not in result.stdout and "&lt;script&gt;alert(1)" in result.stdout


# ------------------------------------------------------------------------------ data files are data


class _Sentinel:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def _cifar(root: Path, poisoned: Path | None) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch: dict[bytes, object] = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                                      b"labels": list(range(10))}  # fmt: skip
        if poisoned is not None and name == "data_batch_3":
            batch[b"extra"] = _Sentinel(poisoned)
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))


def test_a_cifar_batch_that_would_run_code_is_refused_unrun(workdir: Path) -> None:
    sentinel = workdir / "ran"
    _cifar(workdir / "cifar", poisoned=sentinel)
    result = runner.invoke(app, ["train", "--set", "data.dataset=cifar10", "--set", f"data.root={workdir / 'cifar'}",
                                 "--set", "train.epochs=1", "--registry", str(workdir / "r.db")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "it asks to load posix.system, which a CIFAR batch never holds; refused unloaded" in result.stderr
    assert not sentinel.exists()
    assert not (workdir / "r.db").exists() or Registry(str(workdir / "r.db")).list_runs() == []


def test_a_plain_cifar_batch_still_loads(workdir: Path) -> None:
    from imloss_cli.data.cifar import _Cifar10

    _cifar(workdir / "cifar", poisoned=None)
    data = _Cifar10(str(workdir / "cifar"), train=True)
    assert len(data) == 50 and data.data.shape == (50, 32, 32, 3)


# ------------------------------------------------------------------------------ files follow the umask


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o007])
def test_files_imloss_writes_follow_the_umask(tmp_path: Path, mask: int) -> None:
    script = (
        "import os, sys; from pathlib import Path; os.umask(int(sys.argv[2], 8));\n"
        "from imloss_cli.files import write_atomically, open_to_append\n"
        "from imloss_cli.train.checkpoint import save_checkpoint\n"
        "d = Path(sys.argv[1]); write_atomically(d / 'report.md', 'x'); save_checkpoint(d / 'last.pt', {'a': 1})\n"
        "open_to_append(d / 'worker-0.log').close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path), oct(mask)[2:]], check=True, env=env)
    for name in ("report.md", "last.pt", "worker-0.log"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_a_log_planted_as_a_symlink_is_not_followed(tmp_path: Path) -> None:
    from imloss_cli.files import open_to_append

    target = tmp_path / "target"
    target.write_text("keep me")
    (tmp_path / "worker-0.log").symlink_to(target)
    with pytest.raises(OSError):
        open_to_append(tmp_path / "worker-0.log")
    assert target.read_text() == "keep me"


def test_atomic_write_replaces_a_planted_symlink_and_keeps_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep me")
    (tmp_path / "out.md").symlink_to(target)
    write_atomically(tmp_path / "out.md", "report")
    assert target.read_text() == "keep me" and (tmp_path / "out.md").read_text() == "report"
    save_checkpoint(tmp_path / "c.pt", {"a": 1})
    assert not list(tmp_path.glob(".*.tmp"))


def test_claimed_argv_is_stored_without_password(tmp_path: Path) -> None:
    with Registry(str(tmp_path / "r.db")) as reg:
        run_id = start_run(reg, name="r", recipe={}, config_hash="c", fingerprint="f", seed=0, code_version="v",
                           argv=["imloss", "--registry", "postgresql://u:s3cret@h/d"])  # fmt: skip
        reg.finish_run(run_id, KILLED, attempt=1)
        reg.claim_run(run_id, Claim(argv=["imloss", "resume", "--registry=postgresql://u:s3cret@h/d"]))
        group = reg.claim_group("k", "g", {}, {}, ["imloss", "--registry", "postgresql://u:s3cret@h/d"])
        stored = json.dumps([reg.get_run(run_id).argv, reg.get_group(group).argv])
    assert "s3cret" not in stored and stored.count("u:***@h/d") == 2
