"""Weight criteria: pure functions (model, calibration) -> importance scores (higher = keep).

* ``magnitude``: |w| (Han et al.; the IMP criterion of Frankle & Carbin and Kim et al.).
* ``random``: i.i.d. uniform scores (the baseline every criterion must beat).
* ``sf``: the spiking-firing criterion of LTH-SNN Eq. 12-13 / Appendix D (SPEC §4). For a weight
  ``w[j, i, ...]`` of a layer that reads spikes and is followed by BN then a LIF neuron::

      P[j, i, ...] = r_i * |w[j, i, ...]| * |gamma_j| / sqrt(var_B_j + eps) * N(0 | mu_j - u_th, var_j)

  ``r_i |w|`` is E_act[|w|], the expected weight magnitude that reaches the neuron (input channel i
  fires with rate r_i); ``|gamma_j| / sqrt(var_B_j + eps)`` is how BN scales that current into the
  membrane; ``N(0 | mu_j - u_th, var_j)`` is the Gaussian density of the membrane potential at the
  threshold, i.e. how many neurons of channel j sit where a small current change flips a spike
  (the crisis neighbourhood of LTH-SNN Eq. 6). Layers without that structure (the encoding layer,
  whose input is not spikes, and FC layers without BN+LIF) keep the magnitude criterion; the scores
  record which criterion each layer used so strategies can normalise mixed scores.
"""

from __future__ import annotations

import hashlib

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.tickets.calibration import Calibration
from spikeprune.core.diagnostics import SFFallbackWarning
from spikeprune.tickets.masks import PRUNABLE_TYPES, prunable_weights
from spikeprune.engine.neuron import LIF

__all__ = ["CRITERIA", "FIRING_AWARE", "Scores", "check_criterion", "compute_scores", "magnitude", "random", "sf", "sf_current", "sf_empirical",
           "sf_fallbacks", "sf_layers", "sf_rms"]


@dataclass
class Scores:
    """Per-weight importance, same names/shapes as the prunable weights, and the criterion per layer.

    ``fallback``: for a firing-aware criterion, the layers it scored by magnitude instead, with the reason
    (:func:`sf_fallbacks`); empty for the other criteria.
    """

    values: dict[str, torch.Tensor]
    kinds: dict[str, str]
    fallback: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[name]


def magnitude(model: nn.Module, calibration: Calibration | None = None, **_: object) -> Scores:
    """|w| for every prunable weight."""
    weights = prunable_weights(model)
    return Scores({n: w.detach().abs().float() for n, w in weights.items()}, dict.fromkeys(weights, "magnitude"))


