"""IM-Loss: hand-computed values, its gradient, and one SGD step pulling membrane means to V_th."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from imloss_cli.snn.im_loss import im_loss, rate_im_loss
from imloss_cli.snn.neuron import LIF
from imloss_cli.snn.params import LIFParams

V_TH = 0.5


def test_im_loss_hand_computed() -> None:
    # ((0.2-0.5)^2 + (0.5-0.5)^2 + (0.9-0.5)^2) / 3 = (0.09 + 0 + 0.16) / 3
    means = [torch.tensor(m, dtype=torch.float64) for m in (0.2, 0.5, 0.9)]
    out = im_loss(means, V_TH)
    assert out.shape == ()
    assert out.item() == pytest.approx(0.25 / 3, rel=1e-12)


@pytest.mark.parametrize(
    ("means", "v_th", "expected"),
    [
        ([0.5], 0.5, 0.0),
        ([0.0], 0.5, 0.25),
        ([1.0, 0.0], 1.0, 0.5),  # (0 + 1) / 2
        ([-0.5, 0.25, 0.5, 2.0], 0.5, (1.0 + 0.0625 + 0.0 + 2.25) / 4),
    ],
)
def test_im_loss_is_mean_squared_distance_to_threshold(means: list[float], v_th: float, expected: float) -> None:
    out = im_loss([torch.tensor(m, dtype=torch.float64) for m in means], v_th)
    assert out.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_im_loss_gradient_is_two_times_distance_over_layers() -> None:
    m = torch.tensor([0.2, 0.5, 0.9, -0.1], dtype=torch.float64, requires_grad=True)
    im_loss(list(m.unbind()), V_TH).backward()
    # 2 * (m - V_th) / L with L = 4
    expected = torch.tensor([2 * -0.3 / 4, 0.0, 2 * 0.4 / 4, 2 * -0.6 / 4], dtype=torch.float64)
    assert_close(m.grad, expected, rtol=1e-12, atol=1e-15)


def test_im_loss_needs_a_layer() -> None:
    with pytest.raises(ValueError, match="at least one"):
        im_loss([], V_TH)


@pytest.mark.parametrize(
    ("rates", "T", "expected"),
    [
        # target 0.5/4 = 0.125: ((0.125-0.125)^2 + (0.375-0.125)^2) / 2 = 0.0625 / 2
        ([0.125, 0.375], 4, 0.03125),
        # target 0.5/2 = 0.25: ((0-0.25)^2 + (0.5-0.25)^2 + (0.25-0.25)^2) / 3 = 0.125 / 3
        ([0.0, 0.5, 0.25], 2, 0.125 / 3),
        # T = 1: target 0.5
        ([1.0], 1, 0.25),
    ],
)
def test_rate_im_loss_hand_computed(rates: list[float], T: int, expected: float) -> None:
    out = rate_im_loss([torch.tensor(r, dtype=torch.float64) for r in rates], T)
    assert out.item() == pytest.approx(expected, rel=1e-12)


def test_rate_im_loss_gradient() -> None:
    r = torch.tensor([0.1, 0.3], dtype=torch.float64, requires_grad=True)
    rate_im_loss(list(r.unbind()), 5).backward()  # target 0.1
    assert_close(r.grad, torch.tensor([0.0, 2 * 0.2 / 2], dtype=torch.float64))


def test_rate_im_loss_needs_a_layer() -> None:
    with pytest.raises(ValueError, match="at least one"):
        rate_im_loss([], 4)


class TinySNN(nn.Module):
    """Linear -> LIF -> Linear -> LIF on time-first [T, B, F] inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.lif1 = LIF(LIFParams(0.25, V_TH))
        self.fc2 = nn.Linear(16, 8)
        self.lif2 = LIF(LIFParams(0.25, V_TH))
        for lif in (self.lif1, self.lif2):
            lif.store_v_seq = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif2(self.fc2(self.lif1(self.fc1(x))))


