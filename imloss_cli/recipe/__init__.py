"""Recipes: the pydantic models that describe a run completely, and how they are read and identified.

Every default of the project lives in the section fields (:mod:`.sections`) and nowhere else. A
recipe is read from TOML, patched with ``--set section.key=value`` overrides, validated as a whole
(every problem reported at once, each with its field path: :mod:`.errors`), and reduced to a
canonical JSON form whose hash groups seeds (:mod:`.files`).

This package imports nothing else from imloss_cli, so every layer may read it.
"""

from .errors import RecipeError
from .files import (
    canonical_json,
    config_hash,
    load_recipe,
    parse_overrides,
    parse_value,
    read_recorded,
    run_fingerprint,
    sets_nothing,
    to_toml,
    validate_recorded,
)
from .sections import (
    ARCHITECTURES,
    DATASETS,
    MEMORY_MODES,
    NEURONS,
    NON_SEMANTIC_FIELDS,
    PAPER_TABLES,
    DataConfig,
    EnergyConfig,
    LossConfig,
    ModelConfig,
    NeuronConfig,
    OptimConfig,
    PaperConfig,
    Recipe,
    SurrogateConfig,
    TrainConfig,
    field_paths,
    load_energy,
    validate_recipe,
)

__all__ = [
    "ARCHITECTURES",
    "DATASETS",
    "MEMORY_MODES",
    "NEURONS",
    "NON_SEMANTIC_FIELDS",
    "PAPER_TABLES",
    "DataConfig",
    "EnergyConfig",
    "LossConfig",
    "ModelConfig",
    "NeuronConfig",
    "OptimConfig",
    "PaperConfig",
    "Recipe",
    "RecipeError",
    "SurrogateConfig",
    "TrainConfig",
    "canonical_json",
    "config_hash",
    "field_paths",
    "load_energy",
    "load_recipe",
    "parse_overrides",
    "parse_value",
    "read_recorded",
    "run_fingerprint",
    "sets_nothing",
    "to_toml",
    "validate_recipe",
    "validate_recorded",
]
