"""Model registry: every architecture builds, runs and back-propagates on images and on frame
sequences; the encoder's run-once shortcut for images is exact."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from imloss_cli import recipe as recipe_mod
from imloss_cli.recipe import Recipe, load_recipe
from imloss_cli.snn.models import MODELS, Encoder, Folded, NetSpec, build_model, create_model
from imloss_cli.snn.neuron import LIF, spiking_layers
from imloss_cli.train.loop import im_layers

# (in_channels, side, batch) per architecture: small inputs keep the whole set around a few seconds.
INPUTS = {
    "convnet3": (1, 8, 2),
    "resnet19": (3, 32, 2),
    "resnet19-tet": (3, 32, 2),
    "resnet19-guo": (3, 32, 2),
    "resnet20": (3, 32, 2),
    "vgg16": (3, 32, 2),
    "resnet34": (3, 64, 2),
}
# hidden LIF layers: stem + 2 per basic block (resnets) (+ the FC-256 layer of the tdBN/TET head),
# stem + 12 convs (vgg16), 3 (convnet3)
LIF_COUNT = {
    "convnet3": 3,
    "resnet19": 1 + 2 * 8 + 1,
    "resnet19-tet": 1 + 2 * 8 + 1,
    "resnet19-guo": 1 + 2 * 8,
    "resnet20": 1 + 2 * 9,
    "vgg16": 13,
    "resnet34": 1 + 2 * 16,
}


def _spec(arch: str, **kw) -> NetSpec:
    cin, side, _ = INPUTS[arch]
    return dataclasses.replace(NetSpec.from_recipe(Recipe(), 7, cin, side, timesteps=2), **kw)


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_model_outputs_logits_and_trains_every_parameter(arch: str) -> None:
    assert arch in INPUTS, f"new architecture {arch}: add it to INPUTS"
    torch.manual_seed(0)
    cin, side, batch = INPUTS[arch]
    model = create_model(arch, _spec(arch))
    assert len(spiking_layers(model)) == LIF_COUNT[arch]
    x = torch.randn(batch, cin, side, side)
    logits = model(x)
    assert logits.shape == (batch, 7)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert bad == []
    # the surrogate lets the gradient reach the very first conv
    first = next(model.encoder.layers.parameters())
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_model_takes_frame_sequences_batch_first_and_trains_every_parameter(arch: str) -> None:
    torch.manual_seed(0)
    _, side, batch = INPUTS[arch]
    model = create_model(arch, _spec(arch, in_channels=2))
    x = torch.rand(batch, 2, 2, side, side)  # [B, T, C, H, W], as the event loaders collate it
    logits = model(x)
    assert logits.shape == (batch, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert next(model.encoder.layers.parameters()).grad.abs().sum() > 0


def _eval_convnet(T: int, in_channels: int) -> nn.Module:
    model = create_model("convnet3", NetSpec.from_recipe(Recipe(), 5, in_channels, 8, timesteps=T))
    for m in model.modules():  # non-trivial running statistics for BatchNorm
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_encoder_runs_the_stem_on_every_frame_of_a_sequence() -> None:
    torch.manual_seed(3)
    T = 3
    model = _eval_convnet(T, 2)
    enc: Encoder = model.encoder
    seen: list[tuple[int, ...]] = []
    hook = enc.layers[0].register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    x = 4 * torch.rand(4, T, 2, 8, 8)  # frames that change over time (large enough to make spikes)
    with torch.no_grad():
        logits = model(x)
        per_step = torch.stack([enc.layers(x[:, t]) for t in range(T)])  # [T, B, C, H, W]
        reference = model.readout(model.body(enc.lif(per_step)))
        static = model(x[:, 0])  # the first frame as if it were repeated
        repeated = model(x[:, :1].expand(4, T, 2, 8, 8))
    hook.remove()
    assert seen[0] == (T * 4, 2, 8, 8)  # one call on the folded batch, not on [B, ...]
    assert_close(logits, reference, rtol=0, atol=1e-6)
    assert not torch.allclose(logits, static)
    assert_close(repeated, static, rtol=0, atol=1e-6)  # constant frames: the image path, exactly
    with pytest.raises(ValueError, match="a sequence of 2 frames for a network of T = 3"):
        model(x[:, :2])


def test_create_model_rejects_unknown_name() -> None:
    with pytest.raises(KeyError, match="resnet99"):
        create_model("resnet99", _spec("convnet3"))


def test_recipe_architectures_equal_model_registry() -> None:
    assert set(recipe_mod.ARCHITECTURES) == set(MODELS)
    assert len(recipe_mod.ARCHITECTURES) == len(MODELS)


def _folded_path(model: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """The plain path: repeat the image T times and run the first conv on the folded [T*B] batch."""
    enc: Encoder = model.encoder
    x_seq = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    s = enc.lif(Folded(*enc.layers)(x_seq))
    return model.readout(model.body(s))


def test_static_encoder_runs_first_conv_once_and_equals_folded_path_in_eval() -> None:
    torch.manual_seed(1)
    T = 3
    model = create_model("convnet3", NetSpec.from_recipe(Recipe(), 5, 1, 8, timesteps=T))
    # non-trivial running statistics for BatchNorm
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    conv = model.encoder.layers[0]
    seen: list[tuple[int, ...]] = []
    hook = conv.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        logits = model(x)
        assert seen == [(4, 1, 8, 8)]  # one call, on [B, ...], not [T*B, ...]
        reference = _folded_path(model, x, T)
    hook.remove()
    assert seen[1] == (T * 4, 1, 8, 8)
    assert_close(logits, reference, rtol=0, atol=1e-6)


def test_static_encoder_forward_is_exact_in_training_mode_too() -> None:
    """BatchNorm's batch statistics of T identical copies equal those of one copy."""
    torch.manual_seed(2)
    model = create_model("convnet3", NetSpec.from_recipe(Recipe(), 5, 1, 8, timesteps=2))
    model.train()
    x = torch.randn(4, 1, 8, 8)
    twin = copy.deepcopy(model)
    logits = model(x)
    reference = _folded_path(twin, x, 2)
    assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    # the same function of the parameters, so the same gradients (autograd sums the T copies)
    logits.square().sum().backward()
    reference.square().sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_build_model_reads_neuron_and_time_settings_from_recipe() -> None:
    recipe = load_recipe(
        None,
        {
            "model.arch": "convnet3",
            "model.timesteps": 3,
            "neuron.decay": 0.5,
            "neuron.v_threshold": 0.75,
            "neuron.reset": "soft",
            "neuron.detach_reset": True,
        },
    )
    model = build_model(recipe, num_classes=10, in_channels=1, image_size=8)
    assert model.encoder.timesteps == 3
    layers = [m for _, m in spiking_layers(model)]
    assert len(layers) == 3
    for m in layers:
        p = m.params
        assert (p.decay, p.v_threshold, p.soft_reset, p.detach_reset, m.kernels) == (0.5, 0.75, True, True, "eager")
    assert model.readout.fc.out_features == 10
    lif0 = model.encoder.lif
    lif0.store_v_seq = True
    model(torch.randn(2, 1, 8, 8))
    assert lif0.v_seq.shape[0] == 3  # T = 3 steps


