"""Probabilistic modelling of firing (LTH-SNN §3, Appendix B; SPEC §6): crisis probability, the flip
bounds of Lemmas 3.3-3.4 and Theorem 3.5, and the flip analysis of a compressed model.

A spiking neuron fires when its pre-spike membrane potential ``u >= u_th``. If a perturbation (pruning,
quantization, noise) changes the neuron's spatial input feature by at most ``eps``, and the temporal
input is the same, ``u`` moves by at most ``eps``: the spike can only flip when ``u`` lay in the
*crisis neighbourhood* ``[u_th - eps, u_th + eps]``, whose probability is the crisis probability
(LTH-SNN Eq. 6). With ``p_sup`` the largest density of ``u`` in that neighbourhood::

    Lemma 3.3    P[flip at t | same h_{t-1}]                  <= 2 p_sup eps
    Lemma 3.4    P[flip at t | no flip at 1..t-1]             <= 2 p_sup eps / (1 - beta)
    Theorem 3.5  P[any of N neurons flips | none flipped]     <= N 2 p_sup eps / (1 - beta)

Lemma 3.4's radius ``eps / (1 - beta)`` bounds the membrane error that leaks through the decay when
the two neurons agreed so far (errors are wiped by a common reset; the finite sum after ``t`` steps is
``eps (1 - beta^t) / (1 - beta)``).

:func:`flip_analysis` measures all of this on a real network: it runs a reference and a perturbed
model on the same inputs and reports, per spiking layer and timestep, the measured input-feature
error, the flip rates and the bounds, either *layer-local* (every perturbed layer is fed the
reference network's spikes, the lemmas' setting) or *end-to-end* (errors propagate).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikeprune.core.config import check_fraction
from spikeprune.core.diagnostics import UserError
from spikeprune.tickets.masks import Mask, prunable_weights
from spikeprune.tickets.criteria import CRITERIA, FIRING_AWARE  # the registry: every criterion prune() accepts
from spikeprune.engine.neuron import LIF, observe, spiking_layers

__all__ = [
    "ESTIMATORS",
    "FLIP_FIELDS",
    "FlipRow",
    "MODES",
    "PERTURBATIONS",
    "Perturbation",
    "apply_perturbation",
    "bound_lemma33",
    "bound_lemma34",
    "bound_theorem35",
    "crisis_probability",
    "crisis_report",
    "density_sup",
    "flip_analysis",
    "flip_rows_csv",
    "flip_summary",
    "parse_perturbation",
    "scott_bandwidth",
]

#: estimators of the crisis probability and of p_sup
ESTIMATORS = ("empirical", "gaussian", "kde")
#: flip-analysis modes
MODES = ("local", "end_to_end")
#: perturbation kinds understood by :func:`parse_perturbation`
PERTURBATIONS = ("prune", "quantize", "weight-noise", "input-noise")

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------------


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def _nonnegative(value: Any, name: str) -> float:
    v = _number(value, name)
    if v < 0:
        raise UserError(f"{name} must be >= 0; got {value!r}")
    return v


def _beta(beta: Any) -> float:
    b = _number(beta, "beta")
    if not 0.0 < b < 1.0:
        raise UserError(f"beta must be in (0, 1); got {beta!r}")
    return b


def _method(method: str) -> str:
    if method not in ESTIMATORS:
        raise UserError(f"unknown estimator {method!r}; choose one of {', '.join(ESTIMATORS)}")
    return method


def _samples(u: torch.Tensor | Any) -> torch.Tensor:
    """Any tensor of membrane potentials -> 1-D float64 samples (finite values only are accepted)."""
    u = torch.as_tensor(u).detach().reshape(-1).to(torch.float64)
    if u.numel() == 0:
        raise UserError("no membrane potentials given (empty tensor)")
    if not bool(torch.isfinite(u).all()):
        raise UserError("membrane potentials contain NaN or inf")
    return u


def _subsample(u: torch.Tensor, max_samples: int | None, seed: int = 0) -> torch.Tensor:
    if max_samples is None or u.numel() <= max_samples:
        return u
    g = torch.Generator().manual_seed(seed)
    return u[torch.randperm(u.numel(), generator=g)[:max_samples]]


# --------------------------------------------------------------------------------------------------
# Crisis probability (Eq. 6) and p_sup (Definition 3.1, Eq. S.1).
# --------------------------------------------------------------------------------------------------


def _phi(z: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF."""
    return 0.5 * torch.erfc(-z / _SQRT2)


def scott_bandwidth(u: torch.Tensor) -> float:
    """Gaussian-KDE bandwidth by Scott's rule, ``h = std(u, ddof=1) n^(-1/5)`` (scipy's default)."""
    u = _samples(u)
    if u.numel() < 2:
        raise UserError("a kernel density needs at least 2 membrane potentials")
    h = float(u.std(unbiased=True)) * u.numel() ** (-0.2)
    if h <= 0:
        raise UserError("all membrane potentials are equal: no density can be estimated "
                         "(u is a point mass, which violates LTH-SNN Definition 3.1)")
    return h


