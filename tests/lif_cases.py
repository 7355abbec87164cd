"""The one check every LIF kernel set passes: spikes, potentials and gradients equal the naive loop.

Shared by the eager/compiled kernels (test_neuron.py) and the Triton kernels (test_triton_lif.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from imloss_cli.snn import triton_lif
from imloss_cli.snn.neuron import LIFKernels, MultiStepLIFFunction
from imloss_cli.snn.params import LIFParams
from imloss_cli.snn.reference import lif_naive

DECAY, V_TH = 0.25, 0.5
CASES = [(T, reset, detach) for T in (1, 2, 4) for reset in ("hard", "soft") for detach in (False, True)]
# Which outputs the loss reads: (spike_seq, v_seq, v_mean). Each reaches the backward loop by its
# own path (dL/dv_mean is added inside the loop, not expanded by autograd).
READ_OUTPUTS = {
    "spikes and potentials": (True, True, False),
    "spikes only": (True, False, False),
    "potentials only": (False, True, False),
    "all three": (True, True, True),
    "v_mean only": (False, False, True),
}


def lif_input(T: int, seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inputs around the threshold, so that spikes and resets happen at every step."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, *shape, generator=g) * 1.2).to(dtype).requires_grad_(True)


def assert_kernels_equal_the_naive_loop(
    kernels: LIFKernels, reads: str, T: int, reset: str, detach_reset: bool
) -> None:
    """Spikes and potentials bitwise, v_mean and dL/dx_seq within tolerance, for the outputs ``reads``."""
    wanted = list(READ_OUTPUTS[reads])
    k = 2.5
    x_ref = lif_input(T, seed=T, shape=(2, 3, 5))
    x = x_ref.detach().clone().requires_grad_(True)
    g = torch.Generator().manual_seed(100 + T)
    upstream = [torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g), torch.tensor(-2.5)]

    params = LIFParams(DECAY, V_TH, soft_reset=reset == "soft", detach_reset=detach_reset)
    s_ref, v_ref = lif_naive(x_ref, k, params)
    s, v, v_mean = MultiStepLIFFunction.apply(x, torch.tensor(k, dtype=x.dtype), DECAY, params, kernels)
    assert torch.equal(s, s_ref)
    assert torch.equal(v, v_ref)  # the reference's operations in its order: bitwise equal
    assert v_mean.shape == ()
    assert_close(v_mean, v_ref.mean())
    if T > 1:  # the input must actually exercise both spiking and non-spiking steps
        assert 0 < s.sum() < s.numel()

    def backward(outputs: list[torch.Tensor]) -> None:
        torch.autograd.backward([o for o, w in zip(outputs, wanted) if w], [u for u, w in zip(upstream, wanted) if w])

    backward([s_ref, v_ref, v_ref.mean()])
    backward([s, v, v_mean])
    assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6 if reads == "v_mean only" else 1e-5)


# Variants of the neuron the kernels run: the spike test, the surrogate's shape, a learnable decay.
VARIANTS = {
    "strict threshold": {"strict": True},
    "guo surrogate": {"surrogate": "guo"},
    "authors' neuron (strict, guo)": {"strict": True, "surrogate": "guo"},
    "learnable leak": {"learn_decay": True},
    "learnable leak, soft reset": {"learn_decay": True, "reset": "soft"},
    "Fang et al.'s charge (decay_input)": {"decay_input": True},
    "PLIF (Fang et al.: learnable, decay_input)": {"learn_decay": True, "decay_input": True},
    "PLIF, soft reset": {"learn_decay": True, "decay_input": True, "reset": "soft"},
    "PLIF, reset detached": {"learn_decay": True, "decay_input": True, "detach_reset": True},
}


def assert_variant_equals_the_naive_loop(kernels: LIFKernels, variant: str, T: int = 4) -> None:
    """Spikes and potentials bitwise and dL/dx (and dL/d(decay) for a learnable one) within tolerance
    of the naive loop's autograd, for a loss reading spikes, potentials and v_mean."""
    options = VARIANTS[variant]
    strict, surrogate, reset = (
        options.get("strict", False),
        options.get("surrogate", "tanh"),
        options.get("reset", "hard"),
    )
    k = 3.0
    # Fang et al.'s charge at tau = 2 (decay 0.5) scales the input by 1/2: inputs twice as large, so
    # that the potentials are the same and x = 2 V_th lands exactly on the threshold
    decay_input = options.get("decay_input", False)
    decay0, gain = (0.5, 0.5) if decay_input else (DECAY, 1.0)
    x_ref = (lif_input(T, seed=7, shape=(3, 4, 5)) / gain).detach().requires_grad_(True)
    x = x_ref.detach().clone().requires_grad_(True)
    x_ref.data[0, 0, 0, :2] = V_TH / gain  # exactly at the threshold: the strict test and >= disagree there
    x.data[0, 0, 0, :2] = V_TH / gain
    decay_ref: float | torch.Tensor = decay0
    decay: float | torch.Tensor = decay0
    if options.get("learn_decay"):
        decay_ref = torch.tensor(decay0, requires_grad=True)
        decay = torch.tensor(decay0, requires_grad=True)
    g = torch.Generator().manual_seed(11)
    upstream = [torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g), torch.tensor(-1.5)]

    params = LIFParams(
        decay0, V_TH, soft_reset=reset == "soft", detach_reset=options.get("detach_reset", False), strict=strict,
        surrogate=surrogate, decay_input=decay_input,
    )  # fmt: skip
    s_ref, v_ref = lif_naive(x_ref, k, replace(params, decay=decay_ref))
    s, v, v_mean = MultiStepLIFFunction.apply(x, torch.tensor(k), decay, params, kernels)
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
    assert s[0, 0, 0, :2].tolist() == ([0.0, 0.0] if strict else [1.0, 1.0])
    torch.autograd.backward([s_ref, v_ref, v_ref.mean()], upstream)
    torch.autograd.backward([s, v, v_mean], upstream)
    assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    if isinstance(decay, torch.Tensor):
        assert decay.grad is not None and decay_ref.grad is not None  # type: ignore[union-attr]
        assert_close(decay.grad, decay_ref.grad, rtol=1e-5, atol=1e-5)  # type: ignore[union-attr]


