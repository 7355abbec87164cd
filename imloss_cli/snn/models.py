"""Spiking networks, built from a few blocks and looked up by name (timm's create_model idea).

Every model takes a static image batch [B, C, H, W] (direct encoding: the image is the input at
each of T time steps) or a batch of T-frame sequences [B, T, C, H, W] (event data, batch-first as
the loaders collate it), and returns logits [B, classes] averaged over T. Inside, activations are
time-first [T, B, ...]; stateless layers (conv, norm, pool, linear) run on the folded batch
[T*B, ...] via ``Folded``. Hidden spiking layers are ``LIF`` modules; the readout is a plain linear
layer, so it is never part of IM-Loss.

``NetSpec.neuron = "relu"`` builds the ANN twin: the same modules under the same names, with a
ReLU wherever a LIF would be (attributes called ``lif`` then hold the ReLU), so the two line up
layer by layer; it is meant to run at T = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from imloss_cli.snn.mpbn import MembraneBNLIF
from imloss_cli.snn.neuron import LIF
from imloss_cli.snn.norm import TdBatchNorm2d
from imloss_cli.snn.params import LIFParams

if TYPE_CHECKING:  # snn/ needs only torch; a recipe is read through its attributes
    from imloss_cli.recipe import Recipe


@dataclass(frozen=True)
class NetSpec:
    """What every builder takes: the same keyword arguments for all architectures.

    No defaults here: the neuron and norm settings come from a recipe (``from_recipe``), whose
    pydantic fields are the one place defaults live.
    """

    num_classes: int
    in_channels: int
    timesteps: int
    image_size: int
    decay: float
    v_threshold: float
    reset: str
    detach_reset: bool
    norm: str
    neuron: str  # "lif", "plif" (Fang et al.), "lif-learned-leak" (a learnable decay), or "relu" for the ANN twin
    plif_tau: float  # PLIF's initial time constant tau0
    membrane_bn: bool = False  # MPBN: a BatchNorm on each hidden LIF's potential before it fires
    strict_threshold: bool = False  # spike on u > V_th (the authors' code) instead of u >= V_th
    surrogate: str = "tanh"  # the backward's shape: "tanh" (ESG, fixed K) or "guo" (the authors' code)
    init: str = "torch"  # "guo": the authors' weight init (``init_weights``)
    stem_pool: str = "max"  # resnet34's pooling after the stem: "max" or "avg"
    kernels: str = "eager"  # LIF kernel set; not a setting: the trainer decides it per device and run length

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, num_classes: int, in_channels: int, image_size: int, *, timesteps: int | None = None
    ) -> NetSpec:
        """The spec of ``recipe``'s network for a data set of this shape (``timesteps``: override T)."""
        n = recipe.neuron
        return cls(
            num_classes=num_classes,
            in_channels=in_channels,
            timesteps=recipe.model.timesteps if timesteps is None else timesteps,
            image_size=image_size,
            decay=n.decay,
            v_threshold=n.v_threshold,
            reset=n.reset,
            detach_reset=n.detach_reset,
            norm=recipe.model.norm,
            neuron=recipe.model.neuron,
            plif_tau=n.plif_tau,
            membrane_bn=recipe.model.membrane_bn,
            strict_threshold=n.strict_threshold,
            surrogate="guo" if recipe.surrogate.schedule == "guo" else "tanh",
            init=recipe.model.init,
            stem_pool=recipe.model.stem_pool,
        )

    def lif(self, channels: int | None = None, block_output: bool = True, spatial: bool = True) -> LIF:
        """A hidden spiking layer on ``channels`` channels (feature maps, or ``spatial=False`` features):
        a learnable decay for ``neuron = "plif"`` (Fang et al.'s charge, tau from ``plif_tau``) and
        ``"lif-learned-leak"`` (imloss's charge, from ``decay``), MPBN with ``membrane_bn`` (which needs
        ``channels``)."""
        fang = self.neuron == "plif"
        params = LIFParams(
            decay=1.0 - 1.0 / self.plif_tau if fang else self.decay, v_threshold=self.v_threshold,
            soft_reset=self.reset == "soft", detach_reset=self.detach_reset, strict=self.strict_threshold,
            surrogate=self.surrogate, decay_input=fang,
        )  # fmt: skip
        args = (params, self.kernels, block_output, self.neuron in ("plif", "lif-learned-leak"))
        if self.membrane_bn:
            if channels is None:
                raise ValueError("a membrane BatchNorm needs the layer's channel count")
            return MembraneBNLIF(channels, *args, spatial=spatial)
        return LIF(*args)

    def activation(self, channels: int, block_output: bool = True, spatial: bool = True) -> nn.Module:
        """The network's neuron on ``channels`` channels: a LIF, or a ReLU in the ANN twin (``neuron = "relu"``)."""
        return nn.ReLU() if self.neuron == "relu" else self.lif(channels, block_output, spatial)

    def conv_norm(self, cin: int, cout: int, kernel: int, stride: int = 1, alpha: float = 1.0) -> nn.Sequential:
        """conv + normalisation; tdBN normalises to alpha * V_th, a fixed scale (``snn.norm``)."""
        conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=self.norm == "none")
        if self.norm == "none":
            return nn.Sequential(conv)
        bn = TdBatchNorm2d(cout, alpha * self.v_threshold) if self.norm == "tdbn" else nn.BatchNorm2d(cout)
        return nn.Sequential(conv, bn)


