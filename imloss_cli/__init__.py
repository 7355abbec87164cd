"""imloss: train spiking networks with IM-Loss and ESG, run ablations, report them."""

__version__ = "0.1.0"

from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
"""The checkout imloss runs from: where recipes/ (and the paper's rows) live."""

REGISTRY_ENV = "IMLOSS_REGISTRY"
"""The environment variable that names the registry: ``--registry`` reads it, and processes started
by imloss (``--jobs`` workers, torchrun ranks) get their registry URL through it, never on their
command line, where its password would show to every user of the machine."""
