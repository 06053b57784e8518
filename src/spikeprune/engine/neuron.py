"""The LIF neuron of LTH-SNN Eq. 2-4, multi-step and stateless, with a fused forward/backward.

Dynamics, for every neuron independently (time-major input ``x`` of shape ``[T, B, ...]``)::

    u_t = h_{t-1} + x_t                                   (Eq. 2, h_0 = 0)
    s_t = Hea(u_t - u_th)          Hea(z) = 1 if z >= 0   (Eq. 3)
    h_t = V_reset * s_t + beta * u_t * (1 - s_t)          (Eq. 4)

``Hea`` has no useful derivative, so training uses a *surrogate* dHea/dz (ATan by default, as in
SpikingJelly). Why a hand-written backward: letting autograd differentiate the loop above records ~10
small kernels and saves ~6 tensors per timestep. The recurrence's Jacobian is tiny, though:

    dL/du_t = dL/ds_t * sg(u_t - u_th) + dL/du_{t+1} * dh_t/du_t
    dh_t/du_t = beta * (1 - s_t) + sg(u_t - u_th) * (V_reset - beta * u_t)     (no detach_reset)
    dh_t/du_t = beta * (1 - s_t)                                               (detach_reset)

so the backward needs only ``u`` (saved once, ``[T, B, ...]``), computes the surrogate and the
Jacobian for all timesteps in a few vectorised kernels, and runs a single fused multiply-add per
timestep for the sequential part. No state survives a call: ``deepcopy``, weight rewinding and
repeated evaluation need no ``reset()``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn
from spikeprune.core.diagnostics import UserError

from spikeprune.engine import fused as _fused

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_DETACH_RESET",
    "DEFAULT_SURROGATE",
    "DEFAULT_U_TH",
    "DEFAULT_V_RESET",
    "LIF",
    "SURROGATES",
    "beta_in_range",
    "NeuronStatistics",
    "lif_multistep",
    "observe",
    "record_statistics",
    "spiking_layers",
    "surrogate_gradient",
]


# --------------------------------------------------------------------------------------------------
# The LIF neuron's defaults (LTH-SNN Eq. 2-4), the one place every config and function takes them from.
# --------------------------------------------------------------------------------------------------

DEFAULT_BETA = 0.5  #: membrane decay beta = exp(-dt/tau), i.e. tau = 2 time steps
DEFAULT_U_TH = 1.0  #: firing threshold u_th
DEFAULT_V_RESET = 0.0  #: reset potential V_reset (hard reset)
DEFAULT_SURROGATE = "atan"  #: surrogate gradient (a key of :data:`SURROGATES`)
DEFAULT_DETACH_RESET = False  #: whether the reset path is detached from the gradient


def beta_in_range(beta: object) -> bool:
    """Whether ``beta`` is a number with ``0 < beta < 1``, the membrane decay of a leaky neuron."""
    return isinstance(beta, (int, float)) and 0.0 < beta < 1.0


# --------------------------------------------------------------------------------------------------
# Surrogate gradients: d Hea(z) / dz is replaced by sg(z; alpha). Forms and default alphas follow
# SpikingJelly's surrogate module so that models trained with either library behave alike.
# Each function may overwrite its argument ``z`` (the backward passes a fresh temporary): on a CPU
# these element-wise passes are memory-bound, so in-place updates are what makes them cheap.
# --------------------------------------------------------------------------------------------------


def _atan(z: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    # d/dz [ atan(pi/2 * alpha * z) / pi + 1/2 ] = (alpha/2) / (1 + (pi/2 * alpha * z)^2)
    k = math.pi / 2 * alpha
    return torch.addcmul(torch.ones((), dtype=z.dtype), z, z, value=k * k).reciprocal_(), alpha / 2


def _sigmoid(z: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    s = z.mul_(alpha).sigmoid_()
    return s.mul_(s.neg().add_(1)), alpha  # alpha * s * (1 - s)


def _triangle(z: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    # Piecewise-linear "hat" of height alpha and half-width 1/alpha (area 1): alpha * max(0, 1 - alpha|z|).
    return z.abs_().mul_(-alpha).add_(1).clamp_min_(0), alpha


def _rectangle(z: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    # SpikingJelly's Rect: a box of height alpha and width 1/alpha (area 1), alpha * [|z| < 0.5/alpha].
    # (Until issue 19 this was width alpha, height 1/alpha; docs/decisions.md.)
    return (z.abs() < 0.5 / alpha).to(z.dtype), alpha


#: name -> (shape(z, alpha) -> (sg / c, c), default alpha). The constant factor c is returned apart
#: so the backward can fold it into a kernel it runs anyway (one memory pass fewer per timestep).
SURROGATES: dict[str, tuple[Callable[[torch.Tensor, float], tuple[torch.Tensor, float]], float]] = {
    "atan": (_atan, 2.0),
    "sigmoid": (_sigmoid, 4.0),
    "triangle": (_triangle, 1.0),
    "rectangle": (_rectangle, 1.0),
}


def surrogate_gradient(z: torch.Tensor, surrogate: str = DEFAULT_SURROGATE, alpha: float | None = None) -> torch.Tensor:
    """Surrogate derivative of the Heaviside step at ``z = u - u_th`` (any shape; ``z`` is not modified)."""
    fn, default_alpha = _surrogate(surrogate)
    shape, scale = fn(z.clone(), default_alpha if alpha is None else alpha)
    return shape * scale


def _surrogate(name: str) -> tuple[Callable[[torch.Tensor, float], torch.Tensor], float]:
    try:
        return SURROGATES[name]
    except KeyError:
        raise UserError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}") from None


#: a per-timestep map of the membrane potential, ``u_t [B, ...] -> u_t [B, ...]`` (see :func:`lif_multistep`)
Membrane = Callable[[torch.Tensor], torch.Tensor]
Observer = Callable[["LIF", torch.Tensor, torch.Tensor], None]


# --------------------------------------------------------------------------------------------------
# The fused multi-step LIF. Measured on a 2-core CPU (benchmarks/RESULTS.md): boolean masks,
# masked_fill and whole-sequence temporaries cost more than the arithmetic, so both passes work one
# timestep at a time with float-only, mostly in-place kernels.
# --------------------------------------------------------------------------------------------------


def _lif_forward(
    x: torch.Tensor, beta: float, u_th: float, v_reset: float, keep_u: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes and pre-spike membrane potentials of Eq. 2-4; ``x`` and both results are ``[T, B, ...]``.

    ``keep_u=False`` is the inference path: ``u`` lives in one timestep-sized buffer and ``None`` is
    returned for it (same kernels, so the spikes are bit-identical). On a CPU a fresh ``[T, B, ...]``
    output costs a page fault per 4 KiB on first touch, which is what not materialising ``u`` saves
    (benchmarks/RESULTS.md §2b).
    """
    spikes = torch.empty_like(x, memory_format=torch.contiguous_format)
    u = torch.empty_like(spikes) if keep_u else None
    scratch = None if keep_u else torch.empty_like(spikes[0])
    h = torch.empty_like(spikes[0])
    for t in range(x.shape[0]):
        u_t, s_t = (u[t] if keep_u else scratch), spikes[t]
        if t == 0:
            u_t.copy_(x[0])  # h_0 = 0
        else:
            torch.add(h, x[t], out=u_t)  # Eq. 2
        torch.ge(u_t, u_th, out=s_t)  # Eq. 3, written straight into a float tensor
        # Eq. 4: h = beta * u * (1 - s) + V_reset * s. Exact: with s in {0, 1}, h - h*s is h or 0.
        torch.mul(u_t, beta, out=h)
        h.addcmul_(h, s_t, value=-1)
        if v_reset != 0.0:
            h.add_(s_t, alpha=v_reset)
    return spikes, u


