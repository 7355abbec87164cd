"""Fused multi-step LIF against the per-step reference, hand-computed dynamics, K buffer, compiled kernels,
the precision rule in bf16, PLIF (Fang et al.) and the learnable leak."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from imloss_cli.snn.neuron import (
    EAGER_KERNELS,
    LIF,
    MultiStepLIFFunction,
    StepLayout,
    compiled_kernels,
    set_surrogate_k,
    spiking_layers,
)
from imloss_cli.snn.params import LIFParams
from imloss_cli.snn.reference import lif_naive

from .lif_cases import (
    CASES,
    DECAY,
    READ_OUTPUTS,
    V_TH,
    VARIANTS,
    assert_bf16_forward_follows_the_precision_rule,
    assert_kernels_equal_the_naive_loop,
    assert_variant_equals_the_naive_loop,
    im_share_of_the_input_gradient,
    lif_params,
)


def _input(T: int, seed: int = 0, shape: tuple[int, ...] = (3, 5), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inputs around the threshold, so that spikes and resets happen at every step."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, *shape, generator=g, dtype=dtype) * 1.2).requires_grad_(True)


def _fused3(
    x: torch.Tensor, k: float, reset: str, detach_reset: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(spike_seq, v_seq, v_mean) of the fused function on the eager kernels."""
    k_t = torch.tensor(k, dtype=x.dtype)
    return MultiStepLIFFunction.apply(x, k_t, DECAY, lif_params(reset, detach_reset), EAGER_KERNELS)


def _fused(x: torch.Tensor, k: float, reset: str, detach_reset: bool) -> tuple[torch.Tensor, torch.Tensor]:
    s, v, _ = _fused3(x, k, reset, detach_reset)
    return s, v


# --- fused == reference ------------------------------------------------------------------------


@pytest.mark.parametrize("reads", list(READ_OUTPUTS))
@pytest.mark.parametrize(("T", "reset", "detach_reset"), CASES)
def test_fused_lif_equals_the_naive_loop_whichever_outputs_the_loss_reads(
    reads: str, T: int, reset: str, detach_reset: bool
) -> None:
    assert_kernels_equal_the_naive_loop(EAGER_KERNELS, reads, T, reset, detach_reset)


def test_v_mean_gradient_without_spikes_is_closed_form() -> None:
    """Below threshold with the reset detached: h[t] = sum_s decay^(t-s) x[s], so with T = 3 and
    N values per step, d mean(h) / dx[s] = (1 + decay + ... + decay^(T-1-s)) / (T*N)."""
    x = torch.full((3, 2, 2), 0.05, dtype=torch.float64, requires_grad=True)
    _, v, v_mean = _fused3(x, 1.0, "hard", True)
    assert v.max() < V_TH
    v_mean.backward()
    n = 3 * 4
    expected = torch.tensor([1 + 0.25 + 0.0625, 1 + 0.25, 1.0], dtype=torch.float64) / n
    assert_close(x.grad, expected.view(3, 1, 1).expand(3, 2, 2))


@pytest.mark.parametrize(("T", "reset", "detach_reset"), CASES)
def test_lif_module_matches_naive(T: int, reset: str, detach_reset: bool) -> None:
    lif = LIF(lif_params(reset, detach_reset))
    lif.k.fill_(3.0)
    lif.store_v_seq = True
    x_ref = _input(T, seed=20 + T, shape=(2, 3, 4, 4))
    x = x_ref.detach().clone().requires_grad_(True)
    g = torch.Generator().manual_seed(200 + T)
    grad_s = torch.randn(x.shape, generator=g)
    grad_v = torch.randn(x.shape, generator=g)

    s_ref, v_ref = lif_naive(x_ref, 3.0, lif_params(reset, detach_reset))
    s = lif(x)
    assert torch.equal(s, s_ref)
    assert torch.equal(lif.v_seq, v_ref)
    torch.autograd.backward([s_ref, v_ref], [grad_s, grad_v])
    torch.autograd.backward([s, lif.v_seq], [grad_s, grad_v])
    assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


