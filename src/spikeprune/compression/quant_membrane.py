"""Membrane-potential quantization (MINT: Yin et al., "MINT: Multiplier-less INTeger Quantization for
Energy Efficient SNNs", ASP-DAC 2024), as QP-SNN quantizes the membrane.

The neuron is the ordinary :class:`~spikeprune.LIF` (one time loop, :func:`~spikeprune.lif_multistep`)
with a membrane hook: before the threshold of Eq. 3 every ``u_t`` is stored in a signed ``b``-bit
register of step ``scale``, ``u_t <- scale * clamp(round(u_t / scale), -2^(b-1), 2^(b-1) - 1)``
(:func:`membrane_register`, straight-through gradient inside the range). :class:`QuantizedLIF` is the
LIF whose hook is that register; :func:`membrane_scale` shares the step with the driving layer's
weight grid, so the threshold absorbs the scale and inference needs no multiplier;
:func:`quantize_membranes` swaps the neurons of a quantized model.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.compression.quant_weights import quantized_layers
from spikeprune.engine.neuron import LIF, Membrane, lif_multistep

__all__ = [
    "QuantizedLIF",
    "lif_multistep_quantized",
    "membrane_register",
    "membrane_scale",
    "quantize_membranes",
]


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


def membrane_register(scale: torch.Tensor, bits: int) -> Membrane:
    """The membrane hook of a signed ``bits``-bit register of step ``scale`` (for :func:`~spikeprune.lif_multistep`).

    ``scale`` broadcasts to one timestep ``[B, C, ...]`` (a scalar, ``[C]``, ``[C, 1, 1]``...); it is a
    constant of the hook (no gradient flows into it). The hook maps ``u_t`` to
    ``scale * clamp(round(u_t / scale), -2^(b-1), 2^(b-1) - 1)``, same shape.
    """
    _check_membrane_bits(bits)
    lo, hi = -float(1 << (bits - 1)), float((1 << (bits - 1)) - 1)
    scale = scale.detach()

    def register(u: torch.Tensor) -> torch.Tensor:
        return _RoundClampSTE.apply(u, scale.to(u.dtype), lo, hi)  # .to is free once dtypes match

    return register


def lif_multistep_quantized(x: torch.Tensor, scale: torch.Tensor, bits: int, *args: Any,
                            **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """LIF (LTH-SNN Eq. 2-4) whose membrane register holds signed ``bits``-bit integers of step ``scale``.

    Per timestep: ``u_t = scale * clamp(round((h_{t-1} + x_t) / scale), -2^(b-1), 2^(b-1) - 1)``, then
    the usual spike ``s_t = Hea(u_t - u_th)`` and ``h_t = V_reset s_t + beta u_t (1 - s_t)``. Leak, reset
    and input are applied to the stored integer and rounded back once per step (so ``u`` is always on
    the grid). Comparing ``u_t >= u_th`` is comparing the integer with ``u_th / scale``: the threshold
    absorbs the scale and inference needs no multiplier (MINT).

    Args:
        x: input currents ``[T, B, C, ...]`` (or ``[T, B, N]``).
        scale: step, broadcastable to one timestep ``[B, C, ...]`` (a scalar, or ``[C, 1, 1]``...).
        *args, **kwargs: the neuron parameters of :func:`~spikeprune.lif_multistep` (``beta``, ``u_th``,
            ``v_reset``, ``surrogate``, ``alpha``, ``detach_reset``).
    Returns:
        ``(spikes, u)``, both ``[T, B, ...]``; ``u / scale`` is an integer in the b-bit range.
    Gradients: surrogate through the spike, straight-through through the rounding (zero where clipped).
    """
    return lif_multistep(x, *args, membrane=membrane_register(scale, bits), **kwargs)


class QuantizedLIF(LIF):
    """A :class:`~spikeprune.LIF` whose membrane potential is quantized to ``membrane_bits`` bits.

    ``membrane_scale`` (per channel, ``[C]``) is set before every forward by a hook on the block that
    holds the driving layer (see :func:`quantize_membranes`); no parameters, so state dicts are unchanged.
    The time loop is the LIF's own; only :meth:`membrane_hook` differs (:func:`membrane_register`).
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

    def membrane_hook(self, x: torch.Tensor) -> Membrane:
        """The ``membrane_bits``-bit register with the per-channel step (channel = dim 2 of ``x [T, B, C, ...]``)."""
        if self.membrane_scale is None:
            raise RuntimeError("QuantizedLIF has no membrane scale; build it with quant.quantize_membranes")
        c = x.shape[2] if x.dim() > 2 else 1
        scale = self.membrane_scale.reshape(c, *([1] * (x.dim() - 3))) if x.dim() > 2 else self.membrane_scale
        return membrane_register(scale, self.membrane_bits)

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


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
