"""Recipes: defaults, shipped files, every kind of invalid input, overrides, identity hashes, TOML round trip."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from imloss_cli.recipe import (
    NON_SEMANTIC_FIELDS,
    EnergyConfig,
    Recipe,
    RecipeError,
    canonical_json,
    config_hash,
    load_energy,
    load_recipe,
    parse_overrides,
    run_fingerprint,
    to_toml,
    validate_recipe,
)

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


def _write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    return info.value.problems


# --- valid recipes -----------------------------------------------------------------------------


def test_default_recipe_loads_with_the_paper_defaults() -> None:
    r = load_recipe(None)
    assert isinstance(r, Recipe)
    assert (r.model.arch, r.model.timesteps, r.data.dataset) == ("convnet3", 4, "digits")
    assert (r.neuron.decay, r.neuron.v_threshold, r.neuron.reset, r.neuron.detach_reset) == (0.25, 0.5, "hard", False)
    assert (r.surrogate.schedule, r.surrogate.k_min, r.surrogate.k_max) == ("esg", 1.0, 10.0)
    assert (r.loss.im_weight, r.loss.im_target, r.loss.im_layers) == (2.0, "membrane", "all")
    assert (r.optim.name, r.optim.lr, r.optim.momentum, r.optim.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert r.train.seed is None


def test_shipped_digits_recipe_is_the_embedded_default() -> None:
    path = next(p for p in RECIPES if p.name == "digits.toml")
    assert load_recipe(path) == load_recipe(None)


def test_there_are_shipped_recipes() -> None:
    assert {p.name for p in RECIPES} >= {"digits.toml", "cifar10.toml", "cifar100.toml"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_validates(path: Path) -> None:
    r = load_recipe(path)
    assert r.name
    # every key the file sets arrives in the recipe unchanged (no silent renames or defaults)
    raw = tomllib.loads(path.read_text())
    dumped = r.model_dump()
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                got = dumped[section][key]
                assert (list(got) if isinstance(got, tuple) else got) == value, f"{section}.{key}"
        else:
            assert dumped[section] == values


# --- invalid recipes ---------------------------------------------------------------------------


def test_toml_syntax_error_is_reported(tmp_path: Path) -> None:
    problems = _problems(tmp_path, '[model\narch = "vgg16"\n')
    assert len(problems) == 1
    assert problems[0].startswith("TOML syntax error")
    assert "line 1" in problems[0]


def test_unknown_key_gets_did_you_mean_hint(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, "[loss]\nim_wieght = 1.0\n")
    assert problem.startswith("loss.im_wieght: unknown key")
    assert "did you mean 'im_weight'" in problem


def test_unknown_section_gets_did_you_mean_hint(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, '[modle]\narch = "vgg16"\n')
    assert problem.startswith("modle: unknown key")
    assert "did you mean 'model'" in problem


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, "[optim]\nzzzzzz = 1\n")
    assert problem.startswith("optim.zzzzzz: unknown key")
    assert "known keys:" in problem and "momentum" in problem


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ('[optim]\nlr = "abc"\n', "optim.lr", "valid number"),
        ("[model]\ntimesteps = 0\n", "model.timesteps", "greater than or equal to 1"),
        ("[model]\ntimesteps = 1000000\n", "model.timesteps", "less than or equal to 1000"),
        ("[model]\ntimesteps = 2.5\n", "model.timesteps", "fractional part|valid integer"),
        ("[surrogate]\nk_min = 5.0\nk_max = 2.0\n", "surrogate.k_min", "must not exceed k_max"),
        ('[model]\narch = "resnet99"\n', "model.arch", "'resnet99' is not one of"),
        ('[data]\ndataset = "mnist"\n', "data.dataset", "'mnist' is not one of"),
        ("[train]\nepochs = nan\n", "train.epochs", r"(finite|valid integer).*\(got nan\)"),
        ("[optim]\nlr = nan\n", "optim.lr", r"finite.*\(got nan\)"),
        ("[optim]\nlr = inf\n", "optim.lr", r"finite.*\(got inf\)"),
        ("[loss]\nim_weight = -1.0\n", "loss.im_weight", "greater than or equal to 0"),
        ("[neuron]\nplif_tau = 1.0\n", "neuron.plif_tau", "greater than 1"),  # tau0 = 1: no memory, w = inf
        ("[data]\nstd = [0.2, 0.0, 0.2]\n", "data.std", "every std must be > 0"),
        ("[data]\nmean = [0.1, 0.2, 0.3, 0.4]\n", "data.mean", "at most 3 items"),
        ('name = ""\n', "name", "at least 1"),
        ("model = 3\n", "model", "valid dictionary"),
    ],
)
def test_invalid_field_names_path_and_reason(tmp_path: Path, text: str, field: str, reason: str) -> None:
    problems = _problems(tmp_path, text)
    assert len(problems) == 1, problems
    path, _, why = problems[0].partition(": ")
    assert path == field
    assert re.search(reason, why), why


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[optim]\nlr = true\n", "optim.lr"),  # silently lr = 1.0 in lax mode
        ("[train]\nepochs = true\n", "train.epochs"),  # silently 1 epoch
        ('[neuron]\ndetach_reset = "no"\n', "neuron.detach_reset"),  # silently False
        ('[model]\ntimesteps = "4"\n', "model.timesteps"),  # a string where TOML has integers
    ],
)
def test_wrong_toml_type_is_rejected_not_coerced(tmp_path: Path, text: str, field: str) -> None:
    """TOML values are typed: a boolean or a string where a number/boolean belongs is a wrong type."""
    problems = _problems(tmp_path, text)
    assert [p.partition(":")[0] for p in problems] == [field]


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        '[model]\ntimesteps = 0\narch = "resnet99"\n[loss]\nim_weight = -1.0\n[optim]\nlr = "abc"\n',
    )
    paths = sorted(p.partition(":")[0] for p in problems)
    assert paths == ["loss.im_weight", "model.arch", "model.timesteps", "optim.lr"]


def test_two_bad_fields_give_two_problems(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "[loss]\nim_weight = -1.0\n[model]\ntimesteps = 0\n")
    assert len(problems) == 2
    assert {p.partition(":")[0] for p in problems} == {"loss.im_weight", "model.timesteps"}


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(RecipeError) as info:
        load_recipe(missing)
    assert info.value.problems == [f"recipe file not found: {missing}"]
    assert str(missing) in str(info.value)


def test_recipe_is_frozen() -> None:
    r = load_recipe(None)
    with pytest.raises(Exception):
        r.model.timesteps = 8  # type: ignore[misc]


# --- overrides ---------------------------------------------------------------------------------


def test_parse_overrides_reads_toml_values() -> None:
    out = parse_overrides(
        [
            "loss.im_weight=0",
            "data.root=/tmp/x",
            "data.mean=[0.1,0.2,0.3]",
            "optim.lr=0.05",
            "data.download=true",
            'name="a b"',
        ]
    )
    assert out == {
        "loss.im_weight": 0,
        "data.root": "/tmp/x",
        "data.mean": [0.1, 0.2, 0.3],
        "optim.lr": 0.05,
        "data.download": True,
        "name": "a b",
    }
    assert type(out["loss.im_weight"]) is int
    assert type(out["data.root"]) is str


def test_parse_overrides_strips_whitespace_and_keeps_later_equals_signs() -> None:
    assert parse_overrides([" train.epochs = 3 ", "notes=a=b"]) == {"train.epochs": 3, "notes": "a=b"}


@pytest.mark.parametrize("item", ["loss.im_weight", "=3", " =3"])
def test_parse_overrides_rejects_items_without_key_and_equals(item: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_overrides(["train.epochs=3", item])
    assert len(info.value.problems) == 1
    assert "expected KEY=VALUE" in info.value.problems[0]
    assert repr(item) in info.value.problems[0]


def test_load_recipe_applies_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, '[model]\narch = "vgg16"\ntimesteps = 5\n[loss]\nim_weight = 2.0\n')
    r = load_recipe(path, parse_overrides(["loss.im_weight=0", "model.timesteps=2", "data.root=/tmp/x"]))
    assert (r.model.arch, r.model.timesteps, r.loss.im_weight, r.data.root) == ("vgg16", 2, 0.0, "/tmp/x")


def test_invalid_override_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(None, parse_overrides(["model.timesteps=0", "loss.im_wieght=1"]))
    problems = info.value.problems
    assert len(problems) == 2
    assert any(p.startswith("model.timesteps:") for p in problems)
    assert any(p.startswith("loss.im_wieght:") and "im_weight" in p for p in problems)


def test_override_below_a_value_is_a_problem(tmp_path: Path) -> None:
    path = _write(tmp_path, "[model]\ntimesteps = 4\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, {"model.timesteps.x": 1})
    assert info.value.problems == ["model.timesteps.x: model.timesteps is a value, not a section"]


def test_with_overrides_returns_validated_copy() -> None:
    r = load_recipe(None)
    r2 = r.with_overrides({"loss.im_weight": 1, "surrogate.schedule": "fixed"})
    assert (r2.loss.im_weight, r2.surrogate.schedule) == (1.0, "fixed")
    assert r.loss.im_weight == 2.0
    with pytest.raises(RecipeError):
        r.with_overrides({"surrogate.k_min": 50.0})  # above k_max = 10


def test_the_ann_twin_runs_at_one_time_step_without_im_loss(tmp_path: Path) -> None:
    path = _write(tmp_path, '[model]\nneuron = "relu"\ntimesteps = 6\n[loss]\nim_weight = 2.0\n')
    twin = load_recipe(path)
    assert (twin.model.neuron, twin.model.timesteps, twin.loss.im_weight) == ("relu", 1, 0.0)
    # an ablation axis over any spiking recipe: the twins of recipes that differ in T or lambda are one
    spiking = [load_recipe(None, {"model.timesteps": t, "loss.im_weight": w}) for t, w in ((2, 0.0), (4, 2.0))]
    twins = [r.with_overrides({"model.neuron": "relu"}) for r in spiking]
    assert config_hash(twins[0]) == config_hash(twins[1]) == config_hash(twin)
    assert all(r.model.neuron == "lif" for r in spiking) and spiking[1].model.timesteps == 4
    assert Recipe(model={"neuron": "relu"}).model.timesteps == 1
    assert validate_recipe(twin.model_dump(mode="json")) == twin


def test_an_unknown_neuron_names_the_field() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(None, {"model.neuron": "lfi"})
    assert info.value.problems == ["model.neuron: 'lfi' is not one of: 'lif', 'plif', 'lif-learned-leak' or 'relu'"]


def test_energy_constants_default_to_horowitz_45nm_and_name_a_bad_one() -> None:
    assert (EnergyConfig().e_mac_pj, EnergyConfig().e_ac_pj) == (4.6, 0.9)
    assert load_energy({"e_mac_pj": None, "e_ac_pj": 0.5}) == EnergyConfig(e_ac_pj=0.5)
    with pytest.raises(RecipeError) as info:
        load_energy({"e_mac_pj": -1.0})
    assert info.value.problems == ["e_mac_pj: Input should be greater than 0 (got -1.0)"]


# --- identity ----------------------------------------------------------------------------------


def test_config_hash_ignores_seed_name_notes_and_placement() -> None:
    base = load_recipe(None)
    h = config_hash(base)
    assert len(h) == 12
    same = base.with_overrides(
        {
            "train.seed": 123,
            "name": "other",
            "notes": "a note",
            "train.output_dir": "/elsewhere",
            "train.device": "cpu",
            "data.num_workers": 3,
            "data.root": "/data",
            "data.cache_dir": "/fast/disk",
        }
    )
    assert config_hash(same) == h
    assert canonical_json(same) != canonical_json(base)


@pytest.mark.parametrize(
    "override",
    [
        {"loss.im_weight": 0},
        {"loss.im_weight": 1},
        {"model.timesteps": 2},
        {"model.neuron": "relu"},
        {"surrogate.schedule": "fixed"},
        {"optim.lr": 0.05},
        {"data.split_seed": 1},
        {"data.frames_split": "time"},
    ],
)
def test_config_hash_changes_with_what_the_run_computes(override: dict) -> None:
    base = load_recipe(None)
    assert config_hash(base.with_overrides(override)) != config_hash(base)


def test_non_semantic_fields_exist_in_the_recipe() -> None:
    """Every listed path must be a real field, or config_hash would crash or silently keep it."""
    fields = set(Recipe.model_fields)
    for path in NON_SEMANTIC_FIELDS:
        *parents, leaf = path.split(".")
        model = Recipe
        for part in parents:
            model = model.model_fields[part].annotation
        assert leaf in model.model_fields, path
    assert {"name", "notes"} <= fields


def test_run_fingerprint_changes_with_seed_and_code_version() -> None:
    r = load_recipe(None)
    fp = run_fingerprint(r, 0, "v1")
    assert len(fp) == 16
    assert run_fingerprint(r, 0, "v1") == fp
    assert run_fingerprint(r, 1, "v1") != fp
    assert run_fingerprint(r, 0, "v2") != fp
    assert run_fingerprint(r.with_overrides({"loss.im_weight": 0}), 0, "v1") != fp
    assert run_fingerprint(r.with_overrides({"name": "x"}), 0, "v1") == fp


def test_canonical_json_is_key_order_independent() -> None:
    a = validate_recipe({"model": {"timesteps": 2, "arch": "vgg16"}, "loss": {"im_weight": 1.0}})
    b = validate_recipe({"loss": {"im_weight": 1.0}, "model": {"arch": "vgg16", "timesteps": 2}})
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a).startswith('{"data":')  # sorted keys


@pytest.mark.parametrize("path", [None, *RECIPES], ids=["default", *[p.stem for p in RECIPES]])
def test_to_toml_round_trips(path: Path | None) -> None:
    r = load_recipe(path)
    back = validate_recipe(tomllib.loads(to_toml(r)))
    assert back == r
    assert config_hash(back) == config_hash(r)


def test_to_toml_round_trips_every_optional_field() -> None:
    r = load_recipe(None).with_overrides(
        {
            "train.seed": 7,
            "train.max_steps_per_epoch": 3,
            "data.mean": [0.1, 0.2, 0.3],
            "data.std": [0.5, 0.5, 0.5],
            "notes": 'multi\nline "quoted"',
            "neuron.reset": "soft",
        }
    )
    text = to_toml(r)
    back = validate_recipe(tomllib.loads(text))
    assert back == r
    assert back.data.mean == (0.1, 0.2, 0.3)
    # None fields are left out (TOML has no null) and come back as None
    assert "seed" not in tomllib.loads(to_toml(load_recipe(None)))["train"]