# --- hand-computed dynamics --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "reset", "h", "o"),
    [
        # h0 = 0.3; h1 = 0.25*0.3 + 0.4 = 0.475; h2 = 0.25*0.475 + 0.9 = 1.01875 (fires)
        ([0.3, 0.4, 0.9], "hard", [0.3, 0.475, 1.01875], [0, 0, 1]),
        # no spike before the last step: soft reset gives the same trace
        ([0.3, 0.4, 0.9], "soft", [0.3, 0.475, 1.01875], [0, 0, 1]),
        # one more step shows the reset: hard h3 = 0.25*1.01875*(1-1) + 0.2 = 0.2
        ([0.3, 0.4, 0.9, 0.2], "hard", [0.3, 0.475, 1.01875, 0.2], [0, 0, 1, 0]),
        # soft h3 = 0.25*(1.01875 - 0.5) + 0.2 = 0.1296875 + 0.2 = 0.3296875
        ([0.3, 0.4, 0.9, 0.2], "soft", [0.3, 0.475, 1.01875, 0.3296875], [0, 0, 1, 0]),
        # fires at once: hard h1 = 0 + 0.3; h2 = 0.075 + 0.2 = 0.275; h3 = 0.06875 + 0.5 = 0.56875
        ([0.6, 0.3, 0.2, 0.5], "hard", [0.6, 0.3, 0.275, 0.56875], [1, 0, 0, 1]),
        # soft h1 = 0.25*(0.6-0.5) + 0.3 = 0.325; h2 = 0.08125 + 0.2 = 0.28125; h3 = 0.0703125 + 0.5
        ([0.6, 0.3, 0.2, 0.5], "soft", [0.6, 0.325, 0.28125, 0.5703125], [1, 0, 0, 1]),
        # exactly at threshold fires: h0 = 0.5
        ([0.5, 0.5], "hard", [0.5, 0.5], [1, 1]),
        ([0.5, 0.5], "soft", [0.5, 0.5], [1, 1]),
    ],
)
def test_lif_hand_computed_single_neuron(x: list[float], reset: str, h: list[float], o: list[int]) -> None:
    x_seq = torch.tensor(x, dtype=torch.float64).view(-1, 1, 1)  # [T, B=1, 1 neuron]
    for s, v in (
        _fused(x_seq, 1.0, reset, False),
        lif_naive(x_seq, 1.0, lif_params(reset)),
    ):
        assert s.flatten().tolist() == [float(b) for b in o]
        assert_close(v.flatten(), torch.tensor(h, dtype=torch.float64), rtol=0, atol=1e-12)


def _gp(h: float, k: float) -> float:
    return 0.5 * k * (1.0 - math.tanh(k * (h - V_TH)) ** 2)


@pytest.mark.parametrize(("reset", "detach_reset"), [("hard", False), ("hard", True), ("soft", False), ("soft", True)])
def test_lif_gradient_through_reset_closed_form(reset: str, detach_reset: bool) -> None:
    """Two steps, x = [0.6, 0.3], L = o1. h0 = 0.6 fires, so o0 = 1.

    dL/dx1 = g'(h1)
    dL/dx0 = g'(h1) * dh1/dh0, with h1 = decay * r(h0, o0(h0)) + x1:
        hard: decay * (1 - o0) + decay * (-h0) * g'(h0)    (last term only without detach)
        soft: decay            + decay * (-V_th) * g'(h0)
    """
    k = 2.0
    h0 = 0.6
    h1 = (0.25 * (h0 - V_TH) if reset == "soft" else 0.0) + 0.3
    through = 0.0 if reset == "hard" else DECAY  # o0 = 1 zeroes the hard path
    via_spike = 0.0 if detach_reset else DECAY * (-(h0 if reset == "hard" else V_TH)) * _gp(h0, k)
    expected = [_gp(h1, k) * (through + via_spike), _gp(h1, k)]

    for fn in (
        lambda x: _fused(x, k, reset, detach_reset),
        lambda x: lif_naive(x, k, lif_params(reset, detach_reset)),
    ):
        x = torch.tensor([0.6, 0.3], dtype=torch.float64).view(2, 1, 1).requires_grad_(True)
        s, _ = fn(x)
        s[1].sum().backward()
        assert_close(x.grad.flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15)


