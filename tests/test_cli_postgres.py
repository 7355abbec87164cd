"""The user's commands against a PostgreSQL registry (skipped, with the reason, without a server)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imloss_cli.cli.app import app

from .test_registry import postgres_admin, postgres_url  # noqa: F401  (fixtures: a schema per test)

pytestmark = pytest.mark.slow  # every test here trains

runner = CliRunner()


def test_train_runs_show_ablate_report_on_postgresql(postgres_url: str, tiny_recipe: Path) -> None:
    result = runner.invoke(
        app, ["train", str(tiny_recipe), "--seed", "0", "--set", "train.epochs=1", "--registry", postgres_url]
    )
    assert result.exit_code == 0, result.output
    run_id = re.search(r"run (\w{12})$", result.output.strip()).group(1)

    result = runner.invoke(app, ["runs", "--registry", postgres_url])
    assert result.exit_code == 0 and run_id in result.output
    result = runner.invoke(app, ["show", run_id[:5], "--registry", postgres_url])
    assert result.exit_code == 0 and "FINISHED" in result.output

    result = runner.invoke(app, ["ablate", "--im-weight", "0,2", "--set", "train.epochs=1", "--registry", postgres_url])
    assert result.exit_code == 0, result.output
    assert "ablating the recipe of run" in result.output
    result = runner.invoke(app, ["report", "--format", "json", "--registry", postgres_url])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["loss.im_weight"] for r in rows] == [0.0, 2.0]