def random(model: nn.Module, calibration: Calibration | None = None, *, seed: int = 0, **_: object) -> Scores:
    """Uniform random scores, reproducible for a seed.

    The generator is seeded from sha256 of the seed, not with the seed itself: ``manual_seed(seed)``
    replays the very stream that ``torch.manual_seed(seed)`` gave the model's (uniform, Kaiming)
    initialisation, so with the usual seed 0 the "random" scores were the initial weights rescaled —
    their ranking picked the most negative initial weights first (found by the criterion-validity
    analysis, issue 14: the lowest "random" decile flipped 27 % of a layer's spikes, a truly random
    decile 5 %)."""
    digest = hashlib.sha256(f"spikeprune:random-criterion:{seed}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    weights = prunable_weights(model)
    return Scores({n: torch.rand(w.shape, generator=g) for n, w in weights.items()}, dict.fromkeys(weights, "random"))


def gaussian_density_at_threshold(mean: torch.Tensor, var: torch.Tensor, u_th: float) -> torch.Tensor:
    """``N(0 | mean - u_th, var) = exp(-(mean - u_th)^2 / (2 var)) / sqrt(2 pi var)`` per channel.

    A channel whose potential never varies (var = 0) has no mass near the threshold unless it sits
    exactly on it; the variance is floored at 1e-12 so such channels score ~0 instead of NaN.
    """
    v = var.double().clamp_min(1e-12)
    d = mean.double() - u_th
    return (torch.exp(-d * d / (2 * v)) / torch.sqrt(2 * math.pi * v)).float()


def bn_gain(bn: nn.Module) -> torch.Tensor:
    """|gamma_j| / sqrt(var_B_j + eps) per channel (times tdBN's alpha * u_th scale, if any)."""
    gamma = bn.weight.detach().abs() if getattr(bn, "weight", None) is not None else torch.ones(bn.num_features)
    gain = gamma / torch.sqrt(bn.running_var.detach() + bn.eps)
    return gain * float(getattr(bn, "scale", 1.0))


def sf_layers(model: nn.Module, calibration: Calibration) -> dict[str, tuple[nn.Module, LIF, object]]:
    """Layers where LTH-SNN Eq. 13 applies: ``{weight name: (bn, lif, lif statistics)}``.

    A layer qualifies when its input was spikes (so ``r_i`` is a firing rate), a BatchNorm ran right
    after it and a LIF after that BN, with one membrane statistic per output channel. The rest (the
    encoding layer, whose input is analog, and FC layers without BN + LIF) keep magnitude; SF-IMP-2
    gives exactly those layers dynamic masks.
    """
    named = dict(model.named_modules())
    found = {}
    for name, w in prunable_weights(model).items():
        rec = calibration.layers.get(name)
        if rec is None or not rec.input_is_spikes or rec.bn is None:
            continue
        neuron = calibration.neuron_of(name)
        if neuron is None:
            continue
        lif, stats = neuron
        if stats.membrane_mean is None or stats.membrane_mean.numel() != w.shape[0]:
            continue
        found[name] = (named[rec.bn], lif, stats)
    return found


def _next_neuron_or_layer(model: nn.Module, module: str) -> tuple[str, str] | None:
    """What follows ``module`` in definition order: ``("neuron", name)`` if a LIF comes before the next prunable
    layer, ``("layer", name)`` if that layer comes first, ``None`` if neither follows (a readout layer).

    Definition order stands in for execution order (which calibration records only when a BatchNorm
    follows): they agree for ``nn.Sequential`` nets and the usual conv-BN-neuron blocks.
    """
    after = False
    for name, m in model.named_modules():
        if name == module:
            after = True
        elif after and isinstance(m, LIF):
            return "neuron", name
        elif after and isinstance(m, PRUNABLE_TYPES) and getattr(m, "weight", None) is not None and m.weight.dim() > 1:
            return "layer", name
    return None


def sf_fallbacks(model: nn.Module, calibration: Calibration) -> dict[str, tuple[str, bool]]:
    """``{weight name: (why it keeps magnitude, surprising?)}`` for the prunable layers not in :func:`sf_layers`.

    Expected (not surprising): the encoding layer (analog input) and a readout layer that drives no neuron.
    Surprising: a layer that reads spikes and drives a neuron but gets no SF score (no BatchNorm between
    them, or neuron statistics that are not per output channel), e.g. every hidden layer of a net without BN.
    """
    qualified = sf_layers(model, calibration)
    out: dict[str, tuple[str, bool]] = {}
    for name, w in prunable_weights(model).items():
        if name in qualified:
            continue
        rec = calibration.layers.get(name)
        module = name.rpartition(".")[0]
        if rec is None:
            out[name] = ("not executed during calibration", False)
        elif not rec.input_is_spikes:
            out[name] = ("its input is not spikes (an encoding layer)", False)
        elif rec.bn is None:
            nxt = _next_neuron_or_layer(model, module)
            if nxt is None or nxt[0] == "layer":
                out[name] = ("it drives no spiking neuron (a readout layer)", False)
            else:
                out[name] = (f"no BatchNorm between it and the neuron {nxt[1]!r} it drives", True)
        elif calibration.neuron_of(name) is None:
            out[name] = (f"no spiking neuron after its BatchNorm {rec.bn!r}", True)
        else:
            out[name] = (f"its neuron's statistics are not one per output channel ({w.shape[0]})", True)
    return out


def _firing_scores(model: nn.Module, calibration: Calibration | None, density: str, kind: str) -> Scores:
    """``r_i |w| gain_j * d_j`` on the layers of :func:`sf_layers`, magnitude elsewhere.

    ``density``: ``"gaussian"`` (LTH-SNN Eq. 12: d_j = N(0 | mu_j - u_th, var_j)), ``"empirical"``
    (d_j = the measured density of u at u_th, ``Calibration.threshold_density``), ``"none"`` (d_j = 1:
    Eq. 13 alone, the expected membrane-potential change E|u' - u| from removing the weight) or
    ``"rms"`` (d_j = 1 and ``sqrt(r_i)`` for ``r_i``: the root-mean-square change).
    """
    if calibration is None:
        raise UserError(f"the {kind} criterion needs calibration data (pass calibration=<batches>)")
    weights = prunable_weights(model)
    scores = magnitude(model)
    layers = sf_layers(model, calibration)
    fallbacks = sf_fallbacks(model, calibration)
    scores.fallback = {n: why for n, (why, _) in fallbacks.items()}
    surprising = {n: why for n, (why, odd) in fallbacks.items() if odd or not layers}
    if surprising:
        # The run is still labelled with the criterion: say which layers it did not score, and why.
        head = (f"the {kind} criterion scored no layer by firing statistics" if not layers else
                f"the {kind} criterion fell back to magnitude for {len(surprising)} spiking layer(s)")
        warnings.warn(f"{head}: " + "; ".join(f"{n}: {why}" for n, why in surprising.items()),
                      SFFallbackWarning, stacklevel=2)
    for name, (bn, lif, stats) in layers.items():
        w = weights[name]
        rate = calibration.layers[name].input_rate
        if density == "rms":  # root-mean-square instead of mean perturbation: sqrt(E[(s_i w g_j)^2])
            rate = rate.sqrt()
        # Eq. 13: E(|u' - u|) = r_i |w| |gamma_j| / sqrt(var_B_j + eps)
        gain = bn_gain(bn)
        if density == "gaussian":  # Eq. 12: times N(0 | mu_j - u_th, var_j)
            gain = gain * gaussian_density_at_threshold(stats.membrane_mean, stats.membrane_var, lif.u_th)
        elif density == "empirical":
            lif_name = calibration.layers[name].neuron
            gain = gain * calibration.threshold_density[lif_name].to(gain)
        extra = (1,) * (w.dim() - 2)
        scores.values[name] = (rate.view(1, -1, *extra) * w.detach().abs() * gain.view(-1, 1, *extra)).float()
        scores.kinds[name] = kind
    return scores


def sf(model: nn.Module, calibration: Calibration | None = None, **_: object) -> Scores:
    """LTH-SNN Eq. 12-13 scores where the layer reads spikes and drives BN + LIF; magnitude elsewhere."""
    return _firing_scores(model, calibration, "gaussian", "sf")


def sf_empirical(model: nn.Module, calibration: Calibration | None = None, **_: object) -> Scores:
    """Eq. 12 with the *measured* density of the membrane potential at u_th instead of a Gaussian fit.

    u_t of a LIF neuron is not Gaussian: it is a mixture of freshly reset potentials (``u_t = x_t``
    after a spike) and leaky sums, often skewed and with a mass far below threshold; its density at
    u_th is what Eq. 6 (the crisis probability) needs, and calibration measures it directly.
    """
    return _firing_scores(model, calibration, "empirical", "sf-empirical")


def sf_current(model: nn.Module, calibration: Calibration | None = None, **_: object) -> Scores:
    """Eq. 13 alone: ``r_i |w| |gamma_j| / sqrt(var_B_j + eps)``, the expected change of the membrane
    potential (no threshold-density factor); an ablation of the SF criterion."""
    return _firing_scores(model, calibration, "none", "sf-current")


def sf_rms(model: nn.Module, calibration: Calibration | None = None, **_: object) -> Scores:
    """``sqrt(r_i) |w| |gamma_j| / sqrt(var_B_j + eps)``: the root-mean-square membrane-potential change
    per timestep from removing the weight, ``sqrt(E[(s_i w gain_j)^2])`` for spikes ``s_i ~ Bernoulli(r_i)``.

    Proposed here (benchmarks/lottery/RESULTS.md): Eq. 13's mean ``r_i |w| gain_j`` and Eq. 12's per-channel
    density factor spread over orders of magnitude and prune whole channels; the RMS keeps the firing
    information but tempers the rate factor (rare but present inputs are not written off).
    """
    return _firing_scores(model, calibration, "rms", "sf-rms")


Criterion = Callable[..., Scores]

CRITERIA: dict[str, Criterion] = {"magnitude": magnitude, "random": random, "sf": sf, "sf-empirical": sf_empirical,
                                  "sf-current": sf_current, "sf-rms": sf_rms}

#: criteria that read calibration statistics (firing rates, membrane potentials)
FIRING_AWARE: set[str] = {"sf", "sf-empirical", "sf-current", "sf-rms"}


def check_criterion(name: object, where: str | None = None) -> str:
    """``name`` if it is a criterion of :data:`CRITERIA`, else a :class:`UserError` that lists the choices.

    ``where``: the text the name was read from (a perturbation spec), quoted in the message.
    """
    if name not in CRITERIA:
        context = f" in {where!r}" if where is not None else ""
        raise UserError(f"unknown criterion {name!r}{context}; choose one of {', '.join(CRITERIA)}")
    return name  # type: ignore[return-value]


def compute_scores(criterion: str | Criterion, model: nn.Module, calibration: Calibration | None = None,
                   *, seed: int = 0) -> Scores:
    """Scores of a named (or callable) criterion; validates the result's names and shapes."""
    if isinstance(criterion, str):
        fn = CRITERIA[check_criterion(criterion)]
    elif callable(criterion):
        fn = criterion
    else:
        raise TypeError(f"criterion must be a name or a callable; got {type(criterion).__name__}")
    scores = fn(model, calibration, seed=seed)
    if not isinstance(scores, Scores):  # a user criterion may return a plain dict
        scores = Scores(dict(scores), dict.fromkeys(scores, getattr(fn, "__name__", "custom")))
    weights = prunable_weights(model)
    for name, s in scores.values.items():
        if name not in weights or s.shape != weights[name].shape:
            raise UserError(f"criterion returned scores for {name!r} that do not match the model's weights")
        if torch.isnan(s).any():
            raise UserError(f"criterion returned NaN scores for {name!r}")
    return scores
