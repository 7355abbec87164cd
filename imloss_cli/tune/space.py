"""What a study searches, and for what: the space, the objectives, the constraints and the pruner.

Read from the command line (``--space loss.im_weight=float(0,4)``, ``--objective val_acc:max``,
``--constraint energy_uj<=0.2``, ``--pruner median``) into a :class:`StudySpec`, then checked against
the base recipe by :func:`check_study` before anything is written: every bound and every choice must
be a value its recipe field takes. Pure recipe work (no torch, no Optuna, no registry), so the report
reads a study's record with it too.

A study's numbers come from one epoch of each trial: the epoch with the best validation accuracy
(:data:`SELECTOR`), because that is the model a researcher would keep without looking at the test
set; every objective and constraint is read at that same epoch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imloss_cli.recipe import Recipe, RecipeError, config_hash, parse_value

DISTRIBUTIONS: tuple[str, ...] = ("float", "log", "int", "choice")
PRUNERS: tuple[str, ...] = ("none", "median", "hyperband")
DIRECTIONS: tuple[str, ...] = ("max", "min")
SELECTOR = "val_acc"
"""The metric whose best epoch gives a trial's numbers (ties: the earliest epoch)."""
METRICS: tuple[str, ...] = (
    "val_acc", "val_loss", "energy_uj", "sops", "macs", "mean_entropy", "mean_firing_rate", "train_acc", "loss",
    "epoch_seconds",
)  # fmt: skip
"""Epoch metrics a study may optimise or constrain (test metrics never: see :func:`_metric_problem`)."""
TEST_METRICS: tuple[str, ...] = ("test_acc", "test_loss")

_DIST = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$")
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=)\s*(\S.*?)\s*$")
_TRIAL = re.compile(r":trial-(\d+)$")


@dataclass(frozen=True)
class Param:
    """One searched recipe field: ``float(a,b)``, ``log(a,b)`` (float, log-uniform), ``int(a,b)`` or
    ``choice(x,y,...)``; bounds inclusive."""

    field: str
    dist: str
    low: int | float | None = None
    high: int | float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def text(self) -> str:
        """As typed after ``--space KEY=``, canonically (``float(0,4)``); read back by :func:`parse_param`."""
        items = self.choices if self.dist == "choice" else (self.low, self.high)
        return f"{self.dist}({','.join(_value_text(v) for v in items)})"

    def probes(self) -> list[Any]:
        """The values to try on the recipe: both bounds (as floats for a float field), or every choice."""
        if self.dist == "choice":
            return list(self.choices)
        if self.dist == "int":
            return [self.low, self.high]
        return [float(self.low), float(self.high)]  # type: ignore[arg-type]

    def contains(self, value: Any) -> bool:
        if self.dist == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        return numeric and self.low <= value <= self.high  # type: ignore[operator]


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "max" or "min"

    @property
    def text(self) -> str:
        return f"{self.metric}:{self.direction}"

    @property
    def maximize(self) -> bool:
        return self.direction == "max"


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # "<=" or ">="
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{_value_text(self.bound)}"

    def violation(self, value: float) -> float:
        """Optuna's constraint value: feasible when <= 0 (``value - bound`` for <=, ``bound - value`` for >=)."""
        return value - self.bound if self.op == "<=" else self.bound - value