def test_build_model_tdbn_normalises_to_the_threshold_with_lambda_from_one() -> None:
    from imloss_cli.snn.norm import TdBatchNorm2d

    recipe = load_recipe(None, {"model.norm": "tdbn", "neuron.v_threshold": 0.75})
    model = build_model(recipe, num_classes=10, in_channels=1, image_size=8)
    bn = model.encoder.layers[1]
    assert isinstance(bn, TdBatchNorm2d)
    assert_close(bn.weight.detach(), torch.ones_like(bn.weight))  # lambda starts at 1
    assert float(bn.scale) == 0.75  # alpha * V_th, alpha = 1 outside the residual sums
    block = create_model("resnet19", dataclasses.replace(_spec("resnet19"), norm="tdbn", v_threshold=0.75)).body[0]
    assert float(block.conv2[1].scale) == pytest.approx(0.75 / math.sqrt(2))  # the two summed branches


def test_im_layers_blocks_selects_stem_and_block_outputs_of_resnet19() -> None:
    model = create_model("resnet19-guo", _spec("resnet19-guo"))
    all_layers = im_layers(model, "all")
    blocks = im_layers(model, "blocks")
    assert len(all_layers) == 17
    assert len(blocks) == 9  # stem + 8 block outputs
    assert blocks[0] is model.encoder.lif
    assert blocks[1:] == [blk.lif2 for blk in model.body]
    assert all(isinstance(m, LIF) for m in blocks)
    tdbn = create_model("resnet19", _spec("resnet19"))
    assert im_layers(tdbn, "blocks")[-1] is tdbn.body[9]  # the FC-256 layer is a hidden layer too