def crisis_probability(u: torch.Tensor, u_th: float, eps: float, method: str = "empirical", *,
                       bandwidth: float | None = None, max_samples: int | None = None) -> float:
    """Crisis probability ``P(|u - u_th| <= eps)`` (LTH-SNN Eq. 6) estimated from samples of u.

    Args:
        u: pre-spike membrane potentials, any shape (e.g. ``[T, B, C, H, W]``), pooled.
        u_th: firing threshold.
        eps: radius of the crisis neighbourhood (>= 0).
        method: ``"empirical"`` (fraction of samples inside), ``"gaussian"`` (fitted normal's mass) or
            ``"kde"`` (mass of a Gaussian kernel density, Scott bandwidth unless ``bandwidth``).
        max_samples: random subsample size for the KDE (all samples by default; the KDE's mass is
            computed in closed form, one erf per sample).
    """
    u, u_th, eps = _samples(u), _number(u_th, "u_th"), _nonnegative(eps, "eps")
    method = _method(method)
    lo, hi = u_th - eps, u_th + eps
    if method == "empirical":
        return float(((u >= lo) & (u <= hi)).double().mean())
    if method == "gaussian":
        mu, sd = float(u.mean()), float(u.std(unbiased=True)) if u.numel() > 1 else 0.0
        if sd == 0.0:
            return float(lo <= mu <= hi)
        return float(_phi(torch.tensor((hi - mu) / sd)) - _phi(torch.tensor((lo - mu) / sd)))
    u = _subsample(u, max_samples)
    if bandwidth is None and _degenerate(u):
        return float(lo <= float(u[0]) <= hi)  # a point mass: its KDE would have zero width
    h = scott_bandwidth(u) if bandwidth is None else _positive_bandwidth(bandwidth)
    # The KDE's mass on [lo, hi] is the mean over samples of Phi((hi - u)/h) - Phi((lo - u)/h): exact.
    return float((_phi((hi - u) / h) - _phi((lo - u) / h)).mean())


def _degenerate(u: torch.Tensor) -> bool:
    return u.numel() < 2 or bool((u == u[0]).all())


def _positive_bandwidth(bandwidth: Any) -> float:
    h = _number(bandwidth, "bandwidth")
    if h <= 0:
        raise UserError(f"bandwidth must be > 0; got {bandwidth!r}")
    return h


