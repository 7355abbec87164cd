"""What counting spikes, synaptic operations and MACs adds to an evaluation pass.

Example:
    python benchmarks/eval_counting.py                                    # convnet3 and resnet19 on digits
    python benchmarks/eval_counting.py --arch resnet34 --timesteps 2 --repeats 7

For each network it builds the trainer of the embedded digits recipe (CPU, fp32) and times
``Trainer.evaluate`` over the test set twice per repeat, in alternating order: as shipped, and with
an empty ``OpsPlan`` (no map to count: the layer statistics of before, nothing else). Both variants
store and reduce the same spike tensors; the difference is the counting itself: a dot product of
the per-neuron spike counts with each map's fan-out at the end of the pass, and a per-batch sum for
a max-pool of spikes (resnet34). It prints the median time of each variant, the median and range
of the per-repeat ratio counting / without, and the one-off cost of the probe (``plan_ops``).

Times are the process's CPU time on one thread by default (``--clock wall``, ``--threads N`` to
change): on a machine shared with other work, wall-clock times of the same pass vary by tens of
percent from one repeat to the next, the CPU time that the pass itself spends much less.
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

from imloss_cli.recipe import load_recipe
from imloss_cli.snn.ops import OpsPlan, plan_ops
from imloss_cli.train.loop import Trainer


def _seconds(trainer: Trainer, clock: Callable[[], float]) -> float:
    start = clock()
    trainer.evaluate()
    return clock() - start


def measure(arch: str, timesteps: int, repeats: int, batch: int, clock: Callable[[], float]) -> dict[str, float]:
    overrides = {"model.arch": arch, "model.timesteps": timesteps, "train.device": "cpu", "train.compile": "off"}
    trainer = Trainer(load_recipe(None, {**overrides, "data.eval_batch_size": batch}), seed=0)
    sample = trainer.data.test[0][0].unsqueeze(0)
    start = time.perf_counter()
    plan = plan_ops(trainer.model, sample.contiguous(memory_format=torch.channels_last))
    probe = time.perf_counter() - start
    variants = {"counting": plan, "without": OpsPlan((), {})}
    for p in variants.values():  # warm-up: allocator, oneDNN primitives
        trainer.ops_plan = p
        _seconds(trainer, clock)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            trainer.ops_plan = variants[name]
            times[name].append(_seconds(trainer, clock))
    ratios = [c / w for c, w in zip(times["counting"], times["without"])]
    return {
        "counting_s": statistics.median(times["counting"]),
        "without_s": statistics.median(times["without"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "probe_s": probe,
        "images": len(trainer.data.test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["convnet3", "resnet19"])
    parser.add_argument("--timesteps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256, help="evaluation batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=("process", "wall"), default="process", help="CPU time or wall-clock time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    print(
        f"evaluation pass over the digits test set, T={args.timesteps}, CPU fp32, {args.threads} thread(s), "
        f"{args.clock} time, median of {args.repeats} interleaved repeats"
    )
    print(
        f"{'arch':<10} {'images':>6} {'without (s)':>12} {'counting (s)':>13} {'ratio':>7} {'range':>15} {'probe (s)':>10}"
    )
    for arch in args.arch:
        m = measure(arch, args.timesteps, args.repeats, args.batch, clock)
        print(
            f"{arch:<10} {m['images']:>6} {m['without_s']:>12.4f} {m['counting_s']:>13.4f} {m['ratio']:>7.4f} "
            f"{m['ratio_min']:>7.4f}-{m['ratio_max']:.4f} {m['probe_s']:>10.3f}"
        )


if __name__ == "__main__":
    main()