def _lif_backward(
    grad_spikes: torch.Tensor,
    u: torch.Tensor,
    spikes: torch.Tensor,
    beta: float,
    u_th: float,
    v_reset: float,
    surrogate: str,
    alpha: float,
    detach_reset: bool,
) -> torch.Tensor:
    """dL/dx from dL/ds (all ``[T, B, ...]``), running the recurrence backwards in time.

    With ``carry`` = dL/du_{t+1} (= dL/dh_t, since u_{t+1} = h_t + x_{t+1}) and sg = c * shape:

        dL/du_t = sg * (dL/ds_t + carry * (V_reset - beta u_t)) + beta * carry * (1 - s_t)

    (the middle term is the gradient through the spike in Eq. 4; ``detach_reset`` drops it). Written
    this way one timestep costs 8 element-wise passes instead of 13, which is what counts on a CPU.
    """
    shape_fn = SURROGATES[surrogate][0]
    grad_x = torch.empty_like(u)
    carry: torch.Tensor | None = None
    for t in range(u.shape[0] - 1, -1, -1):
        u_t, s_t, g_t = u[t], spikes[t], grad_x[t]
        shape, c = shape_fn(u_t - u_th, alpha)
        if carry is None:  # last timestep: h_T feeds nothing
            torch.mul(grad_spikes[t], shape, out=g_t)
            if c != 1.0:
                g_t.mul_(c)
        else:
            if detach_reset:
                through_spike = torch.mul(grad_spikes[t], shape)
            else:
                a = torch.mul(u_t, -beta)
                if v_reset != 0.0:
                    a.add_(v_reset)
                through_spike = torch.addcmul(grad_spikes[t], carry, a).mul_(shape)
            leak = torch.addcmul(carry, carry, s_t, value=-1)  # carry * (1 - s_t)
            if c == 1.0:  # atan with the default alpha = 2
                torch.add(through_spike, leak, alpha=beta, out=g_t)
            else:
                torch.add(through_spike, leak, alpha=beta / c, out=g_t).mul_(c)
        carry = g_t
    return grad_x


