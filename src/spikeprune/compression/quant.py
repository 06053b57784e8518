"""Uniform b-bit weight quantization (SPEC §7; QP-SNN's ReScaW scales).

For a weight tensor ``W`` and scale ``gamma`` (per layer, or per output channel), with ``s = 2^b - 1``::

    W_int = round((s / 2) * (clamp(W / gamma, -1, 1) + 1))      in {0, ..., s}
    W_hat = gamma * ((2 / s) * W_int - 1)                        2^b levels in [-gamma, gamma]

Gradients use the straight-through estimator inside the clamp and zero outside (the clamp's own
gradient; ``gradient="clip"``), or pass straight through everywhere (``gradient="ste"``, QP-SNN's
public reference). First and last layers: quantized to b bits like the others, kept at full precision
(QP-SNN's reference) or at 8 bits (``first_last=``). :data:`PRESETS` names QP-SNN's own combination. ReScaW chooses ``gamma`` per layer: ``mean|W|`` (QP-SNN's best), ``max|W|`` (the vanilla
scheme, which wastes most levels because few weights are large), or a percentile of |W|.

On top of the two functions above (shared with the flip analysis), this module makes whole models
quantization-aware:

* :func:`quantize_model` swaps every conv/linear layer for :class:`QuantConv2d` / :class:`QuantLinear`
  (subclasses: the parameter names stay ``...conv.weight``, so masks, criteria, calibration and
  ``train.fit`` work unchanged). The latent float weight is trained; the forward pass uses the
  quantized one (QAT through the ordinary training loop). gamma is recomputed from the weights at every
  forward (ReScaW follows the weights) until :func:`freeze` fixes it for deployment.
* Exact zeros stay zero. SPEC §7's grid has no zero level (``s = 2^b - 1`` is odd, the levels are the
  odd multiples of gamma / s), so a pruned (masked) weight would otherwise come back as +-gamma/s.
  gamma is computed over the surviving (non-zero) weights.
* Membrane-potential quantization (MINT, Yin et al. 2024) with :class:`QuantizedLIF`: see
  :func:`lif_multistep_quantized` and :func:`membrane_scale`.
* Bit-width utilisation (QP-SNN §4.1): :func:`bit_utilisation`, :func:`utilisation_report`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.neuron import LIF, surrogate_gradient
from spikeprune.topology import BATCHNORM

__all__ = [
    "SCALES",
    "GRADIENTS",
    "FIRST_LAST",
    "PRESETS",
    "QUANT_TYPES",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantLinear",
    "QuantSpec",
    "QuantizedLIF",
    "bit_utilisation",
    "freeze",
    "is_layout_wrapper",
    "lif_multistep_quantized",
    "load_quantization_state",
    "membrane_scale",
    "quantization_state",
    "quantize_model",
    "quantize_weight",
    "quantized_class",
    "quantized_layers",
    "quantize_membranes",
    "reestimate_batchnorm",
    "unfreeze",
    "utilisation_report",
    "weight_codes",
    "weight_scale",
]

SCALES = ("mean", "max", "percentile")
#: backward of the quantizer: "clip" = 1 inside [-gamma, gamma], 0 outside (the clamp's gradient, SPEC §7);
#: "ste" = 1 everywhere (straight-through, as QP-SNN's public reference)
GRADIENTS = ("clip", "ste")
#: precision of the first and last quantized layers: "b" (the same b bits), "full" (not quantized) or "8"
FIRST_LAST = ("b", "full", "8")
#: named combinations of (scale method, per_channel, gradient, first_last). "qpsnn": QP-SNN's public
#: reference quantizer (gamma = mean|W| per output channel, straight-through gradient, first and last
#: layers at full precision); "spikeprune": this library's default (per-layer gamma, clipped gradient,
#: every layer at b bits).
PRESETS = {
    "spikeprune": {"method": "mean", "per_channel": False, "gradient": "clip", "first_last": "b"},
    "qpsnn": {"method": "mean", "per_channel": True, "gradient": "ste", "first_last": "full"},
}


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise UserError(f"bits must be an integer in [1, 16]; got {bits!r}")
    return bits


def weight_scale(w: torch.Tensor, method: str = "mean", *, per_channel: bool = False,
                 percentile: float = 99.0) -> torch.Tensor:
    """ReScaW scale gamma: a 0-dim tensor, or ``[C_out, 1, ...]`` with ``per_channel`` (dim 0 = output)."""
    if method not in SCALES:
        raise UserError(f"unknown scale {method!r}; choose one of {', '.join(SCALES)}")
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
        if self.method not in SCALES:
            raise UserError(f"unknown scale {self.method!r}; choose one of {', '.join(SCALES)}")
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


def _swap(module: nn.Module, spec: QuantSpec) -> nn.Module:
    """Turn a conv/linear layer into its quantized twin, in place (same object, same Parameters).

    Reassigning ``__class__`` keeps the module's identity, so optimizers, masks, hooks and references
    held elsewhere stay valid, and no new weights are initialised (no RNG is consumed).
    """
    if not isinstance(module, QUANT_TYPES):  # quantize_model checked it is a layout wrapper
        module.__class__ = quantized_class(type(module))
    module._init_quant(spec)  # type: ignore[attr-defined]
    return module


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: quantized layer}`` in module order (any of :data:`QUANT_TYPES`)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}


def quantize_model(
    model: nn.Module,
    bits: int = 4,
    *,
    method: str = "mean",
    per_channel: bool = False,
    percentile: float = 99.0,
    layers: Iterable[str] | None = None,
    membrane_bits: int | None = None,
    example_input: torch.Tensor | None = None,
    gradient: str = "clip",
    first_last: str = "b",
) -> nn.Module:
    """Make ``model`` quantization-aware, in place, and return it.

    Args:
        model: any module; every conv (1-3 d) / linear layer (or those named in ``layers``) is swapped
            for its quantized twin, including subclasses that only fold leading dims (SpikingJelly's
            multi-step ``layer.Conv2d``/``layer.Linear``; see :func:`is_layout_wrapper`). First and last layers included by default: the model size the cost
            report gives is then the size of what is really stored.
        bits: weight bit-width b in [1, 16] (2^b levels).
        method: ReScaW scale gamma: ``"mean"`` (mean|W|, QP-SNN), ``"max"`` (vanilla) or ``"percentile"``.
        per_channel: one gamma per output channel instead of per layer.
        percentile: the percentile of |W| for ``method="percentile"``.
        layers: module names to quantize (default: all conv/linear layers).
        gradient: ``"clip"`` (SPEC §7: zero outside [-gamma, gamma]) or ``"ste"`` (QP-SNN's reference:
            straight through everywhere).
        first_last: the first and last of the chosen layers (in execution order on ``example_input``
            when given, else in module order) at ``"b"`` bits like the rest, ``"full"`` precision (not
            quantized; QP-SNN's reference) or ``"8"`` bits.
        membrane_bits: also quantize the membrane potential of every LIF driven by a quantized layer
            to this many bits, with the scale shared with that layer's weights (MINT; see
            :func:`membrane_scale`). Needs ``example_input`` to find which layer drives which neuron.
        example_input: one input batch ``[B, C, H, W]`` or ``[T, B, ...]`` (only for ``membrane_bits``).

    Call it before building the optimizer. Training then needs nothing special:
    ``train.fit(cfg, out, model=quantize_model(model, 4))``.
    """
    spec = QuantSpec(bits, method, bool(per_channel), percentile, gradient)
    if first_last not in FIRST_LAST:
        raise UserError(f"unknown first_last {first_last!r}; choose one of {', '.join(FIRST_LAST)}")
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
    ends: set[str] = set()
    if first_last != "b":
        order = _execution_order(model, chosen, example_input)
        ends = {order[0], order[-1]}
    for name in chosen:
        if name in ends and first_last == "full":
            continue  # QP-SNN's reference keeps the encoding layer and the classifier in float
        _swap(candidates[name], QuantSpec(8, method, bool(per_channel), percentile, gradient)
              if name in ends else spec)
    if membrane_bits is not None:
        quantize_membranes(model, membrane_bits, example_input)
    return model


@torch.no_grad()
def _execution_order(model: nn.Module, names: list[str], example_input: torch.Tensor | None) -> list[str]:
    """``names`` in the order their modules first run on ``example_input`` (module order without one,
    or for layers the input does not reach): "first" is the layer reading the input, "last" the one
    producing the output, whatever order the modules were registered in."""
    if example_input is None:
        return list(names)
    from spikeprune.topology import trace  # the traced graph (stateful nets are reset by it)

    graph = trace(model, example_input)
    first_call = {n: min((node.id for node in graph.calls(n)), default=len(graph.nodes)) for n in names}
    return sorted(names, key=lambda n: first_call[n])  # stable: module order breaks ties


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


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[Any], num_batches: int | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance from ``batches`` (no weight changes).

    Quantizing the weights (ReScaW clips every |W| above gamma = mean|W|) or removing channels changes
    the distribution each BatchNorm sees, and the running statistics from training no longer fit: on a
    trained Fashion-MNIST convnet, 4-bit mean|W| quantization alone drops accuracy from 90.7 % to 30 %,
    and re-estimating the statistics on 16 training batches brings it back to 81 % (no training).
    Runs the model in train mode without gradients; the statistics become the plain average over
    the batches (momentum None). Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, BATCHNORM) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    seen = 0
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
            if num_batches is not None and seen >= num_batches:
                break
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise UserError("BatchNorm re-estimation needs at least one batch; the data was empty")
    return seen


# ---------------------------------------------------------------------------------------------
# Membrane-potential quantization (MINT: Yin et al., "MINT: Multiplier-less INTeger Quantization for
# Energy Efficient SNNs", ASP-DAC 2024).
# ---------------------------------------------------------------------------------------------


class _Spike(torch.autograd.Function):
    """Heaviside forward, surrogate backward (the same surrogates as :class:`~spikeprune.LIF`)."""

    @staticmethod
    def forward(ctx, z, surrogate, alpha):  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.params = (surrogate, alpha)
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return g * surrogate_gradient(z, *ctx.params), None, None


class _RoundClampSTE(torch.autograd.Function):
    """``scale * clamp(round(v / scale), lo, hi)``; gradient 1 inside the representable range, 0 outside."""

    @staticmethod
    def forward(ctx, v, scale, lo, hi):  # type: ignore[override]
        q = v / scale
        ctx.save_for_backward((q >= lo - 0.5) & (q <= hi + 0.5))
        return torch.clamp(torch.round(q), lo, hi) * scale

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return g * inside.to(g.dtype), None, None, None


def _check_membrane_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise UserError(f"membrane bits must be an integer in [2, 16] (a signed register needs a sign "
                         f"bit and one magnitude bit); got {bits!r}")
    return bits


def lif_multistep_quantized(
    x: torch.Tensor,
    scale: torch.Tensor,
    bits: int,
    beta: float = 0.5,
    u_th: float = 1.0,
    v_reset: float = 0.0,
    surrogate: str = "atan",
    alpha: float | None = None,
    detach_reset: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LIF (LTH-SNN Eq. 2-4) whose membrane register holds signed ``bits``-bit integers of step ``scale``.

    Per timestep: ``u_t = scale * clamp(round((h_{t-1} + x_t) / scale), -2^(b-1), 2^(b-1) - 1)``, then
    the usual spike ``s_t = Hea(u_t - u_th)`` and ``h_t = V_reset s_t + beta u_t (1 - s_t)``. Leak, reset
    and input are applied to the stored integer and rounded back once per step (so ``u`` is always on
    the grid). Comparing ``u_t >= u_th`` is comparing the integer with ``u_th / scale``: the threshold
    absorbs the scale and inference needs no multiplier (MINT).

    Args:
        x: input currents ``[T, B, C, ...]`` (or ``[T, B, N]``).
        scale: step, broadcastable to one timestep ``[B, C, ...]`` (a scalar, or ``[C, 1, 1]``...).
    Returns:
        ``(spikes, u)``, both ``[T, B, ...]``; ``u / scale`` is an integer in the b-bit range.
    Gradients: surrogate through the spike, straight-through through the rounding (zero where clipped).
    """
    _check_membrane_bits(bits)
    if x.dim() < 2:
        raise UserError(f"LIF expects a time-major input [T, B, ...]; got shape {tuple(x.shape)}")
    from spikeprune.engine.neuron import SURROGATES

    alpha = SURROGATES[surrogate][1] if alpha is None else float(alpha)
    lo, hi = -float(1 << (bits - 1)), float((1 << (bits - 1)) - 1)
    scale = scale.to(x.dtype).detach()
    h: torch.Tensor | float = 0.0
    spikes, us = [], []
    for t in range(x.shape[0]):
        u = _RoundClampSTE.apply(h + x[t], scale, lo, hi)
        s = _Spike.apply(u - u_th, surrogate, alpha)
        r = s.detach() if detach_reset else s
        h = beta * u * (1 - r) + v_reset * r
        spikes.append(s)
        us.append(u.detach())
    return torch.stack(spikes), torch.stack(us)