@dataclass(frozen=True)
class StudySpec:
    """A study's search: what it varies, what it optimises, what it requires, how it prunes."""

    params: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()
    pruner: str = "none"
    baseline: bool = False  # trial 0 is the base recipe's own values

    @classmethod
    def from_options(
        cls, space: Sequence[str], objectives: Sequence[str], constraints: Sequence[str], pruner: str, baseline: bool
    ) -> StudySpec:
        """Read the tune command's options (all problems at once).

        Raises:
            RecipeError: a malformed or repeated item, an unknown distribution or metric, a test-set
                metric, an empty range, or a pruner on a multi-objective study.
        """
        problems: list[str] = []
        params = _collect([_read(parse_param, item, "--space", problems) for item in space])
        objs = _collect([_read(parse_objective, item, "--objective", problems) for item in objectives])
        cons = _collect([_read(parse_constraint, item, "--constraint", problems) for item in constraints])
        if not space:
            problems.append("no --space given: name a field and its values, e.g. --space loss.im_weight=float(0,4)")
        if not objectives:
            problems.append("no --objective given: name a metric and its direction, e.g. --objective val_acc:max")
        for what, names in (("--space", [p.field for p in params]), ("--objective", [o.metric for o in objs])):
            problems += [f"{what} {name}: given twice" for name in sorted({n for n in names if names.count(n) > 1})]
        if pruner not in PRUNERS:
            problems.append(f"--pruner {pruner!r}: use one of {', '.join(PRUNERS)}{_did_you_mean(pruner, PRUNERS)}")
        elif pruner != "none" and len(objs) > 1:
            problems.append(
                f"--pruner {pruner}: Optuna prunes single-objective studies only (a trial of a {len(objs)}-objective "
                "study has no one value to compare at an epoch); use --pruner none, or one --objective"
            )
        if problems:
            raise RecipeError(problems)  # the command line, not a recipe: the messages name the options
        return cls(tuple(params), tuple(objs), tuple(cons), pruner, baseline)

    def record(self) -> dict[str, Any]:
        """What the study's group records (its ``axes``); :meth:`from_record` reads it back."""
        return {
            "space": {p.field: p.text for p in self.params},
            "objectives": [o.text for o in self.objectives],
            "constraints": [c.text for c in self.constraints],
            "pruner": self.pruner,
            "baseline": self.baseline,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StudySpec:
        """The spec a study's group recorded (RecipeError: not a study's record)."""
        if not isinstance(record.get("space"), dict) or "objectives" not in record:
            raise RecipeError(["this group is not a study of imloss tune (its record has no space and objectives)"])
        return cls.from_options(
            [f"{field}={text}" for field, text in record["space"].items()],
            record["objectives"],
            record.get("constraints", []),
            record.get("pruner", "none"),
            bool(record.get("baseline", False)),
        )

    @property
    def metrics(self) -> list[str]:
        """Every metric the study reads from a trial's epochs: the selector, objectives, constraints."""
        return list(
            dict.fromkeys([SELECTOR, *(o.metric for o in self.objectives), *(c.metric for c in self.constraints)])
        )


def parse_param(item: str) -> Param:
    """``KEY=DIST`` as a :class:`Param` (ValueError with the reason)."""
    key, sep, text = item.partition("=")
    field = key.strip()
    if not sep or not field:
        raise ValueError("expected KEY=DIST, e.g. loss.im_weight=float(0,4)")
    match = _DIST.match(text)
    if match is None:
        raise ValueError("expected DIST as float(a,b), log(a,b), int(a,b) or choice(x,y,...)")
    dist, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
    if dist not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown distribution {dist!r}{_did_you_mean(dist, DISTRIBUTIONS)}; use float, log, int or choice"
        )
    values = [parse_value(a) for a in args if a]
    if dist == "choice":
        if len(values) < 2 or len(values) != len(args):
            raise ValueError("choice needs two or more values, e.g. choice(esg,fixed); fix one value with --set")
        if any(not isinstance(v, str | int | float | bool) for v in values) or len(set(map(repr, values))) < len(
            values
        ):
            raise ValueError("choice values are distinct numbers, words or true/false")
        return Param(field, dist, choices=tuple(values))
    if len(values) != 2 or len(args) != 2:
        raise ValueError(f"{dist} needs two bounds, e.g. {dist}(1,8)")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if dist == "int" and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"int bounds are integers, got {text.strip()}")
    if not numbers:
        raise ValueError(f"{dist} bounds are finite numbers, got {text.strip()}")
    low, high = values
    if not low < high:
        raise ValueError(f"low {_value_text(low)} must be below high {_value_text(high)}; fix one value with --set")
    if dist == "log" and low <= 0:
        raise ValueError(f"log needs bounds above 0 (it samples log-uniformly), got low {_value_text(low)}")
    return Param(field, dist, low, high)


