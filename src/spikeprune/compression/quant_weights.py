"""The weight grid of SPEC §7 and the quantization-aware conv/linear layers (QP-SNN's ReScaW scales).

For a weight tensor ``W`` and scale ``gamma`` (per layer, or per output channel), with ``s = 2^b - 1``::

    W_int = round((s / 2) * (clamp(W / gamma, -1, 1) + 1))      in {0, ..., s}
    W_hat = gamma * ((2 / s) * W_int - 1)                        2^b levels in [-gamma, gamma]

Gradients use the straight-through estimator inside the clamp and zero outside (the clamp's own
gradient; ``gradient="clip"``), or pass straight through everywhere (``gradient="ste"``, QP-SNN's
public reference). ReScaW chooses ``gamma`` per layer: ``mean|W|`` (QP-SNN's best), ``max|W|`` (the
vanilla scheme, which wastes most levels because few weights are large), or a percentile of |W|.

* :func:`weight_scale`, :func:`quantize_weight`, :func:`weight_codes`: the grid itself (shared with the
  flip analysis, NIR export and the event-driven engine).
* :class:`QuantConv2d` / :class:`QuantLinear` (and 1-d / 3-d convs, and twins of layout wrappers such as
  SpikingJelly's ``layer.Conv2d``): subclasses whose forward uses the quantized weight, so parameter
  names stay ``...conv.weight`` and masks, criteria, calibration and ``train.fit`` work unchanged.
  gamma follows the weights at every forward (ReScaW) until :func:`freeze` fixes it for deployment.
* Exact zeros stay zero. SPEC §7's grid has no zero level (``s = 2^b - 1`` is odd, the levels are the
  odd multiples of gamma / s), so a pruned (masked) weight would otherwise come back as +-gamma/s.
  gamma is computed over the surviving (non-zero) weights.

Whole models are made quantization-aware by :func:`spikeprune.compression.quant.quantize_model`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from spikeprune.core.diagnostics import UserError

__all__ = [
    "SCALE_METHODS",
    "GRADIENTS",
    "QUANT_TYPES",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantLinear",
    "QuantSpec",
    "freeze",
    "is_layout_wrapper",
    "quantizable_layers",
    "quantize_layer",
    "quantize_weight",
    "quantized_class",
    "quantized_layers",
    "unfreeze",
    "weight_codes",
    "weight_scale",
]

SCALE_METHODS = ("mean", "max", "percentile")
#: backward of the quantizer: "clip" = 1 inside [-gamma, gamma], 0 outside (the clamp's gradient, SPEC §7);
#: "ste" = 1 everywhere (straight-through, as QP-SNN's public reference)
GRADIENTS = ("clip", "ste")
#: precision of the first and last quantized layers: "b" (the same b bits), "full" (not quantized) or "8"


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise UserError(f"bits must be an integer in [1, 16]; got {bits!r}")
    return bits


def weight_scale(w: torch.Tensor, method: str = "mean", *, per_channel: bool = False,
                 percentile: float = 99.0) -> torch.Tensor:
    """ReScaW scale gamma: a 0-dim tensor, or ``[C_out, 1, ...]`` with ``per_channel`` (dim 0 = output)."""
    if method not in SCALE_METHODS:
        raise UserError(f"unknown scale {method!r}; choose one of {', '.join(SCALE_METHODS)}")
    if not 0.0 < percentile <= 100.0:
        raise UserError(f"percentile must be in (0, 100]; got {percentile!r}")
    a = w.detach().abs()
    a = a.reshape(a.shape[0], -1) if per_channel else a.reshape(1, -1)
    if method == "mean":
        g = a.mean(dim=1)
    elif method == "max":
        g = a.amax(dim=1)
    else:
        g = torch.quantile(a.float(), percentile / 100.0, dim=1).to(a.dtype)
    g = g.clamp_min(torch.finfo(a.dtype).tiny)  # an all-zero layer keeps a valid (unused) scale
    return g.view(-1, *([1] * (w.dim() - 1))) if per_channel else g.reshape(())


class _QuantizeSTE(torch.autograd.Function):
    """Forward: the exact 2^b levels of SPEC §7. Backward: straight-through, exactly 1 inside
    ``[-gamma, gamma]`` and 0 outside (the clamp's gradient), with no rounding error from gamma/gamma."""

    @staticmethod
    def forward(ctx, w, gamma, s, clip=True):  # type: ignore[override]
        ctx.clip = clip
        if clip:
            ctx.save_for_backward(w.abs() <= gamma)
        w_int = torch.round((s / 2) * (torch.clamp(w / gamma, -1.0, 1.0) + 1))
        return gamma * ((2.0 / s) * w_int - 1.0)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        if not ctx.clip:  # QP-SNN's reference: dW_hat/dW = 1 everywhere, clipped weights included
            return g, None, None, None
        (inside,) = ctx.saved_tensors
        return g * inside.to(g.dtype), None, None, None


def quantize_weight(w: torch.Tensor, bits: int, scale: torch.Tensor | float | None = None, *,
                    method: str = "mean", per_channel: bool = False, gradient: str = "clip") -> torch.Tensor:
    """Fake-quantize ``w`` to ``2^bits`` levels in ``[-gamma, gamma]`` (same shape; STE gradient).

    ``scale`` fixes gamma; otherwise it is chosen by ``method`` (ReScaW). 1 bit gives {-gamma, +gamma}.
    ``gradient``: ``"clip"`` (zero outside ``[-gamma, gamma]``) or ``"ste"`` (one everywhere).
    """
    if gradient not in GRADIENTS:
        raise UserError(f"unknown gradient {gradient!r}; choose one of {', '.join(GRADIENTS)}")
    s = (1 << _check_bits(bits)) - 1
    gamma = weight_scale(w, method, per_channel=per_channel) if scale is None else torch.as_tensor(scale, dtype=w.dtype)
    return _QuantizeSTE.apply(w, gamma.detach(), s, gradient == "clip")


# ---------------------------------------------------------------------------------------------
# Quantization-aware layers.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantSpec:
    """How one layer's weights are quantized: ``bits`` in [1, 16] and the ReScaW scale ``method``
    (``mean`` = QP-SNN, ``max`` = vanilla, ``percentile``), per layer or per output channel."""

    bits: int = 4
    method: str = "mean"
    per_channel: bool = False
    percentile: float = 99.0
    gradient: str = "clip"

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.gradient not in GRADIENTS:
            raise UserError(f"unknown gradient {self.gradient!r}; choose one of {', '.join(GRADIENTS)}")
        if self.method not in SCALE_METHODS:
            raise UserError(f"unknown scale {self.method!r}; choose one of {', '.join(SCALE_METHODS)}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 0.0 < self.percentile <= 100.0:
            raise UserError(f"percentile must be in (0, 100]; got {self.percentile!r}")

    @property
    def levels(self) -> int:
        return 1 << self.bits


def _surviving_scale(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """ReScaW gamma over the non-zero (unpruned) weights; equals :func:`weight_scale` on a dense tensor."""
    w = w.detach()
    alive = w != 0
    if bool(alive.all()):
        return weight_scale(w, spec.method, per_channel=spec.per_channel, percentile=spec.percentile)
    a = w.abs()
    a = a.reshape(a.shape[0], -1) if spec.per_channel else a.reshape(1, -1)
    keep = alive.reshape(a.shape)
    if spec.method == "mean":
        g = a.sum(dim=1) / keep.sum(dim=1).clamp_min(1)
    elif spec.method == "max":
        g = a.amax(dim=1)
    else:
        g = torch.nanquantile(torch.where(keep, a, torch.nan).float(), spec.percentile / 100.0, dim=1)
        g = torch.nan_to_num(g, nan=0.0).to(a.dtype)
    g = g.clamp_min(torch.finfo(a.dtype).tiny)
    return g.view(-1, *([1] * (w.dim() - 1))) if spec.per_channel else g.reshape(())


class _QuantWeight:
    """Shared by :class:`QuantConv2d` and :class:`QuantLinear`: the quantized view of ``self.weight``."""

    quant: QuantSpec
    frozen: bool
    weight_gamma: torch.Tensor

    def _init_quant(self, spec: QuantSpec) -> None:
        self.quant = spec
        self.frozen = False
        # Not persistent: state_dict keys stay those of the plain layer, so ordinary checkpoints load
        # into ordinary models. quantization_state() exports gamma where deployment needs it.
        self.register_buffer("weight_gamma", torch.ones(()), persistent=False)  # type: ignore[attr-defined]

    def gamma(self) -> torch.Tensor:
        """Current scale: ``[]`` or ``[C_out, 1, ...]`` (per channel); fixed once :func:`freeze` ran."""
        if self.frozen:
            return self.weight_gamma
        return _surviving_scale(self.weight, self.quant)  # type: ignore[attr-defined]

    @property
    def unit(self) -> torch.Tensor:
        """``gamma / s``: every level is an odd integer times it, ``W_hat = (gamma/s)(2 W_int - s)``
        (adjacent levels are 2 units apart). Per channel: ``[C_out]``, else ``[1]``."""
        g = self.gamma().detach()
        return (g / ((1 << self.quant.bits) - 1)).reshape(-1)

    def quantized_weight(self) -> torch.Tensor:
        """SPEC §7 levels with the straight-through gradient; exact zeros (pruned weights) stay zero."""
        w = self.weight  # type: ignore[attr-defined]
        w_hat = quantize_weight(w, self.quant.bits, self.gamma(), gradient=self.quant.gradient)
        return torch.where(w == 0, torch.zeros((), dtype=w.dtype), w_hat)


class _QuantConv(_QuantWeight):
    """Forward of the quantized convs: the b-bit weight, on any leading layout.

    Extra leading dims are folded into the batch: ``[T, B, C, H, W]`` (SpikingJelly's multi-step
    layers) runs as ``[T*B, C, H, W]``, exactly as the layer it replaces did, so a quantized zoo net
    keeps its own forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.dim() - len(self.kernel_size) - 1  # type: ignore[attr-defined]
        if lead <= 1:
            return self._conv_forward(x, self.quantized_weight(), self.bias)  # type: ignore[attr-defined]
        y = self._conv_forward(x.flatten(0, lead - 1), self.quantized_weight(), self.bias)  # type: ignore[attr-defined]
        return y.unflatten(0, x.shape[:lead])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", {_describe(self.quant)}" + (", frozen" if self.frozen else "")  # type: ignore[misc]


class QuantConv1d(_QuantConv, nn.Conv1d):
    """``nn.Conv1d`` whose forward uses the b-bit weight (SPEC §7); ``weight`` is the latent float weight."""


class QuantConv2d(_QuantConv, nn.Conv2d):
    """``nn.Conv2d`` whose forward uses the b-bit weight (SPEC §7); ``weight`` is the latent float weight."""


class QuantConv3d(_QuantConv, nn.Conv3d):
    """``nn.Conv3d`` whose forward uses the b-bit weight (SPEC §7); ``weight`` is the latent float weight."""


class QuantLinear(_QuantWeight, nn.Linear):
    """``nn.Linear`` whose forward uses the b-bit weight (SPEC §7); ``weight`` is the latent float weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)  # any leading dims

    def extra_repr(self) -> str:
        return super().extra_repr() + f", {_describe(self.quant)}" + (", frozen" if self.frozen else "")


#: every quantized layer type (the twins of plain torch layers and of layout wrappers derive from them)
QUANT_TYPES = (QuantConv1d, QuantConv2d, QuantConv3d, QuantLinear)
_TWINS: dict[type, type] = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d,
                            nn.Linear: QuantLinear}
_WRAPPED_TWINS: dict[type, type] = {}


def _describe(spec: QuantSpec) -> str:
    scale = f"percentile {spec.percentile:g}" if spec.method == "percentile" else f"{spec.method}|W|"
    grad = ", straight-through gradient" if spec.gradient == "ste" else ""
    return f"{spec.bits}-bit, gamma={scale}{' per channel' if spec.per_channel else ''}{grad}"


def _plain_class(module: nn.Module) -> type | None:
    """The torch class (``nn.Conv1d/2d/3d``, ``nn.Linear``) a layer is, or derives from."""
    return next((c for c in type(module).__mro__ if c in _TWINS), None)


@torch.no_grad()
def is_layout_wrapper(module: nn.Module) -> bool:
    """Whether a subclass of a torch conv/linear computes exactly the plain layer on folded leading dims.

    SpikingJelly's ``layer.Conv2d`` in multi-step mode, for instance, runs ``[T, B, C, H, W]`` as
    ``[T*B, C, H, W]`` through ``nn.Conv2d.forward``. Checked by behaviour, not by name: the module's
    own forward and the plain forward are run on a probe input with one and with two leading dims;
    a subclass that agrees on one of them (and raises on or agrees with the other) is a wrapper.
    Anything that adds computation of its own (a scale, an extra term) disagrees and is refused.
    """
    plain = _plain_class(module)
    if plain is None:
        return False
    if type(module) is plain or isinstance(module, QUANT_TYPES):
        return True
    if isinstance(module, nn.Linear):
        sample = (module.in_features,)
    else:
        k = [(ks - 1) * d + 1 for ks, d in zip(module.kernel_size, module.dilation)]
        sample = (module.in_channels, *[max(4, kk + 2) for kk in k])
    g = torch.Generator().manual_seed(0)
    w = module.weight
    agreed = False
    for lead in ((2,), (2, 3)):
        x = torch.randn(*lead, *sample, generator=g).to(w.device, w.dtype)
        expected = plain.forward(module, x.flatten(0, len(lead) - 1)).unflatten(0, lead) if len(lead) > 1 \
            else plain.forward(module, x)
        try:
            got = type(module).forward(module, x)  # not module(x): no hooks run on the probe
        except Exception:  # e.g. a multi-step wrapper refusing a single-step input
            continue
        if not torch.is_tensor(got) or got.shape != expected.shape or not torch.equal(got, expected):
            return False
        agreed = True
    return agreed


def quantized_class(cls: type) -> type:
    """The quantized twin of layer class ``cls`` (what :func:`quantize_model` turns such a layer into).

    For a plain torch class, our twin; for a layout wrapper such as SpikingJelly's ``layer.Conv2d``, a
    class deriving from both (cached per class), so the wrapper's own attributes and ``isinstance``
    checks (``step_mode``, ``functional.set_step_mode``) keep working after quantization."""
    plain = next((c for c in cls.__mro__ if c in _TWINS), None)
    if plain is None:
        raise TypeError(f"{cls.__name__} is not a conv/linear layer class")
    if cls is plain:
        return _TWINS[plain]
    if cls not in _WRAPPED_TWINS:
        _WRAPPED_TWINS[cls] = type(f"Quant{cls.__name__}", (_TWINS[plain], cls),
                                   {"__module__": __name__, "__qualname__": f"Quant{cls.__name__}",
                                    "wrapped_class": cls})
    return _WRAPPED_TWINS[cls]


def quantize_layer(module: nn.Module, spec: QuantSpec) -> nn.Module:
    """Turn a conv/linear layer into its quantized twin, in place (same object, same Parameters).

    Reassigning ``__class__`` keeps the module's identity, so optimizers, masks, hooks and references
    held elsewhere stay valid, and no new weights are initialised (no RNG is consumed).
    """
    if not isinstance(module, QUANT_TYPES):  # quantizable_layers checked it is a layout wrapper
        module.__class__ = quantized_class(type(module))
    module._init_quant(spec)  # type: ignore[attr-defined]
    return module


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: quantized layer}`` in module order (any of :data:`QUANT_TYPES`)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}


