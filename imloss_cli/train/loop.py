"""The training loop of Algorithm 1: CE + lambda * IM-Loss, BPTT, K(i) of the ESG once per epoch.

``Trainer(recipe, seed).fit(run)`` trains epoch by epoch and hands everything that leaves the loop
to ``run`` (``train.sink``: the epoch's record, the fence check between steps, where checkpoints go
and the fence they are promoted in); it also yields each ``EpochRecord``. Everything the loop needs
comes from the recipe; nothing is defaulted here. Within an epoch nothing is read back to the host:
sums stay on the device until the epoch ends. On CUDA the LIF runs on its Triton kernels, in-memory
data sets live on the device (``data.resident``), and ``train.cuda_graphs`` replays the step as one
CUDA graph (``train.graphs``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from imloss_cli import data as data_mod
from imloss_cli.data.capped import capped_subset
from imloss_cli.data.resident import device_resident_sets, resident_eval_batches, resident_train_batches
from imloss_cli.recipe import EnergyConfig, Recipe, RecipeError, canonical_json, validate_recorded
from imloss_cli.snn.energy import energy_uj
from imloss_cli.snn.memory import use_low_memory
from imloss_cli.snn.models import build_model
from imloss_cli.snn.neuron import LIF, set_surrogate_k, spiking_layers
from imloss_cli.snn.ops import plan_ops
from imloss_cli.snn.stats import LayerStats, LayerStatsAccumulator
from imloss_cli.train.checkpoint import CheckpointDir, load_checkpoint, restore_rng, rng_state
from imloss_cli.train.distributed import DistEnv, all_reduce_sum, broadcast_buffers, rank_batch_size
from imloss_cli.train.errors import DivergedError, TrainingError
from imloss_cli.train.graphs import GraphedStep
from imloss_cli.train.objective import im_layers, input_layers, loss_step, surrogate_k
from imloss_cli.train.optim import build_optimizer
from imloss_cli.train.placement import (
    autocast_dtype,
    lif_kernels,
    make_deterministic,
    neuron_steps_per_image,
    place_model,
    resolve_device,
    wrap_ddp,
)
from imloss_cli.train.scoring import score
from imloss_cli.train.sink import Callbacks, EpochRecord, LocalRun, RunSink


def epoch_seed(seed: int, epoch: int) -> int:
    """The RNG seed of one epoch: epochs are independent, so a resumed run replays them exactly."""
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


class Trainer:
    """Builds data, model and optimizer from a recipe and trains it, epoch by epoch.

    Configured once, here; where the results go is the ``run`` given to :meth:`fit`.

    Args:
        recipe: the resolved recipe.
        seed: the run's seed (model init, data order and augmentation derive from it).
        dist: this process's place in a torchrun job (the process group must be joined); None: alone.
        callbacks: progress hooks of a front end (steps, evaluation batches, epochs).
    """

    def __init__(
        self, recipe: Recipe, seed: int, *, dist: DistEnv | None = None, callbacks: Callbacks = Callbacks()
    ) -> None:
        self.recipe, self.seed = recipe, seed
        self.callbacks = callbacks
        self.dist = dist
        self.rank, self.world_size = (dist.rank, dist.world_size) if dist else (0, 1)
        # data.batch_size is the global batch: each of the world_size processes trains its share.
        self.train_data = recipe.data.model_copy(
            update={"batch_size": rank_batch_size(recipe.data.batch_size, self.world_size)}
        )
        self.device = resolve_device(recipe.train.device, dist)
        if recipe.train.cuda_graphs and (self.device.type != "cuda" or dist is not None):
            raise TrainingError(
                "train.cuda_graphs needs a single CUDA process (no torchrun) and train.device 'cuda' or 'auto' "
                "on a CUDA machine; set it to false"
            )
        self.graphed: GraphedStep | None = None  # captured at the first training step
        if recipe.train.deterministic:
            make_deterministic()
        self.start_epoch = 1
        self.best_acc = -math.inf
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()

    # --- setup ---------------------------------------------------------------------------------

    def _setup_data(self) -> None:
        self.data = data_mod.build_datasets(self.recipe.data, timesteps=self.recipe.model.timesteps)
        self.resident = device_resident_sets(self.data, self.recipe.data, self.device)
        # train.max_eval_batches: a fixed, class-balanced subset of each evaluation set, from the seed.
        limit = self.recipe.train.max_eval_batches
        cap = None if limit is None else limit * self.recipe.data.eval_batch_size
        self.test_subset = capped_subset(self.data.test, cap, self.seed)
        self.val_subset = None if self.data.val is None else capped_subset(self.data.val, cap, self.seed)

    def _setup_model(self) -> None:
        torch.manual_seed(self.seed)
        self.model = build_model(self.recipe, self.data.num_classes, self.data.in_channels, self.data.image_size)
        # Which layer reads which spike map, and with what fan-out: a probe of one test image.
        self.ops_plan = plan_ops(self.model, self.data.test[0][0].unsqueeze(0))
        self.autocast_dtype = autocast_dtype(self.recipe, self.device)
        self.lif_kernels = lif_kernels(self.recipe, self.device, self._run_neuron_steps)
        for _, layer in spiking_layers(self.model):
            layer.kernels = self.lif_kernels
        if self.recipe.train.memory == "low":  # spikes as bits, norms and neurons recomputed (snn.memory)
            use_low_memory(self.model)
        # The bare network (evaluation, checkpoints, layer names) and what the step calls (DDP under torchrun).
        self.model = place_model(self.model, self.recipe, self.device, self.dist)
        self.step_model = wrap_ddp(self.model, self.device, self.dist)
        self.hidden_layers = spiking_layers(self.model)
        self.model.readout.store_steps = self.recipe.loss.objective == "tet"  # TET reads every step's logits
        self.im_layers = (
            input_layers(self.model)
            if self.recipe.loss.im_target == "input" and self.hidden_layers
            else im_layers(self.model, self.recipe.loss.im_layers)
        )

    def _run_neuron_steps(self) -> int:
        """Membrane updates the whole run will train (what decides whether compiling pays on CPU)."""
        per_image = neuron_steps_per_image(self.model, self.data.test[0][0])
        images_per_epoch = min(len(self.data.train), self.steps_per_epoch() * self.train_data.batch_size)
        return per_image * images_per_epoch * self.recipe.train.epochs

    def _setup_optimizer(self) -> None:
        self.optimizer, self.scheduler = build_optimizer(self.step_model, self.recipe.optim, self.recipe.train.epochs)

    # --- checkpoints ---------------------------------------------------------------------------

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint written by this trainer: the next epoch is the one after it.

        Raises:
            CheckpointError: unreadable file. TrainingError: written for another recipe or seed.
        """
        state = load_checkpoint(path, map_location=self.device)
        if not self._same_recipe(state.get("recipe")) or state.get("seed") != self.seed:
            raise TrainingError(f"{path} was written for another recipe or seed; it cannot resume this run")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise TrainingError(
                f"{path} holds another network than this imloss builds for model.arch = "
                f"{self.recipe.model.arch!r} ({first}); a resnet19 run from before 0.2 is resnet19-guo now"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_acc = float(state["best_acc"])

    def _same_recipe(self, stored: object) -> bool:
        """Whether a checkpoint's recipe is this run's; fields added since it was written take their defaults."""
        if not isinstance(stored, str):
            return False
        try:
            return canonical_json(validate_recorded(json.loads(stored))) == canonical_json(self.recipe)
        except (ValueError, RecipeError):
            return False

    def _checkpoints(self, run: RunSink) -> CheckpointDir | None:
        """Where this run's checkpoints go: the run's folder (None: it keeps none, or the recipe says no)."""
        if run.checkpoint_dir is None or not self.recipe.train.checkpoint:
            return None
        return CheckpointDir(run.checkpoint_dir, self.recipe.train.keep_last, run.checkpoint_tag)

    def _write_checkpoint(self, checkpoints: CheckpointDir, epoch: int, k: float, tag: str) -> Path:
        """This epoch's checkpoint in the attempt's own file (not yet promoted to ``last.pt``)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "k": k,  # the ESG position; K of the next epoch follows from epoch + 1
            "seed": self.seed,
            "data_order": {"seed": self.seed, "next_epoch": epoch + 1},  # order is a function of both
            "recipe": canonical_json(self.recipe),
            "best_acc": self.best_acc,
            "rng": rng_state(),
            "written_by": tag,  # which attempt of the run wrote it
            "data_shape": self._data_shape(),  # what rebuilds the network without the data (imloss export)
        }
        return checkpoints.write(epoch, state)

    def _data_shape(self) -> dict[str, Any]:
        d = self.data  # sample_shape: [C, H, W], or [T, C, H, W] for frames
        dims = {"num_classes": d.num_classes, "in_channels": d.in_channels, "image_size": d.image_size}
        return dims | {"sample_shape": list(d.test[0][0].shape)}

    # --- the loop ------------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """Training steps an epoch; with CUDA graphs the last partial batch is dropped (static shapes)."""
        per_rank = math.ceil(len(self.data.train) / self.world_size)
        batch = self.train_data.batch_size
        steps = per_rank // batch if self.recipe.train.cuda_graphs else math.ceil(per_rank / batch)
        if steps == 0:
            raise TrainingError(
                f"train.cuda_graphs drops the last partial batch, and {per_rank} training samples make no full "
                f"batch of {batch}; lower data.batch_size"
            )
        limit = self.recipe.train.max_steps_per_epoch
        return steps if limit is None else min(steps, limit)

    def fit(self, run: RunSink | None = None) -> Iterator[EpochRecord]:
        """Train from ``start_epoch`` to the recipe's last epoch; each epoch's record goes to ``run`` and is yielded.

        An epoch ends in this order: its checkpoint is written to the attempt's own file, its record
        is stored (``run.store_epoch``), then the checkpoint is promoted to ``last.pt`` inside
        ``run.fenced()``. So what ``last.pt`` holds is always stored: a run stopped in between resumes
        from the epoch before and stores this one again. ``run.check()`` after every step stops a
        copy that must not go on. None: a :class:`~imloss_cli.train.sink.LocalRun` without checkpoints.
        """
        run = run if run is not None else LocalRun()
        checkpoints = self._checkpoints(run)
        for epoch in range(self.start_epoch, self.recipe.train.epochs + 1):
            start = time.perf_counter()
            k = surrogate_k(self.recipe, epoch)
            set_surrogate_k(self.model, k)
            lr = float(self.optimizer.param_groups[0]["lr"])
            torch.manual_seed(epoch_seed(self.seed, epoch))
            train_metrics = self._train_epoch(epoch, run)
            train_seconds = time.perf_counter() - start
            test_metrics, layers = self.evaluate()
            if self.data.val is not None:
                test_metrics |= self.validate()
            self.scheduler.step()
            is_best = test_metrics["test_acc"] > self.best_acc
            self.best_acc = max(self.best_acc, test_metrics["test_acc"])
            pending = None if checkpoints is None else self._write_checkpoint(checkpoints, epoch, k, run.checkpoint_tag)
            metrics = {**train_metrics, **test_metrics}
            if layers:  # the ANN twin has no spiking layer: no K, IM term or entropy to log
                metrics |= {
                    "k": k,
                    "mean_entropy": sum(s.entropy for s in layers) / len(layers),
                    "mean_firing_rate": sum(s.firing_rate for s in layers) / len(layers),
                }
            else:
                del metrics["im"]
            metrics |= {"lr": lr, "train_seconds": train_seconds, "epoch_seconds": time.perf_counter() - start}
            record = EpochRecord(epoch, metrics, layers)
            try:
                run.store_epoch(record)
                if checkpoints is not None and pending is not None:
                    with run.fenced():
                        checkpoints.promote(pending, epoch, is_best)
            finally:  # not promoted (stopped, or taken over): the attempt's own file goes
                if pending is not None:
                    pending.unlink(missing_ok=True)
            if self.callbacks.on_epoch is not None:
                self.callbacks.on_epoch(record)
            yield record

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _store(self, layers: list[LIF], *, inputs: bool = False) -> None:
        """Which layers keep their potentials (and, with ``inputs``, their input means) in the next passes."""
        for _, m in self.hidden_layers:
            m.store_v_seq = m in layers
            m.store_x_mean = inputs and m in layers
            m.clear()

    def _train_batches(self, epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        kw = {"seed": self.seed, "epoch": epoch, "rank": self.rank, "world_size": self.world_size}
        if self.resident is not None:
            return resident_train_batches(
                self.resident[0], self.train_data, drop_last=self.recipe.train.cuda_graphs, **kw
            )
        return data_mod.train_loader(self.data, self.train_data, pin_memory=self.device.type == "cuda", **kw)

    def _step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Forward, loss and backward of one batch (no optimizer step); (total, ce, im, logits), detached."""
        with self._autocast():
            out = loss_step(self.step_model, x, y, self.im_layers, self.recipe, self.model.readout)
        out.total.backward()
        for layer in self.im_layers:  # drop this step's potentials before the next forward
            layer.clear()
        return out.total.detach(), out.ce.detach(), out.im.detach(), out.logits.detach()

    def _graphed_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        if self.graphed is None:
            self.graphed = GraphedStep(self._step, self.model, x, y)
        if not self.graphed.matches(x, y):
            raise TrainingError(f"a batch of shape {tuple(x.shape)} does not fit the captured CUDA graph")
        return self.graphed(x, y)

    def _train_epoch(self, epoch: int, run: RunSink) -> dict[str, float]:
        self.step_model.train()
        self._store(self.im_layers, inputs=self.recipe.loss.im_target == "input")
        loader = self._train_batches(epoch)
        steps = self.steps_per_epoch()
        # [loss, ce, im, correct] summed over the epoch, on the device; the sample count is known on the host.
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        seen = 0
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        for step, (x, y) in enumerate(loader):
            if step >= steps:
                break
            x, y = self._to_device(x, y)
            if self.recipe.train.cuda_graphs:  # the graph's gradients are overwritten, never zeroed
                total, ce, im, logits = self._graphed_step(x, y)
            else:
                self.optimizer.zero_grad(set_to_none=True)
                total, ce, im, logits = self._step(x, y)
            self.optimizer.step()
            with torch.no_grad():
                n = y.shape[0]
                seen += n
                correct = (logits.argmax(1) == y).sum()
                sums += torch.stack([total.double() * n, ce.double() * n, im.double() * n, correct.double()])
                bad = ~torch.isfinite(total)
                first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step + 1), first_bad)
            run.check()  # a copy that was taken over stops at its next step
            if self.callbacks.on_step is not None:
                self.callbacks.on_step(step + 1, steps)
        self._store([])
        sums = torch.cat([sums, torch.tensor([float(seen)], dtype=torch.float64, device=self.device)])
        all_reduce_sum([sums])
        loss, ce, im, correct, samples = sums.tolist()
        bad_step = int(first_bad.item())
        if bad_step > 0:
            raise DivergedError(epoch, bad_step)
        return {"loss": loss / samples, "ce": ce / samples, "im": im / samples, "train_acc": correct / samples}

    def _eval_batches(self, batches: Sized) -> int:
        """How many batches of an evaluation set are scored (``train.max_eval_batches`` caps it)."""
        limit = self.recipe.train.max_eval_batches
        return len(batches) if limit is None else min(len(batches), limit)

    def _score(self, batches: Iterable[tuple[Tensor, Tensor]], after_batch: Callable[[], None] | None = None) -> Tensor:
        return score(
            self.model, batches, total=self._eval_batches(batches), device=self.device,  # type: ignore[arg-type]
            to_device=self._to_device, autocast=self._autocast, after_batch=after_batch,
            on_batch=self.callbacks.on_eval_batch,
        )  # fmt: skip

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss and accuracy on the validation set held out of the training data (``data.val_fraction``).

        The epoch a report selects with ``--select best-val`` is chosen on these numbers, so the
        test set only scores it. Under torchrun every rank scores its shard and the sums are reduced.
        """
        assert self.data.val is not None, "validate() needs data.val_fraction > 0"
        self.model.eval()
        loader = data_mod.eval_loader(
            self.data.val, self.recipe.data, rank=self.rank, world_size=self.world_size,
            pin_memory=self.device.type == "cuda", indices=self.val_subset,
        )  # fmt: skip
        sums = self._score(loader)
        for _, m in self.hidden_layers:
            m.clear()
        all_reduce_sum([sums])
        loss, correct, images = sums.tolist()
        # How many images the accuracy is of: fewer than the set's under train.max_eval_batches.
        return {"val_loss": loss / images, "val_acc": correct / images, "val_images": images,
                "val_images_total": float(len(self.data.val))}  # fmt: skip

    @torch.no_grad()
    def evaluate(self) -> tuple[dict[str, float], list[LayerStats]]:
        """Test accuracy and loss, operations per image, and the statistics of every hidden spiking layer.

        ``sops`` sums the layers' ``sops_per_image``; ``macs`` are the weight layers' operations on
        real values (``snn.ops``); ``energy_uj`` is ``snn.energy.energy_uj`` of both at the default
        constants. Under torchrun every rank scores its shard of the test set with rank 0's
        BatchNorm statistics (the ones its checkpoint holds) and the counts are summed over ranks.
        """
        broadcast_buffers(self.model)
        self.model.eval()
        layers = [m for _, m in self.hidden_layers]
        self._store(layers)
        stats = LayerStatsAccumulator(self.hidden_layers, self.ops_plan)
        loader: Iterable[tuple[Tensor, Tensor]]
        if self.resident is not None:
            loader = resident_eval_batches(
                self.resident[1], self.recipe.data, rank=self.rank, world_size=self.world_size,
                indices=self.test_subset,
            )  # fmt: skip
        else:
            loader = data_mod.test_loader(
                self.data, self.recipe.data, rank=self.rank, world_size=self.world_size,
                pin_memory=self.device.type == "cuda", indices=self.test_subset,
            )  # fmt: skip
        with stats.watch(self.model):
            sums = self._score(loader, after_batch=stats.update)
        self._store([])
        counted = torch.tensor([float(stats.samples)], dtype=torch.float64, device=self.device)
        all_reduce_sum([sums, counted, *stats.raw_tensors()])
        loss, correct, images = sums.tolist()
        layer_stats = stats.compute(int(counted.item()), int(images))
        sops = sum((s.sops_per_image for s in layer_stats), 0.0)
        macs = self.ops_plan.macs_per_image
        metrics = {
            "test_loss": loss / images,
            "test_acc": correct / images,
            "test_images": images,  # fewer than test_images_total under train.max_eval_batches
            "test_images_total": float(len(self.data.test)),  # type: ignore[arg-type]
            "sops": sops,
            "macs": macs,
            "energy_uj": energy_uj(macs, sops, EnergyConfig()),
        }
        return metrics, layer_stats
