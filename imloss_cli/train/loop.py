"""The training loop of Algorithm 1: CE + lambda * IM-Loss, BPTT, K(i) of the ESG once per epoch.

``Trainer(recipe, seed).fit()`` yields one ``EpochRecord`` per epoch: plain data, which the caller
stores wherever it likes. Everything the loop needs comes from the recipe; nothing is defaulted here.
Within an epoch nothing is read back to the host: sums stay on the device until the epoch ends.
On CUDA the LIF runs on its Triton kernels, in-memory data sets live on the device
(``data.resident``), and ``train.cuda_graphs`` replays the step as one CUDA graph (``train.graphs``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from imloss_cli import data as data_mod
from imloss_cli.data.resident import ResidentSet, resident_eval_batches, resident_sets, resident_train_batches
from imloss_cli.recipe import EnergyConfig, Recipe, RecipeError, canonical_json, validate_recipe
from imloss_cli.snn.energy import energy_uj
from imloss_cli.snn.im_loss import im_loss, input_im_loss, rate_im_loss
from imloss_cli.snn.models import BasicBlock, build_model
from imloss_cli.snn.neuron import LIF, set_surrogate_k, spiking_layers
from imloss_cli.snn.ops import plan_ops
from imloss_cli.snn.stats import LayerStats, LayerStatsAccumulator
from imloss_cli.snn.surrogate import esg_k
from imloss_cli.snn.triton_lif import triton_available
from imloss_cli.train.checkpoint import CheckpointDir, load_checkpoint, restore_rng, rng_state
from imloss_cli.train.distributed import DistEnv, all_reduce_sum, broadcast_buffers
from imloss_cli.train.graphs import GraphedStep

StepCallback = Callable[[int, int], None]
# Where torch.compile of the LIF loops starts to pay on CPU (compile ~20 s cold, saves ~5-15 ns a neuron-step).
COMPILE_PAYS_NEURON_STEPS = 2e9


class TrainingError(Exception):
    """The run cannot go on (bad device request, divergence, unusable checkpoint)."""


class DivergedError(TrainingError):
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(f"diverged at epoch {epoch}, step {step}: the loss became NaN or infinite")


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch produced: scalar metrics and per-layer statistics on the test set."""

    epoch: int
    metrics: dict[str, float]
    layers: list[LayerStats] = field(default_factory=list)


@dataclass(frozen=True)
class StepLoss:
    total: Tensor
    ce: Tensor
    im: Tensor
    logits: Tensor


def surrogate_k(recipe: Recipe, epoch: int) -> float:
    """K for epoch ``epoch`` (1-based, as i = 1..I in Algorithm 1), so the last epoch has K_max."""
    s = recipe.surrogate
    if s.schedule == "fixed":
        return s.k_fixed
    return esg_k(epoch, recipe.train.epochs, s.k_min, s.k_max)


