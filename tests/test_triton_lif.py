"""The Triton LIF kernels against the per-step reference, run on this CPU by Triton's interpreter.

``TRITON_INTERPRET=1`` makes ``triton.jit`` build interpreted kernels that run on CPU tensors; the
kernels are defined on first use, so the fixture sets it, builds them, and clears them afterwards
(a later CUDA run in the same process compiles them for real). Sizes stay tiny: the interpreter
runs every program in numpy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import torch
from torch.testing import assert_close

from imloss_cli.snn import triton_lif
from imloss_cli.snn.neuron import LIF, TRITON_KERNELS, MultiStepLIFFunction, StepLayout, kernel_set
from imloss_cli.snn.reference import lif_naive

from .lif_cases import (
    CASES,
    DECAY,
    READ_OUTPUTS,
    VARIANTS,
    assert_bf16_forward_follows_the_precision_rule,
    assert_kernels_equal_the_naive_loop,
    assert_variant_equals_the_naive_loop,
    bf16_layer_input,
    bf16_spikes_by_hand,
    im_share_of_the_input_gradient,
    interpreted_triton,
    lif_input,
    lif_params,
)


@pytest.fixture(scope="module", autouse=True)
def interpreted_kernels() -> Iterator[None]:
    with interpreted_triton():
        yield


def _triton3(x: torch.Tensor, k: float, reset: str, detach_reset: bool) -> tuple[torch.Tensor, ...]:
    k_t = torch.tensor(k, dtype=x.dtype)
    return MultiStepLIFFunction.apply(x, k_t, DECAY, lif_params(reset, detach_reset), TRITON_KERNELS)


@pytest.mark.parametrize("reads", list(READ_OUTPUTS))
@pytest.mark.parametrize(("T", "reset", "detach_reset"), CASES)
def test_triton_lif_equals_the_naive_loop_whichever_outputs_the_loss_reads(
    reads: str, T: int, reset: str, detach_reset: bool
) -> None:
    assert_kernels_equal_the_naive_loop(TRITON_KERNELS, reads, T, reset, detach_reset)


def test_more_neurons_than_one_program_holds_and_a_ragged_last_block() -> None:
    n = triton_lif.BLOCK + 37  # two programs, the second one masked
    x_ref = lif_input(3, seed=7, shape=(n,))
    x = x_ref.detach().clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(8))
    s_ref, v_ref = lif_naive(x_ref, 3.0, lif_params("hard", False))
    ((s_ref * w).sum() + 2.0 * v_ref.mean()).backward()
    s, v, m = _triton3(x, 3.0, "hard", False)
    ((s * w).sum() + 2.0 * m).backward()
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
    assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


def test_channels_last_and_broadcast_inputs_are_read_through_their_strides() -> None:
    T, B, C, H, W = 2, 2, 3, 2, 3
    x = torch.rand(T * B, C, H, W, generator=torch.Generator().manual_seed(1)) * 1.2
    x_cl = x.contiguous(memory_format=torch.channels_last).unflatten(0, (T, B)).requires_grad_(True)
    y = torch.rand(B, C, H, W, generator=torch.Generator().manual_seed(2)) * 1.2
    x_bc = y.unsqueeze(0).expand(T, *y.shape)
    assert StepLayout.of(x_bc).flat(x_bc).stride() == (0, 1)  # read in place, time stride 0
    for xs in (x_cl, x_bc):
        x_ref = xs.detach().contiguous().requires_grad_(True)
        s_ref, v_ref = lif_naive(x_ref, 2.0, lif_params("soft", False))
        s_ref.sum().backward()
        xt = xs.detach().requires_grad_(True) if xs is x_bc else xs
        s, v, _ = _triton3(xt, 2.0, "soft", False)
        s.sum().backward()  # an expanded (stride-0) upstream gradient
        assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
        if xs is x_cl:
            assert s.stride() == x_cl.stride()  # outputs keep the input's layout
        assert_close(xt.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_bf16_input_carries_the_potential_in_fp32_and_reads_spikes_off_the_stored_potential() -> None:
    assert_bf16_forward_follows_the_precision_rule(TRITON_KERNELS)
    x = lif_input(4, seed=3, shape=(64,), dtype=torch.bfloat16).detach()
    s, v, _ = triton_lif.lif_forward_triton(x, lif_params())
    grad, no_decay_grad = triton_lif.lif_backward_triton(
        torch.ones_like(s), None, None, v, torch.tensor(2.0), lif_params()
    )
    assert no_decay_grad is None
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


def test_a_bf16_layer_fires_the_same_spikes_on_every_kernel_set() -> None:
    """One precision rule (snn.neuron): the same bf16 layer through the eager loops, their compiled form
    and the Triton kernels gives identical spikes and potentials, and input gradients within a bf16
    rounding; the former eager and compiled loops (a bf16 state) differed on this input."""
    x = bf16_layer_input()
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    sets = {"eager": "eager", "triton": "triton"}
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        sets_skipped = "compiled (torch.compile on CPU needs a C compiler)"
    else:
        sets["compiled"], sets_skipped = "compiled", ""
    results = {}
    for name, kernels in sets.items():
        lif = LIF(lif_params(), kernels=kernels)
        lif.k.fill_(3.0)
        lif.store_v_seq = True
        xi = x.clone().requires_grad_(True)
        s = lif(xi)
        (s * grad_out).sum().backward()
        results[name] = (s, lif.v_seq, xi.grad)
    s_ref, v_ref, g_ref = results["eager"]
    assert 0 < s_ref.sum() < s_ref.numel()
    for name, (s, v, g) in results.items():
        assert torch.equal(s, s_ref) and torch.equal(v, v_ref), name
        assert_close(g.float(), g_ref.float(), rtol=2**-7, atol=1e-3, msg=name)
    assert int((bf16_spikes_by_hand(x, torch.bfloat16)[0] != s_ref).sum()) > 0
    if sets_skipped:
        pytest.skip(f"eager and triton agree; not run: {sets_skipped}")


def test_the_lif_module_runs_the_triton_kernels_by_name() -> None:
    assert kernel_set("triton") is TRITON_KERNELS
    with pytest.raises(ValueError, match="kernels"):
        LIF(lif_params(), kernels="cuda")
    lif = LIF(lif_params(), kernels="triton")
    lif.k.fill_(3.0)
    lif.store_v_seq = True
    x = lif_input(2, seed=5, shape=(2, 4))
    s = lif(x)
    (s.sum() + lif.v_mean).backward()
    x_ref = x.detach().clone().requires_grad_(True)
    s_ref, v_ref = lif_naive(x_ref, 3.0, lif_params("hard", False))
    (s_ref.sum() + v_ref.mean()).backward()
    assert torch.equal(s, s_ref)
    assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_triton_kernels_run_every_neuron_variant_as_the_naive_loop(variant: str) -> None:
    assert_variant_equals_the_naive_loop(TRITON_KERNELS, variant)


def test_triton_bf16_keeps_the_im_loss_share_of_the_input_gradient() -> None:
    fp32 = im_share_of_the_input_gradient(TRITON_KERNELS, torch.float32)
    bf16 = im_share_of_the_input_gradient(TRITON_KERNELS, torch.bfloat16)
    assert fp32 > 0 and abs(bf16 - fp32) < 0.1 * fp32


def test_row_offsets_are_int64_past_two_to_the_31() -> None:
    """T*N reaches 2^31 elements at ImageNet sizes: the kernels' offsets must not wrap in int32."""
    t, stride_t, stride_n = 3, 2**30, 5  # row 3 starts at 3 * 2^30 > 2^31
    offsets = triton_lif.row_offsets(t, stride_t, stride_n, 8)
    assert offsets.tolist() == [t * stride_t + i * stride_n for i in range(8)]
    assert offsets.dtype == torch.int64 and int(offsets.max()) > 2**31
