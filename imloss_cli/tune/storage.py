"""Optuna's side of a study: where its record lives beside the registry, and the objects it is made of.

Optuna's tables never mix with the registry's:

- a SQLite registry at ``PATH`` keeps the study in the journal file ``PATH.optuna.journal`` (Optuna's
  ``JournalFileBackend``: an append-only log under a lock file, safe for several processes on one
  host); ``optuna-dashboard PATH.optuna.journal`` opens it;
- a PostgreSQL registry keeps it in the same database, in a schema of its own (``imloss_optuna``,
  or ``<schema>_optuna`` beside a registry in another schema; ``Registry.side_schema_url``):
  ``optuna-dashboard 'postgresql+psycopg://USER:PASSWORD@HOST/DB?options=-csearch_path=imloss_optuna'``.

Each study is named after its group (``imloss-<group id>``). Optuna is imported here only, and only
when a study is opened: without the ``[tune]`` extra everything else of imloss works. No torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sqlalchemy import make_url

from imloss_cli.registry import Registry

from .errors import TuneError
from .space import Objective, Param

if TYPE_CHECKING:
    import optuna

# What a study's Optuna trials carry besides Optuna's own record.
RUN_ATTR = "imloss_run_id"  # the trial's run in the registry
SEED_ATTR = "imloss_sampler_seed"  # the seed of the sampler of the worker that asked it
EPOCH_ATTR = "imloss_epoch"  # the epoch whose numbers were told
FAILURE_ATTR = "imloss_failure"  # why a trial was told FAIL

JOURNAL_SUFFIX = ".optuna.journal"
SCHEMA_SUFFIX = "optuna"
INSTALL = 'pip install -e ".[tune]"'


def require_optuna() -> ModuleType:
    """The optuna module (TuneError naming the extra to install when it is missing)."""
    try:
        return importlib.import_module("optuna")
    except ImportError:
        raise TuneError(f"imloss tune needs Optuna: {INSTALL} (or pip install optuna)") from None


def study_name(group_id: str) -> str:
    """The Optuna study of a registry group."""
    return f"imloss-{group_id}"


def journal_path(registry_file: Path) -> Path:
    """Where the studies of a SQLite registry at ``registry_file`` are kept: the file beside it."""
    return registry_file.with_name(registry_file.name + JOURNAL_SUFFIX)


def where(registry: Registry) -> str:
    """Where a registry's studies live, in words, with the command that opens them (no password)."""
    if registry.path is not None:
        path = journal_path(registry.path)
        return f"{path} (optuna-dashboard {path})"
    url = registry.side_schema_url(SCHEMA_SUFFIX, create=False) if registry.url.startswith("postgresql") else None
    if url is None:
        return f"nowhere yet: no study beside {registry.url}"
    schema = make_url(url).query["options"].removeprefix("-csearch_path=")
    shown = f"{registry.url}{'&' if '?' in registry.url else '?'}options=-csearch_path={schema}"
    return (
        f"schema {schema} beside {registry.url} (optuna-dashboard '{shown}', *** being the password, "
        "or a URL without it and the password in ~/.pgpass)"
    )


def storage_for(registry: Registry, *, create: bool) -> optuna.storages.BaseStorage | None:
    """The Optuna storage beside ``registry``; with ``create=False``, None where there is none yet.

    Raises:
        TuneError: Optuna is missing, or the registry is in memory or on another server than PostgreSQL.
    """
    optuna = require_optuna()
    if registry.path is not None:
        path = journal_path(registry.path)
        if not create and not path.exists():
            return None  # the backend would create the file: a reading command writes nothing
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if registry.url.startswith("postgresql"):
        url = registry.side_schema_url(SCHEMA_SUFFIX, create=create)
        return None if url is None else optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    raise TuneError(
        f"imloss tune keeps its studies beside a SQLite file or a PostgreSQL registry; {registry.url} is neither"
    )


def sampler_seed(seed: int, number: int) -> int:
    """The seed trial ``number`` of a study with ``--seed seed`` is sampled with (recorded with the trial)."""
    return (seed * 1_000_003 + number) % 2**32


def make_sampler(seed: int) -> Any:
    """TPE, for one objective and for several: with tens of trials, each a training run, TPE's model
    of the good and bad regions pays off long before NSGA-II's first generation (50 trials by
    default) has even been sampled; it honours constraints, and its constant liar steers parallel
    workers away from the values of the trials still running."""
    return require_optuna().samplers.TPESampler(seed=seed, constant_liar=True)


def open_study(registry: Registry, group_id: str, objectives: tuple[Objective, ...], *, pruner: Any) -> optuna.Study:
    """The group's study, created now if it does not exist, with the study's pruner.

    Its sampler is replaced before every trial is sampled (``make_sampler(sampler_seed(seed,
    number))``): trial N's values are a function of the seed, N and the trials before it, so one
    worker repeats a study exactly, across restarts too, and workers on several machines never
    repeat each other's random draws.
    """
    optuna = require_optuna()
    # The command's own view reports trials; Optuna's INFO line per trial would repeat it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_for(registry, create=True)
    sampler = make_sampler(0)
    directions = ["maximize" if o.maximize else "minimize" for o in objectives]
    return optuna.create_study(
        storage=storage, study_name=study_name(group_id), directions=directions, sampler=sampler, pruner=pruner,
        load_if_exists=True,
    )  # fmt: skip


def load_study(registry: Registry, group_id: str) -> optuna.Study | None:
    """The group's study as recorded (reading only); None where there is none."""
    optuna = require_optuna()
    storage = storage_for(registry, create=False)
    if storage is None:
        return None
    try:
        return optuna.load_study(study_name=study_name(group_id), storage=storage)
    except KeyError:
        return None


def make_pruner(name: str, epochs: int) -> Any:
    """``--pruner``: median (Optuna's defaults: 5 finished trials before any is pruned), hyperband
    (from 1 epoch to the recipe's epochs, a third kept at each rung) or none."""
    optuna = require_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, param: Param) -> Any:
    """The trial's value of one searched field: drawn now, or the one it already has (a fixed or
    enqueued value, or one drawn before)."""
    if param.dist == "choice":
        return trial.suggest_categorical(param.field, list(param.choices))
    if param.dist == "int":
        return trial.suggest_int(param.field, int(param.low), int(param.high))  # type: ignore[arg-type]
    return trial.suggest_float(param.field, float(param.low), float(param.high), log=param.dist == "log")  # type: ignore[arg-type]
