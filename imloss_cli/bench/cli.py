"""``python -m imloss_cli.bench``: the benchmark's command line (argparse: torch is all it needs)."""

from __future__ import annotations

import argparse
import json
import sys

from imloss_cli.bench.output import format_table, to_json
from imloss_cli.bench.run import BenchOptions, memory_probe, run_benchmark
from imloss_cli.bench.variants import KNOWN, BenchError

DESCRIPTION = "Training-step benchmark: imloss's fused LIF against SpikingJelly, the naive loop and a ReLU floor."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imloss_cli.bench", description=DESCRIPTION)
    p.add_argument("--arch", default="resnet19")
    p.add_argument("--timesteps", default="2,4", help="comma-separated T values")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compare", default="spikingjelly,naive,relu", help=f"comma-separated, from {', '.join(KNOWN)}")
    p.add_argument("--steps", type=int, help="timed steps per variant per repeat (3 on CPU, 20 on CUDA)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, help="warm-up steps per variant (2 on CPU, 5 on CUDA)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak for MFU (989: bf16 dense, H100/H200)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--memory-format", default="channels_last",
                   help="comma-separated layouts, from channels_last, contiguous; every variant runs in each")
    p.add_argument("--no-compile", action="store_true", help="imloss without torch.compile (eager kernels)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", action="store_true")
    p.add_argument("--memory-probe", metavar="VARIANT", help=argparse.SUPPRESS)  # internal: one CPU memory probe
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print. Exit code 0, 1 if the correctness gate failed, 2 on a usage error."""
    args = _parser().parse_args(argv)
    options = BenchOptions(
        arch=args.arch, timesteps=tuple(int(t) for t in args.timesteps.split(",")), batch=args.batch,
        device=args.device, dtype=args.dtype, compare=tuple(c for c in args.compare.split(",") if c),
        steps=args.steps, repeats=args.repeats, warmup=args.warmup, image_size=args.image_size, seed=args.seed,
        peak_tflops=args.peak_tflops, memory=not args.no_memory, threads=args.threads,
        compiled=not args.no_compile, memory_formats=tuple(f for f in args.memory_format.split(",") if f),
    )
    try:
        if args.memory_probe:
            print(json.dumps(memory_probe(options, args.memory_probe, options.timesteps[0])))
            return 0
        result = run_benchmark(options)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(to_json(result) if args.json else format_table(result))
    if not result.gate_passed:
        print("error: correctness gate failed (imloss's LIF disagrees with lif_naive)", file=sys.stderr)
        return 1
    return 0
