"""Timing: every variant built from one seeded model and trained on one batch, warmed up, then timed
interleaved (order rotated per repeat); peak memory from max_memory_allocated on CUDA or, on CPU,
from one fresh subprocess per variant (``--memory-probe``) so variants do not share a heap.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imloss_cli.bench.epoch import EpochTiming, time_epochs
from imloss_cli.bench.gate import correctness_gate
from imloss_cli.bench.options import MEMORY_FORMATS, BenchOptions, BenchResult, VariantResult, resolve_options
from imloss_cli.bench.variants import (
    IMLOSS_KINDS,
    KNOWN,
    SJ_CUDA_BACKENDS,
    BenchError,
    _sj_use,
    build_variant,
    memory_variant,
)
from imloss_cli.recipe import Recipe
from imloss_cli.snn.im_loss import im_loss
from imloss_cli.snn.models import NetSpec, create_model
from imloss_cli.snn.neuron import LIF

# Every variant trains the default recipe's neuron, IM-Loss weight and momentum; a small learning
# rate keeps the timed steps away from divergence (the step costs the same at any rate).
DEFAULTS = Recipe()
LR = 0.01


def _sj_rows(device: str, notes: list[str], variant: str = "spikingjelly") -> list[str]:
    """The SpikingJelly rows this machine can run: one per importable provider on CUDA (spikingjelly),
    or ``variant`` alone (spikingjelly-memopt: SpikingJelly's default provider)."""
    try:
        import spikingjelly.activation_based.neuron  # noqa: F401
        from spikingjelly.activation_based import functional
    except ImportError as e:
        notes.append(f"{variant} skipped: not importable ({e}); pip install -e .[bench]")
        return []
    if not hasattr(functional, "lif_multi_step"):  # the 0.0.0.0.x API (LIFNode(backend=...)) differs
        notes.append(f"{variant} skipped: this benchmark needs SpikingJelly >= 2.0 (functional.lif_multi_step)")
        return []
    if variant == "spikingjelly-memopt":
        try:
            from spikingjelly.activation_based import memopt  # noqa: F401
        except ImportError as e:
            notes.append(f"spikingjelly-memopt skipped: this SpikingJelly has no memopt ({e})")
            return []
        return [variant]
    if device == "cpu":
        return ["spikingjelly"]  # SJ 2.0 has one CPU implementation (the Torch reference)
    rows = []
    for backend in SJ_CUDA_BACKENDS:
        try:
            _sj_use(backend)
            functional.neuron_implementation("lif", torch.device("cuda"))
            rows.append(f"spikingjelly[{backend}]")
        except (RuntimeError, AttributeError, ImportError, OSError) as e:
            notes.append(f"spikingjelly[{backend}] skipped: {str(e).splitlines()[0][:160]}")
    return rows


def row_name(variant: str, memory_format: str, o: BenchOptions) -> str:
    """A row's name: the variant alone in the first listed layout, ``variant@layout`` in the others."""
    return variant if memory_format == o.memory_formats[0] else f"{variant}@{memory_format}"


def split_row_name(row: str, o: BenchOptions) -> tuple[str, str]:
    """(variant, layout) of a row name: the inverse of ``row_name``."""
    variant, _, memory_format = row.partition("@")
    return variant, memory_format or o.memory_formats[0]


def reference_row(o: BenchOptions) -> str:
    """The row every other is compared with: imloss in the first listed memory mode and layout."""
    return row_name(memory_variant("imloss", o.memory_modes[0]), o.memory_formats[0], o)


def _variant_names(o: BenchOptions, notes: list[str]) -> list[str]:
    """imloss in every memory mode, then the compared variants (imloss's own in every memory mode)."""
    names = [memory_variant("imloss", mode) for mode in o.memory_modes]
    for name in o.compare:
        kind = name.partition("[")[0]
        if kind not in KNOWN:
            raise BenchError(f"unknown variant {name!r}; known: {', '.join(KNOWN)}")
        if name in ("spikingjelly", "spikingjelly-memopt"):
            names += _sj_rows(o.device, notes, name)
        elif name in IMLOSS_KINDS:
            names += [v for v in (memory_variant(name, mode) for mode in o.memory_modes) if v not in names]
        elif name not in names:
            names.append(name)
    return names


@dataclass
class _Runner:
    """One variant's model, neurons and optimizer, and the step that trains it."""

    model: nn.Module
    neurons: list[nn.Module]
    optimizer: torch.optim.Optimizer
    autocast: Callable[[], contextlib.AbstractContextManager]
    v_threshold: float

    def step(self, x: Tensor, y: Tensor) -> None:
        with self.autocast():
            logits = self.model(x)
            im = im_loss([n.v_mean for n in self.neurons], self.v_threshold)
            loss = F.cross_entropy(logits.float(), y) + DEFAULTS.loss.im_weight * im
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for n in self.neurons:  # drop what the forward stored, so no activation outlives its step
            n.clear() if isinstance(n, LIF) else setattr(n, "v_mean", None)


def _setup(o: BenchOptions, T: int, rows: list[str]) -> tuple[dict[str, _Runner], dict[str, Tensor], Tensor]:
    """One runner and one input batch per row name (``row_name``): same weights and values for all."""
    device = torch.device(o.device)
    torch.manual_seed(o.seed)
    spec = NetSpec.from_recipe(DEFAULTS, 10, 3, o.image_size or 32, timesteps=T)
    base = create_model(o.arch, spec).to(device).train()
    g = torch.Generator().manual_seed(o.seed + 1)
    x = torch.randn(o.batch, 3, o.image_size, o.image_size, generator=g).to(device)
    y = torch.randint(0, 10, (o.batch,), generator=g).to(device)
    bf16 = o.dtype == "bf16"

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    runners, inputs = {}, {}
    for row in rows:
        variant, memory_format = split_row_name(row, o)
        layout = MEMORY_FORMATS[memory_format]
        model, neurons = build_variant(base, variant, o.lif_kernels, example=x.contiguous(memory_format=layout))
        model = model.to(memory_format=layout)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=DEFAULTS.optim.momentum)
        runners[row] = _Runner(
            model=model, neurons=neurons, optimizer=opt, autocast=autocast, v_threshold=spec.v_threshold
        )
        inputs[row] = x.contiguous(memory_format=layout)
    return runners, inputs, y


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_mb(field_name: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"{field_name} not in /proc/self/status")


