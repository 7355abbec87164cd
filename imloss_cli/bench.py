"""Training-step benchmark: imloss's fused LIF against SpikingJelly, the naive loop and a ReLU floor.

Every variant is the same network (``create_model(arch, spec)`` with a fixed seed, deep-copied) with
its spiking layers swapped by module surgery, trained on the same batch: forward, CE + 2.0 * IM-Loss
(membrane form), backward, SGD(momentum 0.9) step, zero_grad. A correctness gate (fused LIF ==
``lif_naive``: identical spikes, v_seq and input gradients within 1e-5 in fp32) runs first.

Importable with torch alone (no pydantic): the GPU machine runs it as ``python -m imloss_cli.bench``.

Example:
    python -m imloss_cli.bench --arch resnet19 --timesteps 2,4 --batch 8 --compare spikingjelly,naive,relu
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
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

from imloss_cli.snn.im_loss import im_loss
from imloss_cli.snn.models import NetSpec, StaticEncoder, create_model
from imloss_cli.snn.neuron import LIF, spiking_layers
from imloss_cli.snn.reference import lif_naive

IM_WEIGHT = 2.0  # lambda of CE + lambda * IM-Loss
LR = 0.01
GATE_TOL = 1e-5
KNOWN = ("imloss", "imloss-eager", "naive", "spikingjelly", "relu", "relu-tb")
SJ_CUDA_BACKENDS = ("triton", "cuda", "torch")  # SpikingJelly 2.0's CUDA providers (no cupy any more)


class BenchError(Exception):
    """The benchmark cannot run as asked (unknown variant or architecture, no CUDA device)."""


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


@dataclass(frozen=True)
class GateCheck:
    """One correctness check against ``lif_naive``: max abs errors, spikes must be identical."""

    name: str
    timesteps: int
    spike_mismatches: int
    v_err: float
    grad_err: float
    passed: bool


@dataclass(frozen=True)
class VariantResult:
    variant: str
    timesteps: int
    s_per_step: float  # median over repeats
    s_min: float
    s_max: float
    images_per_s: float  # images (not image-timesteps) per second: batch / s_per_step
    imloss_over_this: float  # imloss's s/step / this variant's: < 1 means imloss is faster
    peak_mb: float | None  # CPU: peak RSS during timed steps; CUDA: max_memory_allocated
    step_mb: float | None  # the part of peak_mb above the memory in use just before the steps
    warmup_s: float  # the warm-up steps, compilation / autotuning included
    static_encoder: bool  # stem conv run once on [B] and broadcast over T
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

    @property
    def gate_passed(self) -> bool:
        return all(c.passed for c in self.gate)


# --- variant neurons (module surgery replaces each LIF with one of these) ----------------------


class NaiveLIF(nn.Module):
    """``lif_naive``: one autograd node per time step, as in the authors' code."""

    def __init__(self, lif: LIF) -> None:
        super().__init__()
        self.lif_args = (lif.decay, lif.v_threshold, "soft" if lif.soft_reset else "hard", lif.detach_reset)
        self.register_buffer("k", lif.k.detach().clone(), persistent=False)
        self.v_mean: Tensor | None = None

    def forward(self, x_seq: Tensor) -> Tensor:
        spike_seq, v_seq = lif_naive(x_seq, self.k.to(x_seq.dtype), *self.lif_args)
        self.v_mean = v_seq.mean(dtype=torch.float32)
        return spike_seq


class ReLUNeuron(nn.Module):
    """The floor: ReLU on the same tensors; IM-Loss runs on its input as if it were the potential."""

    def __init__(self) -> None:
        super().__init__()
        self.v_mean: Tensor | None = None

    def forward(self, x_seq: Tensor) -> Tensor:
        self.v_mean = x_seq.mean(dtype=torch.float32)
        return torch.relu(x_seq)


_SJ_SELECTIONS: dict[str, dict] = {}


def _sj_use(backend: str | None) -> None:
    """Point SpikingJelly's LIF op at one CUDA provider (2.0 picks one per process from
    $SJ_LIF_CUDA_IMPLEMENTATION; swapping its private selection lets interleaved rows differ)."""
    if backend is None:
        return
    from spikingjelly._ops.lif import _selection

    _selection._requested = backend
    _selection._selections = _SJ_SELECTIONS.setdefault(backend, {})


