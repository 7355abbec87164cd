"""A study's section of the report (``imloss tune``): its trials, its Pareto front, parameter importances.

The front is computed here from the registry's metrics (``tune.front``: each trial's numbers at its
best-validation epoch, a brute-force non-dominated filter over the finished, feasible trials) and
checked against Optuna's ``best_trials``; a disagreement is a warning. Importances come from Optuna
(fANOVA) where it can compute them. Without the ``[tune]`` extra the section still has the trials
and the front, and says what it left out. No torch here; Optuna is imported only to read the study.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from imloss_cli.recipe import RecipeError
from imloss_cli.registry import FINISHED, INVALID, Registry, RunInfo
from imloss_cli.tune.errors import TuneError
from imloss_cli.tune.front import feasible, front_of, selected_epochs, trial_status
from imloss_cli.tune.space import SELECTOR, StudySpec, trial_number
from imloss_cli.tune.storage import SEED_ATTR, load_study

SHOWN = ("test_acc", "energy_uj", "sops")  # read at each trial's selected epoch besides the study's own metrics


@dataclass(frozen=True, eq=False)  # a generated __eq__ would compare DataFrames ambiguously
class StudyReport:
    """What a study found.

    Attributes:
        group_id: the study's group.
        spec: what it searched, optimised and required.
        trials: one row per trial, in trial order: trial, run_id, status (the run's, or DIVERGED, or
            INVALID for values that made no recipe), one column per searched field, epoch (the selected
            one), the study's metrics and ``SHOWN`` there, one column per constraint (Optuna's value,
            feasible when <= 0), feasible, on_front, baseline, sampler_seed.
        importances: index the searched fields, one column per objective: fANOVA importance (sums to
            1 per objective); empty where Optuna could not compute them.
        notes: what a reader should know about the section (the check against Optuna, importances).
    """

    group_id: str
    spec: StudySpec
    trials: pd.DataFrame
    importances: pd.DataFrame
    notes: list[str]

    @property
    def front(self) -> pd.DataFrame:
        """The trials on the front, best first by the first objective."""
        first = self.spec.objectives[0]
        front = self.trials[self.trials["on_front"]]
        return front.sort_values([first.metric, "trial"], ascending=[not first.maximize, True])

    @property
    def params(self) -> list[str]:
        return [p.field for p in self.spec.params]


def is_study(members: Sequence[RunInfo]) -> bool:
    """``members`` are the trials of one study (``imloss tune``)."""
    return bool(members) and len({r.group_id for r in members}) == 1 and all(r.kind == "tune" for r in members)


def study_section(registry: Registry, members: Sequence[RunInfo]) -> tuple[StudyReport | None, list[str]]:
    """The study section of a report over ``members`` and its warnings; (None, []) unless they are one study's runs."""
    if not is_study(members):
        return None, []
    group = registry.get_group(str(members[0].group_id))
    try:
        spec = StudySpec.from_record(group.axes)
    except RecipeError as e:
        return None, [f"group {group.id} holds tune runs but no readable study record: {e}"]
    trials = _trials(registry, members, spec)
    notes: list[str] = []
    warnings: list[str] = []
    importances = pd.DataFrame(index=pd.Index([], name="param"))
    try:
        study = load_study(registry, group.id)
    except TuneError as e:
        study = None
        notes.append(f"{e}: the check against Optuna's record and parameter importances are left out")
    if study is not None:
        trials = _with_optuna(trials, study, spec)
        warnings += _check_front(trials, study)
        importances, note = _importances(study, spec)
        notes += [note]
    elif not notes:
        notes.append("no Optuna record of this study beside the registry: the front is the registry's alone")
    trials["baseline"] = spec.baseline & (trials["trial"] == 0)
    return StudyReport(group.id, spec, trials.reset_index(drop=True), importances, notes), warnings


