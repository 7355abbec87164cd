"""The energy estimate of one inference, from its operation counts (plain Python: reports use it too).

    E = MACs * E_MAC + SOPs * E_AC

A multiply-accumulate (a weight layer on real values: the stem on pixels, a pooled readout, every
layer of an ANN) costs E_MAC; a synaptic operation (a spike meeting a weight: only an add) costs
E_AC. The defaults are Horowitz's 45 nm figures for 32-bit floats (ISSCC 2014): E_AC = 0.9 pJ (an
add), E_MAC = 4.6 pJ (a multiply, 3.7 pJ, plus an add), the constants SNN papers compare with.
Memory traffic, normalisation and the neuron updates are not in the estimate.
"""

from __future__ import annotations

from imloss_cli.recipe import EnergyConfig


def energy_uj(macs: float, sops: float, energy: EnergyConfig) -> float:
    """E = MACs * E_MAC + SOPs * E_AC, in microjoules (the constants are in picojoules).

    Args:
        macs: multiply-accumulates per image.
        sops: synaptic operations per image.
        energy: the constants E_MAC (``e_mac_pj``) and E_AC (``e_ac_pj``).
    """
    return (macs * energy.e_mac_pj + sops * energy.e_ac_pj) * 1e-6