def _fused_kernel(x: torch.Tensor):
    """The fused kernel library if it should run on ``x`` (``SPIKEPRUNE_LIF_KERNEL``; spikeprune.engine.fused)."""
    return _fused.load() if _fused.supports(x) else None


class _LIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, beta, u_th, v_reset, surrogate, alpha, detach_reset):  # type: ignore[override]
        lib = _fused_kernel(x)
        if lib is not None:
            # One pass over T (spikeprune/_lif_kernel.c). The backward needs only u: the spikes are
            # recomputed there as u >= u_th, exactly as they were made.
            spikes, u = _fused.forward(lib, x, beta, u_th, v_reset)
            ctx.save_for_backward(u)
        else:
            spikes, u = _lif_forward(x, beta, u_th, v_reset)
            # Saving the spikes costs no memory: the next layer keeps them alive for its own backward.
            ctx.save_for_backward(u, spikes)
        ctx.lib = lib
        ctx.params = (beta, u_th, v_reset, surrogate, alpha, detach_reset)
        ctx.mark_non_differentiable(u)
        return spikes, u

    @staticmethod
    def backward(ctx, grad_spikes, _grad_u):  # type: ignore[override]
        if ctx.lib is not None:
            (u,) = ctx.saved_tensors
            grad_x = _fused.backward(ctx.lib, grad_spikes, u, *ctx.params)
        else:
            u, spikes = ctx.saved_tensors
            grad_x = _lif_backward(grad_spikes.contiguous(), u, spikes, *ctx.params)
        return grad_x, None, None, None, None, None, None


