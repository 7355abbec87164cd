"""Time one SNN training step: imloss's fused LIF against SpikingJelly, the naive loop and a ReLU floor.

A thin entry point for machines where the package is not installed (only torch is needed);
everything lives in :mod:`imloss_cli.bench`.

Example:
    python benchmarks/train_step.py --arch resnet19 --timesteps 2,4 --batch 8 --compare spikingjelly,naive,relu,relu-tb
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when imloss is not installed

from imloss_cli.cli.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
