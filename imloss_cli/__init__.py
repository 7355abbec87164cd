"""imloss: train spiking networks with IM-Loss and ESG, run ablations, report them."""

__version__ = "0.1.0"
