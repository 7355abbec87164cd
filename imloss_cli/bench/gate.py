"""The correctness gate: the fused LIF (and SpikingJelly) against ``lif_naive`` before any timing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from imloss_cli.bench.variants import SpikingJellyLIF
from imloss_cli.recipe import Recipe
from imloss_cli.snn.models import NetSpec
from imloss_cli.snn.neuron import LIF
from imloss_cli.snn.reference import lif_naive
from imloss_cli.snn.triton_lif import triton_available

GATE_TOL = 1e-5


@dataclass(frozen=True)
class GateCheck:
    """One correctness check against ``lif_naive``: max abs errors, spikes must be identical."""

    name: str
    timesteps: int
    spike_mismatches: int
    v_err: float
    grad_err: float
    passed: bool


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
    s, v = lif_naive(x, torch.tensor(k, device=x.device), lif.params)
    return x, s, v


def _kernel_sets(device: torch.device, compiled: bool) -> list[str]:
    sets = ["eager", *(["compiled"] if compiled else [])]
    return sets + (["triton"] if device.type == "cuda" and triton_available() else [])


def correctness_gate(
    timesteps: tuple[int, ...],
    device: str | torch.device = "cpu",
    compiled: bool = True,
    spikingjelly_backends: tuple[str | None, ...] = (),
    k: float = 2.0,
    seed: int = 0,
) -> tuple[GateCheck, ...]:
    """Fused LIF (eager kernels; compiled ones if ``compiled``; Triton ones on CUDA where triton
    imports) and SpikingJelly vs ``lif_naive``, fp32.

    imloss: spikes identical, v_seq and dL/dx_seq (upstream grads on spike_seq, v_seq and v_mean)
    within ``GATE_TOL``. SpikingJelly (``None`` = its default provider): spikes identical, its
    post-reset v_seq against h * (1 - o) for a hard reset, dL/dx_seq with a grad on spike_seq only.
    """
    device = torch.device(device)
    spec = NetSpec.from_recipe(Recipe(), 10, 3, 8, timesteps=max(timesteps))  # the default neuron settings
    checks = []
    for T in timesteps:
        x, gs, gv = _gate_case(T, device, seed)
        for kernels in _kernel_sets(device, compiled):
            lif = spec.lif().to(device)
            lif.kernels, lif.store_v_seq = kernels, True
            lif.k.fill_(k)
            xr, s_ref, v_ref = _naive_reference(lif, x, k)
            torch.autograd.backward([s_ref, v_ref, v_ref.mean()], [gs, gv, torch.tensor(0.5, device=device)])
            xf = x.clone().requires_grad_(True)
            s = lif(xf)
            torch.autograd.backward([s, lif.v_seq, lif.v_mean], [gs, gv, torch.tensor(0.5, device=device)])
            mism = int((s != s_ref).sum())
            v_err, g_err = _max_err(lif.v_seq, v_ref), _max_err(xf.grad, xr.grad)
            name = f"imloss ({kernels} kernels)"
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
            v_post = v_ref * (1.0 - s_ref) if not lif.params.soft_reset else v_ref - lif.params.v_threshold * s_ref
            v_err, g_err = _max_err(sj.v_seq, v_post.detach()), _max_err(xs.grad, xr.grad)
            name = f"spikingjelly[{backend or 'default'}]"
            checks.append(GateCheck(name, T, mism, v_err, g_err, mism == 0 and max(v_err, g_err) < GATE_TOL))
    return tuple(checks)