def _layer_means(model: TinySNN, x: torch.Tensor, source: str = "v_seq") -> list[torch.Tensor]:
    model(x)
    if source == "v_mean":  # the fused mean the LIF computes (what the training loop differentiates)
        return [model.lif1.v_mean, model.lif2.v_mean]
    return [model.lif1.v_seq.mean(), model.lif2.v_seq.mean()]


@pytest.mark.parametrize("source", ["v_seq", "v_mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sgd_step_on_im_loss_moves_every_layer_mean_toward_threshold(seed: int, source: str) -> None:
    torch.manual_seed(seed)
    model = TinySNN()
    x = torch.randn(4, 8, 6)  # [T, B, F]
    before = [m.item() for m in _layer_means(model, x)]
    assert all(abs(b - V_TH) > 0.05 for b in before)  # the step has something to do

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = im_loss(_layer_means(model, x, source), V_TH)
    loss.backward()
    for p in (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    opt.step()

    with torch.no_grad():
        after = [m.item() for m in _layer_means(model, x)]
        new_loss = im_loss([torch.tensor(a) for a in after], V_TH).item()
    for b, a in zip(before, after):
        assert abs(a - V_TH) < abs(b - V_TH), (before, after)
    assert new_loss < loss.item()


def test_im_loss_on_fused_v_mean_gives_the_same_gradients_as_on_v_seq_mean() -> None:
    torch.manual_seed(3)
    model = TinySNN()
    x = torch.randn(3, 5, 6)
    grads = {}
    for source in ("v_seq", "v_mean"):
        model.zero_grad()
        means = _layer_means(model, x, source)
        im_loss(means, V_TH).backward()
        grads[source] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["v_seq"], grads["v_mean"]):
        assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_input_target_is_the_authors_block_input_loss_computed_by_hand() -> None:
    """Stem + 3 blocks: the stem's and the last block's terms are left out, the middle two averaged."""
    from imloss_cli.recipe import Recipe, load_recipe
    from imloss_cli.snn.models import BasicBlock, NetSpec, _resnet
    from imloss_cli.train.loop import input_layers, loss_step

    T = 2
    torch.manual_seed(0)
    spec = NetSpec.from_recipe(Recipe(), 3, 3, 8, timesteps=T)
    model = _resnet(spec, [2, 1], [4, 8])  # blocks: 4->4, 4->4, 4->8 (stride 2, 1x1 shortcut)
    recipe = load_recipe(None, {"loss.im_target": "input", "model.timesteps": T, "loss.im_weight": 0.005})
    layers = input_layers(model)
    assert layers == [model.encoder.lif, *[b.lif2 for b in model.body if isinstance(b, BasicBlock)]]
    for m in layers:
        m.store_x_mean = True
    block_inputs: list[torch.Tensor] = []
    hooks = [b.register_forward_pre_hook(lambda _, args: block_inputs.append(args[0])) for b in model.body]
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    out = loss_step(model, x, y, layers, recipe)
    for h in hooks:
        h.remove()
    # bn2(conv2(lif1(bn1(conv1(x))))) + shortcut(x) of each block, recomputed from its own input.
    with torch.no_grad():
        currents = [b.conv2(b.lif1(b.conv1(inp))) + b.shortcut(inp) for b, inp in zip(model.body, block_inputs)]
    means = [float(c.mean()) for c in currents]
    expected = ((means[0] - 0.5 / T) ** 2 + (means[1] - 0.5 / T) ** 2) / 2
    torch.testing.assert_close(out.im, torch.tensor(expected), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.total, out.ce + 0.005 * out.im)
    out.total.backward()
    assert model.body[0].conv2[0].weight.grad is not None


def test_input_target_needs_a_residual_network() -> None:
    from imloss_cli.recipe import Recipe
    from imloss_cli.snn.models import NetSpec, create_model
    from imloss_cli.train.loop import TrainingError, input_layers

    with pytest.raises(TrainingError, match="needs a resnet architecture"):
        input_layers(create_model("vgg16", NetSpec.from_recipe(Recipe(), 10, 3, 32)))
