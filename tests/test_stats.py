"""Layer statistics: Bernoulli entropy and the per-layer accumulator, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from imloss_cli.snn.neuron import LIF
from imloss_cli.snn.reference import lif_naive
from imloss_cli.snn.stats import STAT_NAMES, LayerStatsAccumulator, bernoulli_entropy
from tests.lif_cases import lif_params

DTYPES = [torch.float32, torch.float64]


# --- bernoulli_entropy -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_entropy_is_one_bit_at_one_half(dtype: torch.dtype) -> None:
    out = bernoulli_entropy(torch.tensor(0.5, dtype=dtype))
    assert out.dtype == dtype
    assert_close(out, torch.tensor(1.0, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_bernoulli_entropy_is_exactly_positive_zero_at_certain_outcomes(dtype: torch.dtype, p: float) -> None:
    out = bernoulli_entropy(torch.tensor([p], dtype=dtype)).item()
    assert not math.isnan(out)
    assert out == 0.0
    assert math.copysign(1.0, out) == 1.0  # +0.0, not -0.0


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        # -0.1*log2(0.1) - 0.9*log2(0.9)
        (0.1, 0.4689955935892812),
        # -0.25*log2(0.25) - 0.75*log2(0.75) = 0.5 + 0.75*0.4150374992788438
        (0.25, 0.8112781244591328),
        (1 / 6, 0.6500224216483541),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_entropy_hand_computed(p: float, expected: float, dtype: torch.dtype) -> None:
    out = bernoulli_entropy(torch.tensor(p, dtype=dtype))
    assert_close(out, torch.tensor(expected, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_entropy_is_symmetric_and_bounded(dtype: torch.dtype) -> None:
    p = torch.linspace(0.0, 1.0, 101, dtype=dtype)
    h = bernoulli_entropy(p)
    assert_close(h, bernoulli_entropy(1.0 - p))
    assert_close(h, h.flip(0))
    assert bool(((h >= 0) & (h <= 1 + 1e-6)).all())
    assert int(h.argmax()) == 50


# --- LayerStatsAccumulator ---------------------------------------------------------------------


def _set(layer: LIF, spikes: list, v: list) -> None:
    layer.spike_seq = torch.tensor(spikes, dtype=torch.float32)
    layer.v_seq = torch.tensor(v, dtype=torch.float32)


# Layer A: 4 neurons. Batch 1 is [T=2, B=1, 4], batch 2 is [T=2, B=2, 4]: 2 + 4 = 6 samples.
A1_SPIKES = [[[1, 0, 1, 0]], [[1, 0, 0, 0]]]
A2_SPIKES = [[[1, 0, 0, 1], [1, 0, 1, 0]], [[1, 0, 0, 0], [1, 0, 1, 0]]]
A1_V = [[[0.0, 0.5, 1.0, -0.5]], [[0.5, 0.5, 1.5, 0.5]]]  # sum 4, sum of squares 4.5
A2_V = (torch.arange(16, dtype=torch.float32) / 8 - 0.5).view(2, 2, 4).tolist()  # sum 7, squares 8.375
# Layer B: 2 neurons, conv-shaped [T, B, 2, 1, 1].
B1_SPIKES = [[[[[0]], [[1]]]], [[[[0]], [[1]]]]]
B2_SPIKES = [[[[[0]], [[1]]], [[[0]], [[1]]]], [[[[0]], [[1]]], [[[1]], [[1]]]]]


def _two_batches() -> LayerStatsAccumulator:
    a, b = LIF(lif_params()), LIF(lif_params())
    acc = LayerStatsAccumulator([("a", a), ("b", b)])
    _set(a, A1_SPIKES, A1_V)
    _set(b, B1_SPIKES, torch.full((2, 1, 2, 1, 1), 0.25).tolist())
    acc.update()
    _set(a, A2_SPIKES, A2_V)
    _set(b, B2_SPIKES, torch.full((2, 2, 2, 1, 1), 0.75).tolist())
    acc.update()
    return acc


def test_accumulator_two_batches_hand_computed() -> None:
    acc = _two_batches()
    assert acc.samples == 6
    a, b = acc.compute()
    assert (a.index, a.name, b.index, b.name) == (0, "a", 1, "b")

    # A: counts [6, 0, 3, 1] over 6 samples -> p = [1, 0, 1/2, 1/6]
    assert a.firing_rate == pytest.approx(5 / 12, rel=1e-12)
    # mean(H(1), H(0), H(1/2), H(1/6)) = (0 + 0 + 1 + 0.6500224216483541) / 4
    assert a.entropy == pytest.approx(0.4125056054120885, rel=1e-12)
    # H(5/12)
    assert a.rate_entropy == pytest.approx(0.9798687566511528, rel=1e-12)
    # 24 values: sum 11, sum of squares 12.875 -> mean 11/24, var 12.875/24 - (11/24)^2 = 47/144
    assert a.membrane_mean == pytest.approx(11 / 24, rel=1e-9)
    assert a.membrane_std == pytest.approx(math.sqrt(47) / 12, rel=1e-9)

    # B: counts [1, 6] -> p = [1/6, 1]
    assert b.firing_rate == pytest.approx(7 / 12, rel=1e-12)
    assert b.entropy == pytest.approx(0.6500224216483541 / 2, rel=1e-12)
    assert b.rate_entropy == pytest.approx(0.9798687566511528, rel=1e-12)  # H(7/12) = H(5/12)
    # 4 values of 0.25 and 8 of 0.75: mean 7/12, var 57/144 - 49/144 = 1/18
    assert b.membrane_mean == pytest.approx(7 / 12, rel=1e-9)
    assert b.membrane_std == pytest.approx(math.sqrt(1 / 18), rel=1e-9)


def test_spikes_per_image_sum_over_time_and_neurons_and_average_over_images() -> None:
    acc = _two_batches()
    assert acc.images == 3  # B = 1, then 2
    a, b = acc.compute()
    assert a.spikes_per_image == pytest.approx((3 + 7) / 3)  # A: 3 spikes in batch 1, 7 in batch 2
    assert b.spikes_per_image == pytest.approx((2 + 5) / 3)
    assert math.isnan(a.sops_per_image)  # no OpsPlan: not counted
    assert acc.compute(samples=12, images=6)[0].spikes_per_image == pytest.approx(10 / 6)


def test_accumulator_membrane_std_is_population_std_of_all_values() -> None:
    a = _two_batches().compute()[0]
    values = torch.cat([torch.tensor(A1_V).flatten(), torch.tensor(A2_V).flatten()]).double()
    assert a.membrane_mean == pytest.approx(values.mean().item(), rel=1e-9)
    assert a.membrane_std == pytest.approx(values.std(unbiased=False).item(), rel=1e-9)
    assert a.membrane_std != pytest.approx(values.std(unbiased=True).item(), rel=1e-6)


def test_accumulator_as_dict_and_raw_tensors() -> None:
    acc = _two_batches()
    raw = acc.raw_tensors()
    assert len(raw) == 4  # counts and moments per layer
    assert raw[0].tolist() == [6.0, 0.0, 3.0, 1.0]
    assert raw[1].tolist() == [11.0, 12.875, 24.0]
    d = acc.compute()[1].as_dict()
    assert tuple(d) == STAT_NAMES
    assert d["firing_rate"] == pytest.approx(7 / 12)


def test_accumulator_compute_with_global_sample_count() -> None:
    """After an all-reduce the caller passes the global T*B count: p = counts / samples."""
    a = _two_batches().compute(samples=12)[0]
    # p = [6, 0, 3, 1] / 12 = [1/2, 0, 1/4, 1/12]
    assert a.firing_rate == pytest.approx((0.5 + 0 + 0.25 + 1 / 12) / 4, rel=1e-12)
    h = lambda p: -p * math.log2(p) - (1 - p) * math.log2(1 - p)  # noqa: E731
    assert a.entropy == pytest.approx((1.0 + 0.0 + h(0.25) + h(1 / 12)) / 4, rel=1e-12)


def test_accumulator_on_a_real_lif_layer_matches_direct_computation() -> None:
    torch.manual_seed(0)
    lif = LIF(lif_params())
    lif.store_v_seq = True
    acc = LayerStatsAccumulator([("lif", lif)])
    xs = [torch.rand(3, 4, 5) for _ in range(2)]
    for x in xs:
        lif(x)
        acc.update()
    (stat,) = acc.compute()
    spikes, v = zip(*[_run(x) for x in xs])  # the per-step reference, independent of the fused LIF
    s = torch.cat(spikes, dim=1).double()  # [T, 8, 5]
    p = s.mean(dim=(0, 1))
    vv = torch.cat(v, dim=1).double()
    assert 0 < p.mean() < 1
    assert stat.firing_rate == pytest.approx(p.mean().item(), rel=1e-9)
    assert stat.entropy == pytest.approx(bernoulli_entropy(p).mean().item(), rel=1e-9)
    assert stat.rate_entropy == pytest.approx(bernoulli_entropy(p.mean()).item(), rel=1e-9)
    assert stat.membrane_mean == pytest.approx(vv.mean().item(), rel=1e-6)
    assert stat.membrane_std == pytest.approx(vv.std(unbiased=False).item(), rel=1e-6)


def _run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return lif_naive(x, 1.0, lif_params())


def test_accumulator_needs_stored_sequences() -> None:
    acc = LayerStatsAccumulator([("quiet", LIF(lif_params()))])
    with pytest.raises(RuntimeError, match="quiet"):
        acc.update()


def test_accumulator_without_updates_computes_nothing() -> None:
    assert LayerStatsAccumulator([("a", LIF(lif_params()))]).compute() == []
