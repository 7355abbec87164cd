"""The constants of a LIF layer's time loops: one frozen value that every kernel set takes.

The eager loops, their torch.compile'd form, the Triton kernels, the per-step reference loop and
MPBN's loop all read a :class:`LIFParams`, so the neuron's definition travels as one argument
(torch.compile guards on its field values: one compiled kernel per distinct setting).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from imloss_cli.snn.surrogate import SURROGATES


@dataclass(frozen=True)
class LIFParams:
    """One LIF layer's dynamics (``snn.neuron``'s module docstring has the equations).

    Attributes:
        decay: the leak per step: a float, or (a learned leak) a 0-dim tensor on the device,
            detached: the kernels read it there, autograd sees its source apart.
        v_threshold: the firing threshold V_th.
        soft_reset: subtract V_th on a spike (else reset to 0).
        detach_reset: no gradient through the reset.
        strict: a spike when h > V_th (the authors' code), else h >= V_th.
        surrogate: the backward's shape, "tanh" (ESG) or "guo".
        decay_input: the input is scaled by 1 - decay too (Fang et al.'s PLIF, SpikingJelly's
            ``decay_input=True``): h = decay * r + (1 - decay) * x; else h = decay * r + x.
    """

    decay: float | Tensor
    v_threshold: float
    soft_reset: bool = False
    detach_reset: bool = False
    strict: bool = False
    surrogate: str = "tanh"
    decay_input: bool = False

    def __post_init__(self) -> None:
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {', '.join(SURROGATES)}, got {self.surrogate!r}")

    @property
    def reset(self) -> str:
        """ "soft" or "hard", as recipes and SpikingJelly name it."""
        return "soft" if self.soft_reset else "hard"