def lif_multistep(
    x: torch.Tensor,
    beta: float = DEFAULT_BETA,
    u_th: float = DEFAULT_U_TH,
    v_reset: float = DEFAULT_V_RESET,
    surrogate: str = DEFAULT_SURROGATE,
    alpha: float | None = None,
    detach_reset: bool = DEFAULT_DETACH_RESET,
    *,
    membrane: Membrane | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run Eq. 2-4 over a whole sequence.

    Args:
        x: input currents ``[T, B, ...]`` (the output of conv/linear + BN at every timestep).
        membrane: optional map applied to every ``u_t`` (``[B, ...]``) before the threshold of Eq. 3;
            the result is the ``u_t`` that spikes, leaks and resets (e.g. a quantized membrane
            register, QP-SNN / MINT). With it the loop runs eagerly under autograd (the fused
            kernel cannot call Python); without it nothing changes.
    Returns:
        ``(spikes, u)``, both ``[T, B, ...]``: spikes in {0, 1} with the dtype of ``x``
        (float32 under bf16 autocast), and the pre-spike membrane potentials ``u_t`` (not
        differentiable; exposed for statistics and the firing analyses of LTH-SNN §3).
    """
    if x.dim() < 2:
        raise UserError(f"LIF expects a time-major input [T, B, ...]; got shape {tuple(x.shape)}")
    fn, default_alpha = _surrogate(surrogate)
    if x.dtype in (torch.bfloat16, torch.float16):
        # Integrating the membrane in half precision would move spikes near u_th; keep fp32 state.
        x = x.float()
    params = (float(beta), float(u_th), float(v_reset), surrogate,
              float(default_alpha if alpha is None else alpha), bool(detach_reset))
    if membrane is not None:
        return _lif_autograd(x, *params, membrane)
    return _apply_lif(x, *params)


class _Heaviside(torch.autograd.Function):
    """Eq. 3 forward, surrogate backward: the spike of the eager autograd loop."""

    @staticmethod
    def forward(ctx, z, surrogate, alpha):  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.params = (surrogate, alpha)
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return g * surrogate_gradient(z, *ctx.params), None, None


def _lif_autograd(
    x: torch.Tensor, beta: float, u_th: float, v_reset: float, surrogate: str, alpha: float,
    detach_reset: bool, membrane: Membrane,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2-4 one timestep at a time, differentiated by autograd, with ``membrane`` applied to ``u_t``.

    The hand-written backward of the fused path assumes ``u_t = h_{t-1} + x_t``; a hook changes that
    Jacobian, so here autograd records the loop (and the hook's own gradient, e.g. a straight-through
    rounding). ``x`` is ``[T, B, ...]``; returns ``(spikes, u)`` like :func:`lif_multistep`.
    """
    h: torch.Tensor | float = 0.0  # h_0 = 0
    spikes, us = [], []
    for t in range(x.shape[0]):
        u = membrane(h + x[t])  # Eq. 2, then the hook
        s = _Heaviside.apply(u - u_th, surrogate, alpha)  # Eq. 3
        r = s.detach() if detach_reset else s
        h = beta * u * (1 - r) + v_reset * r  # Eq. 4
        spikes.append(s)
        us.append(u.detach())
    return torch.stack(spikes), torch.stack(us)


# torch.compile cannot trace a ctypes call (the fused kernel) and would graph-break with warnings
# inside it; the LIF is one opaque call for Dynamo instead, the layers around it still compile.
@torch.compiler.disable
def _apply_lif(*args):
    return _LIFFunction.apply(*args)


@torch.compiler.disable
def _lif_inference(x: torch.Tensor, beta: float, u_th: float, v_reset: float) -> torch.Tensor:
    """Spikes only (no u kept), by the fused kernel where it runs, else the eager kernels."""
    lib = _fused_kernel(x)
    if lib is not None:
        return _fused.forward(lib, x, beta, u_th, v_reset, keep_u=False)[0]
    return _lif_forward(x, beta, u_th, v_reset, keep_u=False)[0]


# --------------------------------------------------------------------------------------------------
# Module and statistics.
# --------------------------------------------------------------------------------------------------


class LIF(nn.Module):
    """Multi-step LIF layer (LTH-SNN Eq. 2-4): ``[T, B, ...]`` currents -> ``[T, B, ...]`` spikes.

    Args:
        beta: membrane decay in (0, 1); ``beta = exp(-dt / tau)``.
        u_th: firing threshold.
        v_reset: potential after a spike (hard reset).
        surrogate: ``"atan"`` (default), ``"sigmoid"``, ``"triangle"`` or ``"rectangle"``.
        alpha: surrogate sharpness; ``None`` takes the surrogate's default (atan: 2).
        detach_reset: treat the spike in Eq. 4 as a constant in the backward pass.

    Equivalent to SpikingJelly ``LIFNode(tau=1/(1-beta), decay_input=False, v_reset=0.,
    v_threshold=u_th)`` and snnTorch ``Leaky(beta, threshold=u_th, reset_mechanism="zero")``.
    """

    def __init__(
        self,
        beta: float = DEFAULT_BETA,
        u_th: float = DEFAULT_U_TH,
        v_reset: float = DEFAULT_V_RESET,
        surrogate: str = DEFAULT_SURROGATE,
        alpha: float | None = None,
        detach_reset: bool = DEFAULT_DETACH_RESET,
    ) -> None:
        super().__init__()
        if not beta_in_range(beta):
            raise UserError(f"beta must be in (0, 1) (beta = exp(-dt/tau)); got {beta!r}")
        if not (isinstance(u_th, (int, float)) and math.isfinite(u_th)):
            raise UserError(f"u_th must be a finite number; got {u_th!r}")
        if not (isinstance(v_reset, (int, float)) and math.isfinite(v_reset)):
            raise UserError(f"v_reset must be a finite number; got {v_reset!r}")
        _surrogate(surrogate)
        if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
            raise UserError(f"surrogate alpha must be > 0; got {alpha!r}")
        self.beta = float(beta)
        self.u_th = float(u_th)
        self.v_reset = float(v_reset)
        self.surrogate = surrogate
        self.alpha = float(alpha if alpha is not None else SURROGATES[surrogate][1])
        self.detach_reset = bool(detach_reset)
        self.observer: Observer | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        membrane = self.membrane_hook(x)
        if membrane is None and self.observer is None and not (torch.is_grad_enabled() and x.requires_grad) \
                and x.dim() >= 2:
            # Inference (no gradient wanted, nobody observing u, no hook): skip materialising u.
            x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
            return _lif_inference(x, self.beta, self.u_th, self.v_reset)
        spikes, u = lif_multistep(
            x, self.beta, self.u_th, self.v_reset, self.surrogate, self.alpha, self.detach_reset,
            membrane=membrane,
        )
        if self.observer is not None:
            self.observer(self, u, spikes)
        return spikes

    def membrane_hook(self, x: torch.Tensor) -> Membrane | None:
        """The map applied to every ``u_t`` before the threshold (``None``: the plain LIF, fused kernel).

        ``x`` is this call's input ``[T, B, ...]``. Subclasses override it:
        :class:`~spikeprune.compression.quant.QuantizedLIF` returns its membrane register's round-and-clamp.
        """
        return None

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, u_th={self.u_th}, v_reset={self.v_reset}, surrogate={self.surrogate}"
            f"(alpha={self.alpha}), detach_reset={self.detach_reset}"
        )


