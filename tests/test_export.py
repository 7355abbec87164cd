"""Results that leave the registry and come back checked: NIR, MLflow, TensorBoard, imloss reproduce.

The optional packages (nir, nirtorch, mlflow, tensorboard) make their tests skip with the reason when
absent; CI installs them (the test extra).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import create_engine, update
from typer.testing import CliRunner

from imloss_cli.cli.app import app
from imloss_cli.export.nir_graph import DT
from imloss_cli.recipe import config_hash, load_recipe
from imloss_cli.registry import Registry
from imloss_cli.registry.schema import EpochMetric
from imloss_cli.snn.models import build_model
from imloss_cli.snn.neuron import spiking_layers
from tests.planting import start_run

runner = CliRunner()


def needs(*modules: str) -> pytest.MarkDecorator:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed (pip install -e '.[test]')")


def _calibrated(arch: str, channels: int, side: int, **fields: object) -> torch.nn.Module:
    """A network with BatchNorm statistics of real batches (so that its neurons fire), in eval mode."""
    torch.manual_seed(0)
    model = build_model(load_recipe(None, {"model.arch": arch, "model.timesteps": 2, **fields}), 10, channels, side)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0  # the running statistics become this batch's
    with torch.no_grad():
        model(torch.rand(16, channels, side, side))
    return model.eval()


# ------------------------------------------------------------------------------ NIR


@needs("nir", "nirtorch")
@pytest.mark.parametrize(
    ("arch", "channels", "side", "fields"),
    [
        ("convnet3", 1, 8, {"model.norm": "bn"}),
        ("resnet19", 3, 32, {"model.norm": "tdbn"}),
        ("convnet3", 1, 8, {"model.membrane_bn": True}),  # MPBN: per-channel folded thresholds
        ("convnet3", 1, 8, {"model.neuron": "plif", "neuron.plif_tau": 3.0}),  # Fang et al.'s charge: r = 1
        ("convnet3", 1, 8, {"model.neuron": "lif-learned-leak"}),
    ],
    ids=["convnet3-bn", "resnet19-tdbn", "convnet3-mpbn", "convnet3-plif", "convnet3-learned-leak"],
)
def test_a_nir_round_trip_gives_every_layers_spikes_and_the_logits_of_imloss(
    arch: str, channels: int, side: int, fields: dict[str, object], tmp_path: Path
) -> None:
    import nir

    from imloss_cli.export.nir_graph import network_graph
    from imloss_cli.export.nir_run import run_graph

    model = _calibrated(arch, channels, side, **fields)
    x = torch.rand(3, channels, side, side)
    path = tmp_path / "net.nir"
    nir.write(str(path), network_graph(model, x[:1], {"arch": arch}))
    graph = nir.read(str(path))
    # the BatchNorms are folded into the convolutions; a residual sum is two edges into one LIF
    assert not any("BatchNorm" in type(n).__name__ for n in graph.nodes.values())
    if arch == "resnet19":
        assert sorted(src for src, dst in graph.edges if dst == "body_1_lif2") == ["body_0_lif2", "body_1_conv2_0"]
    run = run_graph(path, x, timesteps=2)
    reference = model.double()
    layers = spiking_layers(reference)
    for _, lif in layers:
        lif.store_v_seq = True
    with torch.no_grad():
        logits = reference(x.double())
    assert set(run.spikes) == {name.replace(".", "_") for name, _ in layers}
    for name, lif in layers:
        assert torch.equal(run.spikes[name.replace(".", "_")], lif.spike_seq), name
    rates = [float(lif.spike_seq.mean()) for _, lif in layers]
    assert 0.05 < sum(rates) / len(rates) < 0.5  # the comparison sees spikes, not silence
    torch.testing.assert_close(run.logits, logits, rtol=1e-9, atol=1e-9)
    lifs = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)]
    thresholds = {float(v) for n in lifs for v in np.unique(n.v_threshold)}
    if fields.get("model.membrane_bn"):  # one threshold per channel, not V_th
        assert len(thresholds) == sum(n.v_threshold.shape[0] for n in lifs) and 0.5 not in thresholds
    else:
        assert thresholds == {0.5}
    if fields.get("model.neuron") == "plif":
        assert all(np.allclose(n.r, 1.0) and np.allclose(n.tau, 3 * DT) for n in lifs)  # untrained: tau0 = 3


@needs("nir")
def test_what_nir_cannot_express_is_refused_naming_the_layer() -> None:
    from imloss_cli.export.nir_graph import network_graph
    from imloss_cli.export.problems import ExportError

    with pytest.raises(ExportError, match=r"^body\.0\.0: NIR has no max pooling"):
        network_graph(_calibrated("resnet34", 3, 64), torch.zeros(1, 3, 64, 64), {})
    mpbn = _calibrated("convnet3", 1, 8, **{"model.membrane_bn": True})
    with torch.no_grad():
        mpbn.encoder.lif.bn.weight[[3, 7]] = torch.tensor([-0.5, 0.0])
    with pytest.raises(ExportError, match=r"^encoder\.lif: MPBN channels \[3, 7\] have gamma <= 0: .* fires above"):
        network_graph(mpbn, torch.zeros(1, 1, 8, 8), {})
    with pytest.raises(ExportError, match=r"^encoder\.lif: a soft reset subtracts V_th"):
        network_graph(_calibrated("convnet3", 1, 8, **{"neuron.reset": "soft"}), torch.zeros(1, 1, 8, 8), {})


@needs("nir", "nirtorch")
def test_export_of_a_soft_reset_run_exits_2_before_writing_and_validate_warns(workdir: Path) -> None:
    db = str(workdir / "r.db")
    recipe = load_recipe(None, {"neuron.reset": "soft"})
    with Registry(db) as reg:
        run_id = start_run(reg, name="soft", recipe=recipe.model_dump(mode="json"), config_hash=config_hash(recipe),
                                fingerprint="f", seed=0, code_version="v")  # fmt: skip
    result = runner.invoke(app, ["export", run_id, "--nir", str(workdir / "soft.nir"), "--registry", db])
    assert result.exit_code == 2
    assert f"error: run {run_id} does not export to NIR: neuron.reset = 'soft': NIR's LIF resets" in result.stderr
    assert not (workdir / "soft.nir").exists()
    result = runner.invoke(app, ["validate", "--set", "neuron.reset='soft'"])
    assert result.exit_code == 0 and "warning: will not export to NIR: neuron.reset = 'soft'" in result.stderr
    result = runner.invoke(app, ["validate", "--set", "model.membrane_bn=true"])  # MPBN folds: it exports
    assert result.exit_code == 0 and "will not export" not in result.stderr


@needs("nir", "nirtorch")
@pytest.mark.slow
@pytest.mark.parametrize("sets", [[], ["--set", "model.membrane_bn=true"]], ids=["lif", "mpbn"])
def test_export_check_of_a_trained_run_agrees_on_every_layer(tiny_recipe: Path, workdir: Path, sets: list[str]) -> None:
    db = str(workdir / "r.db")
    assert runner.invoke(app, ["train", str(tiny_recipe), "--seed", "1", *sets, "--registry", db]).exit_code == 0
    (run,) = Registry(db).list_runs()
    result = runner.invoke(app, ["export", run.id[:6], "--nir", str(workdir / "out" / "net.nir"), "--check",
                                 "--registry", db])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"11 NIR nodes of run {run.id}" in result.stdout and (workdir / "out" / "net.nir").is_file()
    assert "the first 8 test images of the run's data" in result.stdout
    assert "spikes identical in 3 of 3 spiking layers (0 spike values differ)" in result.stdout
    assert "the same class for 8 of 8" in result.stdout


# ------------------------------------------------------------------------------ MLflow, TensorBoard


def _two_runs(db: str) -> list[str]:
    """Two finished runs with three epochs of metrics and two layers' statistics each."""
    ids = []
    with Registry(db) as reg:
        for seed in (0, 1):
            recipe = load_recipe(None, {"train.seed": seed})
            run_id = start_run(reg, name="digits", recipe=recipe.model_dump(mode="json"),
                                    config_hash=config_hash(recipe), fingerprint=f"f{seed}", seed=seed,
                                    code_version="v", git_commit="abc")  # fmt: skip
            for epoch in (1, 2, 3):
                metrics = {"test_acc": 0.5 + 0.1 * epoch + seed / 100, "loss": 1.0 / epoch}
                layers = [(i, f"body.{i}", {"entropy": 0.1 * i + epoch / 10, "firing_rate": 0.2}) for i in (0, 1)]
                reg.log_epoch(run_id, epoch, metrics, layers, attempt=1)
            reg.finish_run(run_id, "FINISHED", attempt=1)
            ids.append(run_id)
    return ids