def _conv_bn(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + 2 * cout  # conv without bias, BN weight and bias


def _resnet19_parameters(stem: int, head: list[int], classes: int = 10) -> int:
    """ResNet-19 counted by hand: stem, basic blocks [3, 3, 2] at 128/256/512, then the linear layers."""
    total, cin = _conv_bn(3, stem, 3), stem
    for width, blocks in ((128, 3), (256, 3), (512, 2)):
        for i in range(blocks):
            stride = 2 if width > 128 and i == 0 else 1
            total += _conv_bn(cin, width, 3) + _conv_bn(width, width, 3)
            if stride != 1 or cin != width:
                total += _conv_bn(cin, width, 1)  # the 1x1 shortcut
            cin = width
    for features in [*head, classes]:
        total += cin * features + features
        cin = features
    return total


@pytest.mark.parametrize(
    ("arch", "stem", "head"), [("resnet19", 128, [256]), ("resnet19-tet", 64, [256]), ("resnet19-guo", 128, [])]
)
def test_resnet19_variants_have_the_literature_parameter_count_and_spiking_layers(
    arch: str, stem: int, head: list[int]
) -> None:
    spec = NetSpec.from_recipe(Recipe(), 10, 3, 32)
    model = create_model(arch, spec)
    n = sum(p.numel() for p in model.parameters())
    assert n == _resnet19_parameters(stem, head)
    assert n == {"resnet19": 12_697_994, "resnet19-tet": 12_630_858, "resnet19-guo": 12_569_226}[arch]
    names = [name for name, _ in spiking_layers(model)]
    blocks = [f"body.{i}.lif{j}" for i in range(8) for j in (1, 2)]
    assert names == ["encoder.lif", *blocks, *(["body.9"] if head else [])]


def test_im_layers_blocks_keeps_every_layer_of_plain_nets() -> None:
    model = create_model("vgg16", _spec("vgg16"))
    assert len(im_layers(model, "blocks")) == len(im_layers(model, "all")) == 13


def test_tdbn_equals_a_hand_written_tdbn_after_two_sgd_steps_and_differs_from_a_scaled_init() -> None:
    """tdBN (Zheng et al.): y = lambda * (alpha * V_th * x_hat) + beta, alpha * V_th fixed, lambda from 1,
    statistics over time and batch (the folded batch). Trained two SGD steps with momentum and weight
    decay, it equals the formula written out by hand; a BatchNorm whose weight merely starts at
    alpha * V_th drifts away from both."""
    from imloss_cli.snn.norm import TdBatchNorm2d

    torch.manual_seed(0)
    alpha, v_th, channels = 1 / math.sqrt(2), 0.5, 3
    scale = alpha * v_th
    xs = [torch.randn(2 * 4, channels, 5, 5) * 2 + 1 for _ in range(3)]  # [T*B, C, H, W], T = 2, B = 4
    targets = [torch.randn(2 * 4, channels, 5, 5) for _ in range(2)]
    tdbn = TdBatchNorm2d(channels, scale)
    lam = torch.ones(channels, requires_grad=True)
    beta = torch.zeros(channels, requires_grad=True)

    def by_hand(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + 1e-5)
        return lam.view(1, -1, 1, 1) * (scale * x_hat) + beta.view(1, -1, 1, 1)

    scaled_init = torch.nn.BatchNorm2d(channels)
    torch.nn.init.constant_(scaled_init.weight, scale)
    options = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}
    optimizers = [torch.optim.SGD(m, **options) for m in (tdbn.parameters(), [lam, beta], scaled_init.parameters())]
    for x, target in zip(xs, targets):
        for out, opt in zip((tdbn(x), by_hand(x), scaled_init(x)), optimizers):
            opt.zero_grad()
            ((out - target) ** 2).mean().backward()
            opt.step()
    torch.testing.assert_close(tdbn(xs[2]), by_hand(xs[2]))
    torch.testing.assert_close(tdbn.weight, lam.detach())
    torch.testing.assert_close(tdbn.bias, beta.detach())
    assert not torch.allclose(scaled_init(xs[2]), by_hand(xs[2]), atol=1e-3)  # the former "tdbn"
    assert float(tdbn.scale) == pytest.approx(scale) and "scale" in tdbn.state_dict()