def resolve_device(name: str, dist: DistEnv | None = None) -> torch.device:
    """The recipe's device; under torchrun, each process takes the GPU of its local rank."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank if dist is not None else torch.cuda.current_device())


def _make_deterministic() -> None:
    """Bit-exact reruns on CUDA: the CPU path is deterministic already."""
    # cuBLAS reads this when it initialises; harmless if it already did on CPU-only machines.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def epoch_seed(seed: int, epoch: int) -> int:
    """The RNG seed of one epoch: epochs are independent, so a resumed run replays them exactly."""
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


def im_layers(model: torch.nn.Module, choice: str) -> list[LIF]:
    """The hidden spiking layers IM-Loss averages over ("all", or "blocks": stem and block outputs)."""
    layers = [m for _, m in spiking_layers(model)]
    return layers if choice == "all" else [m for m in layers if m.block_output]


def input_layers(model: torch.nn.Module) -> list[LIF]:
    """The LIFs whose input current the authors'-code IM-Loss penalises: the stem's, then every
    residual block's output LIF (its input is bn2(conv2(.)) + shortcut), in network order.

    Raises:
        TrainingError: the network has no residual block.
    """
    blocks = [m.lif2 for m in model.modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise TrainingError(
            "loss.im_target = 'input' is the authors' residual-block loss: it needs a resnet architecture"
        )
    return [model.encoder.lif, *blocks]


def loss_step(model: torch.nn.Module, x: Tensor, y: Tensor, layers: list[LIF], recipe: Recipe) -> StepLoss:
    """Forward pass and L_total = L_CE + lambda * L_IM (Algorithm 1, lines 3-9).

    ``layers`` must have ``store_v_seq`` set, so the forward pass leaves their potentials behind.
    Without layers (the ANN twin) there is no IM term: L_total = L_CE.
    """
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    if not layers:
        return StepLoss(ce, ce, torch.zeros_like(ce.detach()), logits)
    if recipe.loss.im_target == "membrane":
        im = im_loss([m.v_mean for m in layers], recipe.neuron.v_threshold)
    elif recipe.loss.im_target == "input":
        im = input_im_loss([m.x_mean for m in layers], recipe.model.timesteps)
    else:
        im = rate_im_loss([m.spike_seq.float().mean() for m in layers], recipe.model.timesteps)
    if recipe.loss.im_weight == 0:
        im = im.detach()  # logged for comparison, but the baseline trains on CE alone
    return StepLoss(ce + recipe.loss.im_weight * im, ce, im, logits)


class Trainer:
    """Builds data, model and optimizer from a recipe and trains it, epoch by epoch.

    Args:
        recipe: the resolved recipe.
        seed: the run's seed (model init, data order and augmentation derive from it).
        checkpoint_dir: where ``last.pt`` / ``best.pt`` go; None: no checkpoints.
        on_step: called as ``on_step(step, steps)`` after each training step (progress bars).
        dist: this process's place in a torchrun job (the process group must be joined); None: alone.
    """

    def __init__(
        self,
        recipe: Recipe,
        seed: int,
        *,
        checkpoint_dir: Path | None = None,
        on_step: StepCallback | None = None,
        dist: DistEnv | None = None,
    ) -> None:
        self.recipe, self.seed = recipe, seed
        self.checkpoint_dir = checkpoint_dir if recipe.train.checkpoint else None
        self.on_step = on_step
        self.dist = dist
        self.rank, self.world_size = (dist.rank, dist.world_size) if dist else (0, 1)
        self.device = resolve_device(recipe.train.device, dist)
        if recipe.train.cuda_graphs and (self.device.type != "cuda" or dist is not None):
            raise TrainingError(
                "train.cuda_graphs needs a single CUDA process (no torchrun) and train.device 'cuda' or 'auto' "
                "on a CUDA machine; set it to false"
            )
        self.graphed: GraphedStep | None = None  # captured at the first training step
        if recipe.train.deterministic:
            _make_deterministic()
        self.start_epoch = 1
        self.best_acc = -math.inf
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()

    # --- setup ---------------------------------------------------------------------------------

    def _setup_data(self) -> None:
        self.data = data_mod.build_datasets(self.recipe.data, timesteps=self.recipe.model.timesteps)
        self.resident = self._resident()

    def _resident(self) -> tuple[ResidentSet, ResidentSet] | None:
        """(train, test) held on the device, or None: the host loaders (ImageFolder, event data, "off")."""
        choice = self.recipe.data.device_resident
        if choice == "off" or (choice == "auto" and self.device.type != "cuda"):
            return None
        sets = resident_sets(self.data, self.recipe.data, self.device)
        if sets is None and choice == "on":
            raise TrainingError(
                f"data.device_resident = 'on' but {self.recipe.data.dataset} with data.augment = "
                f"{self.recipe.data.augment!r} and data.image_size = {self.recipe.data.image_size} is not held in "
                "memory as stored (digits, or CIFAR at 32 px with augment none or crop_flip); use 'auto' or 'off'"
            )
        return sets

    def _setup_model(self) -> None:
        torch.manual_seed(self.seed)
        self.model = build_model(self.recipe, self.data.num_classes, self.data.in_channels, self.data.image_size)
        # Which layer reads which spike map, and with what fan-out: a probe of one test image.
        self.ops_plan = plan_ops(self.model, self.data.test[0][0].unsqueeze(0))
        self.autocast_dtype = self._autocast_dtype()
        self.lif_kernels = self._lif_kernels()
        for _, layer in spiking_layers(self.model):
            layer.kernels = self.lif_kernels
        self.model = self._place(self.model)  # the bare network: evaluation, checkpoints, layer names
        self.step_model = self._wrap_ddp(self.model)
        self.hidden_layers = spiking_layers(self.model)
        self.im_layers = (
            input_layers(self.model)
            if self.recipe.loss.im_target == "input" and self.hidden_layers
            else im_layers(self.model, self.recipe.loss.im_layers)
        )

    def _autocast_dtype(self) -> torch.dtype | None:
        """bf16 autocast when asked, or by default on CUDA; None: fp32."""
        precision = self.recipe.train.precision
        bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        return torch.bfloat16 if bf16 else None

    def _lif_kernels(self) -> str:
        """The LIF kernel set: ``train.lif_kernels``; under "auto", triton on CUDA where it imports, else
        the torch.compile'd loops where ``train.compile`` says so (always on CUDA under "auto", on CPU
        only where it pays), else the eager loops."""
        choice, cuda = self.recipe.train.lif_kernels, self.device.type == "cuda"
        if choice == "triton" and not (cuda and triton_available()):
            raise TrainingError("train.lif_kernels = 'triton' needs a CUDA device and triton; use 'auto'")
        if choice != "auto":
            return choice
        if cuda and triton_available():
            return "triton"
        compile_ = self.recipe.train.compile
        on = compile_ == "on" or (compile_ == "auto" and (cuda or self._compile_pays()))
        return "compiled" if on else "eager"

    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model with sync-BN when asked, in channels_last, on the device."""
        if self.recipe.train.sync_bn:
            if not (self.dist and self.device.type == "cuda"):
                raise TrainingError("train.sync_bn needs several CUDA processes (torchrun); set it to false")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # channels_last on CPU too: oneDNN convolutions skip their NCHW reorders (ResNet-19 steps 4-11% faster).
        return model.to(memory_format=torch.channels_last).to(self.device)

    def _wrap_ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: the model itself, or under torchrun its DDP wrapper."""
        if self.dist is None:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _compile_pays(self) -> bool:
        """On CPU, compile the LIF loops only when the run is long enough to earn back the compile.

        Compiling costs tens of seconds once; it saves tens of nanoseconds per neuron and time
        step. A run's neuron-steps are counted from one forward pass of a single image, times the
        images the run will train on (``train.max_steps_per_epoch`` included).
        """
        layers = [m for _, m in spiking_layers(self.model)]
        x, _ = self.data.test[0]
        self.model.eval()
        for m in layers:
            m.store_v_seq = True
        with torch.no_grad():
            self.model(x.unsqueeze(0))
        neuron_steps_per_image = sum(m.v_seq.numel() for m in layers if m.v_seq is not None)
        for m in layers:
            m.store_v_seq = False
            m.clear()
        self.model.train()
        images_per_epoch = min(len(self.data.train), self.steps_per_epoch() * self.recipe.data.batch_size)
        total = neuron_steps_per_image * images_per_epoch * self.recipe.train.epochs
        return total > COMPILE_PAYS_NEURON_STEPS

    def _setup_optimizer(self) -> None:
        o = self.recipe.optim
        decay, no_decay = [], []
        for p in self.step_model.parameters():
            (no_decay if o.no_decay_norm_bias and p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        if o.name == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0
            )
        elif o.name == "adam":
            self.optimizer = torch.optim.Adam(groups, lr=o.lr)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=o.lr)
        if o.scheduler == "cosine":
            self.scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=self.recipe.train.epochs
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)

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
            return canonical_json(validate_recipe(json.loads(stored))) == canonical_json(self.recipe)
        except (ValueError, RecipeError):
            return False

    def _save(self, epoch: int, k: float, test_acc: float) -> None:
        if self.checkpoint_dir is None:
            return
        is_best = test_acc > self.best_acc
        self.best_acc = max(self.best_acc, test_acc)
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
        }
        CheckpointDir(self.checkpoint_dir, self.recipe.train.keep_last).save(epoch, state, is_best)

    # --- the loop ------------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """Training steps an epoch; with CUDA graphs the last partial batch is dropped (static shapes)."""
        per_rank = math.ceil(len(self.data.train) / self.world_size)
        batch = self.recipe.data.batch_size
        steps = per_rank // batch if self.recipe.train.cuda_graphs else math.ceil(per_rank / batch)
        if steps == 0:
            raise TrainingError(
                f"train.cuda_graphs drops the last partial batch, and {per_rank} training samples make no full "
                f"batch of {batch}; lower data.batch_size"
            )
        limit = self.recipe.train.max_steps_per_epoch
        return steps if limit is None else min(steps, limit)

    def fit(self) -> Iterator[EpochRecord]:
        """Train from ``start_epoch`` to the recipe's last epoch, yielding each epoch's record."""
        for epoch in range(self.start_epoch, self.recipe.train.epochs + 1):
            start = time.perf_counter()
            k = surrogate_k(self.recipe, epoch)
            set_surrogate_k(self.model, k)
            lr = float(self.optimizer.param_groups[0]["lr"])
            torch.manual_seed(epoch_seed(self.seed, epoch))
            train_metrics = self._train_epoch(epoch)
            train_seconds = time.perf_counter() - start
            test_metrics, layers = self.evaluate()
            if self.data.val is not None:
                test_metrics |= self.validate()
            self.scheduler.step()
            self._save(epoch, k, test_metrics["test_acc"])
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
            yield EpochRecord(epoch, metrics, layers)

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
                self.resident[0], self.recipe.data, drop_last=self.recipe.train.cuda_graphs, **kw
            )
        return data_mod.train_loader(self.data, self.recipe.data, pin_memory=self.device.type == "cuda", **kw)

    def _step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Forward, loss and backward of one batch (no optimizer step); (total, ce, im, logits), detached."""
        with self._autocast():
            out = loss_step(self.step_model, x, y, self.im_layers, self.recipe)
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

    def _train_epoch(self, epoch: int) -> dict[str, float]:
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
            if self.on_step is not None:
                self.on_step(step + 1, steps)
        self._store([])
        sums = torch.cat([sums, torch.tensor([float(seen)], dtype=torch.float64, device=self.device)])
        all_reduce_sum([sums])
        loss, ce, im, correct, samples = sums.tolist()
        bad_step = int(first_bad.item())
        if bad_step > 0:
            raise DivergedError(epoch, bad_step)
        return {"loss": loss / samples, "ce": ce / samples, "im": im / samples, "train_acc": correct / samples}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss and accuracy on the validation set held out of the training data (``data.val_fraction``).

        The epoch a report selects with ``--select best-val`` is chosen on these numbers, so the
        test set only scores it. Under torchrun every rank scores its shard and the sums are reduced.
        """
        assert self.data.val is not None, "validate() needs data.val_fraction > 0"
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # [loss, correct, images]
        loader = data_mod.eval_loader(
            self.data.val, self.recipe.data, rank=self.rank, world_size=self.world_size,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        for x, y in loader:
            x, y = self._to_device(x, y)
            with self._autocast():
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            sums += torch.stack([loss.double(), (logits.argmax(1) == y).sum().double(), sums.new_tensor(len(y))])
        for _, m in self.hidden_layers:
            m.clear()
        all_reduce_sum([sums])
        loss, correct, images = sums.tolist()
        return {"val_loss": loss / images, "val_acc": correct / images}

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
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # [loss, correct]
        seen = 0
        loader: Iterable[tuple[Tensor, Tensor]]
        if self.resident is not None:
            loader = resident_eval_batches(
                self.resident[1], self.recipe.data, rank=self.rank, world_size=self.world_size
            )
        else:
            loader = data_mod.test_loader(
                self.data, self.recipe.data, rank=self.rank, world_size=self.world_size,
                pin_memory=self.device.type == "cuda",
            )  # fmt: skip
        with stats.watch(self.model):
            for x, y in loader:
                x, y = self._to_device(x, y)
                with self._autocast():
                    logits = self.model(x)
                stats.update()
                seen += y.shape[0]
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
                sums += torch.stack([loss.double(), (logits.argmax(1) == y).sum().double()])
        self._store([])
        sums = torch.cat([sums, torch.tensor([float(seen)], dtype=torch.float64, device=self.device)])
        counted = torch.tensor([float(stats.samples)], dtype=torch.float64, device=self.device)
        all_reduce_sum([sums, counted, *stats.raw_tensors()])
        loss, correct, images = sums.tolist()
        layer_stats = stats.compute(int(counted.item()), int(images))
        sops = sum((s.sops_per_image for s in layer_stats), 0.0)
        macs = self.ops_plan.macs_per_image
        metrics = {
            "test_loss": loss / images,
            "test_acc": correct / images,
            "sops": sops,
            "macs": macs,
            "energy_uj": energy_uj(macs, sops, EnergyConfig()),
        }
        return metrics, layer_stats
