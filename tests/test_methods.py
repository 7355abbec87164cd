"""The peer methods beside IM-Loss: TET's loss, MPBN's membrane BatchNorm and its folded threshold, PLIF
in a network, and the combinations a recipe refuses. (PLIF's kernels: test_neuron.py, test_triton_lif.py.)"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.recipe import load_recipe
from imloss_cli.registry import Registry
from imloss_cli.snn.models import build_model
from imloss_cli.snn.mpbn import MembraneBNLIF
from imloss_cli.snn.neuron import LIF, spiking_layers
from imloss_cli.snn.tet import tet_loss
from imloss_cli.train.objective import loss_step
from tests.lif_cases import lif_params


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


def test_mpbn_folded_thresholds_give_the_unfolded_forward_in_eval_mode() -> None:
    torch.manual_seed(1)
    lif = MembraneBNLIF(4, lif_params())
    x = torch.randn(3, 16, 4, 5, 5) * 0.8 + 0.3  # [T, B, C, H, W]
    lif.train()
    for _ in range(5):  # running statistics and a trained affine to fold
        lif(x + 0.1 * torch.randn_like(x))
    with torch.no_grad():
        lif.bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0, 1.5]))
        lif.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    lif.eval()
    unfolded = lif(x)
    lif.use_folded = True
    folded = lif(x)
    assert torch.equal(folded, unfolded) and 0 < unfolded.sum() < unfolded.numel()
    bn = lif.bn
    expected = (0.5 - bn.bias) * torch.sqrt(bn.running_var + bn.eps) / bn.weight + bn.running_mean  # by the formula
    torch.testing.assert_close(lif.folded_thresholds(), expected.detach())
    with torch.no_grad():
        bn.weight[2] = -1.0
    with pytest.raises(ValueError, match=r"MPBN channels \[2\] have gamma <= 0"):
        lif.folded_thresholds()


def test_mpbn_and_plif_in_a_network_are_recipe_fields() -> None:
    both = load_recipe(None, {"model.membrane_bn": True, "model.neuron": "plif"})
    model = build_model(both, 10, 1, 8)
    lifs = [m for _, m in spiking_layers(model)]
    assert len(lifs) == 3 and all(isinstance(m, MembraneBNLIF) and m.w is not None for m in lifs)
    assert [type(m.bn).__name__ for m in lifs] == ["BatchNorm2d", "BatchNorm2d", "BatchNorm1d"]
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    assert all(m.w.grad is not None and m.bn.weight.grad is not None for m in lifs)
    plif = build_model(load_recipe(None, {"model.neuron": "plif"}), 10, 1, 8)
    assert all(type(m) is LIF and m.w is not None for _, m in spiking_layers(plif))


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
