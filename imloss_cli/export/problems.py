"""What the exports refuse, said before anything runs: torch-free, so ``imloss validate`` can warn."""

from __future__ import annotations

from imloss_cli.errors import ImlossError
from imloss_cli.recipe import Recipe


class ExportError(ImlossError):
    """A network, or a layer of it, that NIR cannot express; nothing was written."""


def export_problems(recipe: Recipe) -> list[str]:
    """Why a recipe's network cannot be exported to NIR (empty: it can); ``validate`` warns with these."""
    problems = []
    if recipe.model.neuron == "relu":
        problems.append("model.neuron = 'relu': the ANN twin has no spiking layers to export")
    if recipe.neuron.reset == "soft":
        problems.append(
            "neuron.reset = 'soft': NIR's LIF resets to v_reset (a hard reset); a soft reset subtracts V_th"
        )
    if recipe.neuron.decay >= 1.0:
        problems.append("neuron.decay = 1: a LIF without leak has tau = infinity in NIR's mapping")
    if recipe.model.arch == "resnet34" and recipe.model.stem_pool == "max":
        problems.append("model.stem_pool = 'max' (resnet34): NIR has no max pooling; 'avg' exports")
    return problems
