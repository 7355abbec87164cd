"""Where and how a run computes: its device, precision and LIF kernels, chosen from the recipe.

Under ``auto`` the choices follow the machine: CUDA when there is one, bf16 autocast and the Triton
LIF kernels on it; on CPU fp32 and the eager loops, or the torch.compile'd loops when a run is long
enough to earn the compile back.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from imloss_cli.recipe import Recipe
from imloss_cli.snn.neuron import spiking_layers
from imloss_cli.snn.triton_lif import triton_available
from imloss_cli.train.distributed import DistEnv
from imloss_cli.train.errors import TrainingError

# Where torch.compile of the LIF loops starts to pay on CPU (compile ~20 s cold, saves ~5-15 ns a neuron-step).
COMPILE_PAYS_NEURON_STEPS = 2e9


def resolve_device(name: str, dist: DistEnv | None = None) -> torch.device:
    """The recipe's device; under torchrun, each process takes the GPU of its local rank."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank if dist is not None else torch.cuda.current_device())


def make_deterministic() -> None:
    """Bit-exact reruns on CUDA: the CPU path is deterministic already."""
    # cuBLAS reads this when it initialises; harmless if it already did on CPU-only machines.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """bf16 autocast when asked, or by default on CUDA; None: fp32."""
    precision = recipe.train.precision
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else None


def lif_kernels(recipe: Recipe, device: torch.device, neuron_steps: Callable[[], int]) -> str:
    """The LIF kernel set: ``train.lif_kernels``; under "auto", triton on CUDA where it imports, else
    the torch.compile'd loops where ``train.compile`` says so (always on CUDA under "auto", on CPU
    only where the run's ``neuron_steps()`` earn the compile back), else the eager loops."""
    choice, cuda = recipe.train.lif_kernels, device.type == "cuda"
    if choice == "triton" and not (cuda and triton_available()):
        raise TrainingError("train.lif_kernels = 'triton' needs a CUDA device and triton; use 'auto'")
    if choice != "auto":
        return choice
    if cuda and triton_available():
        return "triton"
    compile_ = recipe.train.compile
    on = compile_ == "on" or (compile_ == "auto" and (cuda or neuron_steps() > COMPILE_PAYS_NEURON_STEPS))
    return "compiled" if on else "eager"


def neuron_steps_per_image(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Membrane updates of one forward pass of the single image ``x`` (every spiking layer, every step)."""
    layers = [m for _, m in spiking_layers(model)]
    model.eval()
    for m in layers:
        m.store_v_seq = True
    with torch.no_grad():
        model(x.unsqueeze(0))
    steps = sum(m.v_seq.numel() for m in layers if m.v_seq is not None)
    for m in layers:
        m.store_v_seq = False
        m.clear()
    model.train()
    return steps


def place_model(model: torch.nn.Module, recipe: Recipe, device: torch.device, dist: DistEnv | None) -> torch.nn.Module:
    """The model with sync-BN when asked, in channels_last, on the device."""
    if recipe.train.sync_bn:
        if not (dist and device.type == "cuda"):
            raise TrainingError("train.sync_bn needs several CUDA processes (torchrun); set it to false")
        if recipe.model.norm == "tdbn":  # SyncBatchNorm would drop tdBN's fixed alpha * V_th
            raise TrainingError(
                "train.sync_bn does not carry tdBN's fixed scale; use model.norm = 'bn' or sync_bn = false"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # channels_last on CPU too: oneDNN convolutions skip their NCHW reorders (ResNet-19 steps 4-11% faster).
    return model.to(memory_format=torch.channels_last).to(device)


def wrap_ddp(model: torch.nn.Module, device: torch.device, dist: DistEnv | None) -> torch.nn.Module:
    """What the training step calls: the model itself, or under torchrun its DDP wrapper."""
    if dist is None:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
