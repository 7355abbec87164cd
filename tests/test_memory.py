"""``train.memory = "low"``: the default mode's training step (spikes, loss, gradients, BatchNorm
statistics) in a fraction of the bytes, through the Trainer, a resume and DDP; what it refuses."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.recipe import Recipe, load_recipe
from imloss_cli.registry import Registry
from imloss_cli.snn import spike_bits
from imloss_cli.snn.memory import LowMemoryNet, use_low_memory
from imloss_cli.snn.models import BasicBlock, Folded, build_model
from imloss_cli.snn.mpbn import MembraneBNLIF
from imloss_cli.snn.neuron import set_surrogate_k, spiking_layers
from imloss_cli.snn.spike_bits import mark_spikes, pack_bits, unpack_bits
from imloss_cli.train.loop import Trainer
from imloss_cli.train.objective import StepLoss, im_layers, input_layers, loss_step
from imloss_cli.train.sink import LocalRun

from .lif_cases import interpreted_triton

TIMING = {"train_seconds", "epoch_seconds"}
SHAPES = {"convnet3": (1, 8), "resnet19": (3, 16), "resnet19-tet": (3, 16), "resnet34": (3, 32), "vgg16": (3, 32)}


def _recipe(arch: str, overrides: dict) -> Recipe:
    return load_recipe(None, {"model.arch": arch, "model.timesteps": 4, "loss.im_weight": 2.0, **overrides})


def _model_and_batch(
    recipe: Recipe, frames: bool = False, side: int | None = None
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The recipe's network as training places it (channels_last, K = 3) and a batch of 2 images of
    ``side`` pixels (the architecture's test size by default; frame sequences: [B, T, C, H, W])."""
    channels, test_side = SHAPES[recipe.model.arch]
    side = side or test_side
    channels = 2 if frames else channels
    torch.manual_seed(0)
    model = build_model(recipe, 10, channels, side).to(memory_format=torch.channels_last).train()
    set_surrogate_k(model, 3.0)
    g = torch.Generator().manual_seed(1)
    if frames:
        x = torch.rand(2, recipe.model.timesteps, channels, side, side, generator=g).round()
    else:
        x = torch.randn(2, channels, side, side, generator=g).contiguous(memory_format=torch.channels_last)
    return model, x, torch.tensor([3, 7])


def _train_step(model: nn.Module, recipe: Recipe, x: torch.Tensor, y: torch.Tensor) -> tuple[StepLoss, dict]:
    """Forward, the recipe's loss (CE or TET + lambda * IM), backward; returns the loss and every LIF's spikes."""
    target = recipe.loss.im_target
    layers = input_layers(model) if target == "input" else im_layers(model, recipe.loss.im_layers)
    for m in layers:
        m.store_v_seq, m.store_x_mean = True, target == "input"
    model.readout.store_steps = recipe.loss.objective == "tet"
    spikes: dict[str, torch.Tensor] = {}

    def keep(name: str):  # the forward pass's spikes (a recomputation calls the layer again)
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            spikes.setdefault(name, out.detach().clone())

        return hook

    hooks = [lif.register_forward_hook(keep(name)) for name, lif in spiking_layers(model)]
    out = loss_step(model, x, y, layers, recipe, model.readout)
    out.total.backward()
    for h in hooks:
        h.remove()
    return out, spikes


