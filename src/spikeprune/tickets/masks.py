"""Masks over prunable weights (SPEC §3): the Mask type, enforcement, reports, safetensors I/O.

A mask is ``{parameter name: bool tensor}`` over the *prunable* weights: every conv and linear weight
(``dim > 1``), first and last layers included. ``True`` keeps a weight. Pruned weights must stay
exactly zero through training, which :func:`enforce` guarantees two ways: their gradients are zeroed
(so momentum buffers and weight decay see nothing to update) and the mask is re-applied after every
optimizer step (so nothing else can revive them either).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from spikeprune.core.diagnostics import UserError
from spikeprune.core.io import load_checkpoint, save_checkpoint

__all__ = ["ForwardMasking", "Mask", "MaskEnforcement", "enforce", "mask_forward", "prunable_weights"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{qualified name: weight}`` of every conv/linear layer of ``model``, in module order.

    Raises ValueError if there is none, since nothing could then be pruned.
    """
    found = {
        f"{name}.weight" if name else "weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES) and getattr(m, "weight", None) is not None and m.weight.dim() > 1
    }
    if not found:
        raise UserError(f"{type(model).__name__} has no prunable layer (no conv or linear weight)")
    return found


class Mask(Mapping[str, torch.Tensor]):
    """Immutable mapping ``{weight name: bool tensor}``; ``True`` = kept.

    ``density`` = fraction kept, ``sparsity`` = fraction removed, both over all masked weights.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._t: dict[str, torch.Tensor] = {}
        self._kept: int | None = None
        for name, t in tensors.items():
            if not torch.is_tensor(t):
                raise TypeError(f"mask entry {name!r} is not a tensor")
            self._t[name] = t.detach().to(torch.bool)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def ones(cls, model: nn.Module) -> "Mask":
        """Keep everything: the mask of a dense model."""
        return cls({n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()})

    @classmethod
    def from_model(cls, model: nn.Module) -> "Mask":
        """Weights that are exactly zero count as pruned (how an already-pruned model is read)."""
        return cls({n: w.detach() != 0 for n, w in prunable_weights(model).items()})

    # -- mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density:.4f})"

    # -- numbers ------------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self._t.values())

    @property
    def num_kept(self) -> int:
        if self._kept is None:  # a Mask is immutable, so count once
            self._kept = sum(int(t.sum()) for t in self._t.values())
        return self._kept

    @property
    def density(self) -> float:
        """Fraction of masked weights kept."""
        return self.num_kept / max(self.numel, 1)

    @property
    def sparsity(self) -> float:
        """Fraction of masked weights removed."""
        return 1.0 - self.density

    def report(self) -> list[dict[str, Any]]:
        """One row per layer plus a final ``"total"`` row: numel, kept, density, sparsity."""
        rows = []
        for name, t in self._t.items():
            kept = int(t.sum())
            rows.append({"name": name, "shape": list(t.shape), "numel": t.numel(), "kept": kept,
                         "density": kept / t.numel(), "sparsity": 1 - kept / t.numel()})
        rows.append({"name": "total", "shape": [], "numel": self.numel, "kept": self.num_kept,
                     "density": self.density, "sparsity": self.sparsity})
        return rows

    def equal(self, other: "Mask") -> bool:
        return self.keys() == other.keys() and all(torch.equal(self[k], other[k]) for k in self)

    def __and__(self, other: "Mask") -> "Mask":
        if self.keys() != other.keys():
            raise ValueError("cannot intersect masks over different weights")
        return Mask({k: self[k] & other[k] for k in self})

    # -- model interaction ----------------------------------------------------------------------
    def check_fits(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The model's prunable weights, after checking every entry names one with the same shape."""
        weights = prunable_weights(model)
        for name, t in self._t.items():
            if name not in weights:
                raise UserError(f"mask entry {name!r} names no prunable weight of this model")
            if tuple(t.shape) != tuple(weights[name].shape):
                raise UserError(f"mask entry {name!r} has shape {tuple(t.shape)}, "
                                 f"the model's weight has {tuple(weights[name].shape)}")
        return weights

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the pruned weights of ``model`` in place (the only function here that mutates it)."""
        weights = self.check_fits(model)
        for name, keep in self._t.items():
            w = weights[name]
            w.mul_(keep.to(device=w.device, dtype=w.dtype))

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Write ``path`` (safetensors, bool tensors) atomically, with density/sparsity in the header."""
        save_checkpoint(path, dict(self._t), {"kind": "mask", "density": self.density,
                                              "sparsity": self.sparsity, **(meta or {})})

    @classmethod
    def load(cls, path: str | Path) -> "Mask":
        """Read a mask written by :meth:`save`."""
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != "mask":
            raise UserError(f"{path} is a spikeprune file but not a mask (kind {meta.get('kind')!r})")
        return cls(tensors)


def stored_mask(tensors: Mapping[str, torch.Tensor]) -> Mask | None:
    """The mask a training checkpoint carries (``fit(extra_tensors=...)`` stores it as ``extra/mask/<name>``:
    lottery rounds), or None. SF-IMP-2 keeps dense weights behind a forward-only mask in its dynamic
    layers, so a round's stored weights alone are not the network it evaluated."""
    stored = {k[len("extra/mask/"):]: v for k, v in tensors.items() if k.startswith("extra/mask/")}
    return Mask(stored) if stored else None