def test_surrogate_k_buffer_changes_the_gradient_as_closed_form() -> None:
    """T = 1: dL/dx = g'(x) exactly, so K = 1 and K = 10 give the closed forms of each K."""
    x0 = torch.tensor([[0.2, 0.45, 0.5, 0.7, 1.2]])
    grads = {}
    for k in (1.0, 10.0):
        lif = LIF(lif_params())
        set_surrogate_k(lif, k)
        x = x0.clone().unsqueeze(0).requires_grad_(True)
        lif(x).sum().backward()
        grads[k] = x.grad.flatten()
        expected = 0.5 * k * (1 - torch.tanh(k * (x0.flatten() - V_TH)) ** 2)
        assert_close(grads[k], expected)
    assert grads[1.0][2].item() == pytest.approx(0.5)
    assert grads[10.0][2].item() == pytest.approx(5.0)
    assert not torch.allclose(grads[1.0], grads[10.0])


def test_lif_k_defaults_to_one() -> None:
    lif = LIF(lif_params())
    assert lif.k.item() == 1.0
    assert "k" not in lif.state_dict()  # non-persistent: set per epoch, not checkpointed


# --- module behaviour --------------------------------------------------------------------------


def test_lif_does_not_store_potentials_by_default() -> None:
    lif = LIF(lif_params())
    assert lif.store_v_seq is False
    lif(_input(2))
    assert lif.v_seq is None and lif.spike_seq is None and lif.v_mean is None


def test_lif_store_v_seq_keeps_potentials_and_spikes_in_the_graph() -> None:
    lif = LIF(lif_params(detach_reset=True))  # detached: the reset adds no surrogate term here
    lif.store_v_seq = True
    x = torch.tensor([0.3, 0.4, 0.9]).view(3, 1, 1).requires_grad_(True)
    out = lif(x)
    assert lif.spike_seq is out
    assert_close(lif.v_seq.flatten(), torch.tensor([0.3, 0.475, 1.01875]))
    assert lif.v_seq.requires_grad
    lif.v_seq.sum().backward()  # attached to the graph: d(sum h)/dx reaches the input
    # dsum/dx2 = 1; dsum/dx1 = 1 + decay; dsum/dx0 = 1 + decay + decay^2 (no spikes before t=2)
    assert_close(x.grad.flatten(), torch.tensor([1.3125, 1.25, 1.0]))
    # v_mean = (0.3 + 0.475 + 1.01875) / 3, attached to the graph too
    assert_close(lif.v_mean, torch.tensor(1.79375 / 3))
    assert lif.v_mean.requires_grad
    lif.clear()
    assert lif.v_seq is None and lif.v_mean is None and lif.spike_seq is None


def test_lif_params_reject_an_unknown_surrogate() -> None:
    with pytest.raises(ValueError, match="surrogate must be one of tanh, guo"):
        LIFParams(DECAY, V_TH, surrogate="sigmoid")


def test_set_surrogate_k_sets_every_layer() -> None:
    model = nn.Sequential(LIF(lif_params()), nn.Sequential(nn.Identity(), LIF(lif_params())), LIF(lif_params("soft")))
    layers = spiking_layers(model)
    assert [name for name, _ in layers] == ["0", "1.1", "2"]
    set_surrogate_k(model, 6.5)
    assert [m.k.item() for _, m in layers] == [6.5, 6.5, 6.5]
    set_surrogate_k(model, 2.0)
    assert [m.k.item() for _, m in layers] == [2.0, 2.0, 2.0]


