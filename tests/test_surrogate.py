"""ESG surrogate: Heaviside forward, 1/2 K (1 - tanh(K (u - V_th))^2) backward, and the K(i) ramp."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from imloss_cli.snn.surrogate import SpikeFunction, esg_k, spike, surrogate_grad

V_TH = 0.5


def closed_form(u: torch.Tensor, k: float, v_th: float) -> torch.Tensor:
    """g'(u) = 1/2 K (1 - tanh(K (u - V_th))^2), written out independently of the library."""
    t = torch.tanh(k * (u - v_th))
    return 0.5 * k * (1.0 - t * t)


# --- K(i) --------------------------------------------------------------------------------------


def test_esg_k_starts_at_k_min() -> None:
    assert esg_k(0, 10, 1.0, 10.0) == 1.0
    assert esg_k(0, 300, 2.0, 7.0) == 2.0


@pytest.mark.parametrize("epochs", [1, 4, 10, 300])
def test_esg_k_reaches_k_max_at_last_epoch(epochs: int) -> None:
    assert esg_k(epochs, epochs, 1.0, 10.0) == pytest.approx(10.0, rel=1e-12)
    assert esg_k(epochs, epochs, 0.5, 3.0) == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize(
    ("epoch", "epochs", "k_min", "k_max", "expected"),
    [
        # 1 + 9 * (10**0.5 - 1) / 9 = sqrt(10)
        (5, 10, 1.0, 10.0, 3.1622776601683795),
        # 1 + 9 * (10**0.25 - 1) / 9 = 10**0.25
        (1, 4, 1.0, 10.0, 1.7782794100389228),
        # 1 + (10**0.75 - 1) = 10**0.75
        (3, 4, 1.0, 10.0, 5.623413251903491),
        # 2 + 18 * (sqrt(10) - 1) / 9 = 2 + 2 * 2.16227766... = 6.32455532...
        (5, 10, 2.0, 20.0, 6.324555320336759),
        # K_min = K_max: constant
        (3, 7, 4.0, 4.0, 4.0),
    ],
)
def test_esg_k_hand_computed_values(epoch: int, epochs: int, k_min: float, k_max: float, expected: float) -> None:
    assert esg_k(epoch, epochs, k_min, k_max) == pytest.approx(expected, rel=1e-12)


def test_esg_k_is_strictly_increasing_over_epochs() -> None:
    ks = [esg_k(i, 20, 1.0, 10.0) for i in range(21)]
    assert all(b > a for a, b in itertools.pairwise(ks))
    # exponential ramp: the steps grow too (convex), small K early, most of the growth late
    steps = [b - a for a, b in itertools.pairwise(ks)]
    assert all(b > a for a, b in itertools.pairwise(steps))
    assert ks[10] < 0.5 * (ks[0] + ks[20])


@pytest.mark.parametrize("epochs", [0, -1])
def test_esg_k_rejects_fewer_than_one_epoch(epochs: int) -> None:
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        esg_k(0, epochs, 1.0, 10.0)


# --- forward -----------------------------------------------------------------------------------


def test_spike_forward_is_heaviside_with_threshold_firing() -> None:
    u = torch.tensor([-1.0, 0.0, 0.4999, 0.5, 0.5001, 3.0])
    out = spike(u, 2.5, V_TH)
    assert out.dtype == u.dtype
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_spike_at_exactly_threshold_fires() -> None:
    for v_th in (0.5, 1.0, 0.3):
        u = torch.tensor([v_th], dtype=torch.float64)
        assert spike(u, 1.0, v_th).item() == 1.0
        assert SpikeFunction.apply(u, torch.tensor(1.0, dtype=torch.float64), v_th).item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spike_forward_matches_comparison_on_random_input(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1000, generator=g, dtype=dtype)
    out = spike(u, 10.0, 0.3)
    assert torch.equal(out, (u >= 0.3).to(dtype))
    assert set(out.unique().tolist()) <= {0.0, 1.0}


