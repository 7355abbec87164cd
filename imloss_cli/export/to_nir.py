"""``imloss export RUN --nir FILE``: a recorded run's trained network as a NIR file, checked if asked.

The network is rebuilt from the run's recipe and the data shape its checkpoint records, loaded from
``best.pt`` (or ``last.pt``), put in eval mode and written through :func:`.nir_graph.network_graph`
(atomically: a temporary file renamed into place). ``check`` reads the file back, runs it with
nirtorch for T steps on test images (:mod:`.nir_run`) and compares every layer's spikes and the
logits with imloss's own forward pass, both in float64.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from imloss_cli import data as data_mod
from imloss_cli.export.nir_graph import network_graph
from imloss_cli.export.nir_run import run_graph
from imloss_cli.export.problems import ExportError, export_problems
from imloss_cli.files import temporary_beside
from imloss_cli.recipe import Recipe, validate_recorded
from imloss_cli.registry import Registry, RunInfo
from imloss_cli.snn.models import SpikingNet, build_model
from imloss_cli.snn.neuron import spiking_layers
from imloss_cli.train.checkpoint import load_checkpoint


@dataclass(frozen=True)
class Agreement:
    """How an exported graph, run back, agrees with imloss's forward pass."""

    images: int
    inputs: str  # where the images came from
    layers: int  # spiking layers compared
    layers_equal: int  # layers whose spikes are identical at every step
    spikes_differing: int  # spike values that differ, over all layers
    max_logit_difference: float
    same_predictions: int  # images whose predicted class agrees


@dataclass(frozen=True)
class NirExport:
    run_id: str
    path: Path
    checkpoint: Path
    nodes: int
    agreement: Agreement | None


def require(*modules: str, extra: str) -> None:
    """Raise a one-line ExportError naming the pip extra when an optional package is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"this export needs {', '.join(missing)}: pip install -e '.[{extra}]'")


def export_nir(
    registry: Registry, run: str, path: Path, *, checkpoint: str = "best", check_images: int = 0
) -> NirExport:
    """Write the run's network to ``path`` as NIR; with ``check_images``, run it back on that many test images.

    Raises:
        ExportError: the network has a layer NIR cannot express (nothing is written), or nir is missing.
        CheckpointError: the checkpoint is missing or unreadable. RegistryError: no such run.
    """
    require("nir", "nirtorch", extra="export")
    info = registry.get_run(run)
    recipe = validate_recorded(info.recipe, f"run {info.id}")
    problems = export_problems(recipe)
    if problems:
        raise ExportError(f"run {info.id} does not export to NIR: " + "; ".join(problems))
    model, source, sample_shape = _trained_network(info, recipe, checkpoint)
    sample = torch.zeros(1, *sample_shape)
    metadata = {"imloss_run": info.id, "arch": recipe.model.arch, "timesteps": recipe.model.timesteps,
                "checkpoint": source.name}  # fmt: skip
    graph = network_graph(model, sample, metadata)
    _write(graph, path)
    agreement = _check(path, model, recipe, sample_shape, check_images) if check_images else None
    return NirExport(info.id, path, source, len(graph.nodes), agreement)


def _trained_network(info: RunInfo, recipe: Recipe, which: str) -> tuple[SpikingNet, Path, tuple[int, ...]]:
    """The run's network with the checkpoint's weights (eval mode), the file, one input's shape."""
    if which not in ("best", "last"):
        raise ExportError(f"--checkpoint must be best or last, got {which!r}")
    if info.checkpoint_dir is None:
        raise ExportError(f"run {info.id} kept no checkpoints (train.checkpoint = false)")
    source = Path(info.checkpoint_dir) / f"{which}.pt"
    state = load_checkpoint(source)
    shape = state.get("data_shape")
    if not isinstance(shape, dict):
        raise ExportError(f"{source} was written before imloss recorded the data's shape in checkpoints; resume or "
                          "retrain the run to export it")  # fmt: skip
    model = build_model(recipe, int(shape["num_classes"]), int(shape["in_channels"]), int(shape["image_size"]))
    model.load_state_dict(state["model"])
    return model.eval(), source, tuple(int(v) for v in shape["sample_shape"])


def _write(graph: object, path: Path) -> None:
    import nir

    fd, tmp = temporary_beside(path)
    os.close(fd)
    try:
        nir.write(str(tmp), graph)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check(path: Path, model: SpikingNet, recipe: Recipe, sample_shape: tuple[int, ...], images: int) -> Agreement:
    """Run the written file and imloss's network on the same inputs (float64) and compare them."""
    try:
        test = data_mod.build_datasets(recipe.data, timesteps=recipe.model.timesteps).test
        x = torch.stack([test[i][0] for i in range(min(images, len(test)))])
        inputs = f"the first {len(x)} test images of the run's data"
    except data_mod.DataError:
        x = torch.rand(images, *sample_shape, generator=torch.Generator().manual_seed(0))
        inputs = f"{images} random images (the run's data is not on this machine)"
    run = run_graph(path, x, recipe.model.timesteps)
    reference = model.double()
    layers = spiking_layers(reference)
    for _, lif in layers:
        lif.store_v_seq = True
    with torch.no_grad():
        logits = reference(x.double())
    equal, differing = 0, 0
    for name, lif in layers:
        ours = lif.spike_seq
        theirs = run.spikes.get(name.replace(".", "_"))
        if theirs is None or ours is None or theirs.shape != ours.shape:
            raise ExportError(f"{name}: the exported graph has no spiking layer of its shape")
        diff = int((theirs != ours).sum())
        equal += diff == 0
        differing += diff
        lif.store_v_seq = False
        lif.clear()
    return Agreement(
        images=len(x), inputs=inputs, layers=len(layers), layers_equal=equal, spikes_differing=differing,
        max_logit_difference=float((run.logits - logits).abs().max()),
        same_predictions=int((run.logits.argmax(1) == logits.argmax(1)).sum()),
    )  # fmt: skip