class QuantizedLIF(LIF):
    """A :class:`~spikeprune.LIF` whose membrane potential is quantized to ``membrane_bits`` bits.

    ``membrane_scale`` (per channel, ``[C]``) is set before every forward by a hook on the block that
    holds the driving layer (see :func:`quantize_membranes`); no parameters, so state dicts are unchanged.
    """

    def __init__(self, *args: Any, membrane_bits: int = 8, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.membrane_bits = _check_membrane_bits(membrane_bits)
        self.membrane_scale: torch.Tensor | None = None
        self.membrane_shift: torch.Tensor | None = None

    @classmethod
    def from_lif(cls, lif: LIF, membrane_bits: int) -> "QuantizedLIF":
        return cls(beta=lif.beta, u_th=lif.u_th, v_reset=lif.v_reset, surrogate=lif.surrogate, alpha=lif.alpha,
                   detach_reset=lif.detach_reset, membrane_bits=membrane_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.membrane_scale is None:
            raise RuntimeError("QuantizedLIF has no membrane scale; build it with quant.quantize_membranes")
        c = x.shape[2] if x.dim() > 2 else 1
        scale = self.membrane_scale.reshape(c, *([1] * (x.dim() - 3))) if x.dim() > 2 else self.membrane_scale
        spikes, u = lif_multistep_quantized(x, scale, self.membrane_bits, self.beta, self.u_th, self.v_reset,
                                            self.surrogate, self.alpha, self.detach_reset)
        if self.observer is not None:
            self.observer(self, u, spikes)
        return spikes

    def extra_repr(self) -> str:
        return super().extra_repr() + f", membrane_bits={self.membrane_bits}"


def _bn_gain(bn: nn.Module | None, channels: int) -> torch.Tensor:
    """Per-channel factor BN applies to its input at inference: gamma / sqrt(running_var + eps) (x tdBN scale)."""
    if bn is None:
        return torch.ones(channels)
    gamma = bn.weight.detach() if getattr(bn, "weight", None) is not None else torch.ones(bn.num_features)
    return gamma / torch.sqrt(bn.running_var.detach() + bn.eps) * float(getattr(bn, "scale", 1.0))


@torch.no_grad()
def membrane_scale(layer: nn.Module, bn: nn.Module | None, u_th: float,
                   bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Membrane step per channel shared with the driving layer's weights, and its power-of-two shift.

    The layer's weights are odd integers times ``Delta = gamma / s`` (SPEC §7: ``W_hat = Delta (2 W_int
    - s)``) and BN multiplies channel j by ``a_j``, so the current into neuron j is an integer multiple
    of ``sigma_j = a_j * Delta_j`` plus BN's shift (rounded to the grid once per step). With the membrane counted in units of sigma_j, synaptic events are integer additions and
    the threshold becomes ``u_th / sigma_j`` (MINT: the threshold absorbs the shared scale).

    A b-bit register reaches only ``2^(b-1) - 1``. When ``u_th / sigma_j`` exceeds it the neuron could
    never fire, so the step is ``sigma_j * 2^m_j`` with the smallest ``m_j >= 0`` that brings the
    threshold into range: a right shift in hardware, still multiplier-free (``m = 0`` is MINT's exact
    sharing). Returns ``(step [C], m [C])``.
    """
    _check_membrane_bits(bits)
    delta = layer.unit.double()
    channels = layer.weight.shape[0]
    sigma = (_bn_gain(bn, channels).double().abs() * delta).clamp_min(1e-30)
    qmax = float((1 << (bits - 1)) - 1)
    theta = abs(float(u_th)) / sigma
    m = torch.ceil(torch.log2(theta / qmax)).clamp_min(0)
    m = m + (theta / torch.exp2(m) > qmax).double()  # guard float rounding of the log
    return (sigma * torch.exp2(m)).float(), m.to(torch.int64)


def _refresh_membrane(block: nn.Module, inputs: Any, *, layer: str, bn: str | None, lif: str) -> None:
    """Forward pre-hook on the smallest module holding (layer, bn, lif): recompute the shared scale.

    Names are relative to ``block`` and the hook holds no module references, so ``copy.deepcopy`` of
    the model gives a copy whose hooks read the copy's own layers.
    """
    neuron = block.get_submodule(lif)
    step, shift = membrane_scale(block.get_submodule(layer), block.get_submodule(bn) if bn else None,
                                 neuron.u_th, neuron.membrane_bits)
    neuron.membrane_scale, neuron.membrane_shift = step, shift


def _drivers(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[str, str | None]]:
    """``{lif name: (driving layer, its BN or None)}`` from the traced graph (:meth:`Graph.drivers`)."""
    from spikeprune.topology import trace
    return trace(model, example_input).drivers()


def _common_prefix(*names: str) -> str:
    parts = [n.split(".") for n in names]
    prefix: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    # the common prefix of "a.b.c" and "a.b" could be "a.b", a leaf; hooks go on a container holding both
    return ".".join(prefix)


def _relative(name: str, prefix: str) -> str:
    return name[len(prefix) + 1:] if prefix else name


def quantize_membranes(model: nn.Module, bits: int, example_input: torch.Tensor | None) -> dict[str, str]:
    """Replace every LIF driven by a quantized layer by a :class:`QuantizedLIF` with ``bits``-bit membrane.

    Returns ``{lif name: driving layer name}``. The driver of a residual block's output neuron is the
    main branch's second conv (the first layer executed since the previous neuron).
    """
    _check_membrane_bits(bits)
    if example_input is None:
        raise UserError("membrane quantization needs example_input (one input batch) to find which "
                         "layer drives which neuron")
    layers = quantized_layers(model)
    found = {}
    for lif_name, (layer, bn) in _drivers(model, example_input).items():
        if layer not in layers:
            raise UserError(f"neuron {lif_name!r} is driven by {layer!r}, which is not quantized; the membrane "
                             "scale is shared with the driving layer's weights (quantize that layer too)")
        old = model.get_submodule(lif_name)
        if getattr(old, "third_party", False):  # an interop adapter: its dynamics are the package's own
            raise UserError(f"membrane quantization needs spikeprune's LIF; {lif_name!r} is an adapted "
                             f"{old.mapping()['source']} (weights can still be quantized)")
        new = old if isinstance(old, QuantizedLIF) else QuantizedLIF.from_lif(old, bits)
        new.membrane_bits = bits
        _set_submodule(model, lif_name, new)
        names = [layer, lif_name] + ([bn] if bn else [])
        prefix = _common_prefix(*names)
        while prefix and prefix in names:  # a leaf cannot run a hook before its siblings
            prefix = prefix.rpartition(".")[0]
        block = model.get_submodule(prefix) if prefix else model
        for key, hook in list(block._forward_pre_hooks.items()):
            if isinstance(hook, functools.partial) and hook.func is _refresh_membrane \
                    and hook.keywords.get("lif") == _relative(lif_name, prefix):
                del block._forward_pre_hooks[key]
        block.register_forward_pre_hook(functools.partial(
            _refresh_membrane, layer=_relative(layer, prefix), bn=_relative(bn, prefix) if bn else None,
            lif=_relative(lif_name, prefix)))
        found[lif_name] = layer
    if not found:
        raise UserError(f"{type(model).__name__} has no LIF neuron driven by a quantized layer")
    return found


# ---------------------------------------------------------------------------------------------
# Bit-width utilisation (QP-SNN §4.1) and deployment state.
# ---------------------------------------------------------------------------------------------


def weight_codes(w: torch.Tensor, bits: int, gamma: torch.Tensor | float) -> torch.Tensor:
    """Integer level index ``W_int`` in {0, ..., 2^b - 1} of every weight (SPEC §7), same shape as ``w``."""
    s = (1 << _check_bits(bits)) - 1
    gamma = torch.as_tensor(gamma, dtype=w.dtype)
    return torch.round((s / 2) * (torch.clamp(w.detach() / gamma, -1.0, 1.0) + 1)).to(torch.int64)


def bit_utilisation(w: torch.Tensor, bits: int, gamma: torch.Tensor | float, *,
                    ignore_zeros: bool = True) -> dict[str, float]:
    """How much of the b-bit grid a weight tensor uses.

    Returns ``levels_used`` (distinct levels holding at least one weight), ``utilisation`` =
    levels_used / 2^b (SPEC §7's definition), ``entropy_bits`` = Shannon entropy of the level
    histogram (at most b), and ``effective_utilisation`` = 2^entropy / 2^b (the share of levels a
    uniform code of the same entropy would use). Exact zeros (pruned weights) are ignored.
    """
    codes = weight_codes(w, bits, gamma).flatten()
    if ignore_zeros:
        codes = codes[w.detach().flatten() != 0]
    levels = 1 << bits
    if codes.numel() == 0:
        return {"levels": levels, "levels_used": 0, "utilisation": 0.0, "entropy_bits": 0.0,
                "effective_utilisation": 0.0}
    counts = torch.bincount(codes, minlength=levels).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * torch.log2(p)).sum())
    used = int((counts > 0).sum())
    return {"levels": levels, "levels_used": used, "utilisation": used / levels, "entropy_bits": entropy,
            "effective_utilisation": 2.0 ** entropy / levels}


def utilisation_report(model: nn.Module) -> list[dict[str, Any]]:
    """One row per quantized layer (bit-width utilisation of its current weights), plus ``"total"``
    (levels used averaged over layers, weighted by their weight count)."""
    rows = []
    for name, layer in quantized_layers(model).items():
        row = {"layer": name, "bits": layer.quant.bits, "method": layer.quant.method,
               "per_channel": layer.quant.per_channel, "numel": layer.weight.numel(),
               **bit_utilisation(layer.weight, layer.quant.bits, layer.gamma())}
        rows.append(row)
    if rows:
        n = sum(r["numel"] for r in rows)
        rows.append({"layer": "total", "numel": n,
                     **{k: sum(r[k] * r["numel"] for r in rows) / n
                        for k in ("utilisation", "entropy_bits", "effective_utilisation")}})
    return rows


def quantization_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What a checkpoint needs to rebuild the quantized model: ``(tensors, meta)``.

    ``tensors`` = ``{"<layer>.gamma": gamma}`` (the current gamma of every quantized layer); ``meta`` =
    ``{"layers": {name: QuantSpec fields}, "membrane_bits": {lif name: bits}}``.
    """
    tensors, layers = {}, {}
    for name, layer in quantized_layers(model).items():
        tensors[f"{name}.gamma"] = layer.gamma().detach().clone()
        layers[name] = asdict(layer.quant)
    membranes = {n: m.membrane_bits for n, m in model.named_modules() if isinstance(m, QuantizedLIF)}
    return tensors, {"layers": layers, "membrane_bits": membranes}


def load_quantization_state(model: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *,
                            example_input: torch.Tensor | None = None, frozen: bool = True) -> nn.Module:
    """Re-apply :func:`quantization_state` to a freshly built model (in place; returns it)."""
    layers = meta.get("layers") or {}
    for name, fields in layers.items():
        spec = QuantSpec(**fields)
        quantize_model(model, spec.bits, method=spec.method, per_channel=spec.per_channel,
                       percentile=spec.percentile, layers=[name], gradient=spec.gradient)
        layer = model.get_submodule(name)
        key = f"{name}.gamma"
        if frozen:
            if key not in tensors:
                raise UserError(f"quantization state has no gamma for layer {name!r}")
            layer.weight_gamma = tensors[key].to(layer.weight.dtype).clone()
            layer.frozen = True
    bits = set((meta.get("membrane_bits") or {}).values())
    if bits:
        if len(bits) != 1:
            raise UserError(f"mixed membrane bit-widths are not supported; got {sorted(bits)}")
        found = quantize_membranes(model, bits.pop(), example_input)
        expected = set(meta["membrane_bits"])
        if set(found) != expected:
            raise UserError("the membrane-quantized neurons of this checkpoint do not match the model")
    return model
