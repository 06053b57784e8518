"""The in-memory datasets: :class:`ImageDataset`, :class:`EventDataset`, and the validation split.

Every dataset is held in memory as uint8 tensors; where they come from (files, downloads, the
registry) is :mod:`spikeprune.engine.data`, how a batch of them becomes network input is
:mod:`spikeprune.engine.encoding`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from spikeprune.core.diagnostics import UserError

__all__ = ["AUGMENTATIONS", "SPLITS", "EventDataset", "ImageDataset", "split_validation", "validation_indices"]

AUGMENTATIONS = ("none", "crop_flip")
SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------------------
# eq=False: a generated __eq__ would compare tensors element-wise and raise; identity is what we want.
@dataclass(frozen=True, eq=False)
class ImageDataset:
    """An image classification dataset held in memory.

    Images are uint8 ``[N, C, H, W]``, labels int64 ``[N]``. ``mean``/``std`` are per-channel
    statistics of pixels scaled to [0, 1], used by the ``direct`` encoding. ``augment`` is the
    default train-time augmentation: ``"none"`` or ``"crop_flip"``.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str

    def __post_init__(self) -> None:
        # Fail here, once, rather than with a shape error deep inside a training loop.
        for split in SPLITS:
            images, labels = self.images(split), self.labels(split)
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise UserError(f"{self.name}: {split} images must be uint8 [N, C, H, W], got "
                                 f"{images.dtype} {tuple(images.shape)}")
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise UserError(f"{self.name}: {split} labels must be int64 [{images.shape[0]}], got "
                                 f"{labels.dtype} {tuple(labels.shape)}")
            if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
                raise UserError(f"{self.name}: {split} labels fall outside 0..{self.num_classes - 1}")
        if self.test_images.shape[1:] != self.train_images.shape[1:]:
            raise UserError(f"{self.name}: train and test images differ in shape")
        if not len(self.mean) == len(self.std) == self.in_channels or min(self.std) <= 0:
            raise UserError(f"{self.name}: need one mean and one positive std per channel")
        if self.augment not in AUGMENTATIONS:
            raise UserError(f"{self.name}: unknown augment {self.augment!r}; use one of {AUGMENTATIONS}")

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    def images(self, split: str) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` images of ``split`` ("train" or "test")."""
        return self.train_images if check_split(split) == "train" else self.test_images

    def labels(self, split: str) -> torch.Tensor:
        """int64 ``[N]`` labels of ``split`` ("train" or "test")."""
        return self.train_labels if check_split(split) == "train" else self.test_labels

    def __repr__(self) -> str:  # the default would print every tensor
        return (f"ImageDataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"shape={tuple(self.train_images.shape[1:])}, classes={self.num_classes}, "
                f"augment={self.augment!r})")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {SPLITS}")
    return split


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 ``[N, C, H, W]`` images scaled to [0, 1]."""
    x = images.to(torch.float64).div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1, correction=0).clamp_min(1e-6).tolist())


# eq=False: identity, as for ImageDataset (its tensors cannot be compared with ==).
@dataclass(frozen=True, eq=False)
class EventDataset(ImageDataset):
    """The frames of a neuromorphic event dataset (N-MNIST, DVS128 Gesture, CIFAR10-DVS), held in memory.

    ``train_images``/``test_images`` are uint8 ``[N, F*2, H, W]``: frame ``f``, polarity ``p`` of a
    sample is channel ``2*f + p`` (event counts per pixel, saturated at 255); ``time_bins`` = ``F``.
    Stacking the frames along channels lets the validation split, ``train_limit`` and sharding of the
    image datasets apply unchanged. ``in_channels`` is 2 (the polarities): what the model's first layer
    receives per timestep. ``mean``/``std`` are one entry per polarity and unused (the ``events``
    encoding feeds counts, unnormalised). Built by :mod:`spikeprune.engine.events`.
    """

    time_bins: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.time_bins, bool) or not isinstance(self.time_bins, int) or self.time_bins < 1:
            raise UserError(f"{self.name}: time_bins must be a positive integer, got {self.time_bins!r}")
        if self.train_images.dim() != 4 or self.train_images.shape[1] != 2 * self.time_bins:
            raise UserError(f"{self.name}: event frames must be uint8 [N, 2*time_bins={2 * self.time_bins}, H, W], "
                            f"got {tuple(self.train_images.shape)}")
        super().__post_init__()

    @property
    def in_channels(self) -> int:
        return 2

    def frames(self, split: str) -> torch.Tensor:
        """uint8 ``[N, F, 2, H, W]`` frames of ``split``."""
        x = self.images(split)
        return x.view(x.shape[0], self.time_bins, 2, *x.shape[2:])

    def __repr__(self) -> str:
        return (f"EventDataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"frames={self.time_bins}x2x{self.image_size[0]}x{self.image_size[1]}, classes={self.num_classes})")


# --------------------------------------------------------------------------------------------------
# Validation split (issue 14): every selection (best epoch, criterion, hyperparameter) is made on
# samples carved from the *training* set; the test set is only ever reported.
# --------------------------------------------------------------------------------------------------
_SPLIT_CACHE: "weakref.WeakKeyDictionary[ImageDataset, dict]" = weakref.WeakKeyDictionary()


def validation_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) index tensors partitioning ``range(n)``; both sorted ascending.

    ``round(fraction * n)`` indices (at least 1 when ``fraction > 0``, at most ``n - 1``) are drawn
    uniformly without replacement from a generator seeded by sha256 of ``seed`` (stable across
    processes and machines: ``torch.randperm`` on the CPU generator is deterministic for a seed).
    Sorting keeps the training set in its original order, so ``train_limit`` ("the first N") stays
    meaningful.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1); got {fraction!r}")
    k = 0 if fraction == 0 else min(max(1, round(fraction * n)), n - 1)
    if fraction > 0 and k < 1:
        raise UserError(f"cannot carve a validation set from {n} training sample(s)")
    digest = hashlib.sha256(f"spikeprune:validation:{seed}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    perm = torch.randperm(n, generator=g)
    return perm[k:].sort().values, perm[:k].sort().values


def split_validation(dataset: ImageDataset, fraction: float, seed: int = 0
                     ) -> tuple[ImageDataset, ImageDataset | None, dict[str, Any]]:
    """Carve a validation set out of ``dataset``'s training split.

    Returns ``(fit_set, val_set, info)``: ``fit_set`` is ``dataset`` with its train split reduced to
    the samples not held out (test split unchanged); ``val_set`` holds the held-out samples as its
    *test* split (so a ``BatchLoader(val_set, "test", ...)`` reads them un-augmented), or is ``None``
    when ``fraction == 0``; ``info`` = ``{"fraction", "seed", "train_size", "val_size", "test_size"}``
    is what every result records. Normalisation statistics stay those of the whole training split
    (pixel statistics, no labels). Results are cached per dataset object, so repeated calls (every
    lottery round) cost nothing and return the same objects.
    """
    key = (float(fraction), int(seed))
    cache = _SPLIT_CACHE.setdefault(dataset, {})
    if key in cache:
        return cache[key]
    n = int(dataset.train_labels.shape[0])
    train_idx, val_idx = validation_indices(n, fraction, seed)
    info = {"fraction": float(fraction), "seed": int(seed), "train_size": int(train_idx.numel()),
            "val_size": int(val_idx.numel()), "test_size": int(dataset.test_labels.shape[0])}
    if val_idx.numel() == 0:
        result: tuple = (dataset, None, info)
    else:
        # dataclasses.replace keeps the dataset's class and its extra fields (an EventDataset's time_bins).
        fit_set = dataclasses.replace(dataset, train_images=dataset.train_images[train_idx],
                                      train_labels=dataset.train_labels[train_idx])
        val_set = dataclasses.replace(dataset, name=f"{dataset.name}[val]", train_images=fit_set.train_images[:0],
                                      train_labels=fit_set.train_labels[:0], test_images=dataset.train_images[val_idx],
                                      test_labels=dataset.train_labels[val_idx])
        result = (fit_set, val_set, info)
    cache[key] = result
    return result
