"""Uniform b-bit weight quantization (SPEC §7; QP-SNN's ReScaW scales).

For a weight tensor ``W`` and scale ``gamma`` (per layer, or per output channel), with ``s = 2^b - 1``::

    W_int = round((s / 2) * (clamp(W / gamma, -1, 1) + 1))      in {0, ..., s}
    W_hat = gamma * ((2 / s) * W_int - 1)                        2^b levels in [-gamma, gamma]

Gradients use the straight-through estimator inside the clamp and zero outside (the clamp's own
gradient). ReScaW chooses ``gamma`` per layer: ``mean|W|`` (QP-SNN's best), ``max|W|`` (the vanilla
scheme, which wastes most levels because few weights are large), or a percentile of |W|.
"""

from __future__ import annotations

import torch

__all__ = ["SCALES", "quantize_weight", "weight_scale"]

SCALES = ("mean", "max", "percentile")


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [1, 16]; got {bits!r}")
    return bits


def weight_scale(w: torch.Tensor, method: str = "mean", *, per_channel: bool = False,
                 percentile: float = 99.0) -> torch.Tensor:
    """ReScaW scale gamma: a 0-dim tensor, or ``[C_out, 1, ...]`` with ``per_channel`` (dim 0 = output)."""
    if method not in SCALES:
        raise ValueError(f"unknown scale {method!r}; choose one of {', '.join(SCALES)}")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100]; got {percentile!r}")
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
    def forward(ctx, w, gamma, s):  # type: ignore[override]
        inside = w.abs() <= gamma
        ctx.save_for_backward(inside)
        w_int = torch.round((s / 2) * (torch.clamp(w / gamma, -1.0, 1.0) + 1))
        return gamma * ((2.0 / s) * w_int - 1.0)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return g * inside.to(g.dtype), None, None


def quantize_weight(w: torch.Tensor, bits: int, scale: torch.Tensor | float | None = None, *,
                    method: str = "mean", per_channel: bool = False) -> torch.Tensor:
    """Fake-quantize ``w`` to ``2^bits`` levels in ``[-gamma, gamma]`` (same shape; STE gradient).

    ``scale`` fixes gamma; otherwise it is chosen by ``method`` (ReScaW). 1 bit gives {-gamma, +gamma}.
    """
    s = (1 << _check_bits(bits)) - 1
    gamma = weight_scale(w, method, per_channel=per_channel) if scale is None else torch.as_tensor(scale, dtype=w.dtype)
    return _QuantizeSTE.apply(w, gamma.detach(), s)
