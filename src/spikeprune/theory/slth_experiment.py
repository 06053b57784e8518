"""The experiment behind ``spikeprune theory slth`` and the strong-LTH study (orchestration only).

:func:`slth_experiment` draws a random target, chooses the grid of widths k (:func:`_auto_ks`: the
construction's transition, from the exact success probability), runs :func:`~spikeprune.theory.slth.minimal_width`
on ``trials`` random large networks and :func:`~spikeprune.theory.slth.construct_many` +
:func:`~spikeprune.theory.slth.verify` on the first ``equality_trials`` of them, and sets the measured rates
beside LTH-SNN's formulas (:func:`~spikeprune.theory.slth.success_bound`,
:func:`~spikeprune.theory.slth.construction_success_probability`, :func:`~spikeprune.theory.slth.theorem_delta`,
:func:`~spikeprune.theory.slth.width_bound`). The science (the construction, its verification and the
formulas) is :mod:`spikeprune.theory.slth`; the files and the printed table are written by the caller
(``cli/theory.py`` through :mod:`spikeprune.core.io` and :mod:`spikeprune.report`).

It lives in ``theory/`` rather than ``studies/`` because ``spikeprune.theory.slth.slth_experiment`` is its
public import path (the CLI, ``studies/reproduce.py``, the benchmarks and the tests use it), and a theory
module may not import ``studies`` (tests/test_architecture.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from spikeprune.core.config import field_default
from spikeprune.core.limits import check_memory
from spikeprune.theory.config import SlthConfig
from spikeprune.theory.firing import _atom_mass
from spikeprune.theory.slth import (
    TargetSNN,
    _default_k_max,
    _delta,
    _eps,
    _int,
    _memory_guard,
    _neuron,
    _physical_memory,
    c_th,
    construct_many,
    construction_success_probability,
    minimal_width,
    random_spikes,
    random_target,
    run_target,
    success_bound,
    target_p_sup,
    theorem_delta,
    verify,
    width_bound,
)

__all__ = ["slth_experiment"]

#: the keyword defaults of :func:`slth_experiment`: those of ``theory slth`` (:class:`SlthConfig`), declared once
_DEFAULTS: dict[str, Any] = {f.name: field_default(f) for f in dataclasses.fields(SlthConfig)}


def _auto_ks(target: TargetSNN, eps: float, max_memory: int | None, points: int = 12) -> list[int]:
    """k grid spanning the construction's transition (exact success probability 1 % ... 99.9 %)."""
    N = target.N
    # Refuse before searching: the width where success is likely, from the union bound (delta = 1e-3).
    _memory_guard(N, target.L, 2 * width_bound(N, target.L, 1, eps, 1e-3, target.u_th, 0.0, form="proof"),
                  max_memory)

    def p(kp: int) -> float:
        return construction_success_probability(target, kp * N, eps)

    def search(level: float) -> int:
        lo, hi = 1, 1
        while p(hi) < level:
            lo, hi = hi, hi * 2
        while hi - lo > max(1, lo // 50):
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if p(mid) < level else (lo, mid)
        return hi

    k_lo, k_hi = max(1, search(0.01) // 2), search(0.999) * 2
    grid = np.unique(np.round(np.geomspace(k_lo, k_hi, points)).astype(int))
    return [int(kp) * N for kp in grid]


def slth_experiment(
    N: int,
    L: int,
    T: int,
    eps: float,
    *,
    ks: list[int] | None = None,
    trials: int = _DEFAULTS["trials"],
    equality_trials: int = _DEFAULTS["equality_trials"],
    samples: int = _DEFAULTS["samples"],
    rate: float = _DEFAULTS["rate"],
    beta: float = _DEFAULTS["beta"],
    u_th: float = _DEFAULTS["u_th"],
    v_reset: float = _DEFAULTS["v_reset"],
    delta: float = _DEFAULTS["delta"],
    seed: int = _DEFAULTS["seed"],
    compare_relu: bool = _DEFAULTS["compare_relu"],
    max_memory: int | None = None,
) -> dict[str, Any]:
    """Run the construction on a random target and measure it against LTH-SNN's formulas.

    * ``trials`` random large networks: each one's smallest working width ``k_min`` (nested scan);
      success rate vs k compared with the exact probability and ``1 - L N^2 exp(-(k/N) C_th eps/N)``.
    * The first ``equality_trials`` of them are built at every k of the grid and run on ``samples``
      input spike trains (Bernoulli(``rate``), T steps): output-equality rate vs Theorem 4.3's
      ``1 - delta(k)``; :func:`verify`'s invariants (copies, feature error, unexplained flips).
    * The width bound at ``delta`` (paper's and proof's form; None with the reason when undefined),
      and its ratio to the smallest k that works: ``k_success`` (the (1 - delta)-quantile of k_min) and
      ``k_equality`` (smallest grid k whose output-equality rate is >= 1 - delta).
    * ``compare_relu``: the same statistics for the two-neurons-per-weight ReLU construction.
    """
    N, L, T = _int(N, "N"), _int(L, "L"), _int(T, "T")
    eps = _eps(eps)
    trials, equality_trials = _int(trials, "trials"), _int(equality_trials, "equality trials", low=0)
    beta, u_th, v_reset = _neuron(beta, u_th, v_reset)
    _delta(delta)  # checked; kept as given, since it is recorded in the result
    samples = _int(samples, "samples")
    # Before allocating: the target (L float64 N x N matrices), its input spikes and potentials, and the
    # smallest large network (k >= N: 2 L N k float32 weights); the grid's largest k is guarded below.
    check_memory(8 * L * N * N + 8 * (L + 1) * T * samples * N + 8 * L * N * N, f"the construction at N={N}, L={L}",
                 "use a smaller --N, --L or --samples")
    target = random_target(N, L, beta=beta, u_th=u_th, v_reset=v_reset, seed=seed)
    if ks is not None:
        ks = sorted({_int(k, "k", low=N) for k in ks})
        _memory_guard(N, L, ks[-1], max_memory)
    else:
        ks = _auto_ks(target, eps, max_memory)
    spikes = random_spikes(T, samples, N, rate, seed=seed)
    ref = run_target(target, spikes)
    p_sup = target_p_sup(target, ref, eps / (1.0 - beta))
    C = 2.0 * p_sup / (1.0 - beta)
    # Largest point mass of the target's potentials near u_th: with binary inputs a neuron's x takes at
    # most 2^N values, so u is discrete and Definition 3.1's density is a smoothed stand-in.
    atom = max(_atom_mass(u[t].reshape(-1), u_th, eps / (1.0 - beta)) for u in ref.u for t in range(T))
    k_cap = max(ks[-1] * 8, _default_k_max(target, eps))
    k_cap = min(k_cap, max(ks[-1], _max_k(N, L, max_memory)))

    kmins: list[int | None] = []
    relu: dict[str, list] = {"relu": [], "relu-nonneg": []}
    snn_counts = []
    for r in range(trials):
        m = minimal_width(target, eps, seed=seed, trial=r, k_max=k_cap, max_memory=max_memory)
        kmins.append(m["k_min"])
        snn_counts.append(m)
        if compare_relu:
            for kind in relu:
                relu[kind].append(minimal_width(target, eps, seed=seed, trial=r, kind=kind, k_max=k_cap,
                                                max_memory=max_memory))

    eq_rate = np.zeros(len(ks))
    all_rate = np.zeros(len(ks))
    violations = {"virtual_copy_mismatches": 0, "feature_error_over_eps": 0, "unexplained": 0}
    for r in range(equality_trials):
        for gi, ticket in enumerate(construct_many(target, ks, eps, seed=seed, trial=r, max_memory=max_memory)):
            v = verify(ticket, spikes)
            eq_rate[gi] += v["output_equal_rate"] / equality_trials
            all_rate[gi] += v["all_equal_rate"] / equality_trials
            violations["virtual_copy_mismatches"] += v["virtual_copy_mismatches"]
            if ticket.success:
                violations["feature_error_over_eps"] += sum(e > eps * (1 + 1e-9) for e in v["feature_error"])
                violations["unexplained"] += sum(v["unexplained"])

    def rate_at(k: int, values: list) -> float:
        return sum(1 for x in values if x is not None and x <= k) / len(values)

    rows = []
    for gi, k in enumerate(ks):
        d = theorem_delta(N, L, T, k, eps, u_th, C)
        row = {"k": k, "success_rate": rate_at(k, kmins),
               "success_exact": construction_success_probability(target, k, eps),
               "success_bound": success_bound(N, k, eps, u_th, L),
               "output_equal_rate": float(eq_rate[gi]) if equality_trials else None,
               "all_equal_rate": float(all_rate[gi]) if equality_trials else None,
               "theorem_delta": d, "theorem_1_minus_delta": max(0.0, 1.0 - d)}
        if compare_relu:
            row["relu_success_rate"] = rate_at(k, [m["k_min"] for m in relu["relu"]])
            row["relu_nonneg_success_rate"] = rate_at(k, [m["k_min"] for m in relu["relu-nonneg"]])
        rows.append(row)

    found = sorted(x for x in kmins if x is not None)
    need = math.ceil((1.0 - delta) * trials)
    k_success = found[need - 1] if need >= 1 and len(found) >= need else None
    k_equality = next((r["k"] for r in rows if r["output_equal_rate"] is not None
                       and r["output_equal_rate"] >= 1.0 - delta), None)
    bounds: dict[str, Any] = {"delta": delta, "C": C, "p_sup": p_sup, "flip_term": N * C * L * T * eps,
                              "target_atom_mass": atom}
    for form in ("paper", "proof"):
        try:
            bounds[f"k_{form}"] = width_bound(N, L, T, eps, delta, u_th, C, form=form)
        except ValueError as e:
            bounds[f"k_{form}"], bounds["undefined"] = None, str(e)
    bounds["k_construction"] = width_bound(N, L, T, eps, delta, u_th, 0.0, form="proof")
    bounds["k_success"] = k_success
    bounds["k_equality"] = k_equality
    bounds["ratio_construction"] = bounds["k_construction"] / k_success if k_success else None
    for form in ("paper", "proof"):
        kb = bounds[f"k_{form}"]
        bounds[f"ratio_{form}_vs_success"] = kb / k_success if kb and k_success else None
        bounds[f"ratio_{form}_vs_equality"] = kb / k_equality if kb and k_equality else None

    def counts(ms: list[dict]) -> dict[str, Any] | None:
        ok = [m for m in ms if m["k_min"] is not None]
        if not ok:
            return None
        kk = np.array([m["k_min"] for m in ok], dtype=float)
        return {"k_min_median": float(np.median(kk)), "k_min_mean": float(kk.mean()), "found": len(ok),
                "virtual_neurons_per_weight": float(np.mean([m["virtual_neurons"] / m["target_weights"] for m in ok])),
                "nonzero_weights_per_weight": float(np.mean([m["nonzero_weights"] / m["target_weights"] for m in ok]))}

    resources = {"snn": counts(snn_counts)}
    if compare_relu:
        resources.update({kind: counts(ms) for kind, ms in relu.items()})
    return {
        "config": {"N": N, "L": L, "T": T, "eps": eps, "trials": trials, "equality_trials": equality_trials,
                   "samples": samples, "rate": rate, "beta": beta, "u_th": u_th, "v_reset": v_reset,
                   "delta": delta, "seed": seed, "C_th": c_th(u_th), "k_cap": k_cap},
        "target_firing_rates": [float(s.mean()) for s in ref.spikes[1:]],
        "k_min": kmins,
        "rows": rows,
        "bounds": bounds,
        "violations": violations,
        "resources": resources,
    }


def _max_k(N: int, L: int, max_memory: int | None) -> int:
    limit = _physical_memory() if max_memory is None else int(max_memory)
    return max(N, limit // (2 * L * N * 4))


