"""imloss: train spiking networks with IM-Loss and ESG, run ablations, report them."""

__version__ = "0.1.0"

from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
"""The checkout imloss runs from: where recipes/ (and the paper's rows) live."""
