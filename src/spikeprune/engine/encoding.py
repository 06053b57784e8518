"""Spike encodings and batching: how a batch of an in-memory dataset becomes network input.

* Encodings (:data:`ENCODINGS`): ``direct`` -> normalised images ``[B, C, H, W]``; ``poisson`` ->
  Bernoulli spike trains ``[T, B, C, H, W]`` with spike probability = pixel intensity; ``events`` ->
  the event counts of an event dataset's frames ``[T, B, 2, H, W]`` (they are spikes already: no encoding).
* Randomness: every draw (shuffle, crop, flip, spikes) comes from a ``torch.Generator`` seeded from
  ``(seed, split, epoch)``, so epoch ``e`` of a resumed run is identical without saved RNG state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from spikeprune.core.diagnostics import UserError
from spikeprune.engine.datasets import EventDataset, ImageDataset, check_split

__all__ = ["ENCODINGS", "BatchLoader", "encode", "frames_to_input"]

# The one list of encodings (TrainConfig's and evaluate's --encoding choices come from it).
ENCODINGS = ("direct", "poisson", "events")


def _check_encoding(encoding: object) -> str:
    """``encoding`` if it is one of :data:`ENCODINGS`, else a :class:`UserError` that lists them."""
    if encoding not in ENCODINGS:
        raise UserError(f"unknown encoding {encoding!r}; use one of {ENCODINGS}")
    return encoding  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Encodings and batching
# --------------------------------------------------------------------------------------------------
def encode(images01: torch.Tensor, encoding: str, timesteps: int | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """Encode images in [0, 1] ``[B, C, H, W]`` for an SNN.

    ``direct``: returned unchanged (the network's first layer sees analog values every step).
    ``poisson``: float spikes in {0, 1} of shape ``[T, B, C, H, W]``, each an independent Bernoulli
    draw with probability = pixel value, ``T = timesteps`` (required, >= 1).
    """
    if encoding == "direct":
        return images01
    if encoding == "events":
        raise UserError("encoding 'events' takes the frames of an event dataset, not images in [0, 1]: "
                        "use frames_to_input (or a BatchLoader over an EventDataset)")
    _check_encoding(encoding)  # direct and events were handled above: what passes is poisson
    if not isinstance(timesteps, int) or timesteps < 1:
        raise UserError(f"poisson encoding needs timesteps >= 1, got {timesteps!r}")
    # rand in [0, 1): p = 0 never fires, p = 1 always does.
    u = torch.rand((timesteps, *images01.shape), generator=generator, dtype=images01.dtype, device=images01.device)
    return (u < images01).to(images01.dtype)


def frames_to_input(frames: torch.Tensor, time_bins: int, timesteps: int | None) -> torch.Tensor:
    """The ``events`` encoding: uint8 frames ``[B, F*2, H, W]`` -> float32 spike counts ``[T, B, 2, H, W]``.

    The frames already are spikes (events per pixel, polarity and time bin), so no encoding layer
    runs on them. ``T = timesteps`` must divide ``F = time_bins``: timestep ``t`` is the sum of frames
    ``t*F/T .. (t+1)*F/T - 1``, i.e. the events of ``F/T`` consecutive bins (time binning: a bin ``F/T``
    times as long; count binning: ``F/T`` times as many events).
    """
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1 or time_bins % timesteps:
        divisors = ", ".join(str(d) for d in range(1, time_bins + 1) if time_bins % d == 0)
        raise UserError(f"the event frames have {time_bins} time bins; timesteps must divide it ({divisors}); "
                        f"got {timesteps!r}")
    b, _, h, w = frames.shape
    x = frames.view(b, timesteps, time_bins // timesteps, 2, h, w).to(torch.float32).sum(2)
    return x.transpose(0, 1).contiguous()


def _epoch_generator(seed: int, split: str, epoch: int) -> torch.Generator:
    # sha256 rather than hash(): str hashes are salted per process, which would break resumption.
    digest = hashlib.sha256(f"spikeprune:{seed}:{split}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after ``pad`` zero pixels each side, then random horizontal flip; vectorised.

    ``images``: uint8 ``[B, C, H, W]`` -> same shape. One gather with per-sample row/column indices
    replaces a per-sample Python loop.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    flip = torch.rand(b, 1, generator=generator) < 0.5
    rows = dy + torch.arange(h)                                  # [B, H]
    cols = dx + torch.arange(w)                                  # [B, W]
    cols = torch.where(flip, cols.flip(1), cols)                 # flipping = reading columns backwards
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class BatchLoader:
    """Iterable of ``(inputs, labels)`` batches over one split of an :class:`ImageDataset`.

    ``inputs`` is float32: ``direct`` -> ``[B, C, H, W]`` normalised as ``(x/255 - mean) / std``;
    ``poisson`` -> ``[T, B, C, H, W]`` spikes in {0, 1} with probability ``x/255`` (not normalised);
    ``events`` (an :class:`~spikeprune.engine.datasets.EventDataset` only) -> event counts ``[T, B, 2, H, W]``
    (:func:`frames_to_input`), no encoding, no randomness.
    ``labels`` is int64 ``[B]``. ``augment=None`` applies the dataset's default augmentation on the
    train split only; ``True`` forces crop+flip (padding ``max(1, round(H/8))``: 4 px for 32x32);
    ``False`` disables it. ``limit`` keeps only the first ``limit`` samples of the split.

    The randomness of an epoch is a pure function of ``(seed, split, epoch)``: iterating twice
    without :meth:`set_epoch` yields identical batches, and a resumed run reproduces epoch ``e``.

    Data parallelism (``world_size > 1``, see :mod:`spikeprune.core.distributed`): every rank draws the
    global batch exactly as one process would (same order, augmentation and Poisson spikes) and keeps
    its contiguous part ``rank`` of ``world_size``; ``len()`` stays the number of global batches so all
    ranks take the same number of steps. A global batch smaller than ``world_size`` (a tiny last
    batch) is skipped on every rank, so no rank ever sees an empty batch.
    """

    def __init__(self, dataset: ImageDataset, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
                 encoding: str = "direct", timesteps: int | None = None, augment: bool | None = None,
                 drop_last: bool = False, limit: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        _check_encoding(encoding)
        if encoding == "poisson" and (not isinstance(timesteps, int) or timesteps < 1):
            raise UserError(f"poisson encoding needs timesteps >= 1, got {timesteps!r}")
        is_events = isinstance(dataset, EventDataset)
        if (encoding == "events") != is_events:
            raise UserError(f"{dataset.name} is an event dataset (its frames are already spikes): use encoding "
                            "'events'" if is_events else
                            f"encoding 'events' is for event datasets; {dataset.name} is an image dataset")
        if is_events:  # checks now that timesteps divides the frames' time bins, not at the first batch
            frames_to_input(dataset.train_images[:0], dataset.time_bins, timesteps)
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise UserError(f"limit must be a positive integer or None, got {limit!r}")
        self.dataset, self.split, self.batch_size = dataset, check_split(split), batch_size
        self.shuffle, self.seed, self.encoding, self.timesteps = shuffle, seed, encoding, timesteps
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise UserError(f"rank must be in [0, world_size); got rank={rank!r}, world_size={world_size!r}")
        self.drop_last, self.epoch = drop_last, 0
        self.rank, self.world_size = rank, world_size
        self.augment = (dataset.augment == "crop_flip" and split == "train") if augment is None else bool(augment)
        self.pad = max(1, round(dataset.image_size[0] / 8))
        self.images, self.labels = dataset.images(split)[:limit], dataset.labels(split)[:limit]
        c = dataset.in_channels
        self._mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, c, 1, 1)
        self._std = torch.tensor(dataset.std, dtype=torch.float32).view(1, c, 1, 1)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle/augmentation/spike randomness the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = _epoch_generator(self.seed, self.split, self.epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        sharded = self.world_size > 1
        random_batch = self.augment or self.encoding == "poisson"  # draws from g per sample
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            part = slice(None)
            if sharded:
                if idx.numel() < self.world_size:
                    continue  # every rank skips it: nobody gets an empty batch
                from spikeprune.core.distributed import shard_slice

                part = shard_slice(idx.numel(), self.rank, self.world_size)
                if not random_batch:  # nothing random to draw: take the shard before loading
                    idx, part = idx[part], slice(None)
            images = self.images[idx]
            if self.augment:
                images = _crop_flip(images, self.pad, g)
            if self.encoding == "events":  # already spikes: counts per timestep, no encoding
                yield frames_to_input(images, self.dataset.time_bins, self.timesteps)[:, part], self.labels[idx][part]
                continue
            x = images.to(torch.float32).div_(255)
            if self.encoding == "direct":
                x = x.sub_(self._mean).div_(self._std)
            else:
                x = encode(x, "poisson", self.timesteps, g)
            if self.encoding == "direct":
                yield x[part], self.labels[idx][part]
            else:  # [T, B, ...]: the batch is dim 1
                yield x[:, part], self.labels[idx][part]
