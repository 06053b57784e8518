"""The flip analysis of LTH-SNN §3 on a real network: spikes of a reference and a perturbed model compared.

:func:`flip_analysis` runs both models on the same inputs and reports, per spiking layer and timestep,
the measured input-feature error, the flip rates and the bounds of :mod:`spikeprune.theory.firing`,
either *layer-local* (every perturbed layer is fed the reference network's spikes, the lemmas'
setting) or *end-to-end* (errors propagate). :func:`flip_summary` condenses the rows per layer and
perturbation; :func:`flip_rows_csv` writes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.neuron import LIF, beta_in_range, observe, spiking_layers
from spikeprune.theory.firing import _atom_mass, _method, _p_sup, _refined_bound, bound_lemma33, bound_lemma34
from spikeprune.theory.perturb import InputFn

__all__ = ["FLIP_FIELDS", "FlipRow", "MODES", "flip_analysis", "flip_rows_csv", "flip_summary"]

#: flip-analysis modes
MODES = ("local", "end_to_end")


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
    # The refinement picks e on the same samples it is checked on. Held out (issue 14): e is chosen on the
    # even-numbered batches, and the bound at that e (tail and p_sup of the odd batches) is compared with
    # the odd batches' first-flip rate. None with fewer than two batches.
    eps_refined_heldout: float | None = None
    bound_refined_heldout: float | None = None
    first_flip_rate_heldout: float | None = None
    holds_refined_heldout: bool | None = None
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
    u_parity: list = field(default_factory=list)  # batch index % 2 of each u_parts entry (held-out check)
    first_half: list = field(default_factory=lambda: [0, 0])  # first flips of even / odd batches
    n_half: list = field(default_factory=lambda: [0, 0])


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
        if not beta_in_range(lif.beta):  # e.g. an adapted SpikingJelly IFNode (beta = 1, spikeprune.interop)
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
                        a.first_half[i % 2] += int(first.sum())
                        a.n_half[i % 2] += flip.numel()
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
                            a.u_parity.append(i % 2)
    finally:
        reference.train(was[0])
        perturbed.train(was[1])

    rows: list[FlipRow] = []
    p_sup_cache: dict[tuple[str, int, float], float] = {}
    atom_cache: dict[tuple[str, int, float], float] = {}
    heldout_cache: dict[tuple[int, str, int, float], float] = {}  # (half, layer, t, radius) -> p_sup
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
                held = _refined_heldout(errors[(mode, name)], acc[(modes[0], name, t)], a, t, lif, p_sup_method,
                                        heldout_cache, name)
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
                    bound_refined=bound_ref, atom_mass=atom, firing_rate=a.spikes / a.n, **held,
                ))
    return rows


def _refined_heldout(errors: list[torch.Tensor], u_acc: _Acc, a: _Acc, t: int, lif: Any, p_sup_method: str,
                     cache: dict[tuple[int, str, int, float], float] | None = None, layer: str = ""
                     ) -> dict[str, Any]:
    """The refined bound with its level chosen on the even batches and checked on the odd ones.

    ``errors``: one ``[T, k]`` tensor of per-neuron cumulative errors per batch (batch order);
    ``u_acc``: the accumulator holding the reference potentials' subsample (with its batch parity);
    ``a``: this row's flip counts split by parity; ``cache`` keeps each half's ``p_sup`` per (layer, t,
    radius) across modes (the potentials of a half are the same in every mode; the KDE is the cost).
    Returns the held-out fields of :class:`FlipRow`."""
    none = {"eps_refined_heldout": None, "bound_refined_heldout": None, "first_flip_rate_heldout": None,
            "holds_refined_heldout": None}
    halves = [[e[t] for j, e in enumerate(errors) if j % 2 == h] for h in (0, 1)]
    u_halves = [[u for u, p in zip(u_acc.u_parts, u_acc.u_parity) if p == h] for h in (0, 1)]
    if not all(halves) or not all(u_halves) or a.n_half[1] == 0:
        return none
    (e_sel, e_chk), (u_sel, u_chk) = ([torch.cat(x).double() for x in halves],
                                      [torch.cat(x).double() for x in u_halves])

    memo = cache if cache is not None else {}

    def sup(half: int, u: torch.Tensor):
        def p(r: float) -> float:
            key = (half, layer, t, r)
            if key not in memo:
                memo[key] = _p_sup(u, lif.u_th, r, p_sup_method)
            return memo[key]
        return p

    e, _, _ = _refined_bound(e_sel, t, lif.beta, sup(0, u_sel))  # selection: even batches only
    r = e if t == 0 else e / (1.0 - lif.beta)
    bound = float((e_chk > e).double().mean()) + 2.0 * sup(1, u_chk)(r) * r  # the same formula, fresh samples
    rate = a.first_half[1] / a.n_half[1]
    return {"eps_refined_heldout": e, "bound_refined_heldout": bound, "first_flip_rate_heldout": rate,
            "holds_refined_heldout": rate <= bound}


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
            # None where no row had two batches to split
            "holds_refined_heldout": (None if all(r.holds_refined_heldout is None for r in rs)
                                      else all(r.holds_refined_heldout is not False for r in rs)),
            "max_bound_refined_heldout": max((r.bound_refined_heldout for r in rs
                                              if r.bound_refined_heldout is not None), default=None),
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