def memory_probe(o: BenchOptions, variant: str, T: int, steps: int = 2) -> dict[str, float]:
    """Peak RSS of ``steps`` training steps of one variant, in this (fresh) process, after warm-up.

    Resets the kernel's RSS high-water mark (/proc/self/clear_refs, "5") after warm-up, so compile
    memory is not counted; the caller sets MALLOC_MMAP_THRESHOLD_ so that freed activations go back to
    the OS and RSS tracks live memory. Returns peak_mb and step_mb (peak minus RSS before the steps).
    """
    o = resolve_options(o)
    runners, inputs, y = _setup(o, T, [variant])
    r, x = runners[variant], inputs[variant]
    for _ in range(max(o.warmup or 0, 1)):
        r.step(x, y)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_mb("VmRSS")
    for _ in range(steps):
        r.step(x, y)
    peak = _rss_mb("VmHWM")
    return {"peak_mb": peak, "step_mb": peak - before}


def _probe_in_subprocess(o: BenchOptions, row: str, T: int) -> dict[str, float]:
    variant, memory_format = split_row_name(row, o)
    argv = [
        sys.executable,
        "-m",
        "imloss_cli.bench",
        "--memory-probe",
        variant,
        "--arch",
        o.arch,
        "--memory-format",
        memory_format,
        "--timesteps",
        str(T),
        "--batch",
        str(o.batch),
        "--device",
        o.device,
        "--dtype",
        o.dtype,
        "--image-size",
        str(o.image_size),
        "--seed",
        str(o.seed),
        "--warmup",
        str(o.warmup),
        "--threads",
        str(o.threads),
        *([] if o.compiled else ["--no-compile"]),
        "--lif-kernels",
        o.lif_kernels,
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BenchError(f"memory probe of {row} (T={T}) failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _flops_per_image_step(r: _Runner, x: Tensor, y: Tensor, T: int) -> float:
    """FLOPs of one training step (forward + backward) counted by FlopCounterMode, per image per step."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        r.step(x, y)
    return counter.get_total_flops() / (x.shape[0] * T)


def paired_ratios(ref: list[float], other: list[float]) -> tuple[float, float, float]:
    """(median, lowest, highest) of ``ref[i] / other[i]``: each repeat's imloss time over the same
    repeat's time of another variant. Pairing by repeat cancels what the machine did during that
    repeat (another process, a clock change), which a ratio of the two medians does not."""
    if len(ref) != len(other) or not ref:
        raise ValueError(f"need one time per repeat on both sides, got {len(ref)} and {len(other)}")
    ratios = [a / b for a, b in zip(ref, other)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _warm_up(o: BenchOptions, runners: dict[str, _Runner], inputs: dict[str, Tensor], y: Tensor) -> dict[str, float]:
    """Seconds of each row's warm-up steps (compilation and autotuning land here, not in the timings)."""
    warm = {}
    for name, r in runners.items():
        _sync(o.device)
        t0 = time.perf_counter()
        for _ in range(o.warmup or 0):
            r.step(inputs[name], y)
        _sync(o.device)
        warm[name] = time.perf_counter() - t0
    return warm


@dataclass
class _Timings:
    seconds: dict[str, list[float]]  # s/step of each repeat, per row
    peak_mb: dict[str, float]
    step_mb: dict[str, float]


def _time_interleaved(o: BenchOptions, runners: dict[str, _Runner], inputs: dict[str, Tensor], y: Tensor) -> _Timings:
    """``o.repeats`` rounds over every row, the order rotated per round; CUDA memory peaks on the way."""
    names = list(runners)
    t = _Timings({n: [] for n in names}, {}, {})
    for rep in range(o.repeats):
        shift = rep % len(names)  # rotate the order: no variant always runs right after another
        for name in names[shift:] + names[:shift]:
            r, x = runners[name], inputs[name]
            if o.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated() / 2**20
            _sync(o.device)
            t0 = time.perf_counter()
            for _ in range(o.steps or 1):
                r.step(x, y)
            _sync(o.device)
            t.seconds[name].append((time.perf_counter() - t0) / (o.steps or 1))
            if o.device == "cuda":
                peak = torch.cuda.max_memory_allocated() / 2**20
                t.peak_mb[name] = max(t.peak_mb.get(name, 0.0), peak)
                t.step_mb[name] = max(t.step_mb.get(name, 0.0), peak - before)
    return t


def _row(o: BenchOptions, T: int, name: str, t: _Timings, warmup_s: float, flops: float | None) -> VariantResult:
    variant, memory_format = split_row_name(name, o)
    times = t.seconds[name]
    median = statistics.median(times)
    ratio, low, high = paired_ratios(t.seconds[reference_row(o)], times)
    mfu = None
    if o.device == "cuda" and flops is not None:
        mfu = flops * o.batch * T / median / (o.peak_tflops * 1e12)
    return VariantResult(
        variant=name, timesteps=T, s_per_step=median, s_min=min(times), s_max=max(times),
        images_per_s=o.batch / median, imloss_over_this=ratio, ratio_low=low, ratio_high=high,
        peak_mb=t.peak_mb.get(name), step_mb=t.step_mb.get(name), warmup_s=warmup_s,
        static_encoder=variant != "relu-tb", memory_format=memory_format, mfu=mfu,
    )  # fmt: skip


def _time_T(o: BenchOptions, T: int, names: list[str]) -> tuple[list[VariantResult], float | None]:
    """Every row at one T: warm-up, interleaved timing, FLOPs (of relu), memory; one result per row."""
    # Start each T from an empty compile cache, as a training process would: graphs that the gate or
    # another T left behind change what torch.compile builds next (measured on an H200: the fp32 gate
    # run first made imloss's compiled step 64 ms instead of 37 ms).
    torch._dynamo.reset()
    runners, inputs, y = _setup(o, T, names)
    warm = _warm_up(o, runners, inputs, y)
    timings = _time_interleaved(o, runners, inputs, y)
    flops = _flops_per_image_step(runners["relu"], inputs["relu"], y, T) if "relu" in runners else None
    del runners
    if o.memory and o.device != "cuda":  # CPU: one fresh process per row, so rows do not share a heap
        for name in names:
            probe = _probe_in_subprocess(o, name, T)
            timings.peak_mb[name], timings.step_mb[name] = probe["peak_mb"], probe["step_mb"]
    return [_row(o, T, name, timings, warm[name], flops) for name in names], flops


def run_benchmark(options: BenchOptions) -> BenchResult:
    """Run the correctness gate, then time every variant at every T (see the module docstring).

    If the gate fails, no timing is done: the result carries the failed checks and no rows.

    Raises:
        BenchError: an unknown variant or architecture, or CUDA asked for where there is none.
    """
    o = resolve_options(options)
    notes: list[str] = []
    variants = _variant_names(o, notes)
    try:
        create_model(o.arch, NetSpec.from_recipe(DEFAULTS, 10, 3, o.image_size or 32, timesteps=1))
    except KeyError as e:
        raise BenchError(str(e.args[0])) from None
    # each SpikingJelly provider once (spikingjelly-memopt runs the same LIF as spikingjelly)
    sj = list(dict.fromkeys(v.partition("[")[2].rstrip("]") or None for v in variants if v.startswith("spikingjelly")))
    gate = correctness_gate(o.timesteps, o.device, compiled=o.compiled, spikingjelly_backends=tuple(sj))
    device_name = torch.cuda.get_device_name() if o.device == "cuda" else "cpu"
    info = {"options": o, "device_name": device_name, "torch_version": torch.__version__,
            "threads": torch.get_num_threads(), "gate": gate}  # fmt: skip
    if not all(c.passed for c in gate):
        return BenchResult(**info, rows=(), notes=tuple(notes), flops_per_image_step=None)
    rows: list[VariantResult] = []
    flops = None
    names = [row_name(v, f, o) for f in o.memory_formats for v in variants]
    for T in o.timesteps:
        t_rows, t_flops = _time_T(o, T, names)
        rows += t_rows
        flops = t_flops if t_flops is not None else flops
    notes += _method_notes(o, variants)
    epochs = _time_epochs(o)
    if epochs:
        notes.append(
            f"epoch: {o.epoch_images:,} generated 32x32 images (test: a fifth as many) through imloss's Trainer "
            f"(cifar10, crop_flip, T={o.timesteps[-1]}, batch {o.batch}), evaluation and layer statistics "
            "included; epoch 1 pays the warm-up, epoch 2 is the steady state; images/s = training images / epoch wall time"
        )
    return BenchResult(**info, rows=tuple(rows), notes=tuple(notes), flops_per_image_step=flops, epochs=epochs)


def _time_epochs(o: BenchOptions) -> tuple[EpochTiming, ...]:
    if not o.epoch_images:
        return ()
    from imloss_cli.train.loop import TrainingError

    try:
        return tuple(time_epochs(o.arch, o.timesteps[-1], o.batch, o.device, o.dtype, o.epoch_images,
                                 lif_kernels=o.lif_kernels, cuda_graphs=o.cuda_graphs))  # fmt: skip
    except TrainingError as e:
        raise BenchError(f"timing an epoch: {e}") from None


def _method_notes(o: BenchOptions, variants: list[str]) -> list[str]:
    notes = [
        (
            f"one step = forward, CE + {DEFAULTS.loss.im_weight:g} * IM-Loss (mean over hidden layers of "
            f"(mean(v_seq) - V_th)^2), backward, SGD(momentum {DEFAULTS.optim.momentum:g}) step; same initial "
            "weights and batch for all variants"
        ),
        (
            f"s/step: median over {o.repeats} repeats of {o.steps} steps, variants interleaved (order rotated); "
            "images/s = batch / (s/step), images not image-timesteps"
        ),
        (
            "imloss/this = median over repeats of imloss's s/step / this row's in the same repeat (below 1: "
            "imloss is faster); range = lowest-highest of those per-repeat ratios; "
            "spread = (slowest - fastest repeat) / median"
        ),
        (
            "enc 'once': stem conv+BN run once on [B] and broadcast over T (Encoder, exact for static "
            "images); 'T*B': stem on the folded batch, as a plain network would"
        ),
    ]
    layouts = " and ".join(o.memory_formats)
    notes.append(
        f"layout: model and input in {layouts} (torch.memory_format); rows named variant@layout "
        f"ran in the layout after the @, the others in {o.memory_formats[0]}"
    )
    if o.device == "cpu" and "spikingjelly" in variants and "contiguous" not in o.memory_formats:
        notes.append(
            "spikingjelly's CPU path is faster in contiguous (NCHW) than in channels_last: add "
            "--memory-format channels_last,contiguous to time it in its best layout too"
        )
    if o.memory and o.device == "cpu":
        notes.append(
            "memory (CPU): each variant in a fresh subprocess with MALLOC_MMAP_THRESHOLD_=65536; peak = "
            "VmHWM over 2 steps after warm-up (high-water mark reset), step = peak - RSS before them"
        )
    elif o.memory:
        notes.append(
            "memory (CUDA): peak = max_memory_allocated during the timed steps; step = peak - allocated before"
        )
    if any(v.startswith("spikingjelly") for v in variants):
        notes.append(
            "spikingjelly: LIFNode settings via functional.lif_multi_step with an fp32 initial state; "
            "its v_seq is the post-reset potential, IM-Loss uses its mean"
        )
    notes.append(f"imloss ran its {o.lif_kernels} LIF kernels")
    if len(o.memory_modes) > 1 or o.memory_modes[0] != "default":
        notes.append(
            "imloss-low: train.memory = 'low' (snn.memory): spikes saved as bits; each residual block's first "
            "convolution, every norm and LIF recomputed in the backward pass; the same gradients as imloss"
        )
    if "spikingjelly-memopt" in variants:
        notes.append(
            "spikingjelly-memopt: the spikingjelly row under memopt.optimize_memory(level=1, compress=True) on the "
            "stem, every residual block and the Folded layers outside them (checkpointed, binary inputs as bits; "
            "levels 2-4 search by measuring CUDA memory)"
        )
    if not o.compiled:
        notes.append("--no-compile: no torch.compile anywhere")
    if "naive" in variants:
        notes.append("naive: imloss_cli.snn.reference.lif_naive, one autograd node per time step")
    return notes