def parse_objective(item: str) -> Objective:
    """``METRIC:max`` or ``METRIC:min`` as an :class:`Objective` (ValueError with the reason)."""
    metric, sep, direction = (part.strip() for part in item.partition(":"))
    if not sep or direction not in DIRECTIONS:
        raise ValueError("expected METRIC:max or METRIC:min, e.g. val_acc:max")
    _check_metric(metric)
    return Objective(metric, direction)


def parse_constraint(item: str) -> Constraint:
    """``METRIC<=X`` or ``METRIC>=X`` as a :class:`Constraint` (ValueError with the reason)."""
    match = _CONSTRAINT.match(item)
    bound = parse_value(match.group(3)) if match else None
    if match is None or not isinstance(bound, int | float) or isinstance(bound, bool) or not math.isfinite(bound):
        raise ValueError("expected METRIC<=X or METRIC>=X with a number X, e.g. energy_uj<=0.2")
    _check_metric(match.group(1))
    return Constraint(match.group(1), match.group(2), float(bound))


def check_study(base: Recipe, spec: StudySpec) -> None:
    """Refuse a study that cannot run as asked, before anything is written (every problem at once).

    The base recipe must hold out a validation split (a study selects on it); every bound and choice
    of the space must be a value its field takes, with the recipe's other values; with ``baseline``,
    the recipe's own value of each field must lie in its space (it is trial 0).

    Raises:
        RecipeError: one line per problem, naming the option and the field.
    """
    problems = []
    if base.data.val_fraction <= 0:
        problems.append(
            "data.val_fraction is 0: a study selects trials on a validation split held out of the training data; "
            "give --set data.val_fraction=0.2 (tuning on the test set would select on the numbers it reports, the "
            "selection bias the report warns about)"
        )
    for p in spec.params:
        for value in p.probes():
            try:
                base.with_overrides({p.field: value})
            except RecipeError as e:
                problems += [f"--space {p.field}={p.text}: {line}" for line in e.problems]
    if spec.baseline and not problems:
        current = recipe_values(base, spec)
        problems += [
            f"--baseline: the recipe's {p.field} = {_value_text(current[p.field])} is outside {p.text}; widen the "
            "space to hold it, or leave out --baseline"
            for p in spec.params
            if not p.contains(current[p.field])
        ]
    if problems:
        raise RecipeError(list(dict.fromkeys(problems)))


def recipe_values(recipe: Recipe, spec: StudySpec) -> dict[str, Any]:
    """The recipe's own value of every searched field (``--baseline``'s trial 0)."""
    data = recipe.model_dump(mode="json")
    return {p.field: _dotted(data, p.field) for p in spec.params}


def study_key(base: Recipe, spec: StudySpec) -> str:
    """What makes two tune commands one study: the base configuration and seed, and the spec.

    ``--trials``, ``--jobs`` and the sampler's ``--seed`` are not part of it: rerunning with more
    trials continues the study, and workers with other seeds join it.
    """
    record = {"config_hash": config_hash(base), "seed": base.train.seed or 0, "study": spec.record()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def trial_fingerprint(key: str, number: int) -> str:
    """A trial's run in its study: the registry finds it by this fingerprint, whoever queued it."""
    return f"{key[:16]}:trial-{number}"


def trial_number(fingerprint: str) -> int | None:
    """The Optuna trial number of a study's run (None: not a trial's fingerprint)."""
    match = _TRIAL.search(fingerprint)
    return int(match.group(1)) if match else None


def _check_metric(metric: str) -> None:
    if metric in TEST_METRICS:
        raise ValueError(
            f"{metric} is measured on the test set: selecting on it is the selection bias the report warns about; "
            f"use {metric.replace('test_', 'val_')} (data.val_fraction > 0)"
        )
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}{_did_you_mean(metric, METRICS)}; known: {', '.join(METRICS)}")


def _read(parse: Any, item: str, option: str, problems: list[str]) -> Any:
    try:
        return parse(item)
    except ValueError as e:
        problems.append(f"{option} {item!r}: {e}")
        return None


def _collect(items: list[Any]) -> list[Any]:
    return [item for item in items if item is not None]


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _value_text(value: Any) -> str:
    """A value as typed on the command line: 0.001, 4, esg, true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)


def _dotted(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data