def test_the_authors_weight_init_and_resnet34_stem_pool_are_recipe_choices() -> None:
    torch.manual_seed(0)
    guo = load_recipe(None, {"model.arch": "resnet19-guo", "model.init": "guo"})
    model = build_model(guo, num_classes=10, in_channels=3, image_size=32)
    conv = model.body[0].conv1[0]  # 128 -> 128, 3x3: std sqrt(2 / (9 * 128))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.02)
    fc = model.readout.fc  # 512 -> 10: std 1 / 512, bias 0
    assert fc.weight.std().item() == pytest.approx(1 / 512, rel=0.1) and torch.all(fc.bias == 0)
    torch.manual_seed(0)
    default = build_model(guo.with_overrides({"model.init": "torch"}), num_classes=10, in_channels=3, image_size=32)
    assert default.body[0].conv1[0].weight.std().item() == pytest.approx(1 / math.sqrt(3 * 9 * 128), rel=0.02)

    avg = create_model("resnet34", _spec("resnet34", stem_pool="avg"))
    assert isinstance(avg.body[0][0], nn.AvgPool2d) and (avg.body[0][0].kernel_size, avg.body[0][0].stride) == (3, 2)
    assert avg.body[0][0].padding == 1
    assert isinstance(create_model("resnet34", _spec("resnet34")).body[0][0], nn.MaxPool2d)


def test_the_authors_code_recipe_takes_their_surrogate_spike_test_init_and_constants() -> None:
    from .conftest import REPO

    guo = load_recipe(REPO / "recipes" / "cifar10-guo.toml")
    assert (guo.surrogate.schedule, guo.surrogate.k_fixed, guo.neuron.strict_threshold) == ("guo", 3.0, True)
    assert (guo.model.arch, guo.model.init, guo.model.norm) == ("resnet19-guo", "guo", "bn")
    assert guo.data.mean == (0.4914, 0.4822, 0.4465) and guo.data.std == (0.2023, 0.1994, 0.2010)
    lifs = [m for m in build_model(guo, 10, 3, 32).modules() if isinstance(m, LIF)]
    assert all(m.params.strict and m.params.surrogate == "guo" for m in lifs)
    imagenet = load_recipe(REPO / "recipes" / "paper" / "imagenet-resnet34-t6.toml")
    assert imagenet.model.stem_pool == "avg"