class SpikingJellyLIF(nn.Module):
    """SpikingJelly 2.0's LIFNode with our dynamics: decay_input=False and v_reset=0 give
    H = V - V/tau + X = decay * V + X for tau = 1/(1 - decay). Sigmoid(alpha=2K) is exactly ESG's
    surrogate (1/2 tanh(K u) + 1/2 = sigmoid(2K u)), so gradients match too.

    Forward calls ``functional.lif_multi_step`` (what ``LIFNode.multi_step_forward`` calls) with an fp32
    initial state: LIFNode would make the state bf16 under autocast, which sends SJ to its slow
    reference path. The node is stateless here, so no ``reset_net`` is needed between steps.
    """

    def __init__(self, lif: LIF, backend: str | None = None) -> None:
        super().__init__()
        from spikingjelly.activation_based import neuron, surrogate

        self.node = neuron.LIFNode(
            tau=1.0 / (1.0 - lif.decay),
            decay_input=False,
            v_threshold=lif.v_threshold,
            v_reset=None if lif.soft_reset else 0.0,
            surrogate_function=surrogate.Sigmoid(alpha=2.0 * float(lif.k)),
            detach_reset=lif.detach_reset,
            step_mode="m",
            store_v_seq=True,
        )
        self.backend = backend
        self.v_mean: Tensor | None = None
        # SJ's v_seq (the potential after the reset) is kept only on request (the gate): holding it
        # through the step would charge SJ memory that IM-Loss, which needs only its mean, does not use.
        self.keep_v_seq = False
        self.v_seq: Tensor | None = None

    def forward(self, x_seq: Tensor) -> Tensor:
        from spikingjelly.activation_based import functional

        _sj_use(self.backend)
        n = self.node
        v0 = torch.zeros(x_seq.shape[1:], dtype=torch.float32, device=x_seq.device)
        spike_seq, _, v_seq = functional.lif_multi_step(
            x_seq, v0, n.tau, n.decay_input, n.v_threshold, n.v_reset, n.surrogate_function, n.detach_reset, True
        )
        self.v_mean = v_seq.mean(dtype=torch.float32)
        self.v_seq = v_seq if self.keep_v_seq else None
        return spike_seq


class FoldedEncoder(StaticEncoder):
    """StaticEncoder without the broadcast trick: the stem runs on the folded batch [T*B, ...]."""

    def forward(self, x: Tensor) -> Tensor:
        T, B = self.timesteps, x.shape[0]
        x_flat = x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1)  # [T*B, C, H, W]
        return self.lif(self.layers(x_flat).unflatten(0, (T, B)))  # [T, B, C', H', W']


def build_variant(base: nn.Module, variant: str, compiled: bool = True) -> tuple[nn.Module, list[nn.Module]]:
    """A deep copy of ``base`` with its LIF layers swapped for ``variant``'s neurons.

    ``compiled=False`` makes the "imloss" variant use the eager kernels (as "imloss-eager" does).

    Returns the model and its neurons, in order (all of them are hidden layers that IM-Loss uses).
    """
    model = copy.deepcopy(base)
    kind, _, backend = variant.partition("[")
    backend = backend.rstrip("]") or None
    neurons: list[nn.Module] = []
    for name, lif in spiking_layers(model):
        if kind in ("imloss", "imloss-eager"):
            lif.compiled, lif.store_v_seq = compiled and kind == "imloss", True
            neurons.append(lif)
            continue
        new: nn.Module
        if kind == "naive":
            new = NaiveLIF(lif)
        elif kind == "spikingjelly":
            new = SpikingJellyLIF(lif, backend)
        elif kind in ("relu", "relu-tb"):
            new = ReLUNeuron()
        else:
            raise BenchError(f"unknown variant {variant!r}; known: {', '.join(KNOWN)}")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new.to(lif.k.device))
        neurons.append(new)
    if kind == "relu-tb":
        enc = model.encoder
        if not isinstance(enc, StaticEncoder):
            raise BenchError("relu-tb needs a model whose encoder is a StaticEncoder")
        model.encoder = FoldedEncoder(enc.layers, enc.lif, enc.timesteps)
    return model, neurons


# --- correctness gate ---------------------------------------------------------------------------


