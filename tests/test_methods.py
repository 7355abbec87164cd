"""The peer methods beside IM-Loss: TET's loss, MPBN's membrane BatchNorm, its fold at evaluation and its
precision, what IM-Loss reads with MPBN, PLIF and the learnable leak in a network (their weight decay, and
runs recorded before PLIF was Fang et al.'s), and the combinations a recipe refuses. (PLIF's kernels:
test_neuron.py, test_triton_lif.py; against SpikingJelly: test_bench.py.)"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.recipe import load_recipe, validate_recipe, validate_recorded
from imloss_cli.registry import Registry
from imloss_cli.snn.im_loss import im_loss
from imloss_cli.snn.models import build_model
from imloss_cli.snn.mpbn import MembraneBNLIF
from imloss_cli.snn.neuron import LIF, spiking_layers
from imloss_cli.snn.tet import tet_loss
from imloss_cli.train.objective import loss_step
from imloss_cli.train.optim import build_optimizer
from tests.lif_cases import DECAY, V_TH, bf16_layer_input, lif_params
from tests.planting import start_run


def test_tet_loss_by_hand_with_three_steps_and_two_classes() -> None:
    """Steps' logits (2, 0), (0, 1), (1, 1) for class 0: CE_t = log(1 + e^-2), log(1 + e), log 2;
    L_TET their mean; L_MSE the mean of (O - 1)^2 over the six outputs = 3/6; lambda 0.1."""
    logits_seq = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]], dtype=torch.float64)  # [T=3, B=1, 2]
    y = torch.tensor([0])
    l_tet = (math.log(1 + math.exp(-2)) + math.log(1 + math.e) + math.log(2)) / 3
    assert tet_loss(logits_seq, y, 0.0, 1.0).item() == pytest.approx(l_tet, rel=1e-6)
    assert tet_loss(logits_seq, y, 0.1, 1.0).item() == pytest.approx(0.9 * l_tet + 0.1 * 0.5, rel=1e-6)
    # two images: the per-step CE is the batch mean, as nn.CrossEntropyLoss in TET's code
    two = torch.cat([logits_seq, logits_seq.flip(-1)], dim=1)  # image 2 is image 1 mirrored: class 1
    assert tet_loss(two, torch.tensor([0, 1]), 0.0, 1.0).item() == pytest.approx(l_tet, rel=1e-6)


def test_the_tet_objective_trains_every_steps_logits_and_composes_with_im_loss() -> None:
    recipe = load_recipe(None, {"loss.objective": "tet", "model.timesteps": 3, "loss.tet_lambda": 0.1})
    torch.manual_seed(0)
    model = build_model(recipe, 10, 1, 8)
    model.readout.store_steps = True
    layers = [m for _, m in spiking_layers(model)]
    for m in layers:
        m.store_v_seq = True
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out = loss_step(model, x, y, layers, recipe, model.readout)
    steps = model.readout.step_logits
    assert steps is not None and steps.shape == (3, 4, 10)
    torch.testing.assert_close(out.logits, steps.mean(0))  # the prediction: the mean over T
    torch.testing.assert_close(out.ce, tet_loss(steps, y, 0.1, 1.0))
    torch.testing.assert_close(out.total, out.ce + 2.0 * out.im)  # + lambda_IM * IM-Loss, as with CE


def _trained_mpbn(channels: int, gamma: list[float], beta: list[float]) -> tuple[MembraneBNLIF, torch.Tensor]:
    """An MPBN layer with running statistics of a few training batches and the given affine, and an input."""
    torch.manual_seed(1)
    lif = MembraneBNLIF(channels, lif_params())
    x = torch.randn(3, 16, channels, 5, 5) * 0.8 + 0.3  # [T, B, C, H, W]
    lif.train()
    for _ in range(5):
        lif(x + 0.1 * torch.randn_like(x))
    with torch.no_grad():
        lif.bn.weight.copy_(torch.tensor(gamma))
        lif.bn.bias.copy_(torch.tensor(beta))
    return lif, x


def _unfolded_eval(lif: MembraneBNLIF, x_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(spike_seq, normalised potential) of MPBN in eval mode as its definition reads, by hand: the BN
    with its running statistics on the raw potential, then the threshold."""
    bn = lif.bn.eval()
    h, spikes, normalised = None, [], []
    with torch.no_grad():
        for x in x_seq:
            h = x if h is None else DECAY * (h * (1.0 - spikes[-1])) + x
            m = bn(h)
            spikes.append((m >= V_TH).float())
            normalised.append(m)
    return torch.stack(spikes), torch.stack(normalised)