# --- memory layouts ------------------------------------------------------------------------------


def _lif_outputs_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """spike_seq, v_seq, v_mean and dL/dx for fixed upstream gradients (given in NCHW order)."""
    x = x.detach().requires_grad_(True)
    s, v, m = _fused3(x, 2.0, "hard", False)
    g = torch.Generator().manual_seed(4)
    gs, gv = torch.randn(s.shape, generator=g), torch.randn(s.shape, generator=g)
    torch.autograd.backward([s, v, m], [gs, gv, torch.tensor(0.5)])
    return s, v, m, x.grad


def test_channels_last_steps_give_the_contiguous_results_in_the_input_layout() -> None:
    T, B, C, H, W = 3, 2, 4, 3, 5
    x = torch.rand(T * B, C, H, W, generator=torch.Generator().manual_seed(1)) * 1.2
    x_cl = x.contiguous(memory_format=torch.channels_last).unflatten(0, (T, B))
    x_nchw = x.unflatten(0, (T, B))
    assert StepLayout.of(x_cl).order == (0, 1, 3, 4, 2)
    assert StepLayout.of(x_cl).flat(x_cl).data_ptr() == x_cl.data_ptr()  # a view, not a copy

    s, v, m, grad = _lif_outputs_and_grad(x_cl)
    s_ref, v_ref, m_ref, grad_ref = _lif_outputs_and_grad(x_nchw)
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref) and torch.equal(grad, grad_ref)
    assert_close(m, m_ref)
    assert s.stride() == x_cl.stride() and v.stride() == x_cl.stride()  # outputs keep channels_last
    assert s[0].is_contiguous(memory_format=torch.channels_last)


def test_broadcast_input_is_read_in_place_and_matches_the_materialised_copy() -> None:
    y = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(2)) * 1.2
    x_broadcast = y.unsqueeze(0).expand(4, *y.shape)  # what Encoder feeds its LIF for an image
    rows = StepLayout.of(x_broadcast).flat(x_broadcast)
    assert rows.stride() == (0, 1) and rows.data_ptr() == y.data_ptr()

    s, v, _, grad = _lif_outputs_and_grad(x_broadcast)
    s_ref, v_ref, _, grad_ref = _lif_outputs_and_grad(x_broadcast.contiguous())
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref) and torch.equal(grad, grad_ref)
    # constant input, hard reset, decay 0.25: h = y, then 0.25 h (1 - o) + y at the next step
    o0 = (y >= V_TH).float()
    assert torch.equal(v[1], DECAY * (y * (1 - o0)) + y)