# --- backward ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1.0, 2.5, 10.0])
def test_spike_backward_equals_esg_closed_form(k: float) -> None:
    u = torch.linspace(-2.0, 2.0, 101, dtype=torch.float64, requires_grad=True)
    spike(u, k, V_TH).sum().backward()
    assert_close(u.grad, closed_form(u.detach(), k, V_TH), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", [1.0, 2.5, 10.0])
def test_spike_function_backward_scales_upstream_gradient(k: float) -> None:
    g = torch.Generator().manual_seed(1)
    u = torch.linspace(-2.0, 2.0, 101, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(101, generator=g, dtype=torch.float64)
    out = SpikeFunction.apply(u, torch.tensor(k, dtype=torch.float64), V_TH)
    out.backward(upstream)
    assert_close(u.grad, upstream * closed_form(u.detach(), k, V_TH), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("u", "k", "expected"),
    [
        # at the threshold: K/2
        (0.5, 1.0, 0.5),
        (0.5, 2.5, 1.25),
        (0.5, 10.0, 5.0),
        # u = 0.7, K = 2.5: 1.25 * (1 - tanh(0.5)^2) = 1.25 * (1 - 0.46211715726000974^2)
        (0.7, 2.5, 0.9830596662074093),
        # symmetric around V_th
        (0.3, 2.5, 0.9830596662074093),
        # u = 1.5, K = 1: 0.5 * (1 - tanh(1)^2) = 0.5 * (1 - 0.7615941559557649^2)
        (1.5, 1.0, 0.20998717080701307),
        # u = 0, K = 10: 5 * (1 - tanh(-5)^2) = 5 * (1 - 0.9999092042625951^2)
        (0.0, 10.0, 0.0009079161547193015),
    ],
)
def test_spike_gradient_hand_computed_points(u: float, k: float, expected: float) -> None:
    x = torch.tensor([u], dtype=torch.float64, requires_grad=True)
    spike(x, k, V_TH).backward(torch.ones(1, dtype=torch.float64))
    assert x.grad.item() == pytest.approx(expected, rel=1e-9)


def test_spike_gradient_accepts_tensor_k_and_has_no_gradient_for_k() -> None:
    u = torch.tensor([0.2, 0.5, 0.9], requires_grad=True)
    k = torch.tensor(2.5, requires_grad=True)
    spike(u, k, V_TH).sum().backward()
    assert_close(u.grad, closed_form(u.detach(), 2.5, V_TH))
    assert k.grad is None


def test_larger_k_sharpens_the_surrogate() -> None:
    u = torch.tensor([0.5, 1.0], dtype=torch.float64)
    g1 = surrogate_grad(u, 1.0, V_TH)
    g10 = surrogate_grad(u, 10.0, V_TH)
    # at the threshold larger K is taller (K/2), away from it much smaller
    assert g10[0] == pytest.approx(5.0) and g1[0] == pytest.approx(0.5)
    assert g10[1] < g1[1]


def test_surrogate_integrates_to_one() -> None:
    """g' is the derivative of g = 1/2 tanh(K (u - V_th)) + 1/2, which goes from 0 to 1."""
    u = torch.linspace(-20.0, 20.0, 400_001, dtype=torch.float64)
    for k in (1.0, 2.5, 10.0):
        area = torch.trapezoid(surrogate_grad(u, k, V_TH), u).item()
        assert area == pytest.approx(1.0, abs=1e-6)


def test_the_authors_surrogate_by_hand() -> None:
    """yfguo91/IM-Loss spike_activation at temperature 3: the gradient of
    (tanh(3 (clamp(s, 0, 1) - 1/2)) + tanh 1.5) / (2 tanh 1.5), s = u / (2 V_th): at V_th = 0.5,
    3 / (2 tanh 1.5) = 1.657187 at the threshold, 3 (1 - tanh(1.5)^2) / (2 tanh 1.5) = 0.299465 at
    both ends of the window (clamp passes them), and nothing outside it."""
    u = torch.tensor([-0.01, 0.0, 0.25, 0.5, 1.0, 1.01], dtype=torch.float64)
    got = surrogate_grad(u, 3.0, 0.5, "guo")
    t15 = math.tanh(1.5)
    end = 3 * (1 - t15**2) / (2 * t15)
    quarter = 3 * (1 - math.tanh(-0.75) ** 2) / (2 * t15)  # s = 0.25
    assert got.tolist() == pytest.approx([0.0, end, quarter, 3 / (2 * t15), end, 0.0], rel=1e-12)
    assert got[3].item() == pytest.approx(1.657187, abs=1e-6) and got[1].item() == pytest.approx(0.299465, abs=1e-6)
    # at another threshold the window and the slope scale with it: dO/du = dg/ds / (2 V_th)
    assert surrogate_grad(torch.tensor([1.0], dtype=torch.float64), 3.0, 1.0, "guo").item() == pytest.approx(
        3 / (2 * t15) / 2.0
    )


def test_the_strict_spike_test_does_not_fire_at_the_threshold() -> None:
    u = torch.tensor([0.49, 0.5, 0.51])
    assert spike(u, 3.0, 0.5).tolist() == [0.0, 1.0, 1.0]
    assert spike(u, 3.0, 0.5, strict=True).tolist() == [0.0, 0.0, 1.0]
