"""``imloss bench``: the benchmark's one command line, also run on its own as ``python -m imloss_cli.bench``.

Options default to None and only the given ones reach :class:`BenchOptions`, whose fields hold
every default (the per-device ones are resolved by ``run_benchmark``).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from imloss_cli.bench import KNOWN, BenchError, BenchOptions, format_table, memory_probe, run_benchmark, to_json
from imloss_cli.cli.errors import App, fail


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(item for item in text.split(",") if item)


def bench(
    arch: Annotated[str | None, typer.Option(help="architecture (resnet19)")] = None,
    timesteps: Annotated[str | None, typer.Option(help="T values (2,4)")] = None,
    batch: Annotated[int | None, typer.Option(min=1, help="images per step (8)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (auto)")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16")] = None,
    compare: Annotated[
        str | None, typer.Option(help=f"variants beside imloss, from {', '.join(KNOWN)} (spikingjelly,naive,relu)")
    ] = None,
    repeats: Annotated[int | None, typer.Option(min=1, help="interleaved repeats; the median is reported (5)")] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="timed steps per variant and repeat (3 on CPU, 20 on CUDA)")
    ] = None,
    warmup: Annotated[int | None, typer.Option(min=0, help="warm-up steps per variant (2 on CPU, 5 on CUDA)")] = None,
    image_size: Annotated[
        int | None, typer.Option(min=4, help="input side (224 for resnet34, 8 for convnet3, else 32)")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="seed of the weights and the batch (0)")] = None,
    peak_tflops: Annotated[float | None, typer.Option(help="peak for MFU (989: bf16 dense, H100/H200)")] = None,
    memory_format: Annotated[
        str | None,
        typer.Option(help="layouts, every variant runs in each (channels_last; or channels_last,contiguous)"),
    ] = None,
    memory_mode: Annotated[
        str | None,
        typer.Option(help="imloss's training memory modes (train.memory), each its own rows: default,low (default)"),
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's choice)")] = None,
    memory: Annotated[bool | None, typer.Option("--memory/--no-memory", help="measure peak memory (on)")] = None,
    compiled: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="imloss with torch.compile (on)")
    ] = None,
    lif_kernels: Annotated[
        str | None,
        typer.Option(help="imloss's LIF kernels: auto (triton on CUDA, else compiled), eager, compiled, triton"),
    ] = None,
    epoch_images: Annotated[
        int | None,
        typer.Option(min=0, help="also train 2 whole epochs of N generated CIFAR images (50000 on CUDA, 0 on CPU)"),
    ] = None,
    cuda_graphs: Annotated[
        bool | None, typer.Option("--cuda-graphs/--no-cuda-graphs", help="the timed epoch replays CUDA graphs (off)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    memory_probe_variant: Annotated[str | None, typer.Option("--memory-probe", hidden=True)] = None,
) -> None:
    """Time a training step (forward + IM-Loss + backward + SGD) against SpikingJelly, the naive loop and a ReLU floor.

    A correctness gate runs first: the fused LIF must match the naive loop (exit 1 if not). On CUDA it
    then trains two whole epochs of 50,000 generated CIFAR images through the real loader and step
    (--epoch-images).

    Example: imloss bench --arch resnet19 --timesteps 2,4 --batch 8 --compare spikingjelly,relu

    Memory: imloss bench --timesteps 2,4,8 --threads 1 --compare spikingjelly,spikingjelly-memopt --memory-mode default,low
    """
    given = {
        "arch": arch, "batch": batch, "device": device, "dtype": dtype, "repeats": repeats, "steps": steps,
        "warmup": warmup, "image_size": image_size, "seed": seed, "peak_tflops": peak_tflops, "threads": threads,
        "memory": memory, "compiled": compiled, "compare": _csv(compare), "memory_formats": _csv(memory_format),
        "memory_modes": _csv(memory_mode),
        "lif_kernels": lif_kernels, "epoch_images": epoch_images, "cuda_graphs": cuda_graphs,
    }  # fmt: skip
    try:
        if timesteps is not None:
            given["timesteps"] = tuple(int(t) for t in timesteps.split(","))
        options = BenchOptions(**{k: v for k, v in given.items() if v is not None})
        if memory_probe_variant is not None:  # internal: one CPU memory probe in a fresh process
            print(json.dumps(memory_probe(options, memory_probe_variant, options.timesteps[0])))
            return
        result = run_benchmark(options)
    except (BenchError, ValueError) as e:
        fail(str(e))
    print(to_json(result) if as_json else format_table(result))
    if not result.gate_passed:
        fail("correctness gate failed: the fused LIF disagrees with the naive loop", code=1)


def main(argv: list[str] | None = None) -> int:
    """``python -m imloss_cli.bench``: the same command on its own. Returns the exit code."""
    alone = App(add_completion=False, pretty_exceptions_enable=False)
    alone.command()(bench)
    try:
        alone(args=argv, prog_name="python -m imloss_cli.bench")
    except SystemExit as e:  # typer's standalone mode always ends this way, usage errors included
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    return 0