def im_share_of_the_input_gradient(kernels: LIFKernels, dtype: torch.dtype) -> float:
    """What IM-Loss adds to dL/dx, summed: a realistic per-element IM gradient (1e-9) beside CE
    gradients of 1e-5, the difference of dL/dx with and without the IM term."""
    x = lif_input(4, seed=3, shape=(64, 256), dtype=dtype).detach()
    g = torch.Generator().manual_seed(5)
    grad_spike = (torch.randn(x.shape, generator=g) * 1e-5).to(dtype)
    k = torch.tensor(2.0, dtype=dtype)

    def input_grad(with_im: bool) -> torch.Tensor:
        xi = x.clone().requires_grad_(True)
        s, _, v_mean = MultiStepLIFFunction.apply(xi, k, DECAY, LIFParams(DECAY, V_TH), kernels)
        outputs, grads = [s], [grad_spike]
        if with_im:
            outputs.append(v_mean)
            grads.append(torch.tensor(1e-9 * x.numel(), dtype=v_mean.dtype))
        torch.autograd.backward(outputs, grads)
        assert xi.grad is not None
        return xi.grad.double()

    return float((input_grad(True) - input_grad(False)).sum())


def lif_params(reset: str = "hard", detach_reset: bool = False, decay: float = DECAY) -> LIFParams:
    """The test neuron: DECAY and V_TH, with this reset."""
    return LIFParams(decay, V_TH, soft_reset=reset == "soft", detach_reset=detach_reset)


def bf16_layer_input() -> torch.Tensor:
    """A bf16 input shaped like a ResNet-19 layer's [T, B, C, H, W] (fewer images and pixels), around the
    threshold: where an fp32 state and one rounded to bf16 at every step part ways."""
    g = torch.Generator().manual_seed(19)
    return (torch.randn(4, 2, 128, 8, 8, generator=g) * 0.4 + 0.3).to(torch.bfloat16)


def bf16_spikes_by_hand(x: torch.Tensor, state_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(spike_seq, v_seq) of the hard-reset LIF with the state carried in ``state_dtype``, each step's
    potential stored in bf16 and its spike read off the stored value: the precision rule with fp32,
    the former eager and compiled loops with bf16."""
    h = torch.zeros(x.shape[1:], dtype=state_dtype)
    o = torch.zeros_like(h)
    spikes, vs = [], []
    for t in range(x.shape[0]):
        h = (DECAY * (h * (1.0 - o)) + x[t].to(state_dtype)).to(state_dtype)
        v = h.to(torch.bfloat16)
        o = (v >= V_TH).to(state_dtype)
        spikes.append(o.to(torch.bfloat16))
        vs.append(v)
    return torch.stack(spikes), torch.stack(vs)


def assert_bf16_forward_follows_the_precision_rule(kernels: LIFKernels) -> None:
    """A bf16 layer: the state carried in fp32, each potential stored in bf16 and each spike read off
    the stored value, exactly (spikes and potentials bitwise the fp32-state loop's by hand), v_sum the
    sum of the fp32 potentials; and the input is one where a bf16 state fires otherwise."""
    x = bf16_layer_input().flatten(1)  # [T, N] rows
    s, v, v_sum = kernels.forward(x, lif_params())
    assert s.dtype == v.dtype == torch.bfloat16 and v_sum.dtype == torch.float32
    s_ref, v_ref = bf16_spikes_by_hand(x, torch.float32)
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
    h, total = torch.zeros(x.shape[1]), torch.zeros(x.shape[1])
    for t in range(x.shape[0]):  # the fp32 potentials, with the kernel's spikes
        h = DECAY * (h * (1.0 - (s[t - 1].float() if t else 0.0))) + x[t].float()
        total += h
    assert_close(v_sum, total, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(v_sum, v.float().sum(0), rtol=1e-6, atol=1e-6)  # not the sum of bf16 copies
    s_bf16_state, _ = bf16_spikes_by_hand(x, torch.bfloat16)
    assert int((s_bf16_state != s_ref).sum()) > 0  # the rule decides spikes on this input


@contextlib.contextmanager
def interpreted_triton() -> Iterator[None]:
    """The Triton LIF kernels on this CPU (TRITON_INTERPRET=1); skips the test where they cannot run."""
    if not triton_lif.triton_available():
        pytest.skip("triton is not installed (it ships with CUDA builds of torch)")
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    triton_lif._jit.cache_clear()
    try:
        try:
            triton_lif.lif_forward_triton(torch.zeros(1, 2), LIFParams(0.25, 0.5))
        except Exception as e:  # the interpreter needs a numpy and triton that agree; say why not
            pytest.skip(f"TRITON_INTERPRET=1 cannot run here: {type(e).__name__}: {e}")
        yield
    finally:
        os.environ.pop("TRITON_INTERPRET") if before is None else os.environ.update(TRITON_INTERPRET=before)
        triton_lif._jit.cache_clear()