class MaskEnforcement:
    """Keeps pruned weights exactly zero while a model trains; see :func:`enforce`."""

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        self.mask = mask
        self._weights = mask.check_fits(model)
        self._keep = {n: mask[n].to(dtype=w.dtype, device=w.device) for n, w in self._weights.items() if n in mask}
        # k.to(g.device): a no-op on one device; right after fit moves the model to its GPU (torchrun + nccl)
        self._handles = [self._weights[n].register_hook(lambda g, k=k: g * k.to(g.device))
                         for n, k in self._keep.items()]
        self.after_step()

    @torch.no_grad()
    def after_step(self, *_: Any) -> None:
        """Re-apply the mask (call after every optimizer step)."""
        for name, keep in self._keep.items():
            w = self._weights[name]
            if keep.device != w.device:  # the model moved (fit under torchrun with nccl)
                keep = self._keep[name] = keep.to(w.device)
            w.mul_(keep)

    def remove(self) -> None:
        """Stop zeroing gradients (the weights keep whatever values they have)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def enforce(model: nn.Module, mask: Mask) -> MaskEnforcement:
    """Apply ``mask`` and keep it: gradients of pruned weights are zeroed, and
    ``enforcement.after_step()`` (pass it as ``fit(after_step=...)``) re-zeroes them after each step."""
    return MaskEnforcement(model, mask)


# ---------------------------------------------------------------------------------------------
# Forward-only (dynamic) masks: Dynamic Network Surgery (Guo et al., NeurIPS 2016), SF-IMP-2.
# ---------------------------------------------------------------------------------------------


def _straight_through(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``weight * keep`` in the forward pass, identity in the backward pass.

    ``w - (w * ~keep).detach()`` is exactly ``w`` where kept and exactly 0 where pruned, and its
    gradient w.r.t. ``w`` is 1 everywhere: the dense weights receive the gradient of the masked
    weights ("dense updates"), so a pruned weight that the loss wants back can grow back.
    """
    return weight - (weight * ~keep).detach()


class _ForwardMaskedConv(nn.modules.conv._ConvNd):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _straight_through(self.weight, self.forward_mask), self.bias)


class ForwardMaskedConv1d(_ForwardMaskedConv, nn.Conv1d):
    """An ``nn.Conv1d`` whose forward pass uses ``weight * forward_mask`` (see :func:`mask_forward`)."""


class ForwardMaskedConv2d(_ForwardMaskedConv, nn.Conv2d):
    """An ``nn.Conv2d`` whose forward pass uses ``weight * forward_mask`` (see :func:`mask_forward`)."""


class ForwardMaskedConv3d(_ForwardMaskedConv, nn.Conv3d):
    """An ``nn.Conv3d`` whose forward pass uses ``weight * forward_mask`` (see :func:`mask_forward`)."""


class ForwardMaskedLinear(nn.Linear):
    """An ``nn.Linear`` whose forward pass uses ``weight * forward_mask`` (see :func:`mask_forward`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _straight_through(self.weight, self.forward_mask), self.bias)


_FORWARD_MASKED = {nn.Conv1d: ForwardMaskedConv1d, nn.Conv2d: ForwardMaskedConv2d, nn.Conv3d: ForwardMaskedConv3d,
                   nn.Linear: ForwardMaskedLinear}


class ForwardMasking:
    """Handle returned by :func:`mask_forward`; ``remove()`` restores the plain layers."""

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        mask.check_fits(model)
        self.mask = mask
        owners = {f"{n}.weight" if n else "weight": m for n, m in model.named_modules()}
        self._modules: list[tuple[nn.Module, type]] = []
        for name, keep in mask.items():
            module = owners[name]
            plain = type(module)
            if plain not in _FORWARD_MASKED:
                raise TypeError(f"forward-only masks support Conv1d/2d/3d and Linear; {name!r} is a {plain.__name__}")
            # Swapping the class of the instance keeps its parameters, hooks and state_dict keys
            # (checkpoints of masked and unmasked models stay interchangeable); the mask is a
            # non-persistent buffer, so it never enters a state_dict.
            module.register_buffer("forward_mask", keep.to(module.weight.device), persistent=False)
            module.__class__ = _FORWARD_MASKED[plain]
            self._modules.append((module, plain))

    def remove(self) -> None:
        """Plain layers again (the dense weights are left as they are)."""
        for module, plain in self._modules:
            module.__class__ = plain
            del module._buffers["forward_mask"]
        self._modules.clear()


def mask_forward(model: nn.Module, mask: Mask) -> ForwardMasking:
    """Forward-only masks (SF-IMP-2): the layers in ``mask`` compute with ``weight * mask`` while their
    dense ``weight`` keeps receiving every gradient (straight-through) and every optimizer update.

    Nothing is zeroed in the stored weights; ``Mask.apply`` turns the result into an ordinary sparse model.
    """
    return ForwardMasking(model, mask)