def _gate_case(T: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs around the threshold (spikes and resets at every step) and random upstream grads."""
    g = torch.Generator().manual_seed(seed + T)
    shape = (T, 4, 8, 6, 6)  # [T, B, C, H, W]
    x = torch.rand(shape, generator=g) * 1.2
    return x.to(device), torch.randn(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device)


def _max_err(a: Tensor, b: Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _naive_reference(lif: LIF, x: Tensor, k: float) -> tuple[Tensor, Tensor, Tensor]:
    x = x.clone().requires_grad_(True)
    s, v = lif_naive(x, torch.tensor(k, device=x.device), lif.decay, lif.v_threshold,
                     "soft" if lif.soft_reset else "hard", lif.detach_reset)
    return x, s, v


def correctness_gate(
    timesteps: tuple[int, ...],
    device: str | torch.device = "cpu",
    compiled: bool = True,
    spikingjelly_backends: tuple[str | None, ...] = (),
    k: float = 2.0,
    seed: int = 0,
) -> tuple[GateCheck, ...]:
    """Fused LIF (eager and, if ``compiled``, compiled kernels) and SpikingJelly vs ``lif_naive``, fp32.

    imloss: spikes identical, v_seq and dL/dx_seq (upstream grads on spike_seq, v_seq and v_mean)
    within ``GATE_TOL``. SpikingJelly (``None`` = its default provider): spikes identical, its
    post-reset v_seq against h * (1 - o) for a hard reset, dL/dx_seq with a grad on spike_seq only.
    """
    device = torch.device(device)
    spec = NetSpec(num_classes=10, in_channels=3, timesteps=max(timesteps))  # the models' neuron settings
    checks = []
    for T in timesteps:
        x, gs, gv = _gate_case(T, device, seed)
        for kernel_compiled in (False, True) if compiled else (False,):
            lif = spec.lif().to(device)
            lif.compiled, lif.store_v_seq = kernel_compiled, True
            lif.k.fill_(k)
            xr, s_ref, v_ref = _naive_reference(lif, x, k)
            torch.autograd.backward([s_ref, v_ref, v_ref.mean()], [gs, gv, torch.tensor(0.5, device=device)])
            xf = x.clone().requires_grad_(True)
            s = lif(xf)
            torch.autograd.backward([s, lif.v_seq, lif.v_mean], [gs, gv, torch.tensor(0.5, device=device)])
            mism = int((s != s_ref).sum())
            v_err, g_err = _max_err(lif.v_seq, v_ref), _max_err(xf.grad, xr.grad)
            name = f"imloss ({'compiled' if kernel_compiled else 'eager'} kernels)"
            checks.append(GateCheck(name, T, mism, v_err, g_err, mism == 0 and max(v_err, g_err) < GATE_TOL))
        for backend in spikingjelly_backends:
            lif = spec.lif().to(device)
            lif.k.fill_(k)
            xr, s_ref, v_ref = _naive_reference(lif, x, k)
            (s_ref * gs).sum().backward()
            sj = SpikingJellyLIF(lif, backend).to(device)
            sj.keep_v_seq = True
            xs = x.clone().requires_grad_(True)
            s = sj(xs)
            (s * gs).sum().backward()
            mism = int((s != s_ref).sum())
            v_post = v_ref * (1.0 - s_ref) if not lif.soft_reset else v_ref - lif.v_threshold * s_ref
            v_err, g_err = _max_err(sj.v_seq, v_post.detach()), _max_err(xs.grad, xr.grad)
            name = f"spikingjelly[{backend or 'default'}]"
            checks.append(GateCheck(name, T, mism, v_err, g_err, mism == 0 and max(v_err, g_err) < GATE_TOL))
    return tuple(checks)


# --- timing ------------------------------------------------------------------------------------


def _resolve(o: BenchOptions) -> BenchOptions:
    device = o.device if o.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise BenchError(f"device must be auto, cpu or cuda, got {o.device!r}")
    dtype = o.dtype if o.dtype != "auto" else ("bf16" if device == "cuda" else "fp32")
    if dtype not in ("fp32", "bf16"):
        raise BenchError(f"dtype must be auto, fp32 or bf16, got {o.dtype!r}")
    size = o.image_size or {"resnet34": 224, "convnet3": 8}.get(o.arch, 32)
    cuda = device == "cuda"
    if o.threads is not None:
        torch.set_num_threads(o.threads)  # before anything runs: intra-op pools are sized once
    return dataclasses.replace(
        o, device=device, dtype=dtype, image_size=size, threads=torch.get_num_threads(),
        steps=o.steps or (20 if cuda else 3), warmup=o.warmup if o.warmup is not None else (5 if cuda else 2),
    )


def _sj_rows(device: str, notes: list[str]) -> list[str]:
    """The SpikingJelly rows this machine can run: one per importable provider on CUDA."""
    try:
        import spikingjelly.activation_based.neuron  # noqa: F401
        from spikingjelly.activation_based import functional
    except ImportError as e:
        notes.append(f"spikingjelly skipped: not importable ({e}); pip install -e .[bench]")
        return []
    if not hasattr(functional, "lif_multi_step"):  # the 0.0.0.0.x API (LIFNode(backend=...)) differs
        notes.append("spikingjelly skipped: this benchmark needs SpikingJelly >= 2.0 (functional.lif_multi_step)")
        return []
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


def _variant_names(o: BenchOptions, notes: list[str]) -> list[str]:
    names = ["imloss"]
    for name in o.compare:
        kind = name.partition("[")[0]
        if kind not in KNOWN:
            raise BenchError(f"unknown variant {name!r}; known: {', '.join(KNOWN)}")
        if name == "spikingjelly":
            names += _sj_rows(o.device, notes)
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
            loss = F.cross_entropy(logits.float(), y) + IM_WEIGHT * im
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for n in self.neurons:  # drop what the forward stored, so no activation outlives its step
            n.clear() if isinstance(n, LIF) else setattr(n, "v_mean", None)


def _setup(o: BenchOptions, T: int, variants: list[str]) -> tuple[dict[str, _Runner], Tensor, Tensor]:
    device = torch.device(o.device)
    torch.manual_seed(o.seed)
    spec = NetSpec(num_classes=10, in_channels=3, timesteps=T, image_size=o.image_size)
    base = create_model(o.arch, spec).to(device).train()
    cuda = device.type == "cuda"
    if cuda:
        base = base.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(o.seed + 1)
    x = torch.randn(o.batch, 3, o.image_size, o.image_size, generator=g).to(device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (o.batch,), generator=g).to(device)
    bf16 = o.dtype == "bf16"

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    runners = {}
    for name in variants:
        model, neurons = build_variant(base, name, o.compiled)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        runners[name] = _Runner(model, neurons, opt, autocast, spec.v_threshold)
    return runners, x, y


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
    o = _resolve(o)
    runners, x, y = _setup(o, T, [variant])
    r = runners[variant]
    for _ in range(max(o.warmup or 0, 1)):
        r.step(x, y)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_mb("VmRSS")
    for _ in range(steps):
        r.step(x, y)
    peak = _rss_mb("VmHWM")
    return {"peak_mb": peak, "step_mb": peak - before}


def _probe_in_subprocess(o: BenchOptions, variant: str, T: int) -> dict[str, float]:
    argv = [
        sys.executable, "-m", "imloss_cli.bench", "--memory-probe", variant, "--arch", o.arch,
        "--timesteps", str(T), "--batch", str(o.batch), "--device", o.device, "--dtype", o.dtype,
        "--image-size", str(o.image_size), "--seed", str(o.seed), "--warmup", str(o.warmup),
        "--threads", str(o.threads), *([] if o.compiled else ["--no-compile"]),
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BenchError(f"memory probe of {variant} (T={T}) failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _flops_per_image_step(r: _Runner, x: Tensor, y: Tensor, T: int) -> float:
    """FLOPs of one training step (forward + backward) counted by FlopCounterMode, per image per step."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        r.step(x, y)
    return counter.get_total_flops() / (x.shape[0] * T)


def _time_T(o: BenchOptions, T: int, variants: list[str]) -> tuple[list[VariantResult], float | None]:
    # Start each T from an empty compile cache, as a training process would: graphs that the gate or
    # another T left behind change what torch.compile builds next (measured on an H200: the fp32 gate
    # run first made imloss's compiled step 64 ms instead of 37 ms).
    torch._dynamo.reset()
    runners, x, y = _setup(o, T, variants)
    cuda = o.device == "cuda"
    warm: dict[str, float] = {}
    for name, r in runners.items():
        _sync(o.device)
        t0 = time.perf_counter()
        for _ in range(o.warmup or 0):
            r.step(x, y)
        _sync(o.device)
        warm[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {n: [] for n in variants}
    peak: dict[str, float] = {}
    step_peak: dict[str, float] = {}
    for rep in range(o.repeats):
        shift = rep % len(variants)  # rotate the order: no variant always runs right after another
        for name in variants[shift:] + variants[:shift]:
            r = runners[name]
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated() / 2**20
            _sync(o.device)
            t0 = time.perf_counter()
            for _ in range(o.steps or 1):
                r.step(x, y)
            _sync(o.device)
            times[name].append((time.perf_counter() - t0) / (o.steps or 1))
            if cuda:
                p = torch.cuda.max_memory_allocated() / 2**20
                peak[name], step_peak[name] = max(peak.get(name, 0.0), p), max(step_peak.get(name, 0.0), p - before)
    flops = None
    if "relu" in runners:
        flops = _flops_per_image_step(runners["relu"], x, y, T)
    del runners
    if o.memory and not cuda:
        for name in variants:
            probe = _probe_in_subprocess(o, name, T)
            peak[name], step_peak[name] = probe["peak_mb"], probe["step_mb"]
    ref = statistics.median(times["imloss"])
    rows = []
    for name in variants:
        med = statistics.median(times[name])
        mfu = None
        if cuda and flops is not None:
            mfu = flops * o.batch * T / med / (o.peak_tflops * 1e12)
        rows.append(VariantResult(
            name, T, med, min(times[name]), max(times[name]), o.batch / med, ref / med,
            peak.get(name), step_peak.get(name), warm[name], name != "relu-tb", mfu,
        ))
    return rows, flops


def run_benchmark(options: BenchOptions) -> BenchResult:
    """Run the correctness gate, then time every variant at every T (see the module docstring).

    If the gate fails, no timing is done: the result carries the failed checks and no rows.

    Raises:
        BenchError: an unknown variant or architecture, or CUDA asked for where there is none.
    """
    o = _resolve(options)
    notes: list[str] = []
    variants = _variant_names(o, notes)
    try:
        create_model(o.arch, NetSpec(num_classes=10, in_channels=3, timesteps=1))
    except KeyError as e:
        raise BenchError(str(e.args[0])) from None
    sj = [v.partition("[")[2].rstrip("]") or None for v in variants if v.startswith("spikingjelly")]
    gate = correctness_gate(o.timesteps, o.device, compiled=o.compiled, spikingjelly_backends=tuple(sj))
    device_name = torch.cuda.get_device_name() if o.device == "cuda" else "cpu"
    info = (o, device_name, torch.__version__, torch.get_num_threads())
    if not all(c.passed for c in gate):
        return BenchResult(*info, gate, (), tuple(notes), None)
    rows: list[VariantResult] = []
    flops = None
    for T in o.timesteps:
        t_rows, t_flops = _time_T(o, T, variants)
        rows += t_rows
        flops = t_flops if t_flops is not None else flops
    notes += _method_notes(o, variants)
    return BenchResult(*info, gate, tuple(rows), tuple(notes), flops)


def _method_notes(o: BenchOptions, variants: list[str]) -> list[str]:
    notes = [
        (
            "one step = forward, CE + 2.0 * IM-Loss (mean over hidden layers of (mean(v_seq) - V_th)^2), "
            "backward, SGD(momentum 0.9) step; same initial weights and batch for all variants"
        ),
        (
            f"s/step: median over {o.repeats} repeats of {o.steps} steps, variants interleaved (order rotated); "
            "images/s = batch / (s/step), images not image-timesteps"
        ),
        (
            "imloss/this = imloss's s/step / this row's (below 1: imloss is faster); "
            "spread = (slowest - fastest repeat) / median"
        ),
        (
            "enc 'once': stem conv+BN run once on [B] and broadcast over T (StaticEncoder, exact for static "
            "images); 'T*B': stem on the folded batch, as a plain network would"
        ),
    ]
    if o.memory and o.device == "cpu":
        notes.append("memory (CPU): each variant in a fresh subprocess with MALLOC_MMAP_THRESHOLD_=65536; peak = "
                     "VmHWM over 2 steps after warm-up (high-water mark reset), step = peak - RSS before them")
    elif o.memory:
        notes.append("memory (CUDA): peak = max_memory_allocated during the timed steps; step = peak - allocated before")
    if any(v.startswith("spikingjelly") for v in variants):
        notes.append("spikingjelly: LIFNode settings via functional.lif_multi_step with an fp32 initial state; "
                     "its v_seq is the post-reset potential, IM-Loss uses its mean")
    if not o.compiled:
        notes.append("imloss ran its eager kernels (--no-compile): no torch.compile anywhere")
    if "naive" in variants:
        notes.append("naive: imloss_cli.snn.reference.lif_naive, one autograd node per time step")
    return notes


# --- output ------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    """``format(v, spec)``, or a right-aligned "-" of the same width for a missing value."""
    return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))


