"""The sections of a recipe: pydantic models that describe a run completely.

Every default of the project lives in these fields and nowhere else. Each section is strict and
frozen; :func:`validate_recipe` reports every problem at once, each with its field path.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError, describe

ARCHITECTURES = ("convnet3", "resnet19", "resnet19-tet", "resnet19-guo", "resnet20", "vgg16", "resnet34")
DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "cifar10dvs")
NEURONS = ("lif", "plif", "lif-learned-leak", "relu")
MEMORY_MODES = ("default", "low")  # train.memory; the first is the default

# Fields that name, place or schedule a run without changing what it computes: two runs that
# differ only here are the same configuration (their seeds are pooled in reports).
NON_SEMANTIC_FIELDS = (
    "name",
    "notes",
    "train.seed",
    "train.device",
    "train.compile",
    "train.lif_kernels",
    "train.output_dir",
    "train.keep_last",
    "data.num_workers",
    "data.device_resident",
    "data.eval_batch_size",
    "data.root",
    "data.download",
    "data.cache_dir",
    "paper",
)


class _Section(BaseModel):
    # strict: a TOML `true` or "4" is an error, not silently 1.0 or 4 (ints still pass as floats).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class ModelConfig(_Section):
    arch: Literal[ARCHITECTURES] = Field(  # type: ignore[valid-type]
        "convnet3", description="network, looked up by name in imloss_cli.snn.models"
    )
    neuron: Literal[NEURONS] = Field(  # type: ignore[valid-type]
        "lif",
        description="lif: the spiking network; plif: PLIF as Fang et al. (ICCV 2021) and SpikingJelly's "
        "ParametricLIFNode define it, one learnable time constant per layer, H = V + (X - V) / tau with "
        "1/tau = sigmoid(w), tau starting at neuron.plif_tau (neuron.decay is not used), hard reset to 0 by "
        "default; lif-learned-leak: a learnable leak on imloss's LIF charge, H = decay * V + X with decay = "
        "sigmoid(w) per layer, w starting at logit(neuron.decay) (what 'plif' was before; runs recorded as that "
        "read as this); relu: "
        "its ANN twin, the same architecture with ReLU in place of every LIF, which runs at T = 1 without "
        "IM-Loss (timesteps and loss.im_weight are set to 1 and 0; the neuron and surrogate sections have no "
        "effect)",
    )
    membrane_bn: bool = Field(
        False,
        description="MPBN (Guo et al., ICCV 2023): a BatchNorm on every hidden LIF's potential before it fires "
        "(hard reset only; no ANN twin); folds into per-channel thresholds at inference",
    )
    timesteps: int = Field(4, ge=1, le=1000, description="T: the input is presented T times")
    init: Literal["torch", "guo"] = Field(
        "torch",
        description="weight init: torch (PyTorch's defaults, as tdBN and TET); guo: the authors' code, "
        "convolutions normal(0, sqrt(2 / (k^2 * out_channels))), linear layers normal(0, 1 / in_features) with "
        "bias 0",
    )
    stem_pool: Literal["max", "avg"] = Field(
        "max",
        description="resnet34: the pooling after its 7x7 stem: max (He et al., as tdBN and TET) or avg "
        "(AvgPool2d(3, 2, 1), the authors' code)",
    )
    norm: Literal["bn", "tdbn", "none"] = Field(
        "bn",
        description="bn: BatchNorm shared over time (folded T*B batch); tdbn: threshold-dependent BN (Zheng et "
        "al.): lambda * (alpha * V_th * x_hat) + beta with the fixed alpha * V_th and lambda from 1; none: no "
        "normalisation",
    )


class NeuronConfig(_Section):
    decay: float = Field(0.25, gt=0.0, le=1.0, description="membrane leak per time step")
    plif_tau: float = Field(
        2.0,
        gt=1.0,
        le=1e4,
        description="model.neuron = 'plif': the initial membrane time constant tau0 of every layer (Fang et al. "
        "and SpikingJelly: 2), so w starts at -log(tau0 - 1) and the decay at 1 - 1/tau0",
    )
    v_threshold: float = Field(0.5, gt=0.0, le=100.0, description="firing threshold V_th")
    reset: Literal["hard", "soft"] = Field("hard", description="hard: u*(1-o) after a spike; soft: u - V_th*o")
    detach_reset: bool = Field(False, description="stop gradients through the reset path")
    strict_threshold: bool = Field(
        False, description="spike when u > V_th (the authors' code); false: u >= V_th (the paper's H(u - V_th))"
    )


class SurrogateConfig(_Section):
    schedule: Literal["esg", "fixed", "guo"] = Field(
        "esg",
        description="esg: the tanh surrogate with K ramping k_min->k_max over the epochs (the paper); fixed: "
        "that surrogate at K = k_fixed; guo: the authors' public code, tanh on clamp(u / 2V_th, 0, 1) normalised "
        "by 2 tanh(K/2) at K = k_fixed (zero gradient outside 0 <= u <= 2 V_th)",
    )
    k_min: float = Field(1.0, gt=0.0, le=1000.0)
    k_max: float = Field(10.0, gt=0.0, le=1000.0)
    # The authors' code uses a tanh surrogate of temperature 3 without any schedule.
    k_fixed: float = Field(3.0, gt=0.0, le=1000.0, description="K when schedule = 'fixed' or 'guo'")

    @model_validator(mode="after")
    def _k_range(self) -> SurrogateConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min: {self.k_min} must not exceed k_max ({self.k_max})")
        return self


class LossConfig(_Section):
    im_weight: float = Field(2.0, ge=0.0, le=1e6, description="lambda in CE + lambda * IM")
    im_target: Literal["membrane", "input", "rate"] = Field(
        "membrane",
        description="membrane: (mean U_l - V_th)^2 over the hidden layers (the paper); "
        "input: (mean input current of each residual block's output LIF - 0.5/T)^2, stem and last block "
        "left out (the authors' public code, with lambda 0.005); "
        "rate: (mean spike rate - 0.5/T)^2 over the hidden layers (neither: a comparison)",
    )
    im_layers: Literal["all", "blocks"] = Field(
        "all", description="all hidden spiking layers, or only the stem and residual-block outputs"
    )
    objective: Literal["ce", "tet"] = Field(
        "ce",
        description="the classification term: ce, cross-entropy of the logits averaged over T; tet (Deng et al., "
        "ICLR 2022, their public code): (1 - tet_lambda) * the mean over time of each step's cross-entropy + "
        "tet_lambda * MSE(outputs, tet_phi); prediction still averages the outputs over T",
    )
    tet_lambda: float = Field(1e-3, ge=0.0, le=1.0, description="TET: weight of the MSE regulariser")
    tet_phi: float = Field(1.0, ge=-1e3, le=1e3, description="TET: the value the MSE pulls every output towards")


class DataConfig(_Section):
    dataset: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    root: str = Field(
        "data",
        description="data directory (imagefolder: holds train/ and test/; cifar10dvs: one folder of "
        ".aedat files per class)",
    )
    download: bool = Field(False, description="let torchvision download CIFAR into root")
    batch_size: int = Field(64, ge=1, le=65536)
    eval_batch_size: int = Field(256, ge=1, le=65536)
    num_workers: int = Field(
        0, ge=0, le=128, description="data loader processes, capped at the cores available (no batch changes with it)"
    )
    device_resident: Literal["auto", "on", "off"] = Field(
        "auto",
        description="hold an in-memory data set (digits; CIFAR at 32 px, augment none or crop_flip) on the "
        "training device as stored (uint8 pixels) and batch, crop, flip and normalise it there; auto: on "
        "CUDA; on: on any device; off: the host loaders (ImageFolder and cifar10dvs always use them)",
    )
    augment: Literal["none", "crop_flip", "resized_crop_flip", "flip_roll"] = Field(
        "none",
        description="crop_flip: random crop (pad 4) + horizontal flip (CIFAR); "
        "resized_crop_flip: random resized crop + flip (ImageNet); "
        "flip_roll: horizontal flip + random roll of up to 5 pixels, the same at every step (cifar10dvs)",
    )
    image_size: int = Field(32, ge=4, le=1024, description="input side (imagefolder, cifar10dvs)")
    # strict=False: TOML and JSON hand these over as lists.
    mean: tuple[float, float, float] | None = Field(
        None, strict=False, description="normalisation mean; None: the dataset's known statistics"
    )
    std: tuple[float, float, float] | None = Field(None, strict=False, description="normalisation std")
    test_fraction: float = Field(
        0.25, gt=0.0, lt=1.0, description="digits, cifar10dvs: held-out share of each class (no official split)"
    )
    split_seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        description="seed of the train/test split (digits, cifar10dvs) and of the validation split (not the run's seed)",
    )
    val_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of each class of the training set held out for model selection (val_acc, "
        "val_loss each epoch); 0: none, the whole training set trains",
    )
    frames_split: Literal["number", "time"] = Field(
        "number",
        description="cifar10dvs: cut each recording into model.timesteps frames of equal event counts "
        "(number) or equal durations (time)",
    )
    cache_dir: str | None = Field(
        None, description="cifar10dvs: where the integrated frames are cached; None: ROOT/imloss-frames"
    )
    resize: Literal["nearest", "bilinear"] = Field(
        "nearest",
        description="cifar10dvs: how frames are resized to image_size: nearest keeps whole event counts (the "
        "authors' code: torchvision Resize with NEAREST); bilinear (antialiased) averages counts into fractions",
    )

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float] | None) -> Any:
        if std is not None and min(std) <= 0:
            raise ValueError("every std must be > 0")
        return std


class OptimConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0.0, le=100.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    nesterov: bool = False
    no_decay_norm_bias: bool = Field(False, description="exempt BatchNorm weights and all biases from weight decay")
    plif_weight_decay: bool = Field(
        False,
        description="weight-decay the learnable w of model.neuron = 'plif' or 'lif-learned-leak' like the other "
        "parameters (no_decay_norm_bias still exempts it); false: w trains without weight decay, as Fang et al.",
    )
    scheduler: Literal["cosine", "none"] = Field("cosine", description="cosine: lr -> 0 at the end")


class TrainConfig(_Section):
    epochs: int = Field(6, ge=1, le=100_000)
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="None: drawn and recorded")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the LIF time loops; auto: where it pays"
    )
    lif_kernels: Literal["auto", "eager", "compiled", "triton"] = Field(
        "auto",
        description="the LIF time loops: triton (Triton kernels, fp32 membrane state; CUDA only), compiled "
        "(torch.compile'd loops), eager; auto: triton on CUDA where triton imports, else as train.compile decides",
    )
    cuda_graphs: bool = Field(
        False,
        description="CUDA: capture the training step (forward, loss, backward, optimizer step) once as a "
        "CUDA graph and replay it per batch; static shapes, so the last partial training batch of each "
        "epoch is dropped",
    )
    max_steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="cut epochs short (smoke runs); each epoch's batches come from a fresh shuffle of the "
        "whole training set, so a short epoch sees a random subset of it, a different one every epoch",
    )
    max_eval_batches: int | None = Field(
        None,
        ge=1,
        description="score at most this many batches of the test (and validation) set each epoch (smoke runs): "
        "a fixed, class-balanced subset of max_eval_batches * eval_batch_size images chosen from the run's seed, "
        "the same every epoch; the accuracy is that subset's, and reports say so; None: the whole set",
    )
    deterministic: bool = Field(
        False, description="CUDA: deterministic algorithms, no cuDNN autotuning (slower, bit-exact reruns)"
    )
    sync_bn: bool = Field(False, description="synchronise BatchNorm statistics across GPUs (torchrun)")
    memory: Literal[MEMORY_MODES] = Field(  # type: ignore[valid-type]
        "default",
        description="activation memory of a training step: default keeps each spiking layer's input spikes, "
        "norm input and membrane potentials for every step; low keeps the norm input and the spikes as bits "
        "and recomputes the norm and the LIF in the backward pass (about a third of the memory per time step, "
        "the same gradients, a few percent more time; imloss_cli.snn.memory)",
    )
    checkpoint: bool = True
    keep_last: int = Field(1, ge=1, le=1000)
    output_dir: str = Field("runs", description="checkpoints go to OUTPUT_DIR/<run id>/")


PAPER_TABLES = ("main", "comparison", "ablation")


class PaperConfig(_Section):
    """The figure a row of Guo et al.'s tables reports for this recipe (recipes/paper/): not a setting."""

    table: Literal[PAPER_TABLES]  # type: ignore[valid-type]
    row: str = Field(min_length=1, max_length=200, description="the row's label, e.g. 'CIFAR-10 ResNet-19 T=4'")
    top1: float = Field(gt=0.0, le=100.0, description="top-1 accuracy in %, as printed")


