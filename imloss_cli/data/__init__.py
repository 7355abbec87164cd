"""Datasets and loaders: digits (bundled), CIFAR-10/100 (python pickles), ImageFolder trees and
CIFAR10-DVS (event recordings).

Every setting comes from ``DataConfig``; this package only adds dataset facts (channel statistics,
file layouts). ``build_datasets`` (sources) loads and checks the data into a ``DataBundle``
(bundle); ``train_loader`` and ``test_loader`` (loaders) batch it, training batches as a pure
function of (seed, epoch, rank, world_size). CIFAR's files live in cifar, the RGB image pipelines
in images; CIFAR10-DVS in dvs, reading AEDAT files (aedat), integrating them into frames (frames)
kept in a frame cache (framecache).
"""

from imloss_cli.data.bundle import DataBundle, DataError, SeededSet, TensorPairs
from imloss_cli.data.cifar import CIFAR10_STATS, CIFAR100_STATS, CIFAR_HOME
from imloss_cli.data.dvs import CIFAR10DVS_CLASSES, EventFrames
from imloss_cli.data.images import ImageSet
from imloss_cli.data.loaders import eval_loader, test_loader, train_loader
from imloss_cli.data.sources import IMAGENET_STATS, build_datasets

__all__ = [
    "CIFAR10_STATS",
    "CIFAR100_STATS",
    "CIFAR10DVS_CLASSES",
    "CIFAR_HOME",
    "IMAGENET_STATS",
    "DataBundle",
    "DataError",
    "EventFrames",
    "ImageSet",
    "SeededSet",
    "TensorPairs",
    "build_datasets",
    "eval_loader",
    "test_loader",
    "train_loader",
]
