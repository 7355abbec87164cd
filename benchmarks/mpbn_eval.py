"""MPBN at evaluation: the folded thresholds against the BatchNorm run at every step.

Example:
    python benchmarks/mpbn_eval.py                                     # convnet3 and resnet19 on digits
    python benchmarks/mpbn_eval.py --arch resnet19 --timesteps 2 --repeats 9

For each network it builds the embedded digits recipe with ``model.membrane_bn = true`` (CPU, fp32,
channels_last as training keeps it), gives every BatchNorm running statistics from a few training
batches, and times forward passes over the test set in eval mode, two variants per repeat in
alternating order: folded (``MembraneBNLIF`` in eval mode: the raw potential against the per-channel
fold, no BN) and unfolded (the same layers with only their BN in eval mode: the BN with its running
statistics at every step, then the threshold, as evaluation ran before the fold). Both passes give the
same spikes (checked: the logits are compared). With ``--stored`` the layers also keep their
potentials, as the evaluation pass of training does for layer statistics (the folded layer then
computes the normalised potential for them).

It prints the median time of each variant and the median and range of the per-repeat ratio
folded / unfolded. Times are the process's CPU time on one thread by default (``--clock wall``,
``--threads N`` to change), as ``eval_counting.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imloss_cli.data import build_datasets
from imloss_cli.recipe import load_recipe
from imloss_cli.snn.models import build_model
from imloss_cli.snn.mpbn import MembraneBNLIF
from imloss_cli.snn.neuron import spiking_layers


def _network(arch: str, timesteps: int, batch: int) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The MPBN network with calibrated running statistics, and the test set in batches (channels_last)."""
    recipe = load_recipe(None, {"model.arch": arch, "model.timesteps": timesteps, "model.membrane_bn": True})
    data = build_datasets(recipe.data, timesteps=timesteps)
    torch.manual_seed(0)
    model = build_model(recipe, data.num_classes, data.in_channels, data.image_size)
    model = model.to(memory_format=torch.channels_last).train()

    def images(dataset: torch.utils.data.Dataset, n: int) -> torch.Tensor:
        return torch.stack([dataset[i][0] for i in range(n)]).contiguous(memory_format=torch.channels_last)

    with torch.no_grad():  # running statistics of a few training batches
        train = images(data.train, min(len(data.train), 4 * batch))
        for chunk in train.split(batch):
            model(chunk)
    test = images(data.test, len(data.test))
    return model.eval(), list(test.split(batch))


def _mode(model: torch.nn.Module, folded: bool) -> None:
    """Eval mode; unfolded: each MPBN layer runs its training-mode loop with its BN in eval mode."""
    model.eval()
    for _, m in spiking_layers(model):
        if isinstance(m, MembraneBNLIF):
            m.training = not folded


def _pass(
    model: torch.nn.Module, batches: list[torch.Tensor], clock: Callable[[], float]
) -> tuple[float, torch.Tensor]:
    start = clock()
    with torch.no_grad():
        logits = torch.cat([model(x) for x in batches])
    return clock() - start, logits


def measure(arch: str, timesteps: int, repeats: int, batch: int, stored: bool, clock: Callable[[], float]) -> dict:
    model, batches = _network(arch, timesteps, batch)
    for _, m in spiking_layers(model):
        m.store_v_seq = stored
    logits = {}
    for name in ("folded", "unfolded"):  # warm-up: allocator, oneDNN primitives
        _mode(model, name == "folded")
        _, logits[name] = _pass(model, batches, clock)
    times: dict[str, list[float]] = {"folded": [], "unfolded": []}
    for r in range(repeats):
        for name in ("folded", "unfolded") if r % 2 == 0 else ("unfolded", "folded"):
            _mode(model, name == "folded")
            times[name].append(_pass(model, batches, clock)[0])
    ratios = [f / u for f, u in zip(times["folded"], times["unfolded"])]
    return {
        "images": sum(len(x) for x in batches),
        "folded_s": statistics.median(times["folded"]),
        "unfolded_s": statistics.median(times["unfolded"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "logit_diff": float((logits["folded"] - logits["unfolded"]).abs().max()),
        "same_class": int((logits["folded"].argmax(1) == logits["unfolded"].argmax(1)).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["convnet3", "resnet19"])
    parser.add_argument("--timesteps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256, help="evaluation batch size")
    parser.add_argument("--stored", action="store_true", help="keep every layer's potentials (layer statistics)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=("process", "wall"), default="process", help="CPU time or wall-clock time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    print(
        f"MPBN evaluation forward over the digits test set, T={args.timesteps}, CPU fp32, {args.threads} thread(s), "
        f"{args.clock} time, potentials {'stored' if args.stored else 'not stored'}, "
        f"median of {args.repeats} interleaved repeats"
    )
    print(
        f"{'arch':<10} {'images':>6} {'unfolded (s)':>13} {'folded (s)':>11} {'ratio':>7} {'range':>15} "
        f"{'max |logit diff|':>17} {'same class':>10}"
    )
    for arch in args.arch:
        m = measure(arch, args.timesteps, args.repeats, args.batch, args.stored, clock)
        print(
            f"{arch:<10} {m['images']:>6} {m['unfolded_s']:>13.4f} {m['folded_s']:>11.4f} {m['ratio']:>7.4f} "
            f"{m['ratio_min']:>7.4f}-{m['ratio_max']:.4f} {m['logit_diff']:>17.2e} {m['same_class']:>10}"
        )


if __name__ == "__main__":
    main()