def test_mpbn_evaluates_on_its_folded_thresholds_without_running_its_batchnorm() -> None:
    """Eval mode fires on the raw potential against the fold, for every sign of gamma: channel 3
    (gamma < 0) fires below its V', channel 4 (gamma = 0, beta >= V_th) at every step, channel 5
    (gamma = 0, beta < V_th) never; the spikes are the BN's, and the BN is not called."""
    lif, x = _trained_mpbn(6, [0.5, 1.0, 2.0, -1.5, 0.0, 0.0], [0.1, -0.2, 0.3, 0.0, 0.7, 0.2])
    spikes_ref, normalised_ref = _unfolded_eval(lif, x)
    calls: list[int] = []
    lif.bn.register_forward_hook(lambda *_: calls.append(1))
    lif.eval()
    lif.store_v_seq = True
    with torch.no_grad():
        folded = lif(x)
    assert calls == []
    assert torch.equal(folded, spikes_ref) and 0 < folded.sum() < folded.numel()
    assert 0 < folded[:, :, 3].sum() < folded[:, :, 3].numel()
    assert folded[:, :, 4].all() and not folded[:, :, 5].any()
    torch.testing.assert_close(lif.v_seq, normalised_ref)  # what layer statistics read: BN(h), by its affine
    lif.train()
    lif(x)
    assert len(calls) == 3  # training normalises every step with its batch statistics


def test_mpbn_folded_thresholds_by_the_formula_and_a_gamma_at_or_below_zero_refused() -> None:
    lif, _ = _trained_mpbn(4, [0.5, 1.0, 2.0, 1.5], [0.1, -0.2, 0.3, 0.0])
    bn = lif.bn
    expected = (0.5 - bn.bias) * torch.sqrt(bn.running_var + bn.eps) / bn.weight + bn.running_mean  # by the formula
    torch.testing.assert_close(lif.folded_thresholds(), expected.detach().double())
    with torch.no_grad():
        bn.weight[2] = -1.0
        bn.weight[3] = 0.0
    with pytest.raises(ValueError, match=r"MPBN channels \[2, 3\] have gamma <= 0"):
        lif.folded_thresholds()


def test_mpbn_in_bf16_carries_its_potential_and_norm_in_fp32_and_fires_as_its_fp32_run() -> None:
    """The precision rule for MPBN's loop: a bf16 input gives the spikes of the same values in fp32, in
    training (each step's batch statistics) and in eval (the fold); a raw potential rounded to bf16 at
    every step (the former loop) fires otherwise on this input."""
    torch.manual_seed(2)
    lif = MembraneBNLIF(128, lif_params())
    lif.store_v_seq = True
    x = bf16_layer_input()
    for training in (True, False):
        lif.train(training)
        s32 = lif(x.float())
        v32 = lif.v_seq
        s16 = lif(x)
        assert s16.dtype == lif.v_seq.dtype == torch.bfloat16
        assert torch.equal(s16.float(), s32) and 0 < s32.sum() < s32.numel()
        assert torch.equal(lif.v_seq, v32.to(torch.bfloat16))
    bn, h, spikes = lif.bn, None, []
    for xt in x:  # the raw potential kept in bf16, the BN on each step's batch as in training
        h = xt if h is None else (DECAY * (h * (1.0 - spikes[-1])) + xt).to(torch.bfloat16)
        m = torch.nn.functional.batch_norm(h.float(), None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        spikes.append((m >= V_TH).to(torch.bfloat16))
    lif.train()
    assert int((torch.stack(spikes) != lif(x)).sum()) > 0


def _raw_potential(x_seq: torch.Tensor, spike_seq: torch.Tensor) -> torch.Tensor:
    """MPBN's raw potential h from its input and its spikes (hard reset, decay 0.25), in the graph."""
    hs = [x_seq[0]]
    for t in range(1, x_seq.shape[0]):
        hs.append(DECAY * (hs[-1] * (1.0 - spike_seq[t - 1])) + x_seq[t])
    return torch.stack(hs)


def test_im_loss_with_mpbn_reads_the_normalised_potential_and_trains_only_the_bn_biases() -> None:
    """IM-Loss with MPBN measures the potential that meets V_th, m = BN(h), whose mean in training is
    mean_c beta_c by construction: L_IM = mean over layers of (mean beta - V_th)^2, its gradient
    2 (mean beta - V_th) / (L C) on every beta_c and zero on every weight. The other choice, the raw
    potential h before the BN, would send a gradient to the convolutions, towards a mean that no
    spike depends on: MPBN's spikes are the same when its input is scaled by 4 (next test)."""
    recipe = load_recipe(None, {"model.membrane_bn": True})
    torch.manual_seed(0)
    model = build_model(recipe, 10, 1, 8).double().train()
    layers = [m for _, m in spiking_layers(model)]
    inputs: dict[torch.nn.Module, torch.Tensor] = {}
    for m in layers:
        m.store_v_seq = True
        m.register_forward_hook(lambda mod, args, _: inputs.__setitem__(mod, args[0]))
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)

    model(x)
    im = im_loss([m.v_mean for m in layers], V_TH)
    assert im.item() == pytest.approx(0.25, rel=1e-12)  # every beta starts at 0: (0 - 0.5)^2
    im.backward()
    for name, p in model.named_parameters():
        if any(p is m.bn.bias for m in layers):
            channels = p.numel()
            assert_close(p.grad, torch.full_like(p, 2 * (0.0 - V_TH) / (3 * channels)), rtol=1e-9, atol=0)
        else:
            assert p.grad is None or p.grad.abs().max() < 1e-12, name  # weights, gammas, the norms before

    model.zero_grad()
    model(x)
    raw = im_loss([_raw_potential(inputs[m], m.spike_seq).mean() for m in layers], V_TH)
    raw.backward()
    assert model.encoder.layers[0].weight.grad.abs().max() > 1e-3  # the other choice reaches a conv weight