class Folded(nn.Sequential):
    """Stateless layers on the folded batch: [T, B, ...] -> [T*B, ...] -> [T, B, ...]."""

    def forward(self, x_seq: Tensor) -> Tensor:
        T, B = x_seq.shape[:2]
        return super().forward(x_seq.flatten(0, 1)).unflatten(0, (T, B))


class Encoder(nn.Module):
    """First conv + norm + neuron (LIF, or ReLU in the ANN twin): a static image [B, C, H, W] or a
    time-first sequence [T, B, C, H, W].

    A static image is the same at every step, so the conv and norm run once on [B, ...] and the
    result is broadcast over T: exact for the forward (BatchNorm's batch statistics of T identical
    copies equal those of one), T times less work. A sequence changes over time, so they run on the
    folded batch [T*B, ...] like every later layer.
    """

    def __init__(self, layers: nn.Module, lif: nn.Module, timesteps: int) -> None:
        super().__init__()
        self.layers, self.lif, self.timesteps = layers, lif, timesteps

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 5:
            if x.shape[0] != self.timesteps:
                raise ValueError(f"a sequence of {x.shape[0]} frames for a network of T = {self.timesteps}")
            T, B = x.shape[:2]
            return self.lif(self.layers(x.flatten(0, 1)).unflatten(0, (T, B)))  # [T, B, C, H, W]
        y = self.layers(x)  # [B, C, H, W]
        return self.lif(y.unsqueeze(0).expand(self.timesteps, *y.shape))  # [T, B, C, H, W]


class Readout(nn.Module):
    """Global average pool (for feature maps), linear layer, mean of the logits over T.

    The pool is a module, so the operation count follows the spikes through it (``snn.ops``).
    """

    def __init__(self, features: int, num_classes: int, pool: bool = True) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) if pool else nn.Flatten()
        self.fc = nn.Linear(features, num_classes)
        self.store_steps = False  # keep each step's logits (TET's loss reads them)
        self.step_logits: Tensor | None = None  # [T, B, classes] of the last forward pass

    def forward(self, x_seq: Tensor) -> Tensor:
        x = self.pool(x_seq.flatten(0, 1))  # [T*B, features]
        logits_seq = self.fc(x).unflatten(0, x_seq.shape[:2])  # [T, B, classes]
        self.step_logits = logits_seq if self.store_steps else None
        return logits_seq.mean(0)  # [B, classes]


class SpikingNet(nn.Module):
    """encoder -> body -> readout; the common shape of every model here."""

    def __init__(self, encoder: Encoder, body: nn.Module, readout: Readout) -> None:
        super().__init__()
        self.encoder, self.body, self.readout = encoder, body, readout

    def forward(self, x: Tensor) -> Tensor:
        """x: images [B, C, H, W] or frame sequences [B, T, C, H, W]; returns logits [B, classes]."""
        if x.ndim == 5:
            x = x.transpose(0, 1)  # [T, B, C, H, W]: time-first from here on
        return self.readout(self.body(self.encoder(x)))


