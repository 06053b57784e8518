"""The strong lottery ticket construction for SNNs (LTH-SNN §4, Appendix C; SPEC §6), runnable.

Target: an SNN of L spiking layers of width N, ``x^l_t = W^l s^{l-1}_t`` with ``W^l`` in
``[-1/sqrt(N), 1/sqrt(N)]^{N x N}`` (rows = outputs j, columns = inputs i), every neuron the LIF of
Eq. 2-4. The large random network replaces every target layer by a *virtual* spiking layer of k
neurons with in-weights ``V`` (k x N) and out-weights ``W~`` (N x k), all i.i.d. U[-1, 1], followed by
the N output neurons. The construction (Lemmas C.1-C.3) splits the k virtual neurons into N groups of
``k' = k // N``; group i keeps only input i (mask on V). For every target weight ``w_ji`` it keeps one
virtual neuron m of group i with

    v_mi >= u_th                 (then m fires exactly when input i fires, whatever its state)
    |w~_jm - w_ji| <= eps / N    (so |x~_j - x_j| <= eps at every timestep)

and the out-weight ``w~_jm`` (mask on W~); everything else is pruned. With ``C_th = (1 - u_th)/2 =
P(v >= u_th)`` a neuron qualifies with probability ``C_th eps / N``, so (Eq. S.24, union bound over
the N^2 target weights of each of L layers)

    P[construction succeeds] >= 1 - L N^2 exp(-(k/N) C_th eps / N).

Theorem 4.3 / C.6 adds the flips that an input error eps can still cause (Theorem 3.5 for each
layer and timestep, ``C = 2 p_sup / (1 - beta)``): outputs are equal with probability >= 1 - delta,

    delta(k) = L N^2 exp(-(k/N) C_th eps / N) + N C L T eps,
    k >= N^2 ceil( N/(C_th eps) log( N^2 L / (delta - N C L T eps) ) )        (the paper's width bound)

The proof only needs ``k' = k/N`` neurons per group, i.e. ``N ceil(...)``; :func:`width_bound`
returns both (``form="paper"`` / ``"proof"``).

Implementation. Only the entries the construction can keep are drawn: ``v_mi`` for m in group i
(the other N-1 in-weights of m are masked whatever their value) and the whole W~. They are drawn
lazily, in chunks of :data:`CHUNK` virtual neurons per group, each chunk from its own seeded
generator, so the large network of width k is a prefix of the one of width k2 > k (nested), and a
scan over k costs O(N k) time and O(N CHUNK) memory: N = 32 and k in the millions take seconds.
Among the qualifying neurons the one closest to w_ji is kept (any would do for the lemmas).

This module is the science (the construction, its verification, the formulas). The experiment that
runs it over grids of k and many random large networks is :mod:`spikeprune.theory.slth_experiment`
(``slth_experiment`` is also importable from here, as it always was); its tables and plots are drawn
by :mod:`spikeprune.report`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spikeprune.core.diagnostics import UserError
from spikeprune.theory.firing import density_sup
from spikeprune.engine.neuron import DEFAULT_BETA, DEFAULT_V_RESET, beta_in_range, lif_multistep

__all__ = [
    "CHUNK",
    "SLTH_U_TH",
    "LayerTicket",
    "TargetSNN",
    "Ticket",
    "c_th",
    "construct",
    "construct_many",
    "construction_success_probability",
    "large_network_bytes",
    "materialize",
    "minimal_width",
    "random_spikes",
    "random_target",
    "run_equivalent",
    "run_target",
    "success_bound",
    "target_p_sup",
    "theorem_delta",
    "verify",
    "width_bound",
]

#: virtual neurons drawn per group per generator call; fixes the random stream (do not change)
CHUNK = 8192
#: what :func:`_scan_group` scans for: the SNN construction, and the two halves of the ReLU construction
#: it is compared with (not :data:`spikeprune.studies.sweep.KINDS`, the job kinds of a sweep)
SCAN_KINDS = ("snn", "relu+", "relu-")


# --------------------------------------------------------------------------------------------------
# Validation and constants.
# --------------------------------------------------------------------------------------------------


def _int(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise UserError(f"eps must be a finite number > 0 (the allowed input-feature error); got {eps!r}")
    return float(eps)


def _delta(delta: Any) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta <= 1.0:
        raise UserError(f"delta must be in (0, 1]; got {delta!r}")
    return float(delta)


def c_th(u_th: float) -> float:
    """``C_th = (1 - u_th) / 2 = P(v >= u_th)`` for ``v ~ U[-1, 1]`` (LTH-SNN Eq. S.14); needs ``0 < u_th < 1``.

    ``u_th >= 1``: no in-weight in U[-1, 1] reaches the threshold (C_th <= 0), so no virtual neuron can
    copy its input spike and the construction does not exist. ``u_th <= 0``: a neuron with zero input
    has u = 0 >= u_th and fires without an input spike, so it cannot copy its input either.
    """
    if isinstance(u_th, bool) or not isinstance(u_th, (int, float)) or not math.isfinite(u_th):
        raise UserError(f"u_th must be a finite number; got {u_th!r}")
    if u_th >= 1.0:
        raise UserError(f"the construction needs u_th < 1: with u_th={u_th:g}, C_th = (1 - u_th)/2 = "
                         f"{(1 - u_th) / 2:g} <= 0, no in-weight v ~ U[-1, 1] reaches the threshold, so no "
                         "virtual neuron fires when its input does (LTH-SNN Eq. S.14)")
    if u_th <= 0.0:
        raise UserError(f"the construction needs u_th > 0: with u_th={u_th:g} a virtual neuron with zero input "
                         "(u = 0 >= u_th) fires without an input spike and cannot copy its input")
    return (1.0 - u_th) / 2.0


def _neuron(beta: Any, u_th: Any, v_reset: Any) -> tuple[float, float, float]:
    if isinstance(beta, bool) or not beta_in_range(beta):
        raise UserError(f"beta must be in (0, 1); got {beta!r}")
    c_th(u_th)
    if isinstance(v_reset, bool) or not isinstance(v_reset, (int, float)) or not 0.0 <= v_reset < u_th:
        raise UserError(f"the construction needs 0 <= v_reset < u_th (a reset potential that neither fires "
                         f"by itself nor drags the next input spike below threshold); got v_reset={v_reset!r}")
    return float(beta), float(u_th), float(v_reset)


def large_network_bytes(N: int, L: int, k: int) -> int:
    """Bytes of the large random network as float32: L layers of V (k x N) and W~ (N x k)."""
    return 2 * L * N * k * 4


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def _memory_guard(N: int, L: int, k: int, max_memory: int | None) -> None:
    """Refuse a large network that could not exist in memory (and whose scan would take hours)."""
    limit = _physical_memory() if max_memory is None else int(max_memory)
    need = large_network_bytes(N, L, k)
    if need > limit:
        raise UserError(f"N*k too large: the large network for N={N}, L={L}, k={k} has 2*L*N*k = "
                         f"{2 * L * N * k:.3g} weights ({need / 2**30:.1f} GiB as float32), more than the "
                         f"{limit / 2**30:.1f} GiB memory limit; lower k (or eps' demand on it) or raise the limit")


# --------------------------------------------------------------------------------------------------
# Target network.
# --------------------------------------------------------------------------------------------------


#: the targets' default threshold: with zero-mean weights, Bernoulli(0.3) inputs and beta = 0.5 it keeps
#: every layer firing through L = 3 layers (:func:`random_target`)
SLTH_U_TH = 0.2


@dataclass(frozen=True)
class TargetSNN:
    """The target: ``weights[l]`` is ``[N, N]`` (out j, in i) float64; LIF parameters shared by all neurons."""

    weights: tuple[torch.Tensor, ...]
    beta: float = DEFAULT_BETA
    u_th: float = SLTH_U_TH
    v_reset: float = DEFAULT_V_RESET

    def __post_init__(self) -> None:
        if not self.weights:
            raise UserError("a target needs at least one layer")
        N = self.weights[0].shape[0]
        for l, w in enumerate(self.weights):
            if w.shape != (N, N):
                raise UserError(f"target layer {l} has shape {tuple(w.shape)}; every layer must be [N, N] = [{N}, {N}]")
            if float(w.abs().max()) > 1.0 / math.sqrt(N) + 1e-12:
                raise UserError(f"target layer {l} has weights outside [-1/sqrt(N), 1/sqrt(N)] (Theorem 4.3's premise)")
        _neuron(self.beta, self.u_th, self.v_reset)

    @property
    def N(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def L(self) -> int:
        return len(self.weights)


def random_target(N: int, L: int, *, beta: float = DEFAULT_BETA, u_th: float = SLTH_U_TH, v_reset: float = DEFAULT_V_RESET,
                  seed: int = 0) -> TargetSNN:
    """A target with weights i.i.d. U[-1/sqrt(N), 1/sqrt(N)] (the largest range Theorem 4.3 allows).

    Default ``u_th = 0.2``: with zero-mean weights, Bernoulli(0.3) inputs and beta = 0.5 it keeps every
    layer firing at ~10-30 % through L = 3 layers (at u_th = 0.5 the second layer is nearly silent,
    which would make output equality trivially true).
    """
    N, L = _int(N, "N"), _int(L, "L")
    g = torch.Generator().manual_seed(int(seed))
    a = 1.0 / math.sqrt(N)
    weights = tuple((torch.rand(N, N, generator=g, dtype=torch.float64) * 2 - 1) * a for _ in range(L))
    return TargetSNN(weights, beta, u_th, v_reset)


def random_spikes(T: int, B: int, N: int, rate: float = 0.3, *, seed: int = 0) -> torch.Tensor:
    """Input spike trains ``S`` ``[T, B, N]`` (float64 0/1), i.i.d. Bernoulli(``rate``)."""
    T, B, N = _int(T, "T"), _int(B, "samples"), _int(N, "N")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
        raise UserError(f"input spike rate must be in (0, 1]; got {rate!r}")
    g = torch.Generator().manual_seed(int(seed) + 7_777_777)
    return (torch.rand(T, B, N, generator=g, dtype=torch.float64) < rate).to(torch.float64)


@dataclass
class Trace:
    """Spikes ``[T, B, N]`` entering/leaving every layer (``spikes[0]`` = input) and, per layer, the
    spatial input feature x and the pre-spike membrane potential u (``[T, B, N]``)."""

    spikes: list[torch.Tensor]
    x: list[torch.Tensor] = field(default_factory=list)
    u: list[torch.Tensor] = field(default_factory=list)
    virtual: list[torch.Tensor] = field(default_factory=list)  # equivalent network: [T, B, N, N] per layer


def _lif(x: torch.Tensor, target: TargetSNN) -> tuple[torch.Tensor, torch.Tensor]:
    return lif_multistep(x, target.beta, target.u_th, target.v_reset)


def run_target(target: TargetSNN, spikes: torch.Tensor) -> Trace:
    """Run the target on input spikes ``[T, B, N]``: ``x^l_t = W^l s^{l-1}_t``, then the LIF."""
    _check_spikes(spikes, target.N)
    trace = Trace([spikes])
    s = spikes
    for w in target.weights:
        x = s @ w.T
        s, u = _lif(x, target)
        trace.x.append(x)
        trace.u.append(u)
        trace.spikes.append(s)
    return trace


def _check_spikes(spikes: torch.Tensor, N: int) -> None:
    if not torch.is_tensor(spikes) or spikes.dim() != 3 or spikes.shape[2] != N:
        raise UserError(f"input spikes must be a [T, B, N={N}] tensor; got "
                         f"{tuple(spikes.shape) if torch.is_tensor(spikes) else type(spikes).__name__}")


def target_p_sup(target: TargetSNN, trace: Trace, radius: float, method: str = "kde") -> float:
    """The constant behind ``C = 2 p_sup / (1 - beta)``: the largest density of the target's membrane
    potentials on ``[u_th - radius, u_th + radius]``, pooled over neurons, max over layers and timesteps."""
    best = 0.0
    for u in trace.u:
        for t in range(u.shape[0]):
            best = max(best, density_sup(u[t], target.u_th, radius, method))
    return best


# --------------------------------------------------------------------------------------------------
# The lazy large network and the scan that builds the mask.
# --------------------------------------------------------------------------------------------------


def _chunk_generator(seed: int, trial: int, layer: int, group: int, chunk: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(trial), layer, group, chunk]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def _pool_chunk(seed: int, trial: int, layer: int, group: int, chunk: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Virtual neurons ``chunk * CHUNK ...`` of group ``group`` of layer ``layer``: their kept in-weight
    ``v`` (``[CHUNK]``) and their out-weights ``W~[:, m]`` (``[n_out, CHUNK]``), U[-1, 1]."""
    g = _chunk_generator(seed, trial, layer, group, chunk)
    v = torch.rand(CHUNK, generator=g, dtype=torch.float64).mul_(2).sub_(1)
    w = torch.rand(n_out, CHUNK, generator=g, dtype=torch.float64).mul_(2).sub_(1)
    return v, w