def _trials(registry: Registry, members: Sequence[RunInfo], spec: StudySpec) -> pd.DataFrame:
    runs = [r for r in members if trial_number(r.fingerprint) is not None]
    names = list(dict.fromkeys([*spec.metrics, *SHOWN]))
    chosen = selected_epochs(registry.epoch_metrics([r.id for r in runs], names=names), names)
    rows = pd.DataFrame(
        {
            "trial": [trial_number(r.fingerprint) for r in runs],
            "run_id": [r.id for r in runs],
            "status": [trial_status(r) for r in runs],
            **{p: [_dotted(r.recipe, p) for r in runs] for p in (q.field for q in spec.params)},
        }
    )
    rows = rows.merge(chosen, on="run_id", how="left").sort_values("trial").reset_index(drop=True)
    for name in names:
        if name not in rows:
            rows[name] = float("nan")
    rows["epoch"] = rows["epoch"].astype("Int64")
    for c in spec.constraints:
        rows[c.text] = c.violation(rows[c.metric])
    rows["feasible"] = feasible(rows, spec.constraints) & rows[SELECTOR].notna()
    rows["on_front"] = front_of(rows, spec.objectives, (rows["status"] == FINISHED) & rows["feasible"])
    rows["sampler_seed"] = pd.array([None] * len(rows), dtype="Int64")
    return rows


def _with_optuna(trials: pd.DataFrame, study: Any, spec: StudySpec) -> pd.DataFrame:
    """Sampler seeds from Optuna's trials, and a row for each trial Optuna failed without a run (INVALID)."""
    recorded = {t.number: t for t in study.get_trials(deepcopy=False)}
    seeds = {n: t.user_attrs.get(SEED_ATTR) for n, t in recorded.items()}
    trials["sampler_seed"] = pd.array([seeds.get(n) for n in trials["trial"]], dtype="Int64")
    missing = [t for n, t in sorted(recorded.items()) if n not in set(trials["trial"]) and t.state.name == "FAIL"]
    if not missing:
        return trials
    extra = pd.DataFrame(
        {
            "trial": [t.number for t in missing],
            "status": INVALID,
            "sampler_seed": pd.array([t.user_attrs.get(SEED_ATTR) for t in missing], dtype="Int64"),
            "feasible": False,
            "on_front": False,
            **{p.field: [t.params.get(p.field) for t in missing] for p in spec.params},
        }
    )
    return pd.concat([trials, extra], ignore_index=True).sort_values("trial").reset_index(drop=True)


def _check_front(trials: pd.DataFrame, study: Any) -> list[str]:
    ours = sorted(int(n) for n in trials.loc[trials["on_front"], "trial"])
    theirs = sorted(t.number for t in study.best_trials)
    if ours == theirs:
        return []
    return [
        f"the front from the registry's metrics (trials {ours}) differs from Optuna's best_trials (trials {theirs}): "
        "Optuna was told other numbers than the registry holds, or has not been told every finished trial yet"
    ]


def _importances(study: Any, spec: StudySpec) -> tuple[pd.DataFrame, str]:
    """fANOVA importance of each searched field per objective (Optuna), or why there is none."""
    import optuna

    empty = pd.DataFrame(index=pd.Index([], name="param"))
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return empty, f"parameter importances need at least 2 finished trials; the study has {len(done)}"
    varying = [p.field for p in spec.params if len({repr(t.params.get(p.field)) for t in done}) > 1]
    if not varying:
        return empty, "parameter importances need a searched field that varies between finished trials"
    table = {}
    for i, objective in enumerate(spec.objectives):
        try:
            table[objective.metric] = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varying,
                target=lambda t, i=i: t.values[i],
            )  # fmt: skip
        except (ValueError, RuntimeError) as e:
            return empty, f"Optuna could not compute parameter importances: {e}"
    frame = pd.DataFrame(table).reindex(varying)
    frame.index.name = "param"
    return frame, f"parameter importances: fANOVA over {len(done)} finished trials (rough with few trials)"


def _dotted(recipe: dict[str, Any], path: str) -> Any:
    node: Any = recipe
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