class BasicBlock(nn.Module):
    """Spiking residual block: LIF(norm(conv(LIF(norm(conv(x))))) + shortcut(x)).

    The inner LIF is not a block output (``im_layers = "blocks"`` leaves it out of IM-Loss).
    """

    def __init__(self, spec: NetSpec, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        # tdBN scales the two branches that are summed by 1/sqrt(2) (Zheng et al., 2021).
        alpha = 1.0 / math.sqrt(2.0)
        self.conv1 = Folded(*spec.conv_norm(cin, cout, 3, stride))
        self.lif1 = spec.activation(cout, block_output=False)
        self.conv2 = Folded(*spec.conv_norm(cout, cout, 3, 1, alpha))
        self.shortcut = (
            Folded(*spec.conv_norm(cin, cout, 1, stride, alpha)) if stride != 1 or cin != cout else nn.Identity()
        )
        self.lif2 = spec.activation(cout, block_output=True)

    def forward(self, x_seq: Tensor) -> Tensor:
        return self.lif2(self.conv2(self.lif1(self.conv1(x_seq))) + self.shortcut(x_seq))


def _resnet(
    spec: NetSpec,
    blocks: list[int],
    widths: list[int],
    *,
    stem: int | None = None,
    imagenet_stem: bool = False,
    hidden_fc: int | None = None,
) -> SpikingNet:
    """Basic-block ResNet. ``stem``: the stem's width (default the first stage's); ``hidden_fc``:
    average pool -> FC-``hidden_fc`` -> neuron before the readout (the tdBN/TET head)."""
    if imagenet_stem:
        first = stem or 64
        stem_layers = spec.conv_norm(spec.in_channels, first, 7, 2)
    else:
        first = stem or widths[0]
        stem_layers = spec.conv_norm(spec.in_channels, first, 3)
    encoder = Encoder(stem_layers, spec.activation(first), spec.timesteps)
    stem_pool = nn.AvgPool2d(3, 2, 1) if spec.stem_pool == "avg" else nn.MaxPool2d(3, 2, 1)
    layers: list[nn.Module] = [Folded(stem_pool)] if imagenet_stem else []
    cin = first
    for stage, (n, width) in enumerate(zip(blocks, widths)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(BasicBlock(spec, cin, width, stride))
            cin = width
    if hidden_fc is None:
        return SpikingNet(encoder, nn.Sequential(*layers), Readout(cin, spec.num_classes))
    layers += [
        Folded(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, hidden_fc)),
        spec.activation(hidden_fc, spatial=False),
    ]
    return SpikingNet(encoder, nn.Sequential(*layers), Readout(hidden_fc, spec.num_classes, pool=False))


def resnet19(spec: NetSpec) -> SpikingNet:
    """ResNet-19 of the tdBN/TET comparison rows: 3x3 stem of 128, basic blocks [3, 3, 2] at
    128/256/512, global average pool, FC-256 and its spiking layer, then the FC readout.

    Follows tdBN's architecture table (Zheng et al., AAAI 2021: a 128-channel stem) with the head of
    TET's public code (models/resnet_models.py: fc1 256 -> LIF -> fc2); that code's stem has 64
    channels instead, which ``resnet19-tet`` builds.
    """
    return _resnet(spec, [3, 3, 2], [128, 256, 512], hidden_fc=256)


def resnet19_tet(spec: NetSpec) -> SpikingNet:
    """ResNet-19 exactly as TET's public code (Deng et al., ICLR 2022): a 64-channel stem (the first
    block then widens to 128 through a 1x1 shortcut), blocks [3, 3, 2] at 128/256/512, FC-256, LIF, FC."""
    return _resnet(spec, [3, 3, 2], [128, 256, 512], stem=64, hidden_fc=256)


def resnet19_guo(spec: NetSpec) -> SpikingNet:
    """ResNet-19 of the IM-Loss authors' public code (Guo et al.): 3x3 stem of 128, blocks [3, 3, 2]
    at 128/256/512, global average pool and one FC readout (no FC-256)."""
    return _resnet(spec, [3, 3, 2], [128, 256, 512])


def resnet20(spec: NetSpec) -> SpikingNet:
    """ResNet-20 as in the IM-Loss authors' code: basic blocks [3, 3, 3] at 128/256/512, one FC readout."""
    return _resnet(spec, [3, 3, 3], [128, 256, 512])


def resnet34(spec: NetSpec) -> SpikingNet:
    """ResNet-34 for ImageNet (He et al.'s layout, as tdBN and TET use it): 7x7 stride-2 stem of 64,
    max pool (``stem_pool = "avg"``: AvgPool2d(3, 2, 1), the IM-Loss authors' code), blocks
    [3, 4, 6, 3] at 64..512, global average pool, one FC readout."""
    return _resnet(spec, [3, 4, 6, 3], [64, 128, 256, 512], imagenet_stem=True)


VGG16_LAYOUT = [64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A"]


def vgg16(spec: NetSpec) -> SpikingNet:
    """VGG-16 for CIFAR (Simonyan and Zisserman's 13 convolutions, with BN and average pooling as SNN
    papers use it; the IM-Loss authors' CIFAR-100 row): one linear readout on the pooled 512 maps."""
    encoder = Encoder(spec.conv_norm(spec.in_channels, 64, 3), spec.activation(64), spec.timesteps)
    layers: list[nn.Module] = []
    cin = 64
    for item in VGG16_LAYOUT[1:]:
        if item == "A":
            layers.append(Folded(nn.AvgPool2d(2)))
        else:
            layers += [Folded(*spec.conv_norm(cin, int(item), 3)), spec.activation(int(item))]
            cin = int(item)
    return SpikingNet(encoder, nn.Sequential(*layers), Readout(cin, spec.num_classes))


def convnet3(spec: NetSpec) -> SpikingNet:
    """Small net for 8x8 digits: conv32 - conv64/2 - fc128, each followed by LIF, then the readout."""
    side = (spec.image_size + 1) // 2  # after the stride-2 conv
    body = nn.Sequential(
        Folded(*spec.conv_norm(32, 64, 3, 2)),
        spec.activation(64),
        Folded(nn.Flatten(), nn.Linear(64 * side * side, 128)),
        spec.activation(128, spatial=False),
    )
    encoder = Encoder(spec.conv_norm(spec.in_channels, 32, 3), spec.activation(32), spec.timesteps)
    return SpikingNet(encoder, body, Readout(128, spec.num_classes, pool=False))


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its builder, the source it follows, the input it is made for."""

    build: Callable[[NetSpec], SpikingNet]
    source: str
    input: tuple[int, int]  # (channels, side) of the data set it is meant for


MODELS: dict[str, ModelEntry] = {
    "convnet3": ModelEntry(convnet3, "imloss: a small net for the digits default", (1, 8)),
    "resnet19": ModelEntry(resnet19, "tdBN's table (128 stem) with TET's FC-256 head: the comparison rows", (3, 32)),
    "resnet19-tet": ModelEntry(resnet19_tet, "TET's public code (64-channel stem, FC-256 head)", (3, 32)),
    "resnet19-guo": ModelEntry(resnet19_guo, "the IM-Loss authors' public code (one FC readout)", (3, 32)),
    "resnet20": ModelEntry(resnet20, "the IM-Loss authors' public code", (3, 32)),
    "vgg16": ModelEntry(vgg16, "VGG-16 with BN and average pooling, as SNN papers use it", (3, 32)),
    "resnet34": ModelEntry(resnet34, "He et al.'s ImageNet layout, as tdBN and TET use it", (3, 224)),
}


def create_model(arch: str, spec: NetSpec) -> SpikingNet:
    """Build a registered architecture by name.

    Raises:
        KeyError: unknown name (recipes are validated against the same names beforehand).
    """
    if arch not in MODELS:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(MODELS)}")
    return MODELS[arch].build(spec)


def init_weights(model: nn.Module, init: str) -> None:
    """Re-initialise the weight layers: "torch" leaves PyTorch's defaults; "guo" is the IM-Loss
    authors' code (models/resnet.py): convolutions normal(0, sqrt(2 / (k_h * k_w * out_channels))),
    linear layers normal(0, 1 / in_features) with bias 0 (their std is 1/n, not 1/sqrt(n))."""
    if init == "torch":
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0 / m.in_features)
            nn.init.zeros_(m.bias)


def build_model(recipe: Recipe, num_classes: int, in_channels: int, image_size: int) -> SpikingNet:
    """The recipe's network for a data set of ``num_classes``, ``in_channels`` and square side ``image_size``."""
    spec = NetSpec.from_recipe(recipe, num_classes, in_channels, image_size)
    model = create_model(recipe.model.arch, spec)
    init_weights(model, spec.init)
    return model
