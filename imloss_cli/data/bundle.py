"""What the engine receives from the data package: a DataBundle of train and test sets, the
in-memory TensorPairs that digits uses, SeededSet for datasets that augment from a given seed, and
DataError for data that cannot be loaded."""

from __future__ import annotations

from imloss_cli.errors import ImlossError
from dataclasses import dataclass

from torch import Tensor
from torch.utils.data import Dataset


class DataError(ImlossError):
    """Data that cannot be loaded; the message names the file or directory and what to do."""


@dataclass(frozen=True)
class DataBundle:
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int  # side of the (square) input
    classes: tuple[str, ...]
    val: Dataset | None = None  # held out of the training set for model selection (data.val_fraction)


class TensorPairs(Dataset):
    """An in-memory dataset; its loaders slice whole batches instead of collating samples."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


class SeededSet(Dataset):
    """A dataset that augments from a seed it is handed: ``ds[(index, sample_seed)]`` is deterministic.

    The train loader asks for (index, sample_seed) pairs; ``ds[index]`` draws the seed from torch's
    global RNG instead, as torchvision transforms do.
    """