def test_mpbn_spikes_do_not_depend_on_the_scale_of_the_raw_potential() -> None:
    """Training mode (each step's batch statistics, eps negligible): an input scaled by 4 scales h by 4 exactly,
    and BN(4 h) = BN(h), so the spikes and the normalised mean are unchanged while the raw mean is 4x."""
    torch.manual_seed(3)
    lif = MembraneBNLIF(4, lif_params()).double().train()
    lif.bn.eps = 1e-300  # below any rounding of var (training refuses 0)
    lif.store_v_seq = True
    x = torch.randn(3, 16, 4, 5, 5, dtype=torch.float64) * 0.8 + 0.3
    s1 = lif(x)
    m1 = lif.v_mean
    s4 = lif(4.0 * x)
    assert torch.equal(s1, s4) and 0 < s1.sum() < s1.numel()
    assert lif.v_mean.item() == pytest.approx(m1.item(), abs=1e-12)
    assert _raw_potential(4.0 * x, s4).mean().item() == pytest.approx(4.0 * _raw_potential(x, s1).mean().item())


def test_mpbn_and_plif_in_a_network_are_recipe_fields() -> None:
    both = load_recipe(None, {"model.membrane_bn": True, "model.neuron": "plif"})
    model = build_model(both, 10, 1, 8)
    lifs = [m for _, m in spiking_layers(model)]
    assert len(lifs) == 3 and all(isinstance(m, MembraneBNLIF) and m.w is not None for m in lifs)
    assert all(m.params.decay_input and float(m.w.detach()) == 0.0 for m in lifs)  # tau0 = 2: w = -log(2 - 1)
    assert [type(m.bn).__name__ for m in lifs] == ["BatchNorm2d", "BatchNorm2d", "BatchNorm1d"]
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    assert all(m.w.grad is not None and m.bn.weight.grad is not None for m in lifs)
    plif = build_model(load_recipe(None, {"model.neuron": "plif", "neuron.plif_tau": 4.0}), 10, 1, 8)
    assert all(type(m) is LIF and m.params.decay_input for _, m in spiking_layers(plif))
    assert all(float(m.w.detach()) == pytest.approx(-math.log(3.0)) for _, m in spiking_layers(plif))
    leak = build_model(load_recipe(None, {"model.neuron": "lif-learned-leak"}), 10, 1, 8)
    assert all(not m.params.decay_input for _, m in spiking_layers(leak))
    assert all(float(m.w.detach()) == pytest.approx(math.log(0.25 / 0.75)) for _, m in spiking_layers(leak))


