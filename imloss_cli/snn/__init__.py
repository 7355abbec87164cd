"""The method, importable with torch alone: LIF neuron, ESG surrogate, IM-Loss, layer statistics, models."""