def density_sup(u: torch.Tensor, u_th: float, radius: float, method: str = "kde", *,
                bandwidth: float | None = None, grid: int = 257, max_samples: int | None = 200_000) -> float:
    """``p_sup``: the largest density of u on ``[u_th - radius, u_th + radius]`` (LTH-SNN Eq. S.1).

    Methods: ``"gaussian"`` (fitted normal: its density at the point of the interval closest to the
    mean, exact), ``"kde"`` (Gaussian KDE maximised over ``grid`` points of the interval) and
    ``"empirical"`` (box-kernel density ``#{|u - x| <= h} / (2 h n)`` with the same ``h``, maximised
    over the grid; exact counts from sorted samples). The KDE and box estimates use a random
    subsample of ``max_samples`` values (seeded, so results are reproducible).

    A point mass of u inside the interval (e.g. neurons whose receptive field saw no spike get a
    constant input) has infinite density: Definition 3.1 fails there and every estimator reports a
    finite smoothed peak instead; :func:`crisis_report` measures such atoms (``atom_mass``).
    """
    u, u_th, radius = _samples(u), _number(u_th, "u_th"), _nonnegative(radius, "radius")
    method = _method(method)
    if not isinstance(grid, int) or grid < 2:
        raise UserError(f"grid must be an integer >= 2; got {grid!r}")
    lo, hi = u_th - radius, u_th + radius
    if method == "gaussian":
        mu, sd = float(u.mean()), float(u.std(unbiased=True)) if u.numel() > 1 else 0.0
        if sd == 0.0:
            return math.inf if lo <= mu <= hi else 0.0
        x = min(max(mu, lo), hi)
        return _INV_SQRT_2PI / sd * math.exp(-0.5 * ((x - mu) / sd) ** 2)
    u = _subsample(u, max_samples)
    if bandwidth is None and _degenerate(u):
        return math.inf if lo <= float(u[0]) <= hi else 0.0  # a point mass: infinite density at it
    h = scott_bandwidth(u) if bandwidth is None else _positive_bandwidth(bandwidth)
    points = torch.linspace(lo, hi, grid, dtype=torch.float64) if radius > 0 else torch.tensor([u_th], dtype=torch.float64)
    if method == "empirical":
        s = torch.sort(u).values
        counts = torch.searchsorted(s, points + h, right=True) - torch.searchsorted(s, points - h, right=False)
        return float(counts.max()) / (2.0 * h * u.numel())
    n = u.numel()
    # Samples farther than 8h from the interval add < exp(-32) each to the density there: skip them.
    near = u[(u >= lo - 8 * h) & (u <= hi + 8 * h)]
    if near.numel() == 0:
        return 0.0
    best = 0.0
    # Chunk the [grid, n] kernel matrix to ~4M entries (32 MB) at a time.
    step = max(1, 4_000_000 // near.numel())
    for i in range(0, points.numel(), step):
        z = (points[i:i + step, None] - near[None, :]) / h
        best = max(best, float(torch.exp(-0.5 * z * z).sum(dim=1).max()) / n * _INV_SQRT_2PI / h)
    return best


def bound_lemma33(p_sup: float, eps: float) -> float:
    """Lemma 3.3 / B.2: ``P[flip] <= 2 p_sup eps`` when both neurons share the temporal input h_{t-1}.

    ``p_sup = inf`` (a point mass of u in the neighbourhood: Definition 3.1 fails) gives an infinite
    bound, except at ``eps = 0`` where nothing can flip and the bound is 0.
    """
    if isinstance(p_sup, (int, float)) and not isinstance(p_sup, bool) and p_sup == math.inf:
        return 0.0 if _nonnegative(eps, "eps") == 0.0 else math.inf
    return 2.0 * _nonnegative(p_sup, "p_sup") * _nonnegative(eps, "eps")


def bound_lemma34(p_sup: float, eps: float, beta: float) -> float:
    """Lemma 3.4 / B.3: ``P[flip at T] <= 2 p_sup eps / (1 - beta)`` given no flip at 1..T-1 (Eq. S.9)."""
    return bound_lemma33(p_sup, eps) / (1.0 - _beta(beta))


def bound_theorem35(p_sup: float, eps: float, beta: float, width: int) -> float:
    """Theorem 3.5 / B.4: ``P[some neuron of a width-N layer flips] <= N 2 p_sup eps / (1 - beta)`` (Eq. S.12).

    A probability bound above 1 is vacuous; it is returned as is so that looseness stays visible.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UserError(f"layer width N must be a positive integer; got {width!r}")
    return width * bound_lemma34(p_sup, eps, beta)


def crisis_report(u: torch.Tensor, u_th: float, eps: float, beta: float | None = None, *,
                  width: int | None = None, p_sup_method: str = "kde", max_samples: int | None = 200_000
                  ) -> dict[str, Any]:
    """Everything §3 says about one layer's membrane potentials at input error ``eps``.

    Returns a dict with the crisis probability by every estimator at radius ``eps`` (Lemma 3.3) and,
    given ``beta``, at ``eps / (1 - beta)`` (Lemma 3.4); ``p_sup`` on each neighbourhood; the bounds;
    and ``atom_mass``: the largest fraction of samples sharing one exact value inside the Lemma-3.4
    neighbourhood (a point mass, for which Definition 3.1's finite density fails).
    """
    u = _samples(u)
    u_th, eps = _number(u_th, "u_th"), _nonnegative(eps, "eps")
    radius34 = eps / (1.0 - _beta(beta)) if beta is not None else eps
    out: dict[str, Any] = {"u_th": u_th, "eps": eps, "samples": int(u.numel()),
                           "mean": float(u.mean()), "std": float(u.std()) if u.numel() > 1 else 0.0}
    for m in ESTIMATORS:
        out[f"crisis_{m}"] = crisis_probability(u, u_th, eps, m, max_samples=max_samples)
    out["p_sup"] = density_sup(u, u_th, eps, p_sup_method, max_samples=max_samples)
    out["bound_lemma33"] = bound_lemma33(out["p_sup"], eps)
    if beta is not None:
        out["radius_lemma34"] = radius34
        for m in ESTIMATORS:
            out[f"crisis34_{m}"] = crisis_probability(u, u_th, radius34, m, max_samples=max_samples)
        out["p_sup34"] = density_sup(u, u_th, radius34, p_sup_method, max_samples=max_samples)
        out["bound_lemma34"] = bound_lemma34(out["p_sup34"], eps, beta)
        if width is not None:
            out["bound_theorem35"] = bound_theorem35(out["p_sup34"], eps, beta, width)
    inside = u[(u >= u_th - radius34) & (u <= u_th + radius34)]
    out["atom_mass"] = float(torch.unique(inside, return_counts=True)[1].max()) / u.numel() if inside.numel() else 0.0
    return out


# --------------------------------------------------------------------------------------------------
# Perturbations: what the flip analysis compares a reference model against.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Perturbation:
    """One perturbation of a model, parsed from ``kind:arguments`` (see :func:`parse_perturbation`)."""

    kind: str  # one of PERTURBATIONS
    sparsity: float | None = None  # prune: fraction of prunable weights removed
    criterion: str | None = None  # prune: a name of tickets.criteria.CRITERIA (magnitude, sf, sf-rms, random, ...)
    mask: str | None = None  # prune: a mask file (Mask.save) instead of sparsity + criterion
    bits: int | None = None  # quantize
    scale: str | None = None  # quantize: ReScaW scale gamma (mean | max | percentile)
    sigma: float | None = None  # weight-noise (relative to each tensor's std) / input-noise (absolute)

    @property
    def label(self) -> str:
        """Short name for tables and file names, e.g. ``prune-0.8-sf``."""
        if self.kind == "prune":
            return f"prune-{Path(self.mask).stem}" if self.mask else f"prune-{self.sparsity:g}-{self.criterion}"
        if self.kind == "quantize":
            return f"quantize-{self.bits}b" + ("" if self.scale in (None, "mean") else f"-{self.scale}")
        return f"{self.kind}-{self.sigma:g}"


def parse_perturbation(text: str) -> Perturbation:
    """Parse ``prune:<mask file>``, ``prune:<sparsity>[:<criterion>]``, ``quantize:<bits>[:<scale>]``,
    ``weight-noise:<sigma>`` or ``input-noise:<sigma>``.

    ``quantize`` uses :func:`spikeprune.compression.quant.quantize_weight` per layer with the ReScaW scale
    ``mean`` (default, QP-SNN's choice), ``max`` or ``percentile`` (99th).

    ``weight-noise`` adds ``sigma * std(W) * N(0, 1)`` to every conv/linear weight W (relative, so one
    sigma means the same for every layer); ``input-noise`` adds ``sigma * N(0, 1)`` to the model input.
    """
    if not isinstance(text, str):
        raise TypeError(f"a perturbation is a string like 'prune:0.8:sf'; got {type(text).__name__}")
    kind, _, arg = text.partition(":")
    if kind not in PERTURBATIONS or not arg:
        raise UserError(f"bad perturbation {text!r}; use prune:<mask file>, prune:<sparsity>[:<criterion>], "
                         "quantize:<bits>[:mean|max|percentile], weight-noise:<sigma> or input-noise:<sigma>")
    if kind == "prune":
        head, _, criterion = arg.partition(":")
        try:
            sparsity = float(head)
        except ValueError:
            return Perturbation("prune", mask=arg)
        check_fraction(sparsity, "prune sparsity", "[0, 1)", f"fraction of weights removed; in {text!r}")
        criterion = criterion or "magnitude"
        if criterion not in CRITERIA:
            raise UserError(f"unknown pruning criterion {criterion!r} in {text!r}; use {', '.join(CRITERIA)}")
        return Perturbation("prune", sparsity=sparsity, criterion=criterion)
    if kind == "quantize":
        bits, _, scale = arg.partition(":")
        if not re.fullmatch(r"\d+", bits) or not 1 <= int(bits) <= 16:
            raise UserError(f"quantize bits must be an integer in [1, 16]; got {bits!r} in {text!r}")
        from spikeprune.compression.quant import SCALES

        scale = scale or "mean"
        if scale not in SCALES:
            raise UserError(f"unknown quantization scale {scale!r} in {text!r}; use {', '.join(SCALES)}")
        return Perturbation("quantize", bits=int(bits), scale=scale)
    try:
        sigma = float(arg)
    except ValueError:
        raise UserError(f"{kind} sigma must be a number; got {arg!r} in {text!r}") from None
    if not (math.isfinite(sigma) and sigma >= 0):
        raise UserError(f"{kind} sigma must be a finite number >= 0; got {arg!r} in {text!r}")
    return Perturbation(kind, sigma=sigma)


InputFn = Callable[[torch.Tensor, int], torch.Tensor]


def apply_perturbation(model: nn.Module, perturbation: Perturbation | str, *, calibration: Any = None,
                       seed: int = 0) -> tuple[nn.Module, InputFn | None]:
    """A perturbed deep copy of ``model`` and, for input noise, the input transform.

    Returns ``(perturbed, input_fn)``; ``input_fn(x, batch_index)`` is ``None`` except for
    ``input-noise``, where it adds seeded Gaussian noise (the same for a given batch index).
    ``calibration`` (batches) is needed by ``prune:<s>:sf``. Pruning is one-shot, without retraining:
    the flip analysis looks at what the weight change itself does to the spikes.
    """
    from spikeprune.tickets.pruning import prune
    from spikeprune.compression.quant import quantize_weight, weight_scale

    p = parse_perturbation(perturbation) if isinstance(perturbation, str) else perturbation
    perturbed = copy.deepcopy(model).eval()
    input_fn: InputFn | None = None
    with torch.no_grad():
        if p.kind == "prune":
            if p.mask is not None:
                Mask.load(p.mask).apply(perturbed)
            else:
                already = Mask.from_model(perturbed).sparsity  # exact zeros of a ticket count as pruned
                if p.sparsity <= already:
                    raise UserError(f"prune:{p.sparsity:g} asks for a total sparsity the model already has "
                                     f"({already:.4f} of its weights are 0): nothing would change; ask for more")
                prune(perturbed, p.criterion, p.sparsity, calibration=calibration, seed=seed)
        elif p.kind == "quantize":
            for w in prunable_weights(perturbed).values():
                alive = w != 0
                if bool(alive.all()):
                    w.copy_(quantize_weight(w, p.bits, method=p.scale or "mean"))
                elif bool(alive.any()):
                    # A pruned model (lottery ticket, edge-popup export): zero is not one of the 2^b levels
                    # (SPEC §7), so quantize the surviving weights only, with their own ReScaW scale, and
                    # keep the pruned ones at 0 (the mask is structure, not a weight value).
                    gamma = weight_scale(w[alive], p.scale or "mean")
                    w.copy_(quantize_weight(w, p.bits, gamma) * alive)
        elif p.kind == "weight-noise":
            g = torch.Generator().manual_seed(seed)
            for w in prunable_weights(perturbed).values():
                noise = torch.randn(w.shape, generator=g, dtype=w.dtype)
                w.add_(noise * (p.sigma * float(w.std())))
        else:
            sigma = p.sigma

            def input_fn(x: torch.Tensor, batch_index: int) -> torch.Tensor:
                g = torch.Generator().manual_seed(seed * 1_000_003 + batch_index)
                return x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return perturbed, input_fn


# --------------------------------------------------------------------------------------------------
# Flip analysis.
# --------------------------------------------------------------------------------------------------


@dataclass
class FlipRow:
    """Measured flips of one spiking layer at one timestep (1-based ``t``) in one mode.

    Rates are over (samples x neurons); ``*_rate`` fields are ``None`` when undefined (no neuron or no
    flip to divide by). ``eps`` fields are max-norms of the spatial input feature error x' - x.
    """

    perturbation: str
    mode: str  # "local" | "end_to_end"
    layer: str
    t: int
    neurons: int  # N: neurons of the layer for one sample (C x H x W)
    samples: int
    eps_t: float  # max |x'_t - x_t|
    eps: float  # max over timesteps 1..t: the lemmas' error upper bound at t
    radius: float  # r_t = eps * sum_{n<t} beta^n: the largest membrane error when no flip happened before
    flip_rate: float  # all flips at t (also after an earlier flip of the same neuron)
    first_flip_rate: float  # flips at t of neurons that had not flipped before (joint probability)
    cond_flip_rate: float | None  # first flips / neurons with no earlier flip: Lemma 3.4's premise
    crisis_share: float | None  # share of flips whose reference u_t lay within r_t of u_th
    first_flip_crisis_share: float | None  # the same for first flips: 1 by Lemma 3.3/3.4's argument
    first_flips_outside: int  # first flips with |u_t - u_th| > r_t (must be 0)
    crisis_empirical: float  # P(|u_t - u_th| <= r_t), measured: the sharpest valid bound
    p_sup: float  # sup density of reference u_t on [u_th - R, u_th + R], R = eps/(1-beta) (eps at t=1)
    bound: float  # Lemma 3.3 at t = 1, Lemma 3.4 at t > 1
    bound_lemma33: float
    bound_lemma34: float
    holds: bool | None  # cond_flip_rate <= bound (None when no neuron met the premise)
    tightness: float | None  # cond_flip_rate / bound
    layer_flip_rate: float | None  # P(some neuron flips at t | none flipped before), over samples
    bound_theorem35: float  # N * bound_lemma34 (often > 1: vacuous)
    eps_refined: float  # the per-neuron error level that minimises bound_refined
    tail_refined: float  # fraction of neurons whose own error up to t exceeds eps_refined
    bound_refined: float  # min over e of P(e_n > e) + the lemma's bound at e (this library's refinement)
    atom_mass: float  # largest point mass of u_t inside the neighbourhood (Definition 3.1 fails if > 0)
    firing_rate: float  # reference spikes per neuron at t
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


FLIP_FIELDS = [f.name for f in fields(FlipRow) if f.name != "extra"]


def _inputs(batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not torch.is_tensor(x):
        raise TypeError(f"a batch must be a tensor or an (inputs, labels) pair; got {type(x).__name__}")
    return x


class _Capture:
    """Hooks that record, for every LIF of a model, its input x, its potential u and its own spikes s
    (all ``[T, B, ...]``), optionally replacing the spikes it passes on by given ones (local mode)."""

    def __init__(self, model: nn.Module, names: list[str], keep_u: bool) -> None:
        self.lifs = {n: m for n, m in spiking_layers(model).items() if n in names}
        self.names = {id(m): n for n, m in self.lifs.items()}
        self.keep_u = keep_u
        self.x: dict[str, torch.Tensor] = {}
        self.u: dict[str, torch.Tensor] = {}
        self.s: dict[str, torch.Tensor] = {}
        self.replace: dict[str, torch.Tensor] | None = None
        self.model = model

    def run(self, x: torch.Tensor, replace: dict[str, torch.Tensor] | None = None) -> None:
        self.x, self.u, self.s, self.replace = {}, {}, {}, replace
        handles = []
        for name, lif in self.lifs.items():
            handles.append(lif.register_forward_pre_hook(self._pre(name)))
            if replace is not None:
                handles.append(lif.register_forward_hook(self._post(name)))
        try:
            with observe(self.model, self._observe):
                self.model(x)
        finally:
            for h in handles:
                h.remove()

    def _pre(self, name: str):
        def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            if name in self.x:
                raise UserError(f"spiking layer {name} runs twice in one forward pass; the flip analysis "
                                 "needs every LIF module to be called once")
            self.x[name] = inputs[0].detach()
        return hook

    def _post(self, name: str):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            return self.replace[name]  # type: ignore[index]
        return hook

    def _observe(self, lif: LIF, u: torch.Tensor, spikes: torch.Tensor) -> None:
        name = self.names.get(id(lif))
        if name is not None:
            self.s[name] = spikes.detach()
            if self.keep_u:
                self.u[name] = u.detach()


@dataclass
class _Acc:
    """Counts of one (mode, layer, timestep) accumulated over batches (pass 2)."""

    n: int = 0
    samples: int = 0
    flips: int = 0
    first: int = 0
    premise: int = 0
    e_parts: list = field(default_factory=list)
    flips_crisis: int = 0
    first_crisis: int = 0
    crisis: int = 0
    spikes: int = 0
    layer_first: int = 0
    layer_premise: int = 0
    u_parts: list = field(default_factory=list)


@torch.no_grad()
def flip_analysis(
    reference: nn.Module,
    perturbed: nn.Module,
    batches: Iterable[Any],
    *,
    modes: Iterable[str] = MODES,
    input_fn: InputFn | None = None,
    num_batches: int | None = None,
    p_sup_method: str = "kde",
    u_samples_per_batch: int = 20_000,
    label: str = "perturbed",
) -> list[FlipRow]:
    """Measure spike flips of ``perturbed`` against ``reference`` per spiking layer and timestep.

    Both models get the same inputs (``input_fn`` perturbs the perturbed model's input, for input
    noise). Modes:

    * ``"local"``: every LIF of the perturbed model passes the *reference* spikes on, so each layer's
      input feature ``x'`` is the perturbed layer applied to the reference layer's input spikes (the
      setting of Lemmas 3.3-3.4: same input spikes, different weights); the LIF still integrates its
      own membrane and its own spikes are compared.
    * ``"end_to_end"``: the perturbed model runs freely; upstream flips enter ``x'``.

    Two passes over the batches: the first measures ``eps`` (the lemmas' upper bound must hold for
    every sample), the second counts flips inside the crisis neighbourhood of that radius.
    ``p_sup`` is estimated from a seeded subsample of the reference potentials (``u_samples_per_batch``
    per batch, layer and timestep), pooled over the layer's neurons: the pooled density's
    crisis mass is the average of the per-neuron ones, so it bounds the layer's average flip rate.

    Returns one :class:`FlipRow` per (mode, layer, timestep); ``t`` is 1-based.
    """
    modes = list(modes)
    for m in modes:
        if m not in MODES:
            raise UserError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    _method(p_sup_method)
    ref_lifs = spiking_layers(reference)
    pert_lifs = spiking_layers(perturbed)
    if not ref_lifs:
        raise UserError(f"{type(reference).__name__} has no spiking layer (spikeprune.LIF); nothing to analyse")
    if list(ref_lifs) != list(pert_lifs):
        raise UserError("reference and perturbed models do not have the same spiking layers")
    for name, lif in ref_lifs.items():
        if not 0.0 < lif.beta < 1.0:  # e.g. an adapted SpikingJelly IFNode (beta = 1, spikeprune.interop)
            raise UserError(f"spiking layer {name} has beta={lif.beta:g}; the flip bounds of Lemma 3.4 need a "
                             "leaky neuron (0 < beta < 1)")
        other = pert_lifs[name]
        if (lif.beta, lif.u_th, lif.v_reset) != (other.beta, other.u_th, other.v_reset):
            raise UserError(f"spiking layer {name} has different neuron parameters in the two models")
    names = list(ref_lifs)
    was = (reference.training, perturbed.training)
    reference.eval()
    perturbed.eval()
    ref_cap = _Capture(reference, names, keep_u=True)
    pert_cap = _Capture(perturbed, names, keep_u=False)

    def batches_used():
        for i, batch in enumerate(batches):
            if num_batches is not None and i >= num_batches:
                break
            yield i, _inputs(batch)

    def perturbed_runs(i: int, x: torch.Tensor):
        xp = input_fn(x, i) if input_fn is not None else x
        for mode in modes:
            pert_cap.run(xp, replace=ref_cap.s if mode == "local" else None)
            yield mode

    try:
        # Pass 1: eps_t = max |x' - x| per (mode, layer, t).
        eps_t: dict[tuple[str, str], torch.Tensor] = {}
        errors: dict[tuple[str, str], list[torch.Tensor]] = {}
        T = None
        seen = 0
        for i, x in batches_used():
            seen += 1
            ref_cap.run(x)
            for mode in perturbed_runs(i, x):
                for li, name in enumerate(names):
                    d = (pert_cap.x[name].float() - ref_cap.x[name].float()).abs()
                    T = d.shape[0]
                    flat = torch.cummax(d.reshape(T, -1), dim=0).values  # e_n(t) = max_{t'<=t} |x' - x|
                    m = d.reshape(T, -1).amax(dim=1).double()
                    key = (mode, name)
                    eps_t[key] = m if key not in eps_t else torch.maximum(eps_t[key], m)
                    g = torch.Generator().manual_seed(1_000_003 * i + 7919 * li + 17)
                    pick = torch.randperm(flat.shape[1], generator=g)[:u_samples_per_batch]
                    errors.setdefault(key, []).append(flat[:, pick].clone())
        if seen == 0:
            raise UserError("the flip analysis got no batch (empty data)")

        # Radii per (mode, layer, t): eps = running max over timesteps, r_t = eps * sum_{n<t} beta^n.
        radius: dict[tuple[str, str], torch.Tensor] = {}
        eps_cum: dict[tuple[str, str], torch.Tensor] = {}
        for (mode, name), e in eps_t.items():
            beta = ref_lifs[name].beta
            cum = torch.cummax(e, dim=0).values
            geo = torch.tensor([sum(beta**n for n in range(t + 1)) for t in range(e.numel())], dtype=torch.float64)
            eps_cum[(mode, name)] = cum
            # Float rounding: u and u' are float32 sums, so allow a slack of 1e-5 relative + 1e-6 (none
            # when eps = 0: nothing can flip then, and a slack would count potentials at u_th as in crisis).
            radius[(mode, name)] = torch.where(cum > 0, cum * geo * (1 + 1e-5) + 1e-6, torch.zeros_like(cum))

        # Pass 2: flip counts.
        acc: dict[tuple[str, str, int], _Acc] = {}
        for i, x in batches_used():
            ref_cap.run(x)
            for mode in perturbed_runs(i, x):
                for li, name in enumerate(names):
                    u_ref, s_ref, s_pert = ref_cap.u[name], ref_cap.s[name], pert_cap.s[name]
                    u_th = ref_lifs[name].u_th
                    T, B = u_ref.shape[0], u_ref.shape[1]
                    flipped_before = torch.zeros(u_ref.shape[1:], dtype=torch.bool)
                    layer_flipped_before = torch.zeros(B, dtype=torch.bool)
                    for t in range(T):
                        a = acc.setdefault((mode, name, t), _Acc())
                        flip = s_ref[t] != s_pert[t]
                        first = flip & ~flipped_before
                        dist = (u_ref[t].double() - u_th).abs()
                        in_crisis = dist <= float(radius[(mode, name)][t])
                        a.n += flip.numel()
                        a.samples += B
                        a.flips += int(flip.sum())
                        a.first += int(first.sum())
                        a.premise += int((~flipped_before).sum())
                        a.flips_crisis += int((flip & in_crisis).sum())
                        a.first_crisis += int((first & in_crisis).sum())
                        a.crisis += int(in_crisis.sum())
                        a.spikes += int(s_ref[t].sum())
                        any_first = first.reshape(B, -1).any(dim=1)
                        a.layer_first += int((any_first & ~layer_flipped_before).sum())
                        a.layer_premise += int((~layer_flipped_before).sum())
                        flipped_before |= flip
                        layer_flipped_before |= flip.reshape(B, -1).any(dim=1)
                        if mode == modes[0]:  # the reference potentials are the same in every mode
                            flat = u_ref[t].reshape(-1)
                            g = torch.Generator().manual_seed(1_000_003 * i + 7919 * li + t)
                            k = min(u_samples_per_batch, flat.numel())
                            a.u_parts.append(flat[torch.randperm(flat.numel(), generator=g)[:k]].clone())
    finally:
        reference.train(was[0])
        perturbed.train(was[1])

    rows: list[FlipRow] = []
    p_sup_cache: dict[tuple[str, int, float], float] = {}
    atom_cache: dict[tuple[str, int, float], float] = {}
    for mode in modes:
        for name in names:
            lif = ref_lifs[name]
            for t in range(T):
                a = acc[(mode, name, t)]
                u_sample = torch.cat(acc[(modes[0], name, t)].u_parts).double()
                eps = float(eps_cum[(mode, name)][t])
                r34 = eps / (1.0 - lif.beta)
                p_radius = eps if t == 0 else r34

                def p_sup(r: float) -> float:  # the same radius recurs across modes and in the refinement
                    key = (name, t, r)
                    if key not in p_sup_cache:
                        p_sup_cache[key] = _p_sup(u_sample, lif.u_th, r, p_sup_method)
                    return p_sup_cache[key]

                p33, p34 = p_sup(eps), p_sup(r34)
                b33, b34 = bound_lemma33(p33, eps), bound_lemma34(p34, eps, lif.beta)
                bound = b33 if t == 0 else b34
                cond = a.first / a.premise if a.premise else None
                neurons = a.n // a.samples
                if (name, t, p_radius) not in atom_cache:
                    atom_cache[(name, t, p_radius)] = _atom_mass(u_sample, lif.u_th, p_radius)
                atom = atom_cache[(name, t, p_radius)]
                e_sample = torch.cat([e[t] for e in errors[(mode, name)]]).double()
                eps_ref, tail_ref, bound_ref = _refined_bound(e_sample, t, lif.beta, p_sup)
                rows.append(FlipRow(
                    perturbation=label, mode=mode, layer=name, t=t + 1, neurons=neurons, samples=a.samples,
                    eps_t=float(eps_t[(mode, name)][t]), eps=eps, radius=float(radius[(mode, name)][t]),
                    flip_rate=a.flips / a.n, first_flip_rate=a.first / a.n, cond_flip_rate=cond,
                    crisis_share=a.flips_crisis / a.flips if a.flips else None,
                    first_flip_crisis_share=a.first_crisis / a.first if a.first else None,
                    first_flips_outside=a.first - a.first_crisis, crisis_empirical=a.crisis / a.n,
                    p_sup=p33 if t == 0 else p34, bound=bound, bound_lemma33=b33, bound_lemma34=b34,
                    holds=None if cond is None else cond <= bound,
                    tightness=None if cond is None or bound == 0 else cond / bound,
                    layer_flip_rate=a.layer_first / a.layer_premise if a.layer_premise else None,
                    bound_theorem35=neurons * b34, eps_refined=eps_ref, tail_refined=tail_ref,
                    bound_refined=bound_ref, atom_mass=atom, firing_rate=a.spikes / a.n,
                ))
    return rows


#: quantiles of the per-neuron error tried by the refined bound (plus the maximum)
REFINED_QUANTILES = (0.5, 0.9, 0.99, 0.999, 0.9999)


def _refined_bound(errors: torch.Tensor, t: int, beta: float, p_sup: Callable[[float], float]
                   ) -> tuple[float, float, float]:
    """``min_e [P(e_n(t) > e) + 2 p_sup(R(e)) R(e)]`` over candidate levels e, R(e) = e (t = 0) or
    e / (1 - beta): a neuron can only flip first at t if its own error exceeded e at some step (the
    first term) or it lay in the crisis neighbourhood of radius R(e) (Lemma 3.3/3.4 at level e).
    The paper's bound is the special case e = max error (first term 0)."""
    levels = sorted(set(torch.quantile(errors, torch.tensor(REFINED_QUANTILES, dtype=torch.float64)).tolist())
                    | {float(errors.max())})
    best = (math.inf, 0.0, math.inf)
    for e in levels:
        tail = float((errors > e).double().mean())
        r = e if t == 0 else e / (1.0 - beta)
        b = tail + 2.0 * p_sup(r) * r
        if b < best[2]:
            best = (e, tail, b)
    return best


def _p_sup(u: torch.Tensor, u_th: float, radius: float, method: str) -> float:
    if radius == 0.0:
        return 0.0  # the bound is 2 p_sup * 0 = 0 whatever the density
    return density_sup(u, u_th, radius, method)


def _atom_mass(u: torch.Tensor, u_th: float, radius: float) -> float:
    inside = u[(u - u_th).abs() <= radius]
    if inside.numel() == 0:
        return 0.0
    return float(torch.unique(inside, return_counts=True)[1].max()) / u.numel()


def flip_summary(rows: list[FlipRow]) -> list[dict[str, Any]]:
    """One line per (perturbation, mode, layer): worst timestep's rates, whether the bound held at every
    timestep, and the largest tightness (measured / bound)."""
    groups: dict[tuple[str, str, str], list[FlipRow]] = {}
    for r in rows:
        groups.setdefault((r.perturbation, r.mode, r.layer), []).append(r)
    out = []
    for (pert, mode, layer), rs in groups.items():
        conds = [r.cond_flip_rate for r in rs if r.cond_flip_rate is not None]
        tight = [r.tightness for r in rs if r.tightness is not None]
        shares = [r.first_flip_crisis_share for r in rs if r.first_flip_crisis_share is not None]
        out.append({
            "perturbation": pert, "mode": mode, "layer": layer, "eps": max(r.eps for r in rs),
            "max_flip_rate": max(r.flip_rate for r in rs), "max_cond_flip_rate": max(conds) if conds else None,
            "max_bound": max(r.bound for r in rs), "holds": all(r.holds is not False for r in rs),
            "max_tightness": max(tight) if tight else None,
            "max_bound_refined": max(r.bound_refined for r in rs),
            "holds_refined": all(r.cond_flip_rate is None or r.first_flip_rate <= r.bound_refined for r in rs),
            "max_tightness_refined": max((r.first_flip_rate / r.bound_refined for r in rs if r.bound_refined > 0),
                                         default=None),
            "min_first_flip_crisis_share": min(shares) if shares else None,
            "first_flips_outside": sum(r.first_flips_outside for r in rs),
            "max_atom_mass": max(r.atom_mass for r in rs),
            "max_layer_flip_rate": max((r.layer_flip_rate for r in rs if r.layer_flip_rate is not None), default=None),
            "min_bound_theorem35": min(r.bound_theorem35 for r in rs),
            # issue 14: a bound >= 1 holds for any probability; only the rows below 1 are evidence
            "nonvacuous_rows": sum(1 for r in rs if r.eps > 0 and r.bound < 1),
            "vacuous_rows": sum(1 for r in rs if r.eps > 0 and r.bound >= 1),
        })
    return out


def flip_rows_csv(rows: list[FlipRow]) -> str:
    """The rows as CSV text (header = :data:`FLIP_FIELDS`; undefined rates are empty cells)."""
    from spikeprune.core.io import csv_text

    return csv_text((r.as_dict() for r in rows), FLIP_FIELDS)


def flip_study(
    model: nn.Module,
    perturbations: Iterable[Perturbation | str],
    test: Iterable[Any],
    out: str | Path,
    *,
    calibration: list[Any] | None = None,
    modes: Iterable[str] = MODES,
    p_sup_method: str = "kde",
    seed: int = 0,
    record: dict[str, Any] | None = None,
    title: str = "",
) -> list[FlipRow]:
    """The whole flip analysis of ``spikeprune analyze flips``: perturb, measure, write, plot.

    For every perturbation: :func:`apply_perturbation` (``calibration`` batches feed the SF criterion),
    :func:`flip_analysis` against the unperturbed ``model``, and ``OUT/flips-<label>.png``. Then
    ``OUT/flips.csv``, ``OUT/flips.json`` (``record`` — checkpoint, dataset, samples … — plus modes,
    estimator, seed, perturbations, summary and rows) and ``OUT/flips.png``, each written atomically.
    Returns the rows of all perturbations.
    """
    from spikeprune.core.io import file_slug, write_json, write_text

    out = Path(out)
    modes = list(modes)
    perturbations = [parse_perturbation(p) if isinstance(p, str) else p for p in perturbations]
    from spikeprune.report.plots import plot_flip_summary, plot_flips  # lazily: matplotlib

    rows: list[FlipRow] = []
    for p in perturbations:
        perturbed, input_fn = apply_perturbation(model, p, seed=seed,
                                                 calibration=calibration if p.criterion in FIRING_AWARE else None)
        got = flip_analysis(model, perturbed, test, modes=modes, input_fn=input_fn, p_sup_method=p_sup_method,
                            label=p.label)
        rows += got
        plot_flips(got, out / f"flips-{file_slug(p.label)}.png",
                   f"{title}: {p.label}" if title else p.label, modes=MODES)
    write_text(out / "flips.csv", flip_rows_csv(rows))
    write_json(out / "flips.json", {**(record or {}), "modes": modes, "p_sup_estimator": p_sup_method,
                                    "seed": seed, "perturbations": [p.label for p in perturbations],
                                    "summary": flip_summary(rows), "rows": [r.as_dict() for r in rows]})
    plot_flip_summary(flip_summary(rows), out / "flips.png", modes=MODES)
    return rows