def test_gradients_in_another_layout_than_the_input_are_reordered() -> None:
    x = (torch.rand(2, 2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 1.2).requires_grad_(True)
    s, _, _ = _fused3(x, 2.0, "hard", False)
    gs = torch.randn(2 * 2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    gs_cl = gs.contiguous(memory_format=torch.channels_last).unflatten(0, (2, 2))
    s.backward(gs_cl)
    x_ref = x.detach().clone().requires_grad_(True)
    s_ref, _ = lif_naive(x_ref, 2.0, lif_params("hard", False))
    s_ref.backward(gs.unflatten(0, (2, 2)))
    assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


# --- compiled kernels --------------------------------------------------------------------------


def test_compiled_kernels_match_eager() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    try:
        kernels = compiled_kernels()
    except Exception as e:  # pragma: no cover - depends on the platform
        pytest.skip(f"torch.compile unavailable: {e}")
    x_ref = _input(4, seed=5, shape=(2, 8))
    x = x_ref.detach().clone().requires_grad_(True)
    k = torch.tensor(3.0)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))

    s_ref, v_ref, m_ref = MultiStepLIFFunction.apply(x_ref, k, DECAY, lif_params(), EAGER_KERNELS)
    ((s_ref * w).sum() + 2.0 * m_ref).backward()
    s, v, m = MultiStepLIFFunction.apply(x, k, DECAY, lif_params(), kernels)
    ((s * w).sum() + 2.0 * m).backward()
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref)
    assert_close(m, m_ref)
    assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)

    # the LIF module with kernels="compiled" goes through the same (cached) kernels
    lif = LIF(lif_params(), kernels="compiled")
    lif.k.fill_(3.0)
    lif.store_v_seq = True
    x2 = x_ref.detach().clone().requires_grad_(True)
    s2 = lif(x2)
    ((s2 * w).sum() + 2.0 * lif.v_mean).backward()
    assert torch.equal(s2, s_ref)
    assert_close(x2.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


def test_compiled_kernels_run_plif_as_eager() -> None:
    """Fang et al.'s charge and the learnable decay through the compiled loops: the eager loops' spikes,
    potentials, and gradients to the input and to the decay."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    params = LIFParams(0.5, V_TH, decay_input=True)
    x_ref = _input(4, seed=6, shape=(3, 16)) * 2.0
    w = torch.randn(x_ref.shape, generator=torch.Generator().manual_seed(10))
    results = []
    for kernels in (EAGER_KERNELS, compiled_kernels()):
        x = x_ref.detach().clone().requires_grad_(True)
        decay = torch.tensor(0.5, requires_grad=True)
        s, v, m = MultiStepLIFFunction.apply(x, torch.tensor(3.0), decay, params, kernels)
        ((s * w).sum() + 2.0 * m).backward()
        results.append((s, v, x.grad, decay.grad))
    (s_ref, v_ref, gx_ref, gd_ref), (s, v, gx, gd) = results
    assert torch.equal(s, s_ref) and 0 < s.sum() < s.numel()
    assert_close(v, v_ref)
    assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    assert_close(gd, gd_ref, rtol=1e-5, atol=1e-5)


def test_one_compiled_kernel_per_direction_serves_every_layer_size_and_layout() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    compiled_kernels.cache_clear()
    counters.clear()
    try:
        lif = LIF(lif_params(), kernels="compiled")
        shapes = [(2, 3, 4, 5, 5), (2, 6, 8, 3, 3), (2, 1, 16, 2, 2), (2, 7, 2, 9, 9)]
        for i, shape in enumerate(shapes):
            x = torch.rand(shape) * 1.2
            if i % 2:  # alternate layouts: channels_last steps, then NCHW
                x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
            x.requires_grad_(True)
            s = lif(x)
            s.sum().backward()
            s_ref, _ = lif_naive(x.detach(), 1.0, lif_params("hard", False))
            assert torch.equal(s, s_ref)
        # two graphs: the forward loop and the backward loop, each compiled once for all shapes
        assert counters["stats"]["unique_graphs"] == 2
    finally:
        torch._dynamo.reset()
        compiled_kernels.cache_clear()


# --- variants: the authors' spike test and surrogate, PLIF; bf16 IM gradient --------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_eager_kernels_run_every_neuron_variant_as_the_naive_loop(variant: str) -> None:
    assert_variant_equals_the_naive_loop(EAGER_KERNELS, variant)


def test_bf16_keeps_the_im_loss_share_of_the_input_gradient() -> None:
    fp32 = im_share_of_the_input_gradient(EAGER_KERNELS, torch.float32)
    bf16 = im_share_of_the_input_gradient(EAGER_KERNELS, torch.bfloat16)
    assert fp32 > 0 and abs(bf16 - fp32) < 0.1 * fp32  # accumulated in fp32, rounded once


def test_bf16_eager_loop_carries_the_state_in_fp32_and_fires_on_the_stored_potential() -> None:
    assert_bf16_forward_follows_the_precision_rule(EAGER_KERNELS)


def test_the_learnable_leak_is_sigmoid_of_w_from_logit_decay_on_imlosss_charge() -> None:
    """model.neuron = "lif-learned-leak" (what "plif" was): decay = sigmoid(w), w = logit(decay), h = decay r + x."""
    lif = LIF(lif_params(), learn_decay=True)
    assert [name for name, _ in lif.named_parameters()] == ["w"]
    assert float(lif.leak().detach()) == pytest.approx(DECAY)
    assert float(lif.w.detach()) == pytest.approx(math.log(DECAY / (1 - DECAY)))
    lif.store_v_seq = True
    lif(torch.tensor([0.3, 0.4]).view(2, 1, 1))
    assert_close(lif.v_seq.flatten(), torch.tensor([0.3, 0.25 * 0.3 + 0.4]))  # the input unscaled
    x = _input(3, seed=2, shape=(4, 6))
    lif(x).sum().backward()
    assert lif.w.grad is not None and lif.w.grad != 0
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        LIF(lif_params(decay=1.0), learn_decay=True)


def _plif(tau: float) -> LIF:
    """Fang et al.'s PLIF at tau0 = ``tau``, as NetSpec builds it for model.neuron = "plif"."""
    return LIF(LIFParams(1.0 - 1.0 / tau, V_TH, decay_input=True), learn_decay=True)


@pytest.mark.parametrize("tau", [1.5, 2.0, 4.0])
def test_plif_is_fang_et_als_neuron_w_from_tau0_and_the_input_scaled_by_one_over_tau(tau: float) -> None:
    """sigmoid(w) = 1/tau, w0 = -log(tau0 - 1) (SpikingJelly's ParametricLIFNode); the charge
    H = V + (X - V) / tau, hard reset to 0: h0 = x0 / tau, h1 = (1 - 1/tau) h0 + x1 / tau."""
    lif = _plif(tau)
    assert float(lif.w.detach()) == pytest.approx(-math.log(tau - 1.0))
    assert float(lif.leak().detach()) == pytest.approx(1.0 - 1.0 / tau)
    lif.store_v_seq = True
    x = torch.tensor([0.3, 0.4, 2.0, 0.2]).view(4, 1, 1)
    h0 = 0.3 / tau
    h1 = (1 - 1 / tau) * h0 + 0.4 / tau
    h2 = (1 - 1 / tau) * h1 + 2.0 / tau  # fires: 2 / tau >= 0.5 for every tau here
    h3 = 0.2 / tau  # reset to 0
    s = lif(x)
    assert_close(lif.v_seq.flatten(), torch.tensor([h0, h1, h2, h3]))
    assert s.flatten().tolist() == [float(v >= V_TH) for v in (h0, h1, h2, h3)] and s[2].item() == 1.0


def test_plif_gradient_to_w_is_closed_form_below_threshold() -> None:
    """Two steps without spikes (the reset detached: no surrogate term through it), L = v_mean =
    (h0 + h1) / 2 with a = sigmoid(w) = 1/tau: h0 = a x0, h1 = (1 - a) a x0 + a x1, so
    dL/da = (x0 + (1 - 2a) x0 + x1) / 2 and dL/dw = dL/da * a (1 - a); dL/dx0 = (a + (1 - a) a) / 2,
    dL/dx1 = a / 2."""
    lif = LIF(LIFParams(0.5, V_TH, detach_reset=True, decay_input=True), learn_decay=True).double()
    lif.store_v_seq = True
    x0, x1 = 0.3, 0.2
    x = torch.tensor([x0, x1], dtype=torch.float64).view(2, 1, 1).requires_grad_(True)
    lif(x)
    assert lif.spike_seq.sum() == 0
    lif.v_mean.backward()
    a = 0.5
    assert float(lif.w.grad) == pytest.approx((x0 + (1 - 2 * a) * x0 + x1) / 2 * a * (1 - a), rel=1e-12)
    assert x.grad.flatten().tolist() == pytest.approx([(a + (1 - a) * a) / 2, a / 2], rel=1e-12)
