"""Data-parallel training under ``torchrun`` (DistributedDataParallel), picked up automatically.

Launch any spikeprune command (or a script calling :func:`~spikeprune.engine.train.fit`,
:func:`~spikeprune.tickets.lottery.run_lottery`, :func:`~spikeprune.tickets.edgepopup.search_densities`) with
``torchrun`` and it runs data-parallel; launched plainly it runs exactly as before (one process, world size 1)::

    torchrun --standalone --nproc_per_node 2 -m spikeprune.cli lottery --dataset digits --out runs/ddp

What happens under ``torchrun`` (``WORLD_SIZE > 1`` in the environment):

* :func:`context` initialises the default process group once from torchrun's environment
  variables (``env://``): backend ``nccl`` when CUDA is available, else ``gloo`` (CPU);
  ``SPIKEPRUNE_BACKEND`` overrides it.
* **Sharding** (DistributedSampler equivalent): every rank builds the *same* global batch that one
  process would build (same shuffle, same augmentation and Poisson spikes: a pure function of
  ``(seed, split, epoch)``) and keeps its contiguous slice ``rank`` of ``world_size`` near-equal
  parts (:meth:`BatchLoader` ``rank``/``world_size``). With DDP's gradient averaging the step is the
  single-process step on the same global batch, except that BatchNorm sees per-rank batch statistics
  (DDP's default; the last, smaller batch is also weighted per rank).
* **Metrics**: :func:`~spikeprune.engine.train.train_epoch` and :func:`~spikeprune.engine.train.evaluate` sum their
  counters over ranks (:func:`all_reduce_sums`), so every rank reports the global accuracy.
* **Replicas stay identical**: DDP broadcasts rank 0's state at wrap time and averages gradients;
  after every epoch :func:`broadcast_state` copies rank 0's buffers (BatchNorm running statistics,
  which DDP lets drift per rank) to every rank, so evaluation, checkpoints and the pruning criteria
  see one model. :func:`fit` records an all-gathered checksum of the final state per rank.
* **Writes**: every result file goes through :mod:`spikeprune.core.io`; under a process group those writes
  are *collective*: rank 0 writes, the others discard their copy, and all ranks meet at a barrier
  (:func:`collective_write`). Checkpoints are therefore written once, and after any write every rank
  sees the same files, so resumption decisions ("does round 3's metrics.json exist?") agree.
  The run directory must be on a filesystem every node sees (NFS, Lustre; any directory on one node).
* **Masks** (lottery): every rank computes the mask from the same model and the same calibration
  batches; the per-rank checksums are all-gathered and stored in the mask file (``rank_checksums``),
  and every rank then trains with rank 0's mask read back from that file.

A user script that calls spikeprune functions under its own process group gets the same behaviour,
because :func:`context` uses an already initialised default group.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from spikeprune.core.diagnostics import UserError

__all__ = [
    "DistContext",
    "all_gather_objects",
    "all_reduce_sums",
    "barrier",
    "broadcast_state",
    "checksum",
    "context",
    "is_main",
    "shard_slice",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``0`` of ``1`` without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        """True when more than one process takes part (collectives are needed)."""
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        """The device of this rank: ``cuda:<local_rank>`` with nccl, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


_SINGLE = DistContext()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer; got {value!r}") from None


def context() -> DistContext:
    """The process's :class:`DistContext`, initialising the default process group from torchrun's
    environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) on first use.

    Without torchrun (``WORLD_SIZE`` unset or 1) and without an initialised group: rank 0 of 1, and no
    collective is ever called.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0),
                           dist.get_backend())
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1 or not dist.is_available():
        return _SINGLE
    backend = os.environ.get("SPIKEPRUNE_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl", "mpi"):
        raise UserError(f"SPIKEPRUNE_BACKEND must be gloo, nccl or mpi; got {backend!r}")
    local_rank = _env_int("LOCAL_RANK", 0)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def is_main() -> bool:
    """True on rank 0 (and in a plain single process). Does not initialise anything."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _group_active():
        dist.barrier()


def shard_slice(n: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` items split into ``world_size`` near-equal parts
    (the first ``n % world_size`` parts get one more), as ``torch.tensor_split`` splits."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank must be in [0, world_size); got rank={rank!r}, world_size={world_size!r}")
    q, r = divmod(n, world_size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (1 if rank < r else 0))


def all_reduce_sums(values: Mapping[str, float]) -> dict[str, float]:
    """Sum every value over ranks (float64; returns the input unchanged in a single process)."""
    if not _group_active():
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.cpu().tolist()))


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    if not _group_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_state(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers (BatchNorm running statistics) into every rank's model."""
    if not _group_active():
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src)


def checksum(tensors: Mapping[str, torch.Tensor] | nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over names, dtypes, shapes and bytes of a state dict or a model."""
    if isinstance(tensors, nn.Module):
        tensors = tensors.state_dict()
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def collective_write() -> tuple[bool, bool]:
    """``(write_here, synchronise)`` for one result-file write: under a process group only rank 0
    writes and all ranks synchronise afterwards (see the module docstring)."""
    if not _group_active():
        return True, False
    return dist.get_rank() == 0, True


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel for ``ctx`` (the model itself in one process).

    DDP broadcasts rank 0's parameters and buffers when it wraps, so every replica starts identical.
    Frozen parameters (edge-popup weights) are fine; every trainable parameter must take part in the
    loss (``find_unused_parameters`` stays off: it costs a graph traversal per step).
    """
    if not ctx.active:
        return model
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # A conv weight with one input channel (MNIST's encoding layer) gets a gradient whose strides
    # differ from DDP's bucket view; DDP copies it (correct, a few hundred bytes) but warns every run.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    if ctx.backend == "nccl":
        return DistributedDataParallel(model, device_ids=[ctx.local_rank])
    return DistributedDataParallel(model)
