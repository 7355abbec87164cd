"""Tests of the run registry (imloss_cli.registry).

The core behaviour runs on every backend: an in-memory SQLite registry, a SQLite file, and
PostgreSQL when ``IMLOSS_TEST_POSTGRES_URL`` points at a database the tests may create schemas
in (``.ci/postgres.sh`` starts a throwaway server and writes that variable to a file to source).
Every PostgreSQL test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pandas as pd
import pytest
from sqlalchemy import Engine, create_engine, inspect, select, text, update
from sqlalchemy.schema import CreateSchema, DropSchema

from imloss_cli.registry import (
    SCHEMA_VERSION,
    TERMINAL,
    Claim,
    GroupInfo,
    NewRun,
    Registry,
    RegistryError,
    RunInfo,
)
from imloss_cli.registry import backend as backend_module
from imloss_cli.registry import reads as reads_module
from imloss_cli.registry import rows as rows_module
from imloss_cli.registry import store as store_module
from imloss_cli.registry.schema import Meta, Run
from tests.planting import new_group, start_run

REPO = Path(__file__).resolve().parents[1]
WRITER = REPO / "tests" / "registry_writer.py"
PACKAGE = REPO / "imloss_cli" / "registry"
POSTGRES_ENV = "IMLOSS_TEST_POSTGRES_URL"
POSTGRES_SKIP = (
    f"PostgreSQL tests need {POSTGRES_ENV}: run `.ci/postgres.sh /tmp/pg.env && "
    f"source /tmp/pg.env` (starts a throwaway server on 127.0.0.1) and rerun"
)
BACKENDS = ["memory", "file", "postgresql"]  # registry fixture
URL_BACKENDS = ["sqlite", "postgresql"]  # registries reopened by URL, or by other processes


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def memory_registry() -> Iterator[Registry]:
    """A fresh in-memory registry."""
    with Registry("sqlite://") as registry:
        yield registry


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the file registry lives; its directory does not exist yet."""
    return tmp_path / "nested" / "dir" / "registry.db"


@pytest.fixture
def file_registry(db_path: Path) -> Iterator[Registry]:
    """A fresh SQLite-file registry, opened from a plain path."""
    with Registry(str(db_path)) as registry:
        yield registry


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An engine on the test database of ``IMLOSS_TEST_POSTGRES_URL``; skips without it."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(POSTGRES_SKIP)
    if importlib.util.find_spec("psycopg") is None:  # asked for PostgreSQL: a skip would hide it
        pytest.fail(
            f"{POSTGRES_ENV} is set but the driver is missing: pip install 'psycopg[binary]' (the 'postgres' extra)"
        )
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """The URL of an empty PostgreSQL schema of this test's own (its search_path)."""
    schema = f"imloss_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as conn:
        conn.execute(CreateSchema(schema))
    url = postgres_admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with postgres_admin.connect() as conn:
            conn.execute(DropSchema(schema, cascade=True))


@pytest.fixture(params=URL_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL where no registry exists yet: a SQLite file, or a PostgreSQL schema."""
    if request.param == "postgresql":
        return cast(str, request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def url_registry(url: str) -> Iterator[Registry]:
    """A fresh registry at ``url``."""
    with Registry(url) as registry:
        yield registry


@pytest.fixture(params=BACKENDS)
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """Every kind of registry, for behaviour that must not depend on the backend."""
    if request.param == "postgresql":
        with Registry(request.getfixturevalue("postgres_url")) as pg:
            yield pg
        return
    fixture = "memory_registry" if request.param == "memory" else "file_registry"
    yield cast(Registry, request.getfixturevalue(fixture))


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], None]:
    """Make the next ids handed out by the store the given ones, in order."""

    def install(ids: list[str]) -> None:
        pending = iter(ids)
        ids = lambda: next(pending)  # noqa: E731
        monkeypatch.setattr(rows_module, "new_id", ids)  # runs
        monkeypatch.setattr(store_module, "new_id", ids)  # groups

    return install


def new_run(registry: Registry, name: str = "run", **overrides: Any) -> str:
    fields: dict[str, Any] = dict(
        name=name,
        recipe={"model": {"arch": "resnet19"}, "lr": 0.1},
        config_hash=f"cfg-{name}",
        fingerprint=f"fp-{name}",
        seed=7,
        code_version="0.1.0",
    )
    fields.update(overrides)
    return start_run(registry, **fields)


def raw_update(url: str, run_id: str, **values: Any) -> None:
    """Change a run behind the registry's back, as another process or an old crash would."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(**values))
    engine.dispose()


def set_schema_version(url: str, version: int) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=str(version)))
    engine.dispose()


