"""The objective of Algorithm 1: L_total = L_CE + lambda * L_IM, and K(i) of the ESG per epoch.

Which layers the IM term reads (:func:`im_layers`, :func:`input_layers`), the loss of one
forward pass (:func:`loss_step`), and the surrogate sharpness of an epoch (:func:`surrogate_k`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from imloss_cli.recipe import Recipe
from imloss_cli.snn.im_loss import im_loss, input_im_loss, rate_im_loss
from imloss_cli.snn.models import BasicBlock, Readout
from imloss_cli.snn.neuron import LIF, spiking_layers
from imloss_cli.snn.surrogate import esg_k
from imloss_cli.snn.tet import tet_loss
from imloss_cli.train.errors import TrainingError


@dataclass(frozen=True)
class StepLoss:
    total: Tensor
    ce: Tensor
    im: Tensor
    logits: Tensor


def surrogate_k(recipe: Recipe, epoch: int) -> float:
    """K for epoch ``epoch`` (1-based, as i = 1..I in Algorithm 1), so the last epoch has K_max."""
    s = recipe.surrogate
    if s.schedule in ("fixed", "guo"):
        return s.k_fixed
    return esg_k(epoch, recipe.train.epochs, s.k_min, s.k_max)


def im_layers(model: torch.nn.Module, choice: str) -> list[LIF]:
    """The hidden spiking layers IM-Loss averages over ("all", or "blocks": stem and block outputs)."""
    layers = [m for _, m in spiking_layers(model)]
    return layers if choice == "all" else [m for m in layers if m.block_output]


def input_layers(model: torch.nn.Module) -> list[LIF]:
    """The LIFs whose input current the authors'-code IM-Loss penalises: the stem's, then every
    residual block's output LIF (its input is bn2(conv2(.)) + shortcut), in network order.

    Raises:
        TrainingError: the network has no residual block.
    """
    blocks = [m.lif2 for m in model.modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise TrainingError(
            "loss.im_target = 'input' is the authors' residual-block loss: it needs a resnet architecture"
        )
    return [model.encoder.lif, *blocks]


def loss_step(
    model: torch.nn.Module, x: Tensor, y: Tensor, layers: list[LIF], recipe: Recipe, readout: Readout | None = None
) -> StepLoss:
    """Forward pass and L_total = L_class + lambda * L_IM (Algorithm 1, lines 3-9).

    L_class is the cross-entropy of the logits averaged over T (``loss.objective = "ce"``, the
    paper) or TET's loss of every step's logits (``"tet"``: ``snn.tet``; ``readout`` must have
    ``store_steps`` set). ``layers`` must have ``store_v_seq`` set, so the forward pass leaves their
    potentials behind. Without layers (the ANN twin) there is no IM term: L_total = L_class.
    """
    logits = model(x)
    if recipe.loss.objective == "tet":
        if readout is None or readout.step_logits is None:
            raise ValueError("loss.objective = 'tet' needs the readout's per-step logits (readout.store_steps)")
        ce = tet_loss(readout.step_logits, y, recipe.loss.tet_lambda, recipe.loss.tet_phi)
    else:
        ce = F.cross_entropy(logits, y)
    if not layers:
        return StepLoss(ce, ce, torch.zeros_like(ce.detach()), logits)
    if recipe.loss.im_target == "membrane":
        im = im_loss([m.v_mean for m in layers], recipe.neuron.v_threshold)
    elif recipe.loss.im_target == "input":
        im = input_im_loss([m.x_mean for m in layers], recipe.model.timesteps)
    else:
        im = rate_im_loss([m.spike_seq.float().mean() for m in layers], recipe.model.timesteps)
    if recipe.loss.im_weight == 0:
        im = im.detach()  # logged for comparison, but the baseline trains on CE alone
    return StepLoss(ce + recipe.loss.im_weight * im, ce, im, logits)
