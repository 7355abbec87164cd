"""What a benchmark measures (:class:`BenchOptions`, resolved per machine) and what it returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from imloss_cli.bench.epoch import EpochTiming
from imloss_cli.bench.gate import GateCheck
from imloss_cli.bench.variants import BenchError
from imloss_cli.recipe import MEMORY_MODES
from imloss_cli.snn.neuron import KERNEL_SETS
from imloss_cli.snn.triton_lif import triton_available

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


@dataclass(frozen=True)
class BenchOptions:
    """What to measure; ``None``/"auto" fields are resolved per device by ``run_benchmark``."""

    arch: str = "resnet19"
    timesteps: tuple[int, ...] = (2, 4)
    batch: int = 8
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compare: tuple[str, ...] = ("spikingjelly", "naive", "relu")
    steps: int | None = None  # per variant per repeat; 3 on CPU, 20 on CUDA
    repeats: int = 5
    warmup: int | None = None  # steps per variant before timing; 2 on CPU, 5 on CUDA
    image_size: int | None = None  # 224 for resnet34, 8 for convnet3, else 32
    seed: int = 0
    peak_tflops: float = 989.0  # bf16 dense peak of an H100/H200-class GPU, for MFU
    memory: bool = True  # measure peak memory (on CPU: one subprocess per variant and T)
    threads: int | None = None  # torch.set_num_threads for the run; None: torch's default
    compiled: bool = True  # False: the imloss row runs the eager kernels too (no C compiler, quick tests)
    # The imloss row's LIF kernels: auto = triton on CUDA where it imports, else compiled (eager with
    # compiled=False); or eager | compiled | triton.
    lif_kernels: str = "auto"
    # A whole epoch of this many generated CIFAR-sized images (and a fifth as many test images)
    # through the Trainer, evaluation included, at the last T; None: 50,000 on CUDA, none on CPU.
    epoch_images: int | None = None
    cuda_graphs: bool = False  # the timed epoch replays its step as a CUDA graph (train.cuda_graphs)
    # Every variant runs in each listed layout; rows after the first layout are named "variant@layout".
    memory_formats: tuple[str, ...] = ("channels_last",)
    # imloss's rows (imloss, imloss-eager, imloss-plif) train in each listed mode (train.memory);
    # rows in a mode other than "default" are named variant-mode (imloss-low).
    memory_modes: tuple[str, ...] = (MEMORY_MODES[0],)


@dataclass(frozen=True)
class VariantResult:
    variant: str
    timesteps: int
    s_per_step: float  # median over repeats
    s_min: float
    s_max: float
    images_per_s: float  # images (not image-timesteps) per second: batch / s_per_step
    imloss_over_this: float  # median over repeats of imloss's s/step / this variant's, paired by repeat
    ratio_low: float  # the lowest and highest of those paired ratios
    ratio_high: float
    peak_mb: float | None  # CPU: peak RSS during timed steps; CUDA: max_memory_allocated
    step_mb: float | None  # the part of peak_mb above the memory in use just before the steps
    warmup_s: float  # the warm-up steps, compilation / autotuning included
    static_encoder: bool  # stem conv run once on [B] and broadcast over T
    memory_format: str  # channels_last | contiguous: the layout of the model and its input
    mfu: float | None = None


@dataclass(frozen=True)
class BenchResult:
    options: BenchOptions  # resolved
    device_name: str
    torch_version: str
    threads: int
    gate: tuple[GateCheck, ...]
    rows: tuple[VariantResult, ...]
    notes: tuple[str, ...]
    flops_per_image_step: float | None  # training-step FLOPs per image per time step (relu variant)
    epochs: tuple[EpochTiming, ...] = ()  # whole epochs through the Trainer (``epoch_images``)

    @property
    def gate_passed(self) -> bool:
        return all(c.passed for c in self.gate)


def resolve_options(o: BenchOptions) -> BenchOptions:
    """The options with every auto field decided for this machine (device, dtype, kernels, steps, ...).

    Raises:
        BenchError: an option this machine cannot honour.
    """
    device = o.device if o.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise BenchError(f"device must be auto, cpu or cuda, got {o.device!r}")
    dtype = o.dtype if o.dtype != "auto" else ("bf16" if device == "cuda" else "fp32")
    if dtype not in ("fp32", "bf16"):
        raise BenchError(f"dtype must be auto, fp32 or bf16, got {o.dtype!r}")
    bad = [f for f in o.memory_formats if f not in MEMORY_FORMATS]
    if bad or not o.memory_formats or len(set(o.memory_formats)) < len(o.memory_formats):
        raise BenchError(
            f"memory formats must be distinct values from {', '.join(MEMORY_FORMATS)}, "
            f"got {','.join(o.memory_formats) or 'none'}"
        )
    bad = [m for m in o.memory_modes if m not in MEMORY_MODES]
    if bad or not o.memory_modes or len(set(o.memory_modes)) < len(o.memory_modes):
        raise BenchError(
            f"memory modes must be distinct values from {', '.join(MEMORY_MODES)}, got {','.join(o.memory_modes) or 'none'}"
        )
    size = o.image_size or {"resnet34": 224, "convnet3": 8}.get(o.arch, 32)
    cuda = device == "cuda"
    kernels = o.lif_kernels
    if kernels == "auto":
        kernels = "triton" if cuda and triton_available() else ("compiled" if o.compiled else "eager")
    if kernels not in KERNEL_SETS:
        raise BenchError(f"LIF kernels must be auto or one of {', '.join(KERNEL_SETS)}, got {o.lif_kernels!r}")
    if kernels == "triton" and not (cuda and triton_available()):
        raise BenchError("the triton LIF kernels need --device cuda and an importable triton")
    if o.threads is not None:
        torch.set_num_threads(o.threads)  # before anything runs: intra-op pools are sized once
    return dataclasses.replace(
        o,
        device=device,
        dtype=dtype,
        image_size=size,
        threads=torch.get_num_threads(),
        lif_kernels=kernels,
        epoch_images=o.epoch_images if o.epoch_images is not None else (50_000 if cuda else 0),
        steps=o.steps or (20 if cuda else 3),
        warmup=o.warmup if o.warmup is not None else (5 if cuda else 2),
    )