class Recipe(_Section):
    name: str = Field("digits", min_length=1, max_length=200)
    notes: str = ""
    model: ModelConfig = ModelConfig()
    neuron: NeuronConfig = NeuronConfig()
    surrogate: SurrogateConfig = SurrogateConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    paper: PaperConfig | None = Field(None, description="the paper's figure for this recipe (outside the config hash)")

    @model_validator(mode="before")
    @classmethod
    def _ann_twin(cls, data: Any) -> Any:
        """``model.neuron = "relu"`` sets ``model.timesteps = 1`` and ``loss.im_weight = 0``.

        Set, not required: the twin is one axis of an ablation (``--grid model.neuron=lif,relu``)
        over a spiking recipe, and what is recorded is what the ANN computes, so twins of recipes
        that differ only in T or lambda share one configuration.
        """
        if not isinstance(data, dict):
            return data
        model, loss = data.get("model"), data.get("loss")
        if (model.get("neuron") if isinstance(model, dict) else getattr(model, "neuron", None)) != "relu":
            return data
        twin = {"model": _with(model, timesteps=1), "loss": _with(loss, im_weight=0.0)}
        # No spikes to keep as bits, and its ReLU saves what the next layer reads anyway: default memory.
        return {**data, **twin, "train": _with(data.get("train"), memory=MEMORY_MODES[0])}

    @model_validator(mode="after")
    def _combinations(self) -> Recipe:
        """Methods that do not compose are refused here, with the reason, before anything runs."""
        if self.model.membrane_bn and self.model.neuron == "relu":
            raise ValueError(
                "model.membrane_bn: MPBN normalises the potential of spiking neurons; the ANN twin (model.neuron = "
                "'relu') has none"
            )
        if self.model.membrane_bn and self.neuron.reset == "soft":
            raise ValueError(
                "model.membrane_bn: MPBN resets the raw potential to 0, as its authors' code does (neuron.reset = 'hard'); "
                "a soft reset would subtract V_th from a potential whose threshold the BN moves"
            )
        self._low_memory_combinations()
        return self

    def _low_memory_combinations(self) -> None:
        """What ``train.memory = "low"`` (recomputing norms and neurons in the backward pass) cannot join."""
        if self.train.memory != "low":
            return
        if self.train.cuda_graphs:
            raise ValueError(
                "train.cuda_graphs: train.memory = 'low' recomputes each block's norms and neurons inside the "
                "backward pass (torch.utils.checkpoint), which no CUDA graph capture of the step has been run "
                "with yet; use train.memory = 'default' with CUDA graphs"
            )
        if self.train.sync_bn:
            raise ValueError(
                "train.sync_bn: train.memory = 'low' recomputes every norm in the backward pass, where a "
                "SyncBatchNorm would all-gather its statistics across ranks a second time, between DDP's gradient "
                "all-reduces; use one of the two"
            )
        if self.loss.im_target == "rate":
            raise ValueError(
                "loss.im_target: 'rate' differentiates every hidden layer's whole spike tensor, held in the "
                "compute dtype from the forward pass to the loss, and train.memory = 'low' keeps spikes only as "
                "bits; use im_target 'membrane' or 'input', or train.memory = 'default'"
            )

    def with_overrides(self, overrides: dict[str, Any]) -> Recipe:
        """A validated copy with dotted-path values replaced (``{"loss.im_weight": 0}``)."""
        data = self.model_dump(mode="json")
        for path, value in overrides.items():
            set_path(data, path, value)
        return validate_recipe(data)