def format_table(result: BenchResult) -> str:
    """The result as plain text: gate, one row per variant per T, notes, summary lines."""
    o = result.options
    lines = [
        (
            f"imloss bench: {o.arch} {o.image_size}x{o.image_size}, batch {o.batch}, {o.device} "
            f"({result.device_name}, {result.threads} threads), {o.dtype}, torch {result.torch_version}"
        ),
        f"correctness gate vs lif_naive ({o.device}, fp32; max abs error; tolerance {GATE_TOL:g}, spikes identical):",
        f"  {'check':30} {'T':>2} {'spike diffs':>11} {'v_seq err':>10} {'grad err':>10}  ok",
    ]
    for c in result.gate:
        lines.append(f"  {c.name:30} {c.timesteps:>2} {c.spike_mismatches:>11} {c.v_err:>10.2e} {c.grad_err:>10.2e}  "
                     f"{'yes' if c.passed else 'NO'}")
    if result.rows:
        lines.append(f"{'variant':22} {'T':>2} {'s/step':>9} {'spread':>7} {'images/s':>9} {'imloss/this':>11} "
                     f"{'peak MB':>9} {'step MB':>8} {'warm-up s':>9} {'enc':>5}" + ("  MFU" if result.rows[0].mfu is not None else ""))
        for r in result.rows:
            spread = (r.s_max - r.s_min) / r.s_per_step * 100
            lines.append(
                f"{r.variant:22} {r.timesteps:>2} {r.s_per_step:>9.4f} {spread:>6.0f}% {r.images_per_s:>9.1f} "
                f"{r.imloss_over_this:>11.2f} {_fmt(r.peak_mb, '9.0f')} {_fmt(r.step_mb, '8.0f')} {r.warmup_s:>9.1f} "
                f"{'once' if r.static_encoder else 'T*B':>5}" + (f"  {r.mfu:.1%}" if r.mfu is not None else "")
            )
    if result.flops_per_image_step is not None:
        line = f"model FLOPs: {result.flops_per_image_step / 1e9:.4g} GFLOP per image per time step (training step of relu, FlopCounterMode)"
        if o.device == "cuda":
            line += f"; MFU against {o.peak_tflops:g} TFLOP/s"
        lines.append(line)
    lines += _summary(result)
    lines += [f"note: {n}" for n in result.notes]
    if not result.gate_passed:
        lines.append("CORRECTNESS GATE FAILED: no timing was done")
    return "\n".join(lines)