def _assert_low_step_equals_the_default_step(
    recipe: Recipe, kernels: str, frames: bool = False, side: int | None = None
) -> None:
    default, x, y = _model_and_batch(recipe, frames, side)
    for _, lif in spiking_layers(default):
        lif.kernels = kernels
    low = use_low_memory(copy.deepcopy(default))
    out_d, spikes_d = _train_step(default, recipe, x, y)
    out_l, spikes_l = _train_step(low, recipe, x, y)

    assert torch.equal(out_l.total, out_d.total) and torch.equal(out_l.im, out_d.im) and out_d.im > 0
    assert torch.equal(out_l.logits, out_d.logits)
    assert spikes_l.keys() == spikes_d.keys() and all(torch.equal(spikes_l[k], spikes_d[k]) for k in spikes_d)
    assert any(0 < s.mean() < 1 for s in spikes_d.values())  # layers that fire and layers that rest
    grads = dict(low.named_parameters())
    for name, p in default.named_parameters():
        g_low = grads[name].grad
        assert p.grad is not None and g_low is not None, name
        scale = p.grad.abs().max().clamp_min(1e-30)
        assert (g_low - p.grad).abs().max() / scale <= 1e-6, name  # fp32: within 1e-6 relative
    buffers = dict(low.named_buffers())
    for name, b in default.named_buffers():  # running statistics updated once, as by default
        assert torch.equal(buffers[name], b), name
    # once per forward pass: each norm counted one batch, each MPBN norm one per time step
    per_step = {id(m.bn) for m in default.modules() if isinstance(m, MembraneBNLIF)}
    norms = [m for m in default.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert [int(m.num_batches_tracked) for m in norms] == [
        recipe.model.timesteps if id(m) in per_step else 1 for m in norms
    ] and (norms or recipe.model.norm == "none")


CASES = {
    "resnet19": ("resnet19", {}),
    "convnet3": ("convnet3", {}),
    "resnet19 input-current IM": ("resnet19", {"loss.im_target": "input", "loss.im_weight": 0.5}),
    "resnet19 tdBN": ("resnet19", {"model.norm": "tdbn"}),
    "resnet19 no norm": ("resnet19", {"model.norm": "none"}),
    "resnet19-tet (stride-1 shortcut conv)": ("resnet19-tet", {}),
    "resnet19 MPBN + PLIF": ("resnet19", {"model.membrane_bn": True, "model.neuron": "plif"}),
    "convnet3 PLIF": ("convnet3", {"model.neuron": "plif"}),
    "convnet3 MPBN": ("convnet3", {"model.membrane_bn": True}),
    "convnet3 TET": ("convnet3", {"loss.objective": "tet"}),
    "convnet3 soft reset, detached": ("convnet3", {"neuron.reset": "soft", "neuron.detach_reset": True}),
    "resnet34 (max-pooled stem)": ("resnet34", {"model.timesteps": 2}),
    "vgg16": ("vgg16", {"model.timesteps": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_low_memory_step_gives_the_default_steps_spikes_loss_gradients_and_statistics(case: str) -> None:
    arch, overrides = CASES[case]
    _assert_low_step_equals_the_default_step(_recipe(arch, overrides), "eager")


def test_frame_sequences_recompute_the_stems_norm_and_lif_too() -> None:
    _assert_low_step_equals_the_default_step(_recipe("resnet19", {}), "eager", frames=True)


@pytest.fixture
def interpreted_kernels() -> Iterator[None]:
    with interpreted_triton():
        yield


@pytest.mark.parametrize("arch", ["resnet19", "convnet3"])
def test_a_low_memory_step_equals_the_default_step_on_the_triton_kernels(arch: str, interpreted_kernels: None) -> None:
    _assert_low_step_equals_the_default_step(_recipe(arch, {}), "triton", side=8)  # the interpreter runs numpy


@pytest.mark.skipif(
    not os.environ.get("IMLOSS_TEST_COMPILE") or shutil.which("cc") is None,
    reason="a cold torch.compile of both loops takes 20-45 s on two CPU cores; set IMLOSS_TEST_COMPILE=1 "
    "(and have a C compiler) to run it",
)
def test_a_low_memory_step_equals_the_default_step_on_the_compiled_kernels() -> None:
    _assert_low_step_equals_the_default_step(_recipe("convnet3", {}), "compiled")


def test_bits_round_trip_every_length_and_a_strided_view_comes_back_with_its_strides() -> None:
    for n in (1, 7, 8, 9, 64, 1001):
        spikes = (torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5).float()
        bits = pack_bits(spikes)
        assert bits.dtype == torch.uint8 and bits.numel() == (n + 7) // 8
        assert torch.equal(unpack_bits(bits, n, torch.float32), spikes)
    steps = (torch.rand(6, 4, 5, 5) > 0.5).float().contiguous(memory_format=torch.channels_last)
    spike_seq = mark_spikes(steps.unflatten(0, (3, 2)))  # [T, B, C, H, W], each step channels_last
    folded = spike_seq.flatten(0, 1)[1:]  # what a Folded layer saves: a view of the spikes (here: from step 2 on)
    assert not folded.is_contiguous()
    packed = spike_bits._SpikePacker().pack(folded)
    assert isinstance(packed, spike_bits.PackedSpikes) and packed.values.bits.numel() == 6 * 4 * 5 * 5 // 8
    restored = packed.unpack()
    assert torch.equal(restored, folded) and restored.stride() == folded.stride()


def test_a_marked_tensor_changed_in_place_is_no_longer_taken_for_spikes() -> None:
    spikes = mark_spikes((torch.rand(4, 8) > 0.5).float())
    assert spike_bits.is_marked_spikes(spikes[1:])
    spikes.mul_(0.5)
    assert not spike_bits.is_marked_spikes(spikes) and spike_bits._SpikePacker().pack(spikes) is spikes


def _kept_bytes(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(bytes of the tensors a forward pass keeps for the backward pass as they are, bytes kept as bits);
    parameters and buffers left out, each memory counted once."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    kept: dict[int, int] = {}
    bits: dict[int, int] = {}
    pack = spike_bits._SpikePacker.pack

    def counting(self: spike_bits._SpikePacker, t: torch.Tensor) -> object:
        saved = pack(self, t)
        if isinstance(saved, spike_bits.PackedSpikes):
            bits[id(saved.values)] = saved.values.bits.nbytes
        elif t.untyped_storage().data_ptr() not in own:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return saved

    monkeypatch.setattr(spike_bits._SpikePacker, "pack", counting)
    with spike_bits.spikes_saved_as_bits():  # the default mode marks no spikes: everything is kept as it is
        model(x)
    return sum(kept.values()), sum(bits.values())


def _conv_output_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of what low mode keeps as it is in a ResNet-19: every residual block's conv2 and
    shortcut-conv outputs, the hidden FC layer's input (pooled spikes) and output (its LIF's input
    current), and the stem's norm output (static images: [B], no T)."""
    kept = [m.conv2[0] for m in model.modules() if isinstance(m, BasicBlock)]
    kept += [m.shortcut[0] for m in model.modules() if isinstance(m, BasicBlock) and isinstance(m.shortcut, Folded)]
    kept += [model.body[-2], model.encoder.layers]
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda m, a, out: sizes.append(out.nbytes)) for m in kept]
    hooks.append(model.body[-2][-1].register_forward_hook(lambda m, args, out: sizes.append(args[0].nbytes)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sum(sizes)


def test_low_memory_keeps_per_time_step_a_fifth_of_the_default_bytes_and_only_these_tensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept: dict[tuple[str, int], tuple[int, int]] = {}
    expected = {}
    for T in (2, 4):
        recipe = _recipe("resnet19", {"model.timesteps": T})
        model, x, _ = _model_and_batch(recipe)
        kept["default", T] = _kept_bytes(model, x, monkeypatch)
        expected[T] = _conv_output_bytes(model, x)
        kept["low", T] = _kept_bytes(use_low_memory(model), x, monkeypatch)
    assert kept["default", 2][1] == 0  # nothing marked, nothing packed
    growth = {mode: sum(kept[mode, 4]) - sum(kept[mode, 2]) for mode in ("default", "low")}
    assert growth["low"] <= 0.2 * growth["default"]  # measured 0.188: 1.60 of 8.53 MB per step at batch 2, 16 px
    # As they are: exactly those conv outputs (the image and the stem's [B] tensors do not grow with
    # T); the spikes as bits, less than an eighth of the bytes of those outputs.
    assert kept["low", 4][0] - kept["low", 2][0] == expected[4] - expected[2]
    bits_growth = kept["low", 4][1] - kept["low", 2][1]
    assert 0 < bits_growth < (expected[4] - expected[2]) / 8


@pytest.mark.slow
def test_the_trainer_in_low_memory_mode_trains_the_default_modes_epochs() -> None:
    base = {"train.device": "cpu", "train.epochs": 2, "train.max_steps_per_epoch": 3, "model.timesteps": 4,
            "train.compile": "off", "train.max_eval_batches": 2, "train.checkpoint": False}  # fmt: skip
    runs = {}
    for memory in ("default", "low"):
        trainer = Trainer(load_recipe(None, {**base, "train.memory": memory}), seed=0)
        assert isinstance(trainer.model, LowMemoryNet) == (memory == "low")
        runs[memory] = [({k: v for k, v in r.metrics.items() if k not in TIMING}, r.layers) for r in trainer.fit()]
        runs[memory + " weights"] = trainer.model.state_dict()
    assert runs["low"] == runs["default"]  # loss, CE, IM, accuracies and every layer statistic, bit for bit
    low, default = runs["low weights"], runs["default weights"]
    assert all(torch.equal(low[k], default[k]) for k in default)


@pytest.mark.slow
def test_a_low_memory_resnet_resumed_from_its_checkpoint_ends_as_the_uninterrupted_run(tmp_path: Path) -> None:
    recipe = load_recipe(None, {
        "model.arch": "resnet19", "train.device": "cpu", "train.epochs": 2, "train.max_steps_per_epoch": 2,
        "model.timesteps": 4, "train.compile": "off", "train.max_eval_batches": 1, "data.batch_size": 16, "data.eval_batch_size": 16,
        "train.memory": "low", "loss.im_target": "input", "loss.im_weight": 0.5,
    })  # fmt: skip
    straight = [r.metrics for r in Trainer(recipe, seed=3).fit(LocalRun(tmp_path / "straight"))]
    first = Trainer(recipe, seed=3)
    next(iter(first.fit(LocalRun(tmp_path / "stopped"))))  # epoch 1, its checkpoint promoted to last.pt
    resumed = Trainer(recipe, seed=3)
    resumed.resume(tmp_path / "stopped" / "last.pt")
    (epoch2,) = [r.metrics for r in resumed.fit(LocalRun(tmp_path / "stopped"))]
    assert {k: v for k, v in epoch2.items() if k not in TIMING} == {
        k: v for k, v in straight[1].items() if k not in TIMING
    }


@pytest.mark.slow
def test_two_process_ddp_in_low_memory_mode_records_the_default_modes_epochs(
    tiny_recipe: Path, registry_url: str
) -> None:
    for memory in ("default", "low"):
        args = ["train", str(tiny_recipe), "--nproc", "2", "--seed", "0", "--registry", registry_url]
        result = CliRunner().invoke(app, [*args, "--set", f"train.memory='{memory}'", "--set", "model.timesteps=4"])
        assert result.exit_code == 0, result.output
    registry = Registry(registry_url)
    runs = sorted(registry.list_runs(), key=lambda r: r.recipe["train"]["memory"])
    assert [r.status for r in runs] == ["FINISHED", "FINISHED"]
    metrics = registry.epoch_metrics([r.id for r in runs])
    metrics = metrics[~metrics.name.isin(TIMING)]
    by_run = {
        r.recipe["train"]["memory"]: sorted(metrics[metrics.run_id == r.id][["epoch", "name", "value"]].itertuples(index=False))
        for r in runs
    }  # fmt: skip
    assert by_run["low"] == by_run["default"] and len(by_run["low"]) > 10


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.memory='low'", "train.cuda_graphs=true"], "train.cuda_graphs: train.memory = 'low' recomputes"),
        (["train.memory='low'", "train.sync_bn=true"], "train.sync_bn: train.memory = 'low' recomputes every norm"),
        (["train.memory='low'", "loss.im_target='rate'"], "loss.im_target: 'rate' differentiates every hidden"),
        (["train.memory='tiny'"], "train.memory: 'tiny' is not one of: 'default' or 'low'"),
    ],
)
def test_what_low_memory_cannot_join_is_refused_at_validation(sets: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["validate", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 2 and message in result.output


def test_the_ann_twin_trains_in_the_default_memory_mode() -> None:
    twin = load_recipe(None, {"model.neuron": "relu", "train.memory": "low"})
    assert twin.train.memory == "default"  # no spikes to keep as bits: one configuration for both
    with pytest.raises(ValueError, match="the ANN twin \\(ReLU\\) has none"):
        use_low_memory(build_model(twin, 10, 1, 8))
