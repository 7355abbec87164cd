"""Ablation grids as pure recipe work: the trials a spec plans."""

from __future__ import annotations

from imloss_cli.ablate.grid import plan_trials
from imloss_cli.recipe import load_recipe


def test_the_ann_twin_axis_plans_one_twin_per_seed_however_many_lambdas() -> None:
    trials = plan_trials(
        load_recipe(None), {"model.neuron": ["lif", "relu"], "loss.im_weight": [0, 2]}, [0, 1], "0.1.0"
    )
    planned = [(t.recipe.model.neuron, t.recipe.loss.im_weight, t.recipe.model.timesteps, t.values["train.seed"])
               for t in trials]  # fmt: skip
    # the twin sets lambda = 0 and T = 1: its lambda = 2 combination is the lambda = 0 one
    assert planned == [
        ("lif", 0.0, 4, 0),
        ("lif", 0.0, 4, 1),
        ("lif", 2.0, 4, 0),
        ("lif", 2.0, 4, 1),
        ("relu", 0.0, 1, 0),
        ("relu", 0.0, 1, 1),
    ]
    assert len({t.fingerprint for t in trials}) == 6