@dataclass
class _Scan:
    first: torch.Tensor  # [n_out] first qualifying position (-1: none)
    err: torch.Tensor  # [G, n_out] error of the closest eligible neuron among the first grid[g]
    idx: torch.Tensor  # [G, n_out] its position (-1: no eligible neuron)
    v: torch.Tensor  # [G, n_out] its in-weight
    w: torch.Tensor  # [G, n_out] its out-weight


def _scan_group(w_hat: torch.Tensor, kind: str, eta: float, u_th: float, kprime_max: int, grid: list[int],
                key: tuple[int, int, int, int], stop_when_found: bool) -> _Scan:
    """Scan the first ``kprime_max`` virtual neurons of one group for target weights ``w_hat`` ``[n_out]``.

    ``kind``: ``"snn"`` (eligible ``v >= u_th``, realised weight ``w~``: LTH-SNN Lemma C.1), ``"relu+"``
    / ``"relu-"`` (eligible ``v > 0`` / ``v < 0``, realised weight ``w~ v``: the two halves of the
    two-neurons-per-weight ReLU construction). A neuron *qualifies* when eligible and
    ``|realised - w_hat| <= eta``.
    """
    seed, trial, layer, group = key
    n_out = w_hat.numel()
    G = len(grid)
    first = torch.full((n_out,), -1, dtype=torch.long)
    out_err = torch.full((G, n_out), math.inf, dtype=torch.float64)
    out_idx = torch.full((G, n_out), -1, dtype=torch.long)
    out_v = torch.zeros(G, n_out, dtype=torch.float64)
    out_w = torch.zeros(G, n_out, dtype=torch.float64)
    carry_err = torch.full((n_out,), math.inf, dtype=torch.float64)
    carry_idx = torch.full((n_out,), -1, dtype=torch.long)
    carry_v = torch.zeros(n_out, dtype=torch.float64)
    carry_w = torch.zeros(n_out, dtype=torch.float64)
    rows = torch.arange(n_out)
    gi = 0
    for c in range(-(-kprime_max // CHUNK)):
        c0 = c * CHUNK
        n = min(CHUNK, kprime_max - c0)
        v, w = _pool_chunk(seed, trial, layer, group, c, n_out)
        v, w = v[:n], w[:, :n]
        if kind == "snn":
            realised, eligible = w, v >= u_th
        else:
            realised, eligible = w * v, (v > 0) if kind == "relu+" else (v < 0)
        err = (realised - w_hat[:, None]).abs().masked_fill_(~eligible[None, :], math.inf)
        ok = err <= eta
        found = ok.any(dim=1) & (first < 0)
        if bool(found.any()):
            first[found] = c0 + ok[found].to(torch.int8).argmax(dim=1)
        if gi < G:
            cm_err, cm_pos = torch.cummin(err, dim=1)

            def closest(col: int) -> tuple[torch.Tensor, ...]:
                e, p = cm_err[:, col], cm_pos[:, col]
                better = e < carry_err
                return (torch.where(better, e, carry_err), torch.where(better, c0 + p, carry_idx),
                        torch.where(better, v[p], carry_v), torch.where(better, w[rows, p], carry_w))

            while gi < G and grid[gi] <= c0 + n:
                out_err[gi], out_idx[gi], out_v[gi], out_w[gi] = closest(grid[gi] - c0 - 1)
                gi += 1
            carry_err, carry_idx, carry_v, carry_w = closest(n - 1)
        if stop_when_found and gi >= G and bool((first >= 0).all()):
            break
    return _Scan(first, out_err, out_idx, out_v, out_w)


# --------------------------------------------------------------------------------------------------
# Tickets: the masked large network.
# --------------------------------------------------------------------------------------------------


@dataclass
class LayerTicket:
    """The kept part of one virtual layer; entry ``[j, i]`` is the connection realising target weight w_ji.

    ``neuron[j, i]``: index m in 0..k-1 of the kept virtual neuron (group i = indices
    ``i*k' ... (i+1)*k' - 1``), -1 when group i has no neuron with v >= u_th (the connection is then
    absent); ``v``: its kept in-weight ``V[m, i]``; ``w``: its kept out-weight ``W~[j, m]``;
    ``error = |w - w_ji|`` (inf when absent).
    """

    neuron: torch.Tensor
    v: torch.Tensor
    w: torch.Tensor
    error: torch.Tensor

    @property
    def virtual_neurons(self) -> int:
        """Distinct virtual neurons kept (one may serve several outputs j)."""
        kept = self.neuron[self.neuron >= 0]
        return int(torch.unique(kept).numel())

    @property
    def nonzero_weights(self) -> int:
        """Unmasked weights: one in-weight per kept virtual neuron + one out-weight per connection."""
        return self.virtual_neurons + int((self.neuron >= 0).sum())


@dataclass
class Ticket:
    """The construction's masked subnetwork of the large network of width ``k`` (per target layer)."""

    target: TargetSNN
    k: int
    eps: float
    layers: list[LayerTicket]
    seed: int = 0
    trial: int = 0

    @property
    def kprime(self) -> int:
        """Virtual neurons per group, ``k // N`` (the remaining ``k mod N`` neurons are pruned)."""
        return self.k // self.target.N

    @property
    def success(self) -> bool:
        """Every target weight realised within eps/N by a neuron with v >= u_th (Lemma C.3's event)."""
        eta = self.eps / self.target.N
        return all(bool((lt.error <= eta).all()) for lt in self.layers)

    @property
    def virtual_neurons(self) -> int:
        return sum(lt.virtual_neurons for lt in self.layers)

    @property
    def nonzero_weights(self) -> int:
        return sum(lt.nonzero_weights for lt in self.layers)


def construct_many(target: TargetSNN, ks: list[int], eps: float, *, seed: int = 0, trial: int = 0,
                   max_memory: int | None = None) -> list[Ticket]:
    """:func:`construct` at several widths of the same (nested) random large network, in one scan."""
    eps = _eps(eps)
    ks = [_int(k, "k", low=target.N) for k in ks]
    if not ks:
        return []
    _memory_guard(target.N, target.L, max(ks), max_memory)
    N = target.N
    kps = sorted({k // N for k in ks})
    per_layer: list[list[LayerTicket]] = []
    for l, w_hat in enumerate(target.weights):
        neuron = torch.full((len(kps), N, N), -1, dtype=torch.long)
        v = torch.zeros(len(kps), N, N, dtype=torch.float64)
        w = torch.zeros(len(kps), N, N, dtype=torch.float64)
        err = torch.full((len(kps), N, N), math.inf, dtype=torch.float64)
        for i in range(N):
            s = _scan_group(w_hat[:, i], "snn", eps / N, target.u_th, kps[-1], kps, (seed, trial, l, i), False)
            has = s.idx >= 0
            kp = torch.tensor(kps)[:, None]
            neuron[:, :, i] = torch.where(has, i * kp + s.idx, -1)
            v[:, :, i], w[:, :, i], err[:, :, i] = s.v, s.w, s.err
        per_layer.append([LayerTicket(neuron[g], v[g], w[g], err[g]) for g in range(len(kps))])
    index = {kp: g for g, kp in enumerate(kps)}
    return [Ticket(target, k, eps, [layers[index[k // N]] for layers in per_layer], seed, trial) for k in ks]


def construct(target: TargetSNN, k: int, eps: float, *, seed: int = 0, trial: int = 0,
              max_memory: int | None = None) -> Ticket:
    """Draw the large network of width ``k`` (seeded by ``seed``, ``trial``) and build the mask of
    Lemmas C.1-C.3 for every target layer: per target weight, the eligible (v >= u_th) virtual neuron of
    group i whose out-weight is closest to w_ji. ``ticket.success`` says whether all errors are <= eps/N.

    Raises ValueError for eps <= 0, u_th outside (0, 1), or a network beyond ``max_memory`` bytes
    (default: the machine's physical memory).
    """
    return construct_many(target, [k], eps, seed=seed, trial=trial, max_memory=max_memory)[0]


def minimal_width(target: TargetSNN, eps: float, *, seed: int = 0, trial: int = 0, kind: str = "snn",
                  k_max: int | None = None, max_memory: int | None = None) -> dict[str, Any]:
    """Smallest k at which the construction succeeds on this random large network (nested in k).

    ``kind``: ``"snn"`` (LTH-SNN: one spiking neuron per weight), ``"relu"`` (Malach et al.-style: per
    target weight a neuron with v > 0 and one with v < 0, each with ``|w~ v - w_ji| <= eps/N``, so
    ``w~_a relu(v_a x) + w~_b relu(v_b x)`` realises ``w_ji x`` for inputs of either sign) or
    ``"relu-nonneg"`` (only the v > 0 neuron: enough when inputs are >= 0, as spikes are).
    The scan stops as soon as every target weight has its neuron(s), or at ``k_max``.

    Returns ``k_min`` (None if not found below ``k_max``), and the virtual neurons and non-zero weights
    that the mask made of the *first* qualifying neurons keeps.
    """
    eps = _eps(eps)
    if kind not in ("snn", "relu", "relu-nonneg"):
        raise UserError(f"unknown construction {kind!r}; choose snn, relu or relu-nonneg")
    N = target.N
    k_max = k_max if k_max is not None else _default_k_max(target, eps)
    _memory_guard(N, target.L, k_max, max_memory)
    kinds = {"snn": ["snn"], "relu": ["relu+", "relu-"], "relu-nonneg": ["relu+"]}[kind]
    worst, neurons, out_weights = -1, 0, 0
    missing = False
    for l, w_hat in enumerate(target.weights):
        chosen = []
        for i in range(N):
            for kd in kinds:
                s = _scan_group(w_hat[:, i], kd, eps / N, target.u_th, k_max // N, [], (seed, trial, l, i), True)
                if bool((s.first < 0).any()):
                    missing = True
                worst = max(worst, int(s.first.max()))
                chosen.append(i * (k_max // N) + s.first[s.first >= 0])  # distinct ids across groups
                out_weights += int((s.first >= 0).sum())
        neurons += int(torch.unique(torch.cat(chosen)).numel())
    k_min = None if missing else N * (worst + 1)
    return {"kind": kind, "k_min": k_min, "virtual_neurons": neurons, "nonzero_weights": neurons + out_weights,
            "target_weights": target.L * N * N}


def _default_k_max(target: TargetSNN, eps: float) -> int:
    # 20x the expected first-success position of the slowest of N^2 geometric searches (ample margin).
    p = c_th(target.u_th) * eps / target.N
    return target.N * int(math.ceil(20 * (math.log(target.N**2 * target.L) + 1) / p))


def materialize(ticket: Ticket, layer: int = 0, *, max_memory: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dense large-network layer and its masks: ``(V [k, N], B_V, W~ [N, k], B_W)`` (float64 / bool).

    Regenerates exactly the stream the construction scanned; the entries of V the construction never
    looks at (``V[m, i']`` for i' other than m's group) are drawn from a separate stream, since they are
    pruned. For tests and inspection: memory is O(N k).
    """
    N, kp = ticket.target.N, ticket.kprime
    _memory_guard(N, 1, ticket.k, max_memory)
    k = ticket.k
    V = torch.empty(k, N, dtype=torch.float64)
    W = torch.empty(N, k, dtype=torch.float64)
    g = torch.Generator().manual_seed(int(ticket.seed) * 7919 + ticket.trial * 104729 + layer + 1)
    V.uniform_(-1, 1, generator=g)
    W.uniform_(-1, 1, generator=g)  # columns >= N k' (the k mod N leftovers) stay random, pruned
    for i in range(N):
        for c in range(-(-kp // CHUNK)):
            n = min(CHUNK, kp - c * CHUNK)
            v, w = _pool_chunk(ticket.seed, ticket.trial, layer, i, c, N)
            rows = slice(i * kp + c * CHUNK, i * kp + c * CHUNK + n)
            V[rows, i] = v[:n]
            W[:, rows] = w[:, :n]
    lt = ticket.layers[layer]
    BV = torch.zeros(k, N, dtype=torch.bool)
    BW = torch.zeros(N, k, dtype=torch.bool)
    j_idx, i_idx = torch.nonzero(lt.neuron >= 0, as_tuple=True)
    m = lt.neuron[j_idx, i_idx]
    BV[m, i_idx] = True
    BW[j_idx, m] = True
    return V, BV, W, BW


# --------------------------------------------------------------------------------------------------
# Running the equivalent network and verifying it.
# --------------------------------------------------------------------------------------------------


def run_equivalent(ticket: Ticket, spikes: torch.Tensor, *, inputs: list[torch.Tensor] | None = None) -> Trace:
    """Run the masked large network (2L spiking layers) on input spikes ``[T, B, N]``.

    Virtual layer l: connection (j, i)'s neuron gets ``v_ji s_i`` and fires ``r_ji`` (``[T, B, N, N]``;
    a neuron serving several j is simulated once per j, identically); output layer:
    ``x~_j = sum_i w_ji r_ji`` -> LIF. ``inputs`` (layer-local mode): ``inputs[l]`` replaces the spikes
    entering layer l (e.g. the target's, as in Lemma C.4).
    """
    target = ticket.target
    _check_spikes(spikes, target.N)
    trace = Trace([spikes])
    s = spikes
    for l, lt in enumerate(ticket.layers):
        if inputs is not None:
            s = inputs[l]
        T, B, N = s.shape
        z = s[:, :, None, :] * lt.v  # [T, B, j, i]
        r, _ = _lif(z, target)
        x = (r * lt.w).sum(dim=-1)
        s, u = _lif(x, target)
        trace.virtual.append(r)
        trace.x.append(x)
        trace.u.append(u)
        trace.spikes.append(s)
    return trace


def verify(ticket: Ticket, spikes: torch.Tensor) -> dict[str, Any]:
    """Compare the ticket with its target at every layer and timestep.

    Layer-local (each equivalent layer fed the target's input spikes, Lemma C.4's setting):
    ``virtual_copy_mismatches`` (virtual spikes with v >= u_th that differ from their input spike:
    must be 0), ``feature_error[l]`` = max |x~ - x^| (<= eps when the construction succeeded),
    ``local_mismatches[l][t]``, and ``unexplained[l]``: first mismatches of a neuron whose target
    potential lay farther than ``r_t = e_l sum_{n<t} beta^n`` from u_th (``e_l`` = that layer's measured
    feature error): impossible by Lemmas 3.3-3.4, so must be 0.
    End-to-end: ``mismatches[l][t]``, ``output_equal`` (per sample: the last layer equal at every
    timestep, Theorem 4.3's event) and ``all_equal`` (every layer, every timestep).
    """
    target = ticket.target
    ref = run_target(target, spikes)
    local = run_equivalent(ticket, spikes, inputs=ref.spikes[:-1])
    e2e = run_equivalent(ticket, spikes)
    beta = target.beta
    copy_mismatch = 0
    feature_error, local_mm, unexplained, e2e_mm = [], [], [], []
    for l, lt in enumerate(ticket.layers):
        copies = (lt.v >= target.u_th) & (lt.neuron >= 0)
        inp = ref.spikes[l][:, :, None, :].expand_as(local.virtual[l])
        copy_mismatch += int(((local.virtual[l] != inp) & copies).sum())
        err = float((local.x[l] - ref.x[l]).abs().max())
        feature_error.append(err)
        diff = local.spikes[l + 1] != ref.spikes[l + 1]
        local_mm.append([int(d.sum()) for d in diff])
        before = torch.zeros_like(diff[0])
        bad = 0
        for t in range(diff.shape[0]):
            r_t = err * sum(beta**n for n in range(t + 1)) * (1 + 1e-9) + 1e-12
            first = diff[t] & ~before
            bad += int((first & ((ref.u[l][t] - target.u_th).abs() > r_t)).sum())
            before |= diff[t]
        unexplained.append(bad)
        e2e_mm.append([int(d.sum()) for d in (e2e.spikes[l + 1] != ref.spikes[l + 1])])
    out_eq = (e2e.spikes[-1] == ref.spikes[-1]).all(dim=2).all(dim=0)
    all_eq = torch.stack([(e2e.spikes[l] == ref.spikes[l]).all(dim=2).all(dim=0)
                          for l in range(1, target.L + 1)]).all(dim=0)
    return {
        "success": ticket.success, "k": ticket.k, "eps": ticket.eps,
        "virtual_copy_mismatches": copy_mismatch, "feature_error": feature_error,
        "local_mismatches": local_mm, "unexplained": unexplained, "mismatches": e2e_mm,
        "output_equal": out_eq, "all_equal": all_eq,
        "output_equal_rate": float(out_eq.double().mean()), "all_equal_rate": float(all_eq.double().mean()),
    }


# --------------------------------------------------------------------------------------------------
# The formulas.
# --------------------------------------------------------------------------------------------------


def success_bound(N: int, k: int, eps: float, u_th: float, L: int = 1) -> float:
    """``1 - L N^2 exp(-(k/N) C_th eps / N)`` (Eq. S.24, union over L layers), clipped at 0."""
    N, L, eps = _int(N, "N"), _int(L, "L"), _eps(eps)
    return max(0.0, 1.0 - L * N * N * math.exp(-(k // N) * c_th(u_th) * eps / N))


def construction_success_probability(target: TargetSNN, k: int, eps: float) -> float:
    """Exact probability that the construction succeeds on a large network of width ``k``.

    Per group i of layer l the number K of neurons with v >= u_th is Binomial(k', C_th), and given K
    the N outputs find a qualifying out-weight independently: ``P = prod_{l,i} E_K[prod_j (1 - (1 -
    q_lji)^K)]`` with ``q = P(|w~ - w_ji| <= eps/N) = (min(1, w + eps/N) - max(-1, w - eps/N)) / 2``.
    """
    from scipy.stats import binom

    eps = _eps(eps)
    N, kp, C = target.N, k // target.N, c_th(target.u_th)
    if kp == 0:
        return 0.0
    eta = eps / N
    lo, hi = int(binom.ppf(1e-15, kp, C)), int(binom.isf(1e-15, kp, C)) + 1
    K = np.arange(max(lo, 0), min(hi, kp) + 1)
    pmf = binom.pmf(K, kp, C)
    log_total = 0.0
    for w_hat in target.weights:
        w = w_hat.numpy()
        q = (np.minimum(1.0, w + eta) - np.maximum(-1.0, w - eta)) / 2.0  # [N_out, N_in]
        for i in range(N):
            # log(1 - (1 - q)^K) for every K and output j, summed over j.
            miss = np.exp(np.outer(K, np.log1p(-q[:, i])))  # [K, N_out]
            with np.errstate(divide="ignore"):
                logs = np.log1p(-miss).sum(axis=1)
            p_group = float(np.sum(pmf * np.exp(logs)))
            if p_group <= 0.0:
                return 0.0
            log_total += math.log(p_group)
    return math.exp(log_total)


def theorem_delta(N: int, L: int, T: int, k: int, eps: float, u_th: float, C: float) -> float:
    """Theorem 4.3's failure probability at width k: ``L N^2 exp(-(k/N) C_th eps/N) + N C L T eps`` (Eq. S.34)."""
    N, L, T, eps = _int(N, "N"), _int(L, "L"), _int(T, "T"), _eps(eps)
    return L * N * N * math.exp(-(k // N) * c_th(u_th) * eps / N) + N * C * L * T * eps


def width_bound(N: int, L: int, T: int, eps: float, delta: float, u_th: float, C: float, *,
                form: str = "paper") -> int:
    """Theorem 4.3's width: ``k >= N^2 ceil(N/(C_th eps) log(N^2 L / (delta - N C L T eps)))``.

    ``form="proof"`` returns ``N ceil(...)``: Eq. S.34 only needs ``k' = k/N`` neurons per group, so
    the printed N^2 is N times more than the proof uses. ``C = 2 p_sup / (1 - beta)``; ``C = 0``
    gives the construction-only width (Lemma C.3 over L layers). Raises ValueError when
    ``delta <= N C L T eps``: the flip term alone already exceeds delta and no width suffices.
    """
    N, L, T, eps, delta = _int(N, "N"), _int(L, "L"), _int(T, "T"), _eps(eps), _delta(delta)
    if form not in ("paper", "proof"):
        raise UserError(f"form must be 'paper' or 'proof'; got {form!r}")
    flips = N * C * L * T * eps
    if delta <= flips:
        raise UserError(f"the width bound is undefined: delta={delta:g} <= N*C*L*T*eps = {N}*{C:.4g}*{L}*{T}*{eps:g} "
                         f"= {flips:.4g} (the flip probability of Theorem 3.5 alone exceeds delta); "
                         "lower eps or raise delta")
    inner = math.ceil(N / (c_th(u_th) * eps) * math.log(N * N * L / (delta - flips)))
    return (N * N if form == "paper" else N) * inner


def __getattr__(name: str) -> Any:
    # The experiment driver moved to theory/slth_experiment.py (it imports this module, so a top-level
    # import here would be circular); `from spikeprune.theory.slth import slth_experiment` keeps working.
    if name == "slth_experiment":
        from spikeprune.theory.slth_experiment import slth_experiment

        return slth_experiment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