def _summary(result: BenchResult) -> list[str]:
    out = []
    for T in result.options.timesteps:
        rows = {r.variant: r for r in result.rows if r.timesteps == T}
        if "imloss" not in rows:
            continue
        parts = []
        sj = [r for n, r in rows.items() if n.startswith("spikingjelly")]
        if sj:
            best = min(sj, key=lambda r: r.s_per_step)
            parts.append(f"{best.imloss_over_this:.2f}x the time of {best.variant} (fastest SJ; "
                         f"images/s {rows['imloss'].images_per_s / best.images_per_s:.2f}x)")
            if best.step_mb and rows["imloss"].step_mb:
                parts.append(f"{rows['imloss'].step_mb / best.step_mb:.2f}x its step memory")
        for floor in ("relu", "relu-tb"):
            if floor in rows:
                parts.append(f"{rows[floor].imloss_over_this:.2f}x the time of the {floor} floor")
        if parts:
            out.append(f"summary T={T}: imloss takes " + ", ".join(parts))
    return out


def to_json(result: BenchResult) -> str:
    """The result as JSON (the same fields as the dataclasses, plus gate_passed)."""
    data = dataclasses.asdict(result)
    data["gate_passed"] = result.gate_passed
    return json.dumps(data, indent=2)


# --- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imloss_cli.bench", description=__doc__.split("\n\n")[0])
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
        compiled=not args.no_compile,
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


if __name__ == "__main__":
    raise SystemExit(main())