@needs("mlflow", "alembic")
def test_mlflow_export_reads_back_and_a_second_export_duplicates_nothing(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    db = str(workdir / "r.db")
    first, second = _two_runs(db)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    result = runner.invoke(app, ["export", "--mlflow", uri, "--registry", db])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "imloss"]
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.imloss_run_id = '{first}'")
    assert run.data.params["loss.im_weight"] == "2.0" and run.data.params["seed"] == "0"
    assert run.data.params["model.arch"] == "convnet3"
    assert run.data.tags["imloss_git_commit"] == "abc" and run.data.tags["imloss_status"] == "FINISHED"
    assert run.info.status == "FINISHED"
    (other,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.imloss_run_id = '{second}'")
    assert other.data.params["seed"] == "1" and other.info.run_id != run.info.run_id
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_acc")]
    ours = Registry(db).epoch_metrics([first], names=["test_acc"])
    assert sorted(history) == list(zip(ours.epoch.tolist(), ours.value.tolist()))
    layer = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "layer/body.1/entropy"))
    assert layer == [(e, pytest.approx(0.1 + e / 10)) for e in (1, 2, 3)]

    again = runner.invoke(app, ["export", "--mlflow", uri, "--registry", db])
    assert again.exit_code == 0 and again.stdout.count("(found by its tag): 0 metric points added") == 2
    assert len(client.search_runs([experiment.experiment_id])) == 2
    assert len(client.get_metric_history(run.info.run_id, "test_acc")) == 3