@pytest.mark.parametrize(("plif_weight_decay", "no_decay_norm_bias", "w_decays"), [
    (False, False, False), (True, False, True), (True, True, False),
])  # fmt: skip
def test_the_learnable_w_trains_without_weight_decay_unless_asked(
    plif_weight_decay: bool, no_decay_norm_bias: bool, w_decays: bool
) -> None:
    """One SGD step with a zero gradient moves only what is weight-decayed: w by -lr * wd * w when it is."""
    recipe = load_recipe(None, {"model.neuron": "plif", "neuron.plif_tau": 3.0, "optim.momentum": 0.0,
                                "optim.plif_weight_decay": plif_weight_decay,
                                "optim.no_decay_norm_bias": no_decay_norm_bias})  # fmt: skip
    model = build_model(recipe, 10, 1, 8)
    optimizer, _ = build_optimizer(model, recipe.optim, 1)
    w, conv = model.encoder.lif.w, model.encoder.layers[0].weight
    w_before, conv_before = float(w.detach()), conv.detach().clone()
    assert w_before == pytest.approx(-math.log(2.0))  # tau0 = 3
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    lr, wd = recipe.optim.lr, recipe.optim.weight_decay
    assert float(w.detach()) == pytest.approx(w_before * (1 - lr * wd) if w_decays else w_before, rel=1e-6)
    assert_close(conv.detach(), conv_before * (1 - lr * wd))  # a weight matrix decays either way


def test_a_run_recorded_as_plif_before_fang_et_al_reads_back_as_the_learnable_leak(registry_url: str) -> None:
    """A recorded recipe without neuron.plif_tau predates Fang et al.'s PLIF: its "plif" was the learnable
    leak (its w weight-decayed), and whatever reads the run (show, resume, reproduce, export, reports)
    reads it so; a run recorded now keeps "plif"."""
    old = load_recipe(None, {"model.neuron": "plif"}).model_dump(mode="json")
    del old["neuron"]["plif_tau"], old["optim"]["plif_weight_decay"]
    new = load_recipe(None, {"model.neuron": "plif"}).model_dump(mode="json")
    with Registry(registry_url) as reg:
        ids = [start_run(reg, name=n, recipe=r, config_hash=n, fingerprint=n, seed=0, code_version="v")
               for n, r in (("old", old), ("new", new))]  # fmt: skip
        before, now = (validate_recorded(reg.get_run(i).recipe) for i in ids)
    assert (before.model.neuron, before.optim.plif_weight_decay) == ("lif-learned-leak", True)
    assert now == validate_recipe(new) and now.model.neuron == "plif"
    model = build_model(before, 10, 1, 8)
    assert all(not m.params.decay_input and m.decay_value() == pytest.approx(0.25) for _, m in spiking_layers(model))
    shown = CliRunner().invoke(app, ["show", ids[0], "--registry", registry_url])
    assert shown.exit_code == 0 and 'neuron = "lif-learned-leak"' in shown.stdout


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.membrane_bn=true", "model.neuron='relu'"], "model.membrane_bn: MPBN normalises the potential"),
        (["model.membrane_bn=true", "neuron.reset='soft'"], "model.membrane_bn: MPBN resets the raw potential to 0"),
    ],
)
def test_combinations_that_do_not_compose_are_refused_at_validation(sets: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["validate", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow
def test_an_ablation_of_objective_by_neuron_records_four_configurations_and_the_report_names_both_axes(
    tiny_recipe: Path, registry_url: str
) -> None:
    grid = ["--grid", "loss.objective=ce,tet", "--grid", "model.neuron=lif,plif"]
    result = CliRunner().invoke(app, ["ablate", str(tiny_recipe), *grid, "--registry", registry_url])
    assert result.exit_code == 0, result.output
    runs = Registry(registry_url).list_runs()
    assert len(runs) == 4 and {r.status for r in runs} == {"FINISHED"}
    assert len({r.config_hash for r in runs}) == 4
    report = CliRunner().invoke(app, ["report", "--format", "csv", "--registry", registry_url])
    table = pd.read_csv(io.StringIO(report.stdout))
    assert list(table.columns[:2]) == ["loss.objective", "model.neuron"]
    assert table[["loss.objective", "model.neuron"]].values.tolist() == [
        ["ce", "lif"],
        ["ce", "plif"],
        ["tet", "lif"],
        ["tet", "plif"],
    ]
    assert (table["test_acc_mean_pct"] > 50).all()  # every method learns digits in two epochs