def quantizable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """``{name: layer}`` that :func:`~spikeprune.compression.quant.quantize_model` may quantize, in order.

    ``layers=None``: every conv (1-3 d) / linear layer, refused if any of them is a subclass that computes
    more than the plain layer (see :func:`is_layout_wrapper`); else the named layers, each checked.
    """
    layers_found = {n: m for n, m in model.named_modules() if _plain_class(m) is not None}
    # A subclass (SpikingJelly's layer.Conv2d, a user's) is quantized when its forward is the plain
    # layer's on folded leading dims (checked by behaviour); one that computes something of its own
    # would be silently replaced by the quantized plain forward, so quantizing "all layers" refuses.
    candidates = {n: m for n, m in layers_found.items() if is_layout_wrapper(m)}
    subclassed = {n: m for n, m in layers_found.items() if n not in candidates}
    if layers is None:
        if subclassed:
            name, m = next(iter(subclassed.items()))
            raise UserError(f"cannot quantize {name!r} ({type(m).__module__}.{type(m).__name__}): its forward "
                             f"is not nn.{_plain_class(m).__name__}'s on folded leading dims, so a quantized "
                             "twin would change what it computes"
                             + (f" ({len(subclassed) - 1} more such layers)" if len(subclassed) > 1 else "")
                             + "; pass layers= to quantize the others")
        chosen = list(candidates)
    else:
        chosen = list(layers)
        for name in chosen:
            if name not in candidates:
                why = (f" ({type(subclassed[name]).__name__} computes more than the plain layer)"
                       if name in subclassed else "")
                raise UserError(f"{name!r} is not a conv/linear layer of this model that can be quantized{why}; "
                                 f"layers: {', '.join(candidates) or 'none'}")
    if not chosen:
        raise UserError(f"{type(model).__name__} has no conv/linear layer to quantize")
    return {name: candidates[name] for name in chosen}



@torch.no_grad()
def freeze(model: nn.Module) -> None:
    """Fix every quantized layer's gamma at its current value and write the quantized weights into
    ``weight`` (deployment form: re-quantizing them with the frozen gamma is the identity)."""
    for layer in quantized_layers(model).values():
        gamma = layer.gamma().detach().clone()
        layer.weight.copy_(layer.quantized_weight())
        layer.weight_gamma = gamma
        layer.frozen = True


def unfreeze(model: nn.Module) -> None:
    """Let gamma follow the weights again (ReScaW during training)."""
    for layer in quantized_layers(model).values():
        layer.frozen = False


def weight_codes(w: torch.Tensor, bits: int, gamma: torch.Tensor | float) -> torch.Tensor:
    """Integer level index ``W_int`` in {0, ..., 2^b - 1} of every weight (SPEC §7), same shape as ``w``."""
    s = (1 << _check_bits(bits)) - 1
    gamma = torch.as_tensor(gamma, dtype=w.dtype)
    return torch.round((s / 2) * (torch.clamp(w.detach() / gamma, -1.0, 1.0) + 1)).to(torch.int64)