@needs("tensorboard")
def test_tensorboard_export_reads_back_with_the_event_reader(workdir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    db = str(workdir / "r.db")
    first, _ = _two_runs(db)
    for _ in range(2):  # a second export replaces the run's folder: no doubled events
        result = runner.invoke(app, ["export", first, "--tensorboard", str(workdir / "tb"), "--registry", db])
        assert result.exit_code == 0, result.output
    events = EventAccumulator(str(workdir / "tb" / first), size_guidance={SCALARS: 0}).Reload()
    assert set(events.Tags()["scalars"]) >= {"metrics/test_acc", "metrics/loss", "layers/body.1/entropy",
                                             "layers/body.0/firing_rate"}  # fmt: skip
    acc = [(e.step, e.value) for e in events.Scalars("metrics/test_acc")]
    assert [s for s, _ in acc] == [1, 2, 3]
    assert [v for _, v in acc] == pytest.approx([0.6, 0.7, 0.8], rel=1e-6)  # stored as float32


# ------------------------------------------------------------------------------ reproduce


@pytest.mark.slow
def test_reproduce_gives_every_number_back_and_names_the_first_that_differs(tiny_recipe: Path, workdir: Path) -> None:
    db = str(workdir / "r.db")
    assert runner.invoke(app, ["train", str(tiny_recipe), "--registry", db]).exit_code == 0
    (original,) = Registry(db).list_runs()
    result = runner.invoke(app, ["reproduce", original.id, "--registry", db])
    assert result.exit_code == 0, result.output
    assert f"agrees with run {original.id} (every difference <= 0)" in result.stdout
    again = next(r for r in Registry(db).list_runs() if r.id != original.id)
    assert again.reproduces == original.id and again.recipe == original.recipe
    differences = re.findall(r"│ (\S+)\s+│\s+(\S+) │", result.stdout)
    assert len(differences) > 10 and {v for _, v in differences} == {"0"}  # every metric and layer statistic

    shown = runner.invoke(app, ["show", original.id, "--registry", db]).stdout
    assert f"reproduced by run {again.id}" in shown
    assert f"reproduces run {original.id}" in runner.invoke(app, ["show", again.id, "--registry", db]).stdout
    report = runner.invoke(app, ["report", "--recipe", "tiny", "--registry", db])
    assert (
        f"{again.id} reproduces {original.id}" in report.stderr and "| 1 |" in report.stdout
    )  # n counts the seed once

    engine = create_engine(f"sqlite:///{db}")  # one recorded number changed by hand
    with engine.begin() as conn:
        conn.execute(update(EpochMetric).where(EpochMetric.run_id == original.id, EpochMetric.epoch == 2,
                                               EpochMetric.name == "test_acc").values(value=0.123))  # fmt: skip
    engine.dispose()
    result = runner.invoke(app, ["reproduce", original.id, "--registry", db])
    assert result.exit_code == 1
    assert f"differs from run {original.id}: first at epoch 2, test_acc" in result.stderr