def stored_schema_version(url: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
    engine.dispose()
    return value


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------------------ round trip


def test_round_trip_of_run_metrics_and_layers(registry: Registry) -> None:
    group = new_group(
        registry, "sweep", {"loss": {"im_weight": 1.0}}, {"loss.im_weight": [0, 1, 2]}, ["imloss", "ablate", "x.yaml"]
    )
    run_id = new_run(
        registry,
        kind="ablate",
        group_id=group,
        argv=["imloss", "train"],
        environment={"python": "3.11", "device": "cpu"},
        git_commit="abc123",
        git_dirty=True,
        checkpoint_dir="/ckpt/run",
    )
    registry.log_epoch(
        run_id,
        0,
        {"loss": 2.302585092994046, "acc": 0.1, "nan": float("nan")},
        [
            (0, "stem.lif", {"firing_rate": 0.125, "entropy": 0.6931471805599453}),
            (1, "layer1.0.lif2", {"firing_rate": 1e-12, "membrane_std": -0.3}),
        ],
        attempt=1,
    )
    registry.log_epoch(
        run_id, 1, {"loss": 1.5, "acc": float("inf")}, [(0, "stem.lif", {"firing_rate": 0.2})], attempt=1
    )

    run = registry.get_run(run_id)
    assert isinstance(run, RunInfo)
    assert (run.id, run.name, run.status, run.display_status, run.kind) == (
        run_id,
        "run",
        "RUNNING",
        "RUNNING",
        "ablate",
    )
    assert run.group_id == group
    assert run.recipe == {"model": {"arch": "resnet19"}, "lr": 0.1}
    assert (run.config_hash, run.fingerprint, run.seed, run.code_version) == ("cfg-run", "fp-run", 7, "0.1.0")
    assert run.argv == ["imloss", "train"]
    assert run.environment == {"python": "3.11", "device": "cpu"}
    assert (run.git_commit, run.git_dirty, run.checkpoint_dir) == ("abc123", True, "/ckpt/run")
    assert (run.host, run.pid, run.attempt) == (socket.gethostname(), os.getpid(), 1)
    assert run.created_at.tzinfo is not None and run.created_at.utcoffset() == timedelta(0)
    assert run.started_at is not None and run.started_at >= run.created_at  # queued, then claimed
    assert run.heartbeat_at is not None and run.heartbeat_at >= run.created_at
    assert run.ended_at is None and run.error_type is None and not run.is_terminal

    metrics = registry.epoch_metrics([run_id])
    expected = pd.DataFrame(
        {
            "run_id": [run_id] * 5,
            "epoch": [0, 0, 0, 1, 1],
            "name": ["acc", "loss", "nan", "acc", "loss"],
            "value": [0.1, 2.302585092994046, float("nan"), float("inf"), 1.5],
        }
    )
    pd.testing.assert_frame_equal(metrics, expected)  # strings in pandas's default string dtype

    layers = registry.layer_stats([run_id])
    assert list(layers.columns) == ["run_id", "epoch", "layer_index", "layer", "stat", "value"]
    assert list(layers.itertuples(index=False, name=None)) == [
        (run_id, 0, 0, "stem.lif", "entropy", 0.6931471805599453),
        (run_id, 0, 0, "stem.lif", "firing_rate", 0.125),
        (run_id, 0, 1, "layer1.0.lif2", "firing_rate", 1e-12),
        (run_id, 0, 1, "layer1.0.lif2", "membrane_std", -0.3),
        (run_id, 1, 0, "stem.lif", "firing_rate", 0.2),
    ]
    assert {name: str(dtype) for name, dtype in layers.dtypes.items() if name in ("epoch", "layer_index", "value")} == {
        "epoch": "int64",
        "layer_index": "int64",
        "value": "float64",
    }
    assert all(pd.api.types.is_string_dtype(layers[name]) for name in ("run_id", "layer", "stat"))

    registry.finish_run(run_id, "FINISHED", attempt=1)
    done = registry.get_run(run_id)
    assert done.status == done.display_status == "FINISHED" and done.is_terminal
    assert done.ended_at is not None and done.ended_at >= done.started_at  # type: ignore[operator]
    assert done.duration == done.ended_at - done.started_at  # type: ignore[operator]

    info = registry.get_group(group)
    assert isinstance(info, GroupInfo)
    assert (info.name, info.base_recipe, info.axes, info.argv) == (
        "sweep",
        {"loss": {"im_weight": 1.0}},
        {"loss.im_weight": [0, 1, 2]},
        ["imloss", "ablate", "x.yaml"],
    )
    assert registry.latest_group() == info


def test_failed_run_keeps_its_error(registry: Registry) -> None:
    run_id = new_run(registry)
    registry.finish_run(
        run_id,
        "FAILED",
        error_type="ValueError",
        error_message="loss is NaN",
        traceback="Traceback ...\nValueError",
        attempt=1,
    )
    run = registry.get_run(run_id)
    assert (run.status, run.error_type, run.error_message, run.traceback) == (
        "FAILED",
        "ValueError",
        "loss is NaN",
        "Traceback ...\nValueError",
    )
    with pytest.raises(RegistryError, match=f"run {run_id} has already ended as FAILED"):
        registry.finish_run(run_id, "FINISHED", attempt=1)


def test_finish_rejects_non_terminal_status(registry: Registry) -> None:
    run_id = new_run(registry)
    with pytest.raises(RegistryError, match="finish status must be one of FAILED, FINISHED, KILL"):
        registry.finish_run(run_id, "RUNNING", attempt=1)
    assert {"FINISHED", "FAILED", "KILLED", "PRUNED"} == TERMINAL
    assert registry.get_run(run_id).status == "RUNNING"


def test_logging_an_epoch_twice_replaces_it(registry: Registry) -> None:
    run_id = new_run(registry)
    registry.log_epoch(
        run_id,
        0,
        {"a": 1.0, "b": 2.0},
        [(0, "stem.lif", {"firing_rate": 0.1}), (1, "l1", {"firing_rate": 0.2})],
        attempt=1,
    )
    registry.log_epoch(run_id, 1, {"a": 10.0}, [(0, "stem.lif", {"firing_rate": 0.5})], attempt=1)
    registry.log_epoch(run_id, 0, {"a": 3.0}, [(0, "stem.lif", {"firing_rate": 0.3})], attempt=1)

    metrics = registry.epoch_metrics([run_id])
    assert list(metrics.itertuples(index=False, name=None)) == [(run_id, 0, "a", 3.0), (run_id, 1, "a", 10.0)]
    layers = registry.layer_stats([run_id])
    assert list(layers[["epoch", "layer_index", "value"]].itertuples(index=False, name=None)) == [
        (0, 0, 0.3),
        (1, 0, 0.5),
    ]


def test_log_epoch_rejects_unknown_runs_repeated_layers_and_non_numbers_writing_nothing(registry: Registry) -> None:
    run_id = new_run(registry)
    with pytest.raises(RegistryError, match="no run with id 'nope'"):
        registry.log_epoch("nope", 0, {"a": 1.0}, [], attempt=1)
    with pytest.raises(RegistryError, match="layer index 0 appears twice in epoch 3"):
        registry.log_epoch(run_id, 3, {}, [(0, "a", {"x": 1.0}), (0, "b", {"x": 2.0})], attempt=1)
    with pytest.raises(RegistryError, match="metric 'acc' must be a number"):
        registry.log_epoch(run_id, 0, {"acc": "high"}, [], attempt=1)  # type: ignore[dict-item]
    with pytest.raises(RegistryError, match="epoch must be an integer"):
        registry.log_epoch(run_id, 1.5, {}, [], attempt=1)  # type: ignore[arg-type]
    assert registry.epoch_metrics([run_id]).empty


def test_heartbeat_advances_and_checkpoint_dir_is_recorded(registry: Registry) -> None:
    run_id = new_run(registry)
    before = registry.get_run(run_id).heartbeat_at
    registry.heartbeat(run_id, attempt=1)
    run = registry.get_run(run_id)
    assert run.heartbeat_at is not None and before is not None and run.heartbeat_at > before
    registry.finish_run(run_id, "KILLED", attempt=1)
    registry.claim_run(run_id, Claim(checkpoint_dir=Path("/data/ckpt")))
    assert registry.get_run(run_id).checkpoint_dir == "/data/ckpt"
    with pytest.raises(RegistryError, match="no run with id 'missing'"):
        registry.heartbeat("missing", attempt=1)


def test_create_run_rejects_bad_kind_status_group_or_json_writing_nothing(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="kind must be one of train, ablate, tune, got 'sweep'"):
        new_run(registry, kind="sweep")
    with pytest.raises(RegistryError, match="no group with id 'feedfeedfeed'"):
        new_run(registry, group_id="feedfeedfeed")
    with pytest.raises(RegistryError, match="recipe is not JSON-serialisable"):
        new_run(registry, recipe={"path": object()})
    assert registry.list_runs() == []


def test_queued_run_lifecycle_and_attempts(registry: Registry) -> None:
    run_id = new_run(registry, status="QUEUED")
    queued = registry.get_run(run_id)
    assert (queued.status, queued.started_at, queued.attempt) == ("QUEUED", None, 0)  # never started

    assert registry.claim_run(run_id, Claim(environment={"device": "cuda:0"}, argv=["imloss", "x"])) == 1
    first = registry.get_run(run_id)
    assert (first.status, first.attempt, first.environment, first.argv) == (
        "RUNNING",
        1,
        {"device": "cuda:0"},
        ["imloss", "x"],
    )
    assert first.started_at is not None
    with pytest.raises(RegistryError, match="only QUEUED, FAILED, KILLED or LOST runs"):
        registry.claim_run(run_id)

    registry.finish_run(run_id, "KILLED", error_type="KeyboardInterrupt", attempt=1)
    assert registry.claim_run(run_id, Claim(git_commit="def456")) == 2
    second = registry.get_run(run_id)
    assert (second.status, second.attempt, second.error_type, second.ended_at) == ("RUNNING", 2, None, None)
    assert second.git_commit == "def456" and second.environment == {"device": "cuda:0"}
    registry.finish_run(run_id, "FINISHED", attempt=2)
    with pytest.raises(RegistryError, match="is FINISHED; only QUEUED"):
        registry.claim_run(run_id)


# ------------------------------------------------------------------------------ lookups


def test_run_prefix_lookup(registry: Registry, fixed_ids: Callable[[list[str]], None]) -> None:
    fixed_ids(["ab1200000000", "ab3400000000", "cd5600000000"])
    for name in ("one", "two", "three"):
        new_run(registry, name)
    assert registry.get_run("ab1200000000").name == "one"
    assert registry.get_run("ab1").name == "one"
    assert registry.get_run("AB3").name == "two"
    assert registry.get_run("c").name == "three"
    with pytest.raises(RegistryError) as ambiguous:
        registry.get_run("ab")
    assert str(ambiguous.value) == (
        "run prefix 'ab' is ambiguous: matches ab1200000000, ab3400000000 (give more characters)"
    )
    with pytest.raises(RegistryError, match=r"^no run matches 'xyz'$"):
        registry.get_run("xyz")
    with pytest.raises(RegistryError, match="no run matches 'ab%'"):
        registry.get_run("ab%")  # LIKE wildcards are literal characters
    with pytest.raises(RegistryError, match="empty run id"):
        registry.get_run("  ")


def test_group_prefix_lookup(registry: Registry, fixed_ids: Callable[[list[str]], None]) -> None:
    assert registry.latest_group() is None
    fixed_ids(["ee0100000000", "ee0200000000"])
    registry.claim_group("key-1", "first", {}, {}, [])
    registry.claim_group("key-2", "second", {}, {}, [])
    assert registry.get_group("ee01").name == "first"
    latest = registry.latest_group()
    assert latest is not None and latest.name == "second"
    with pytest.raises(RegistryError, match="group prefix 'ee0' is ambiguous: matches ee0100000000, ee0200000000"):
        registry.get_group("ee0")
    with pytest.raises(RegistryError, match="no group matches 'ff'"):
        registry.get_group("ff")


def test_list_runs_filters_and_order(registry: Registry) -> None:
    group = registry.claim_group("key", "g", {}, {"seed": [1, 2]}, [])
    t1 = new_run(registry, "t1")
    a1 = new_run(registry, "a1", kind="ablate", group_id=group, fingerprint="same")
    t2 = new_run(registry, "t2")
    a2 = new_run(registry, "a2", kind="ablate", group_id=group, fingerprint="same")
    q = new_run(registry, "q", status="QUEUED", fingerprint="same")
    registry.finish_run(t1, "FINISHED", attempt=1)
    registry.finish_run(a1, "FAILED", attempt=1)

    def ids(runs: list[RunInfo]) -> list[str]:
        return [run.id for run in runs]

    assert ids(registry.list_runs()) == [q, a2, t2, a1, t1]
    assert ids(registry.list_runs(limit=2)) == [q, a2]
    assert ids(registry.list_runs(kind="train")) == [q, t2, t1]
    assert ids(registry.list_runs(group_id=group)) == [a2, a1]
    assert ids(registry.list_runs(status="RUNNING")) == [a2, t2]
    assert ids(registry.list_runs(status="RUNNING", limit=1)) == [a2]
    assert ids(registry.list_runs(status="FINISHED")) == [t1]
    assert ids(registry.list_runs(status="FAILED", group_id=group, kind="ablate")) == [a1]
    assert registry.list_runs(status="LOST") == []

    latest_train = registry.latest_run()
    assert latest_train is not None and latest_train.id == q
    latest_ablate = registry.latest_run("ablate")
    assert latest_ablate is not None and latest_ablate.id == a2
    latest_any = registry.latest_run(None)
    assert latest_any is not None and latest_any.id == q

    with pytest.raises(RegistryError, match="status must be one of"):
        registry.list_runs(status="DONE")
    assert [run.started_at is None for run in registry.list_runs()] == [True, False, False, False, False]


def test_empty_registry_reads(registry: Registry) -> None:
    assert registry.latest_run() is None
    metrics = registry.epoch_metrics([])
    assert list(metrics.columns) == ["run_id", "epoch", "name", "value"] and metrics.empty
    assert str(metrics["epoch"].dtype) == "int64" and str(metrics["value"].dtype) == "float64"
    layers = registry.layer_stats(["nonexistent"], last_epoch_only=True)
    assert list(layers.columns) == ["run_id", "epoch", "layer_index", "layer", "stat", "value"]
    assert layers.empty


# ------------------------------------------------------------------------------ LOST runs


def test_dead_process_on_this_host_is_lost(url_registry: Registry, url: str) -> None:
    run_id = new_run(url_registry)
    raw_update(url, run_id, pid=dead_pid())

    lost = url_registry.get_run(run_id)
    assert (lost.status, lost.display_status) == ("RUNNING", "LOST")
    assert [r.id for r in url_registry.list_runs(status="LOST")] == [run_id]
    assert url_registry.list_runs(status="RUNNING") == []

    # The same pid recorded by another machine says nothing about this one.
    raw_update(url, run_id, host="some-other-host")
    assert url_registry.get_run(run_id).display_status == "RUNNING"

    raw_update(url, run_id, host=socket.gethostname())
    url_registry.claim_run(run_id)  # a LOST run may be resumed
    resumed = url_registry.get_run(run_id)
    assert (resumed.display_status, resumed.pid, resumed.attempt) == ("RUNNING", os.getpid(), 2)


def test_stale_heartbeat_is_lost(url_registry: Registry, url: str) -> None:
    run_id = new_run(url_registry)
    finished = new_run(url_registry, "done")
    url_registry.finish_run(finished, "FINISHED", attempt=1)
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    raw_update(url, run_id, heartbeat_at=two_hours_ago)
    raw_update(url, finished, heartbeat_at=two_hours_ago)

    assert url_registry.get_run(run_id).display_status == "LOST"
    assert url_registry.get_run(finished).display_status == "FINISHED"
    with Registry(url, stale_after=3 * 3600) as patient:
        assert patient.get_run(run_id).display_status == "RUNNING"

    url_registry.log_epoch(run_id, 0, {"loss": 1.0}, [], attempt=1)  # logging is a heartbeat
    assert url_registry.get_run(run_id).display_status == "RUNNING"


# ------------------------------------------------------------------------------ layer stats


def test_layer_stats_last_epoch_only(registry: Registry) -> None:
    short = new_run(registry, "short")
    long = new_run(registry, "long")
    metrics_only = new_run(registry, "metrics-only")
    for epoch in range(3):
        registry.log_epoch(
            short, epoch, {"loss": 1.0}, [(i, f"l{i}", {"firing_rate": epoch + i / 10}) for i in range(2)], attempt=1
        )
    for epoch in (0, 1, 2, 3, 4):
        registry.log_epoch(long, epoch, {}, [(0, "stem.lif", {"entropy": epoch * 1.5, "firing_rate": 0.01})], attempt=1)
    registry.log_epoch(long, 1, {}, [(0, "stem.lif", {"entropy": 99.0})], attempt=1)  # re-log an old epoch
    registry.log_epoch(metrics_only, 5, {"loss": 0.5}, [], attempt=1)

    last = registry.layer_stats([short, long, metrics_only, short], last_epoch_only=True)
    expected = sorted(
        [
            (short, 2, 0, "l0", "firing_rate", 2.0),
            (short, 2, 1, "l1", "firing_rate", 2.1),
            (long, 4, 0, "stem.lif", "entropy", 6.0),
            (long, 4, 0, "stem.lif", "firing_rate", 0.01),
        ]
    )
    assert list(last.itertuples(index=False, name=None)) == expected

    at_one = registry.layer_stats([long, short], epoch=1)
    assert sorted(at_one.itertuples(index=False, name=None)) == sorted(
        [
            (long, 1, 0, "stem.lif", "entropy", 99.0),
            (short, 1, 0, "l0", "firing_rate", 1.0),
            (short, 1, 1, "l1", "firing_rate", 1.1),
        ]
    )
    assert list(at_one["run_id"]) == sorted(at_one["run_id"])
    assert len(registry.layer_stats([short, long])) == 6 + 9
    with pytest.raises(RegistryError, match="either epoch or last_epoch_only"):
        registry.layer_stats([short], epoch=1, last_epoch_only=True)


def test_many_run_ids_in_one_query(registry: Registry) -> None:
    run_ids = [new_run(registry, f"r{i}") for i in range(40)]
    for index, run_id in enumerate(run_ids):
        registry.log_epoch(
            run_id, index % 3, {"m": float(index)}, [(0, "stem.lif", {"firing_rate": float(index)})], attempt=1
        )
    wanted = run_ids + [f"missing{i:05d}" for i in range(2000)]  # beyond SQLite's 999 variables
    metrics = registry.epoch_metrics(wanted)
    assert list(metrics["run_id"]) == sorted(run_ids)
    by_run = dict(zip(metrics["run_id"], metrics["value"], strict=True))
    assert by_run == {run_id: float(i) for i, run_id in enumerate(run_ids)}
    assert len(registry.layer_stats(wanted, last_epoch_only=True)) == 40


def test_portable_read_path_matches_driver_cursor_path(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    run_ids = [new_run(registry, f"r{i}") for i in range(3)]
    for i, run_id in enumerate(run_ids):
        for epoch in range(i + 1):
            registry.log_epoch(
                run_id,
                epoch,
                {"loss": 1 / (epoch + 1), "acc": 0.5, "nan": float("nan")},
                [(0, "stem.lif", {"firing_rate": epoch / 7, "entropy": 0.5}), (1, "l1", {"firing_rate": float("nan")})],
                attempt=1,
            )

    def read() -> list[pd.DataFrame]:
        return [
            registry.epoch_metrics(run_ids),
            registry.epoch_metrics(run_ids, names=["acc", "nan"]),
            registry.layer_stats(run_ids, last_epoch_only=True),
            registry.layer_stats(run_ids, epoch=0, stats=["firing_rate"]),
            registry.layer_stats(run_ids, last_epoch_only=True, stats=["entropy"]),
        ]

    plain = reads_module.driver_rows_are_plain
    answers: list[bool] = []

    def spy(conn: Any) -> bool:
        answers.append(plain(conn))
        return answers[-1]

    monkeypatch.setattr(reads_module, "driver_rows_are_plain", spy)
    fast = read()
    assert answers and all(answers)  # pysqlite and psycopg both take the driver-cursor path
    # What any other driver goes through: SQLAlchemy result rows.
    monkeypatch.setattr(reads_module, "driver_rows_are_plain", lambda conn: False)
    portable = read()
    assert [len(frame) for frame in fast] == [18, 12, 9, 6, 3]
    for expected, actual in zip(fast, portable, strict=True):
        pd.testing.assert_frame_equal(actual, expected)


# ------------------------------------------------------------------------------ filters


def test_epoch_metrics_names_filter(registry: Registry) -> None:
    first, second = new_run(registry, "first"), new_run(registry, "second")
    for run_id, offset in ((first, 0.0), (second, 10.0)):
        for epoch in range(3):
            registry.log_epoch(
                run_id,
                epoch,
                {"test_acc": offset + epoch, "k": 2.0 * epoch, "mean_entropy": 0.5, "lr": 0.1},
                [],
                attempt=1,
            )
    registry.log_epoch(second, 3, {"lr": 0.01}, [], attempt=1)  # an epoch with none of the wanted names

    everything = registry.epoch_metrics([first, second])
    chosen = registry.epoch_metrics([second, first], names=["test_acc", "k", "test_acc"])
    expected = everything[everything["name"].isin(["test_acc", "k"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(chosen, expected)
    assert len(chosen) == 2 * 3 * 2
    assert list(chosen["name"].unique()) == ["k", "test_acc"]  # (run_id, epoch, name) order

    only = registry.epoch_metrics([first], names=("mean_entropy",))
    assert list(only.itertuples(index=False, name=None)) == [
        (first, 0, "mean_entropy", 0.5),
        (first, 1, "mean_entropy", 0.5),
        (first, 2, "mean_entropy", 0.5),
    ]
    for empty in (
        registry.epoch_metrics([first], names=[]),
        registry.epoch_metrics([first], names=["unknown"]),
        registry.epoch_metrics([], names=["k"]),
    ):
        assert empty.empty and list(empty.columns) == ["run_id", "epoch", "name", "value"]
        assert str(empty["epoch"].dtype) == "int64" and str(empty["value"].dtype) == "float64"
    with pytest.raises(RegistryError, match="names must be a sequence of names, not the string"):
        registry.epoch_metrics([first], names="test_acc")


def test_layer_stats_stats_filter(registry: Registry) -> None:
    run_id = new_run(registry)
    for epoch in range(3):
        registry.log_epoch(
            run_id,
            epoch,
            {},
            [(i, f"l{i}", {"entropy": epoch + i / 10, "firing_rate": 0.1, "membrane_mean": -1.0}) for i in range(2)],
            attempt=1,
        )
    registry.log_epoch(run_id, 3, {}, [(0, "l0", {"firing_rate": 0.2})], attempt=1)  # no entropy logged

    everything = registry.layer_stats([run_id])
    entropy = registry.layer_stats([run_id], stats=["entropy"])
    expected = everything[everything["stat"] == "entropy"].reset_index(drop=True)
    pd.testing.assert_frame_equal(entropy, expected)
    assert len(entropy) == 3 * 2

    at_one = registry.layer_stats([run_id], epoch=1, stats=["membrane_mean", "entropy"])
    assert list(at_one.itertuples(index=False, name=None)) == [
        (run_id, 1, 0, "l0", "entropy", 1.0),
        (run_id, 1, 0, "l0", "membrane_mean", -1.0),
        (run_id, 1, 1, "l1", "entropy", 1.1),
        (run_id, 1, 1, "l1", "membrane_mean", -1.0),
    ]
    # The last epoch is the run's last of any statistic: epoch 3, which has no entropy.
    assert registry.layer_stats([run_id], last_epoch_only=True, stats=["entropy"]).empty
    last_rate = registry.layer_stats([run_id], last_epoch_only=True, stats=["firing_rate"])
    assert list(last_rate.itertuples(index=False, name=None)) == [(run_id, 3, 0, "l0", "firing_rate", 0.2)]
    assert registry.layer_stats([run_id], stats=[]).empty
    with pytest.raises(RegistryError, match="stats must be a sequence of names"):
        registry.layer_stats([run_id], stats="entropy")


# ------------------------------------------------------------------------------ opening


def test_file_registry_uses_wal(file_registry: Registry, db_path: Path) -> None:
    assert db_path.is_file()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_master"))
    assert {"meta", "groups", "runs", "epoch_metrics", "layer_stats"} <= set(kinds)
    assert {"ix_runs_group_id", "ix_runs_status", "ix_runs_created_at"} <= set(kinds)


def test_reopen_sees_data_and_plain_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Registry("runs/registry.db") as first:
        run_id = new_run(first)
        first.log_epoch(run_id, 0, {"loss": 0.75}, [], attempt=1)
    assert (tmp_path / "runs" / "registry.db").is_file()
    with Registry(f"sqlite:///{tmp_path / 'runs' / 'registry.db'}") as second:
        assert second.epoch_metrics([run_id])["value"].tolist() == [0.75]
    (tmp_path / "empty.db").touch()  # a zero-byte file is an empty SQLite database
    with Registry(str(tmp_path / "empty.db")) as empty:
        assert empty.list_runs() == []


def test_schema_is_created_on_first_use(url: str) -> None:
    with Registry(url) as registry:
        run_id = new_run(registry)
    assert stored_schema_version(url) == str(SCHEMA_VERSION)
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"meta", "groups", "runs", "epoch_metrics", "layer_stats"} <= tables
    with Registry(url) as again:  # reopening finds the schema and the data
        assert again.get_run(run_id).name == "run"


def test_newer_schema_version_is_refused(url: str) -> None:
    Registry(url).close()
    set_schema_version(url, SCHEMA_VERSION + 1)
    with pytest.raises(
        RegistryError,
        match=rf"registry schema version {SCHEMA_VERSION + 1} is "
        rf"newer than this imloss understands "
        rf"\({SCHEMA_VERSION}\); upgrade imloss",
    ):
        Registry(url)


def test_a_version_without_migration_is_refused_and_each_step_runs_once(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Registry(url).close()
    set_schema_version(url, 0)
    with pytest.raises(RegistryError, match=f"has no migration from it to {SCHEMA_VERSION}"):
        Registry(url)

    applied: list[int] = []
    steps = {v: (lambda conn, v=v: applied.append(v)) for v in range(SCHEMA_VERSION)}
    monkeypatch.setattr(backend_module, "MIGRATIONS", steps)
    Registry(url).close()
    assert applied == list(range(SCHEMA_VERSION))
    Registry(url).close()  # already migrated: nothing runs again
    assert applied == list(range(SCHEMA_VERSION))
    assert stored_schema_version(url) == str(SCHEMA_VERSION)


def test_a_version_1_registry_is_migrated_keeping_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with Registry(str(path)) as reg:
        group = new_group(reg, "g", {}, {"loss.im_weight": [0, 1]}, ["ablate"])
        run_id = new_run(reg, group_id=group)
    with sqlite3.connect(path) as db:  # take the tables back to version 1
        db.execute("DROP INDEX ux_groups_key")
        v2_and_v3 = [("groups", "key"), ("runs", "heartbeat_s"), ("runs", "attempts"), *V3_COLUMNS]
        for table, column in v2_and_v3:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Registry(str(path)) as reg:
        run = reg.get_run(run_id)
        assert (run.group_id, run.attempts, run.heartbeat_s) == (group, [], None)
        assert reg.claim_group("k", "g2", {}, {}, []) == reg.claim_group("k", "other", {}, {}, [])
    assert stored_schema_version(f"sqlite:///{path}") == str(SCHEMA_VERSION)


V3_COLUMNS = [("epoch_metrics", "attempt"), ("layer_stats", "attempt"), ("runs", "reproduces")]


def test_a_version_2_registry_gets_attempts_on_its_epochs_and_unstarted_runs_at_attempt_0(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with Registry(str(path)) as reg:
        started = new_run(reg, "started")
        reg.log_epoch(started, 1, {"loss": 1.0}, [(0, "stem.lif", {"entropy": 0.5})], attempt=1)
        queued = new_run(reg, "queued", status="QUEUED")
    with sqlite3.connect(path) as db:  # take the tables back to version 2, as its code wrote them
        for table, column in V3_COLUMNS:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("UPDATE runs SET attempt = 1")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with Registry(str(path)) as reg:
        assert (reg.get_run(started).attempt, reg.get_run(queued).attempt) == (1, 0)
        assert reg.epoch_attempts(started) == {1: None}  # written before fencing: by no known attempt
        assert reg.claim_run(queued) == 1  # the first claim of a never-started run is attempt 1
        assert reg.epoch_metrics([started]).value.tolist() == [1.0]
    assert stored_schema_version(f"sqlite:///{path}") == str(SCHEMA_VERSION)


V3_CHECKS = {"status": "('QUEUED', 'RUNNING', 'FINISHED', 'FAILED', 'KILLED')", "kind": "('train', 'ablate')"}


def take_back_to_version_3(url: str) -> None:
    """The runs table's check constraints as version 3 wrote them (no kind 'tune', no PRUNED)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            for column, values in V3_CHECKS.items():
                conn.exec_driver_sql(
                    f"ALTER TABLE runs DROP CONSTRAINT ck_runs_{column}, "
                    f"ADD CONSTRAINT ck_runs_{column} CHECK ({column} IN {values})"
                )
        else:
            sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'runs'").scalar_one()
            for column, values in V3_CHECKS.items():
                sql = sql.replace(f"CHECK ({column} IN ({', '.join(repr(v) for v in registry_names(column))}))",
                                  f"CHECK ({column} IN {values})")  # fmt: skip
            cookie = conn.exec_driver_sql("PRAGMA schema_version").scalar_one()
            conn.exec_driver_sql("PRAGMA writable_schema = ON")
            conn.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE name = 'runs'", (sql,))
            conn.exec_driver_sql(f"PRAGMA schema_version = {cookie + 1}")
            conn.exec_driver_sql("PRAGMA writable_schema = OFF")
        conn.execute(update(Meta).where(Meta.key == "schema_version").values(value="3"))
    engine.dispose()


def registry_names(column: str) -> tuple[str, ...]:
    from imloss_cli.registry import KINDS, STATUSES

    return STATUSES if column == "status" else KINDS


def test_a_version_3_registry_takes_tune_runs_and_pruned_ends_keeping_its_runs(url: str) -> None:
    with Registry(url) as reg:
        old = new_run(reg, "old")
        reg.log_epoch(old, 1, {"loss": 1.0}, [], attempt=1)
    take_back_to_version_3(url)
    engine = create_engine(url)
    with pytest.raises(Exception, match="ck_runs_kind"), engine.begin() as conn:  # version 3 refuses the kind
        conn.execute(update(Run).where(Run.id == old).values(kind="tune"))
    engine.dispose()
    with Registry(url) as reg:
        trial = new_run(reg, "trial", kind="tune")
        reg.finish_run(trial, "PRUNED", attempt=1, error_message="pruned after epoch 1")
        assert (reg.get_run(trial).kind, reg.get_run(trial).status) == ("tune", "PRUNED")
        assert reg.get_run(trial).is_terminal
        assert reg.epoch_metrics([old]).value.tolist() == [1.0] and reg.get_run(old).status == "RUNNING"
        assert [r.id for r in reg.list_runs(status="PRUNED")] == [trial]
        with pytest.raises(RegistryError, match="only QUEUED, FAILED, KILLED or LOST runs"):
            reg.claim_run(trial)  # a pruned trial is a result: never resumed
    assert stored_schema_version(url) == str(SCHEMA_VERSION)
    engine = create_engine(url)
    with pytest.raises(Exception, match="ck_runs_status"), engine.begin() as conn:  # still a check constraint
        conn.execute(update(Run).where(Run.id == old).values(status="SOMETHING"))
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    engine.dispose()


def test_queue_planned_decides_under_the_group_lock_and_skips_known_fingerprints(registry: Registry) -> None:
    group = new_group(registry, "study", {}, {}, [])
    seen: list[dict[str, str]] = []

    def plan(known: Any, fingerprints: tuple[str, ...]) -> list[Any]:
        seen.append(dict(known))
        return [
            NewRun(name="t", recipe={}, config_hash="c", fingerprint=fp, seed=0, code_version="v", kind="tune")
            for fp in fingerprints
        ]

    first = registry.queue_planned(group, lambda known: plan(known, ("fp0", "fp1")))
    again = registry.queue_planned(group, lambda known: plan(known, ("fp1", "fp2")))
    assert len(first) == 2 and len(again) == 1  # fp1 was queued already
    assert seen[0] == {} and seen[1] == dict(zip(("fp0", "fp1"), first))
    assert sorted(r.fingerprint for r in registry.list_runs(group_id=group)) == ["fp0", "fp1", "fp2"]

    def broken(known: Any) -> list[Any]:
        raise ValueError("the plan failed")

    with pytest.raises(ValueError, match="the plan failed"):
        registry.queue_planned(group, broken)
    assert len(registry.list_runs(group_id=group)) == 3
    with pytest.raises(RegistryError, match="no group with id 'nope'"):
        registry.queue_planned("nope", lambda known: [])


def test_a_side_schema_holds_another_tools_tables_beside_a_postgresql_registry(
    postgres_url: str, postgres_admin: Engine
) -> None:
    with Registry(postgres_url, write=False) as reg:
        assert reg.side_schema_url("optuna", create=False) is None
        url = reg.side_schema_url("optuna", create=True)
        assert url is not None and reg.side_schema_url("optuna", create=False) == url
    schema = postgres_url.rsplit("search_path%3D", 1)[-1].rsplit("search_path=", 1)[-1] + "_optuna"
    assert f"search_path%3D{schema}" in url or f"search_path={schema}" in url
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE other_tool (x INTEGER)")  # lands in the side schema
    engine.dispose()
    registry_tables = set(inspect(create_engine(postgres_url)).get_table_names())
    assert "other_tool" not in registry_tables and "runs" in registry_tables
    with postgres_admin.connect() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def test_a_side_schema_is_refused_beside_a_sqlite_registry(file_registry: Registry, db_path: Path) -> None:
    assert file_registry.path == db_path
    with pytest.raises(RegistryError, match="is not a PostgreSQL registry"):
        file_registry.side_schema_url("optuna", create=True)


def test_foreign_database_is_refused(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(
        RegistryError,
        match=r"is not an imloss registry: it has tables users "
        r"but no 'meta' table",
    ):
        Registry(url)


def test_not_a_database_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the tables you are looking for\n" * 20)
    with pytest.raises(RegistryError) as error:
        Registry(str(path))
    assert str(error.value) == f"file is not an imloss registry (not a SQLite database): {path}"
    assert path.read_text().startswith("these are not")  # left untouched


def test_directory_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="is a directory, not a registry file"):
        Registry(str(tmp_path))


def test_path_under_a_file_is_not_writable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "afile" / "reg.db"
    with pytest.raises(RegistryError, match=rf"registry path {path} is not writable"):
        Registry(str(path))


def test_read_only_database_is_not_writable(db_path: Path) -> None:
    Registry(str(db_path)).close()
    # A read-only URI open fails even for root, unlike chmod.
    with pytest.raises(RegistryError, match=rf"registry {db_path} is not writable"):
        Registry(f"sqlite:///file:{db_path}?mode=ro&uri=true")


def test_read_only_directory_is_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod does not stop this user from writing")
        with pytest.raises(RegistryError, match="is not writable"):
            Registry(str(locked / "reg.db"))
    finally:
        locked.chmod(0o755)


def test_unopenable_url_empty_location_and_bad_stale_after_are_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot open registry") as error:
        Registry("postgresql+nosuchdriver://user:secret@host/db")
    assert "secret" not in str(error.value)
    with pytest.raises(RegistryError, match="registry location is empty"):
        Registry("")
    with pytest.raises(RegistryError, match="stale_after must be a positive"):
        Registry("sqlite://", stale_after=0)


def test_unreachable_server_is_a_registry_error() -> None:
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is the 'postgres' extra")
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    url = "postgresql+psycopg://someone:secret@127.0.0.1:1/imloss?connect_timeout=5"
    with pytest.raises(
        RegistryError,
        match=r"^cannot connect to registry postgresql\+psycopg://"
        r"someone:\*\*\*@127\.0\.0\.1:1/imloss",
    ) as error:
        Registry(url)
    assert "secret" not in str(error.value)


def test_in_memory_sessions_share_one_database() -> None:
    with Registry("sqlite://") as registry:
        run_id = new_run(registry)
        assert registry.get_run(run_id).name == "run"
        assert registry.url == "sqlite://"
    with Registry("sqlite://") as other:  # a new in-memory registry is empty
        assert other.list_runs() == []


def test_registry_imports_only_stdlib_sqlalchemy_and_pandas() -> None:
    allowed = set(sys.stdlib_module_names) | {"sqlalchemy", "pandas", "numpy"}  # numpy: pandas's
    ours = {"imloss_cli", "imloss_cli.errors"}  # its constants and the exception tree import nothing
    for source in PACKAGE.glob("*.py"):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: must stay inside the registry package
                    assert node.level == 1, f"{source.name} imports outside the registry"
                    continue
                if node.module in ours:
                    continue
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{source.name} imports {roots - allowed}"


# ------------------------------------------------------------------------------ processes


def load_writer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("registry_writer", WRITER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_writers(url: str, count: int, epochs: int, layers: int) -> list[str]:
    """Start ``count`` writer processes, release them at the same moment, return their output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WRITER), url, f"writer-{i}", str(epochs), str(layers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for i in range(count)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:  # all imports are done: start the writes together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert "database is locked" not in err
        assert proc.returncode == 0, err
    return [out.strip() for out, _ in outputs]


def check_writers_landed(url: str, count: int, epochs: int, layers: int) -> None:
    writer = load_writer()
    with Registry(url) as registry:
        runs = registry.list_runs()
        assert sorted(run.name for run in runs) == sorted(f"writer-{i}" for i in range(count))
        assert {run.status for run in runs} == {"FINISHED"}
        ids = [run.id for run in runs]
        metrics = registry.epoch_metrics(ids)
        layers_frame = registry.layer_stats(ids)
    number = {run.id: int(run.name.rsplit("-", 1)[1]) for run in runs}
    assert len(metrics) == count * epochs * len(writer.METRICS)
    assert len(layers_frame) == count * epochs * layers * len(writer.STATS)
    metric_index = {name: i for i, name in enumerate(writer.METRICS)}
    for run_id, epoch, name, value in metrics.itertuples(index=False, name=None):
        assert value == writer.expected_value(number[run_id], epoch, 999, metric_index[name])
    stat_index = {name: i for i, name in enumerate(writer.STATS)}
    for run_id, epoch, layer, layer_name, stat, value in layers_frame.itertuples(index=False, name=None):
        assert layer_name == f"layer{layer}.lif"
        assert value == writer.expected_value(number[run_id], epoch, layer, stat_index[stat])


def test_two_processes_create_and_write_one_registry_at_once(url: str) -> None:
    printed = run_writers(url, 2, epochs=30, layers=4)
    assert len(set(printed)) == 2
    check_writers_landed(url, 2, epochs=30, layers=4)


def test_eight_processes_write_one_registry_at_once(url: str) -> None:
    run_writers(url, 8, epochs=30, layers=4)
    check_writers_landed(url, 8, epochs=30, layers=4)


def test_values_are_stored_as_numbers(file_registry: Registry, db_path: Path) -> None:
    run_id = new_run(file_registry, seed=123)
    file_registry.log_epoch(run_id, 2, {"loss": 0.5}, [(3, "stem.lif", {"firing_rate": 0.25})], attempt=1)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT typeof(seed), typeof(pid), typeof(created_at) FROM runs").fetchone() == (
            "integer",
            "integer",
            "real",
        )
        assert conn.execute("SELECT typeof(epoch), typeof(value) FROM epoch_metrics").fetchone() == ("integer", "real")
        assert conn.execute("SELECT typeof(layer_index), typeof(value) FROM layer_stats").fetchone() == (
            "integer",
            "real",
        )
    created = file_registry.get_run(run_id).created_at
    assert abs((created - datetime.now(UTC)).total_seconds()) < 60
    assert not math.isnan(file_registry.epoch_metrics([run_id])["value"].iloc[0])