def _with(section: Any, **values: Any) -> Any:
    """A recipe section (dict, model or absent) with ``values`` set; anything else is left to validation."""
    if section is None:
        return values
    if isinstance(section, dict):
        return {**section, **values}
    if isinstance(section, _Section):
        return section.model_copy(update=values)
    return section


class EnergyConfig(_Section):
    """Energy per operation of the estimate E = MACs * e_mac_pj + SOPs * e_ac_pj (``snn.energy``).

    A setting of the report, not of a run: a run logs ``energy_uj`` at these defaults, and
    ``imloss report --e-mac/--e-ac`` recomputes it from the logged ``macs`` and ``sops``.
    """

    e_mac_pj: float = Field(
        4.6, gt=0.0, le=1e6, description="multiply-accumulate (32-bit float, 45 nm: 3.7 + 0.9 pJ; Horowitz 2014)"
    )
    e_ac_pj: float = Field(
        0.9, gt=0.0, le=1e6, description="synaptic operation, an accumulate (32-bit float, 45 nm; Horowitz 2014)"
    )


def load_energy(values: dict[str, Any]) -> EnergyConfig:
    """Energy constants with the given fields set (None: the default).

    Raises:
        RecipeError: a value out of range, with its field name.
    """
    try:
        return EnergyConfig.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise RecipeError([describe(err, EnergyConfig) for err in e.errors()], "energy constants") from None


def validate_recipe(data: dict[str, Any], source: str | None = None) -> Recipe:
    """Validate a recipe dict; every problem is reported with its dotted field path."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError([describe(err, Recipe) for err in e.errors()], source) from None


def field_paths() -> list[str]:
    """Every settable field of a recipe as a dotted path ("train.epochs", "loss.im_weight", "name")."""
    paths = []
    for name, info in Recipe.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            paths += [f"{name}.{leaf}" for leaf in section.model_fields]
        else:
            paths.append(name)
    return paths


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: i + 1])
            raise RecipeError([f"{path}: {where} is a value, not a section"])
        node = child
    node[leaf] = value
