"""Operation counts: SOPs of hand-set spikes against brute-force loops, MACs against FlopCounterMode.

A LIF fed 0/1 inputs spikes exactly where the input is 1 (its potential is the input itself at
every step: the reset or the leak empties it), so ``_spiking(x_seq)`` sets the spikes by hand.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from imloss_cli.recipe import EnergyConfig, Recipe
from imloss_cli.snn.energy import energy_uj
from imloss_cli.snn.models import MODELS, BasicBlock, Folded, NetSpec, Readout, create_model
from imloss_cli.snn.neuron import LIF, spiking_layers
from imloss_cli.snn.ops import OpsError, plan_ops
from imloss_cli.snn.stats import LayerStats, LayerStatsAccumulator
from tests.lif_cases import lif_params

from .test_models import INPUTS

T, B = 2, 3


def _hand_spikes(c: int, side: int, density: float = 0.4, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, c, side, side, generator=g) < density).float()  # [T, B, C, H, W]


def _counted(model: nn.Module, x_seq: Tensor) -> dict[str, LayerStats]:
    """Plan on one image, one forward pass of the batch, the layer statistics by name."""
    plan = plan_ops(model, x_seq[:, :1])
    layers = spiking_layers(model)
    for _, m in layers:
        m.store_v_seq = True
    stats = LayerStatsAccumulator(layers, plan)
    with stats.watch(model), torch.no_grad():
        model(x_seq)
    stats.update()
    return {s.name: s for s in stats.compute()}


def _conv_sops_brute_force(spikes: Tensor, conv: nn.Conv2d, out_side: int) -> int:
    """Every spike, every weight it meets: tap (i, j) of every output channel reads input
    (oy * s - p + i, ox * s - p + j) for an output position (oy, ox) inside the output."""
    (s, _), (p, _), (k, _) = conv.stride, conv.padding, conv.kernel_size
    total = 0
    for _t, _b, _c, y, x in (spikes > 0).nonzero().tolist():  # every input channel meets every tap
        for _out_channel, i, j in itertools.product(range(conv.out_channels), range(k), range(k)):
            oy, ry = divmod(y + p - i, s)
            ox, rx = divmod(x + p - j, s)
            total += ry == 0 and rx == 0 and 0 <= oy < out_side and 0 <= ox < out_side
    return total


def _lif() -> LIF:
    return LIF(lif_params())


def test_lif_on_binary_input_spikes_exactly_there() -> None:
    x = _hand_spikes(2, 5)
    assert torch.equal(_lif()(x), x)


def test_conv_sops_equal_a_brute_force_count_with_padding_and_stride_2() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    model = nn.Sequential(_lif(), Folded(conv))
    x = _hand_spikes(2, 5)  # 5x5 -> 3x3: the last row and column meet fewer taps than the middle
    stats = _counted(model, x)["0"]
    assert stats.spikes_per_image == pytest.approx(x.sum().item() / B)
    assert stats.sops_per_image == pytest.approx(_conv_sops_brute_force(x, conv, 3) / B, rel=1e-12)
    # the k*k*C_out/stride^2 estimate is not what is counted
    assert stats.sops_per_image != pytest.approx(stats.spikes_per_image * 9 * 3 / 4)


def test_linear_sops_are_spikes_times_out_features() -> None:
    model = nn.Sequential(_lif(), Folded(nn.Flatten(), nn.Linear(2 * 4 * 4, 7)))
    x = _hand_spikes(2, 4)
    stats = _counted(model, x)["0"]
    assert stats.sops_per_image == pytest.approx(x.sum().item() * 7 / B, rel=1e-12)


def test_a_residual_block_input_counts_in_conv1_and_in_the_shortcut() -> None:
    torch.manual_seed(0)
    spec = dataclasses.replace(NetSpec.from_recipe(Recipe(), 10, 2, 5, timesteps=T), v_threshold=0.05)
    block = BasicBlock(spec, 2, 4, stride=2)  # conv1 3x3/2 and a 1x1/2 shortcut read the block's input
    model = nn.Sequential(_lif(), block).eval()
    x = _hand_spikes(2, 5)
    stats = _counted(model, x)
    conv1, shortcut, conv2 = block.conv1[0], block.shortcut[0], block.conv2[0]
    expected = _conv_sops_brute_force(x, conv1, 3) + _conv_sops_brute_force(x, shortcut, 3)
    assert stats["0"].sops_per_image == pytest.approx(expected / B, rel=1e-12)
    inner = block.lif1.spike_seq  # the block's inner spikes, read by conv2 (3x3, stride 1, pad 1)
    assert 0 < inner.mean() < 1
    assert stats["1.lif1"].sops_per_image == pytest.approx(_conv_sops_brute_force(inner, conv2, 3) / B, rel=1e-12)
    assert stats["1.lif2"].sops_per_image == 0.0  # nothing reads the block's output here


def test_a_read_through_average_pooling_counts_the_weights_of_the_pooled_position() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model = nn.Sequential(_lif(), Folded(nn.AvgPool2d(2)), Folded(conv))
    x = _hand_spikes(2, 6)
    stats = _counted(model, x)["0"]
    expected = 0  # a spike at (y, x) lies in the window of pooled position (y // 2, x // 2) only
    for _t, _b, c, y, xx in (x > 0).nonzero().tolist():
        one = torch.zeros(1, 2, 3, 3)
        one[0, c, y // 2, xx // 2] = 1.0
        expected += _conv_sops_brute_force(one.unsqueeze(0), conv, 3)
    assert stats.sops_per_image == pytest.approx(expected / B, rel=1e-12)


def test_a_max_pool_of_spikes_is_counted_on_the_pooled_spikes() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model = nn.Sequential(_lif(), Folded(nn.MaxPool2d(3, 2, 1)), Folded(conv))
    x = _hand_spikes(2, 6)
    stats = _counted(model, x)["0"]
    pooled = F.max_pool2d(x.flatten(0, 1), 3, 2, 1).unflatten(0, (T, B))  # [T, B, 2, 3, 3], still 0/1
    assert stats.sops_per_image == pytest.approx(_conv_sops_brute_force(pooled, conv, 3) / B, rel=1e-12)


def test_zero_spikes_give_zero_sops() -> None:
    model = nn.Sequential(_lif(), Folded(nn.Conv2d(2, 3, 3, stride=2, padding=1)))
    stats = _counted(model, torch.zeros(T, B, 2, 5, 5))["0"]
    assert (stats.spikes_per_image, stats.sops_per_image) == (0.0, 0.0)


def test_without_a_plan_sops_are_not_a_number() -> None:
    lif = _lif()
    lif.store_v_seq = True
    lif(_hand_spikes(2, 3))
    stats = LayerStatsAccumulator([("lif", lif)])
    stats.update()
    (layer,) = stats.compute()
    assert layer.sops_per_image != layer.sops_per_image  # NaN: counted without a plan
    assert layer.spikes_per_image > 0


def test_reading_part_of_a_spike_map_is_refused() -> None:
    class Half(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lif, self.fc = _lif(), nn.Linear(8, 2)

        def forward(self, x_seq: Tensor) -> Tensor:
            return self.fc(self.lif(x_seq).flatten(0, 1)[:, :8])  # a view of the map's storage, half of it

    with pytest.raises(OpsError, match="reads 8 values of a spike map of 16"):
        plan_ops(Half(), torch.zeros(T, 1, 16))


def test_the_stem_macs_count_once_per_image_behind_the_static_encoder_and_t_times_on_frames() -> None:
    spec = NetSpec.from_recipe(Recipe(), 10, 1, 8, timesteps=4)
    plan = plan_ops(create_model("convnet3", spec), torch.zeros(1, 1, 8, 8))
    stem = 8 * 8 * 32 * (1 * 3 * 3)  # outputs x products per output
    assert plan.dense == {"encoder.layers.0": stem}  # every later layer reads spikes
    frames = nn.Sequential(Folded(nn.Conv2d(1, 32, 3, padding=1)), _lif())
    assert plan_ops(frames, torch.zeros(4, 1, 1, 8, 8)).dense == {"0.0": 4 * stem}


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_layer_of_every_snn_but_the_stem_reads_spikes_and_every_hidden_lif_has_a_reader(arch: str) -> None:
    """Global average pooling of spikes is linear (its 1/HW folds into the next weights), so a pooled
    readout and the tdBN/TET FC-256 head read spikes too: only the stem, on pixels, costs MACs."""
    cin, side, _ = INPUTS[arch]
    model = create_model(arch, NetSpec.from_recipe(Recipe(), 10, cin, side, timesteps=2))
    plan = plan_ops(model, torch.zeros(1, cin, side, side))
    weights = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert set(plan.dense) == {"encoder.layers.0"}
    assert sorted(r for m in plan.maps for r in m.readers) == sorted(set(weights) - {"encoder.layers.0"})
    assert {m.owner for m in plan.maps} == {name for name, _ in spiking_layers(model)}


def test_a_spike_map_read_through_avgpool_adaptive_pool_or_the_readouts_mean_costs_the_same() -> None:
    T, C, H = 2, 3, 4

    class Head(nn.Module):
        def __init__(self, pool: nn.Module | None) -> None:
            super().__init__()
            self.lif = _lif()
            self.pool = pool
            self.readout = Readout(C, 5, pool=pool is None)  # None: the readout's own global mean

        def forward(self, x_seq: Tensor) -> Tensor:
            s = self.lif(x_seq)
            if self.pool is not None:
                s = Folded(self.pool)(s)
            return self.readout(s)

    x = torch.rand(T, 1, C, H, H) * 1.2
    heads = [Head(nn.AvgPool2d(H)), Head(nn.AdaptiveAvgPool2d(1)), Head(None)]
    plans = [plan_ops(head, x) for head in heads]
    for plan in plans:
        assert plan.dense == {}
        (spikes,) = plan.maps
        assert spikes.owner == "lif" and spikes.readers == ("readout.fc",)
        assert torch.equal(spikes.fanout, torch.full((C, H, H), 5.0, dtype=torch.float64))  # each spike: 5 classes
    sops = []
    for head, plan in zip(heads, plans):
        head.lif.store_v_seq = True
        acc = LayerStatsAccumulator(spiking_layers(head), plan)
        with acc.watch(head), torch.no_grad():
            head(x)
            acc.update()
        (layer,) = acc.compute(1, 1)
        sops.append(layer.sops_per_image)
    assert sops[0] == sops[1] == sops[2] == pytest.approx(float(head.lif.spike_seq.sum()) * 5)


@pytest.mark.parametrize("arch", list(MODELS))
def test_the_ann_twin_macs_are_the_flop_count_over_two(arch: str) -> None:
    torch.manual_seed(0)
    cin, side, batch = INPUTS[arch]
    spec = NetSpec.from_recipe(Recipe().with_overrides({"model.neuron": "relu"}), 10, cin, side)
    model = create_model(arch, spec).eval()
    assert spec.timesteps == 1 and spiking_layers(model) == []
    plan = plan_ops(model, torch.zeros(1, cin, side, side))
    assert plan.maps == ()
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        model(torch.randn(batch, cin, side, side))
    assert plan.macs_per_image * batch == pytest.approx(flops.get_total_flops() / 2, rel=1e-2)


def test_convnet3_sops_equal_convolutions_with_all_ones_kernels_of_its_real_spikes() -> None:
    """The whole network: each weight layer's spike input through the same layer with weights 1."""
    torch.manual_seed(0)
    spec = dataclasses.replace(NetSpec.from_recipe(Recipe(), 10, 1, 8, timesteps=3), v_threshold=0.05)
    model = create_model("convnet3", spec).eval()
    x = torch.randn(4, 1, 8, 8)
    plan = plan_ops(model, x[:1])
    layers = spiking_layers(model)
    for _, m in layers:
        m.store_v_seq = True
    stats = LayerStatsAccumulator(layers, plan)
    with torch.no_grad():
        model(x)
    stats.update()
    by_name = {s.name: s.sops_per_image for s in stats.compute()}
    s0, s1, s2 = (m.spike_seq.flatten(0, 1) for _, m in layers)  # [T*B, ...]
    conv = model.body[0][0]
    expected = {
        "encoder.lif": F.conv2d(s0, torch.ones_like(conv.weight), None, conv.stride, conv.padding).sum().item(),
        "body.1": s1.sum().item() * 128,  # Flatten + Linear(1024, 128)
        "body.3": s2.sum().item() * 10,  # the readout reads the last spikes themselves (no pooling)
    }
    assert min(s.mean() for s in (s0, s1, s2)) > 0
    assert by_name == pytest.approx({k: v / 4 for k, v in expected.items()}, rel=1e-12)


def test_energy_is_macs_times_e_mac_plus_sops_times_e_ac() -> None:
    assert energy_uj(2e6, 5e6, EnergyConfig()) == pytest.approx((2e6 * 4.6 + 5e6 * 0.9) * 1e-6)
    assert energy_uj(1e6, 1e6, EnergyConfig(e_mac_pj=3.1, e_ac_pj=0.1)) == pytest.approx(3.2)
    assert energy_uj(0.0, 0.0, EnergyConfig()) == 0.0