def spiking_layers(model: nn.Module) -> dict[str, LIF]:
    """All ``LIF`` submodules of ``model`` by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LIF)}


@contextmanager
def observe(model: nn.Module, observer: Observer) -> Iterator[None]:
    """Call ``observer(lif, u, spikes)`` after every LIF forward inside the block.

    ``u`` and ``spikes`` are ``[T, B, ...]``; the observer must not modify them.
    """
    layers = spiking_layers(model).values()
    previous = [lif.observer for lif in layers]
    for lif in layers:
        lif.observer = observer
    try:
        yield
    finally:
        for lif, prev in zip(layers, previous):
            lif.observer = prev


@dataclass
class NeuronStatistics:
    """Per-channel statistics of one LIF layer, accumulated over calibration batches.

    The channel is dim 2 of ``[T, B, C, ...]`` (for ``[T, B, N]`` every neuron is a channel). Means
    run over (T, B, H, W) of all batches seen; variances are population variances. Accumulated
    in float64 with Chan's parallel update so many batches do not lose precision.
    """

    count: int = 0
    membrane_mean: torch.Tensor | None = None  # [C] mean of pre-spike u_t
    membrane_m2: torch.Tensor | None = None  # [C] sum of squared deviations
    spike_sum: torch.Tensor | None = None  # [C]
    timesteps: int = 0
    neurons_per_channel: int = 0
    spike_count_by_t: torch.Tensor | None = None  # [T] spikes per timestep (all channels)

    @property
    def membrane_var(self) -> torch.Tensor:
        """Population variance of u per channel, ``[C]``."""
        return self.membrane_m2 / max(self.count, 1)

    @property
    def firing_rate(self) -> torch.Tensor:
        """Mean spike per neuron and timestep, per channel, ``[C]``."""
        return self.spike_sum / max(self.count, 1)

    @property
    def mean_firing_rate(self) -> float:
        """Layer-wide firing rate (spikes per neuron per timestep)."""
        return float(self.spike_sum.sum() / max(self.count * self.spike_sum.numel(), 1))

    @property
    def num_neurons(self) -> int:
        """Neurons in the layer for one sample (C x H x W)."""
        return self.neurons_per_channel * (0 if self.spike_sum is None else self.spike_sum.numel())

    def update(self, u: torch.Tensor, spikes: torch.Tensor) -> None:
        """Fold in one batch: ``u`` and ``spikes`` are ``[T, B, C, ...]`` (or ``[T, B, N]``)."""
        u = u.detach()
        channels = u.shape[2] if u.dim() > 2 else 1
        per_channel = u.reshape(u.shape[0], u.shape[1], channels, -1).transpose(0, 2)  # [C, B, T, rest]
        per_channel = per_channel.reshape(channels, -1).double()
        n = per_channel.shape[1]
        mean = per_channel.mean(dim=1)
        m2 = ((per_channel - mean[:, None]) ** 2).sum(dim=1)
        s = spikes.detach().reshape(u.shape[0], u.shape[1], channels, -1)
        spike_sum = s.sum(dim=(0, 1, 3)).double()
        by_t = s.sum(dim=(1, 2, 3)).double()
        if self.membrane_mean is None:
            self.membrane_mean, self.membrane_m2, self.spike_sum = mean, m2, spike_sum
            self.spike_count_by_t = by_t
            self.timesteps = u.shape[0]
            self.neurons_per_channel = int(math.prod(u.shape[3:])) if u.dim() > 3 else 1
        else:
            delta = mean - self.membrane_mean
            total = self.count + n
            self.membrane_mean = self.membrane_mean + delta * (n / total)
            self.membrane_m2 = self.membrane_m2 + m2 + delta**2 * (self.count * n / total)
            self.spike_sum = self.spike_sum + spike_sum
            if self.spike_count_by_t is not None and by_t.shape == self.spike_count_by_t.shape:
                self.spike_count_by_t = self.spike_count_by_t + by_t
            else:  # batches with different T: per-timestep counts are no longer meaningful
                self.spike_count_by_t = None
        self.count += n


@dataclass
class StatisticsRecorder:
    """What :func:`record_statistics` yields: ``layers[name]`` -> :class:`NeuronStatistics`."""

    layers: dict[str, NeuronStatistics] = field(default_factory=dict)

    def __getitem__(self, name: str) -> NeuronStatistics:
        return self.layers[name]

    def __iter__(self):
        return iter(self.layers)

    def items(self):
        return self.layers.items()

    @property
    def firing_rate(self) -> float:
        """Network-wide firing rate: total spikes / (neurons x timesteps x samples)."""
        spikes = sum(float(s.spike_sum.sum()) for s in self.layers.values() if s.spike_sum is not None)
        slots = sum(s.count * s.spike_sum.numel() for s in self.layers.values() if s.spike_sum is not None)
        return spikes / slots if slots else 0.0

    def firing_rates(self) -> dict[str, float]:
        """Per-layer firing rate (spikes per neuron per timestep)."""
        return {n: s.mean_firing_rate for n, s in self.layers.items() if s.spike_sum is not None}


@contextmanager
def record_statistics(model: nn.Module) -> Iterator[StatisticsRecorder]:
    """Collect per-channel membrane mean/variance and firing rates of every LIF in ``model``.

    Costs three reductions per LIF call while active and nothing otherwise::

        with record_statistics(model) as stats:
            for x, _ in calibration_batches:
                model(x)
        stats["features.1.lif"].membrane_var   # [C]
    """
    names = {id(m): n for n, m in spiking_layers(model).items()}
    recorder = StatisticsRecorder({n: NeuronStatistics() for n in names.values()})

    def _observer(lif: LIF, u: torch.Tensor, spikes: torch.Tensor) -> None:
        recorder.layers[names[id(lif)]].update(u, spikes)

    with observe(model, _observer):
        yield recorder
