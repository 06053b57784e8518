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

:func:`spikeprune.theory.flips.flip_analysis` measures all of this on a real network (with the
perturbations of :mod:`spikeprune.theory.perturb`); this module holds the estimators and the bounds
themselves, pure functions of membrane-potential samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.neuron import beta_in_range

__all__ = [
    "ESTIMATORS",
    "bound_lemma33",
    "bound_lemma34",
    "bound_theorem35",
    "crisis_probability",
    "crisis_report",
    "density_sup",
    "scott_bandwidth",
]

#: estimators of the crisis probability and of p_sup
ESTIMATORS = ("empirical", "gaussian", "kde")

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
    if not beta_in_range(b):
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
# The refined bound and p_sup helpers of the flip analysis (theory.flips).
# --------------------------------------------------------------------------------------------------


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


