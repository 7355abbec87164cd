"""The one check every LIF kernel set passes: spikes, potentials and gradients equal the naive loop.

Shared by the eager/compiled kernels (test_neuron.py) and the Triton kernels (test_triton_lif.py).
"""

from __future__ import annotations

import torch
from torch.testing import assert_close

from imloss_cli.snn.neuron import LIFKernels, MultiStepLIFFunction
from imloss_cli.snn.reference import lif_naive

DECAY, V_TH = 0.25, 0.5
CASES = [(T, reset, detach) for T in (1, 2, 4) for reset in ("hard", "soft") for detach in (False, True)]
# Which outputs the loss reads: (spike_seq, v_seq, v_mean). Each reaches the backward loop by its
# own path (dL/dv_mean is added inside the loop, not expanded by autograd).
READ_OUTPUTS = {
    "spikes and potentials": (True, True, False),
    "spikes only": (True, False, False),
    "potentials only": (False, True, False),
    "all three": (True, True, True),
    "v_mean only": (False, False, True),
}


def lif_input(T: int, seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inputs around the threshold, so that spikes and resets happen at every step."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, *shape, generator=g) * 1.2).to(dtype).requires_grad_(True)


def assert_kernels_equal_the_naive_loop(
    kernels: LIFKernels, reads: str, T: int, reset: str, detach_reset: bool
) -> None:
    """Spikes and potentials bitwise, v_mean and dL/dx_seq within tolerance, for the outputs ``reads``."""
    wanted = list(READ_OUTPUTS[reads])
    k = 2.5
    x_ref = lif_input(T, seed=T, shape=(2, 3, 5))
    x = x_ref.detach().clone().requires_grad_(True)
    g = torch.Generator().manual_seed(100 + T)
    upstream = [torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g), torch.tensor(-2.5)]

    s_ref, v_ref = lif_naive(x_ref, k, DECAY, V_TH, reset, detach_reset)
    s, v, v_mean = MultiStepLIFFunction.apply(
        x, torch.tensor(k, dtype=x.dtype), DECAY, V_TH, reset == "soft", detach_reset, kernels
    )
    assert torch.equal(s, s_ref)
    assert torch.equal(v, v_ref)  # the reference's operations in its order: bitwise equal
    assert v_mean.shape == ()
    assert_close(v_mean, v_ref.mean())
    if T > 1:  # the input must actually exercise both spiking and non-spiking steps
        assert 0 < s.sum() < s.numel()

    def backward(outputs: list[torch.Tensor]) -> None:
        torch.autograd.backward([o for o, w in zip(outputs, wanted) if w], [u for u, w in zip(upstream, wanted) if w])

    backward([s_ref, v_ref, v_ref.mean()])
    backward([s, v, v_mean])
    assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6 if reads == "v_mean only" else 1e-5)
