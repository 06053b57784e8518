"""Structured (channel) pruning: channel criteria and PHYSICAL channel removal (SPEC §7; QP-SNN §4.2).

Three steps, as for weights (SPEC §3): a **criterion** gives one score per channel of every channel
group (higher = keep), a **strategy** picks the channels to keep (``layerwise`` ratios or one
``global`` channel budget), and **removal** cuts them out of the model: the producing conv/linear rows,
their BatchNorm entries, and the matching input columns of every layer that reads them. The pruned
model is a smaller *dense* model (it really is faster), and its new widths go into
``model.spikeprune_config`` so ``train.save_model`` / ``train.load_model`` rebuild it.

Channel groups. Channels that must go together form a group (Torch-Pruning's dependency groups):
in a ResNet the stem and the outputs of every block joined to it by identity shortcuts (or SEW's ADD)
share one channel index space, so removing channel c removes it from all of them at once, shortcut
conv + BN included. The groups are *traced* (:func:`spikeprune.topology.trace`: one forward pass on an
example batch) for any network whose neurons are LIF - registered models, ``adapt()``-ed SpikingJelly
and snnTorch nets, a user's own module: each group lists its producers, every BatchNorm and neuron over
its channels and every consumer as ``(module, per, offset)`` (``per`` features per channel after a
flatten, ``offset`` after a ``torch.cat`` along channels), or why it is *blocked* (it reaches the
network's output, or an operation the tracer cannot follow through channels). Torch-Pruning (1.6.0) was
tried first and mis-indexes our time-folded models (``benchmarks/qpsnn/torch_pruning_check.py``), so
the groups were hand-written per architecture until the tracer, which knows the ``[T, B, ...]``
layouts, replaced them. Removals are recorded as a replayable history ``{group: kept indices}``; the
registered models keep the group names those histories use (see :func:`_analyse`).

Criteria (one score per channel; a group averages its members, each divided by its own mean):

Spiking criteria read the group's neurons (``[T, B, C, ...]`` spikes and membrane potentials), at the
group's offset in each neuron; weight criteria read its producers.

* ``svs`` (QP-SNN): the rank of each channel's time-averaged spike map ``mean_t s[t, b, c]`` (an
  H x W matrix), averaged over the calibration samples. A channel that never fires has rank 0. For
  neurons without a spatial map (linear layers) the "map" is 1 x 1 and its rank is 1 if it fired.
* ``membrane`` (SCA-style): mean |u| of the channel's pre-spike membrane potential over (T, B, H, W).
* ``l1``: L1 norm of the producing filter(s) ``sum |W[j]|`` (Li et al. 2017).
* ``bn``: |gamma_j| of the producing BatchNorm(s) (network slimming); L1 where a producer has no BN.
* ``sf``: the channel sum of the SF weight score (LTH-SNN Eq. 13, :func:`spikeprune.tickets.criteria.sf`).
* ``random``: uniform scores (the baseline).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spikeprune.core.config import check_fraction
from spikeprune.core.diagnostics import UserError
from spikeprune.tickets.calibration import calibrate
from spikeprune.tickets.criteria import sf as sf_scores
from spikeprune.engine.neuron import LIF, observe
from spikeprune.topology import BATCHNORM, evaluation, trace

__all__ = [
    "CHANNEL_CRITERIA",
    "ChannelGroup",
    "ChannelStatistics",
    "blocked_channel_groups",
    "channel_config",
    "channel_groups",
    "channel_scores",
    "channel_statistics",
    "prune_channels",
    "remove_channels",
    "replay",
    "select_channels",
]

_CONV = nn.modules.conv._ConvNd


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together (one traced :class:`spikeprune.topology.ChannelGroup`).

    ``producers``: ``(layer, bn or None)``: conv/linear layers whose output rows are these channels,
    each with the BatchNorm that reads its output directly (``bn`` criterion, L1 where ``None``);
    ``neurons``: the neurons that emit these channels' spikes; ``consumers``: ``(layer, per, offset)``:
    layers whose input columns ``offset + c*per ... offset + c*per + per - 1`` read channel c (``per``
    > 1: a linear layer reading a flattened ``[C, H, W]`` map; ``offset`` > 0: a ``torch.cat`` put other
    channels first); ``norms``: ``(bn, per, offset)``: every BatchNorm over these channels, entries
    indexed like consumer columns; ``neuron_slices``: ``(neuron, per, offset)``, the same for neurons.
    """

    name: str
    size: int
    producers: tuple[tuple[str, str | None], ...]
    neurons: tuple[str, ...]
    consumers: tuple[tuple[str, int, int], ...]
    norms: tuple[tuple[str, int, int], ...] = ()
    neuron_slices: tuple[tuple[str, int, int], ...] = ()


# ---------------------------------------------------------------------------------------------
# Groups, from the traced graph.
# ---------------------------------------------------------------------------------------------


def _example(model: nn.Module, example: torch.Tensor | None) -> torch.Tensor:
    """The input batch to trace: ``example``, else one zero image ``[1, C, H, W]`` of a registered model's
    ``spikeprune_config`` (the trace reads shapes only, so zeros do)."""
    if example is not None:
        if not torch.is_tensor(example):
            raise UserError(f"example must be an input tensor as model(x) takes it; got {type(example).__name__}")
        return example
    config = getattr(model, "spikeprune_config", None)
    if isinstance(config, dict) and "in_channels" in config and "image_size" in config:
        p = next(model.parameters(), None)
        kw = {"dtype": p.dtype, "device": p.device} if p is not None else {}
        return torch.zeros(1, int(config["in_channels"]), *(int(v) for v in config["image_size"]), **kw)
    raise UserError(f"channel pruning traces the network on an example input, and a {type(model).__name__} "
                     "does not say what it takes; pass example= (one input batch as model(x) takes it)")


def _registered(model: nn.Module) -> bool:
    config = getattr(model, "spikeprune_config", None)
    return isinstance(config, dict) and "name" in config and hasattr(model, "channel_options")


def _analyse(model: nn.Module, example: torch.Tensor | None) -> tuple[list[ChannelGroup], dict[str, str]]:
    """``(prunable groups, {blocked group: why})`` of the traced graph, named and ordered (see below)."""
    graph = trace(model, _example(model, example))
    traced = graph.channel_groups()
    # Names. Checkpoints of registered models store removal histories {group: kept indices} under the
    # names this module gave before groups were traced, so a registered model keeps them: a residual
    # group (several producers joined by adds) is "stage<k>", a group produced by "<block>.conv" /
    # "<block>.fc" is "<block>", and residual groups come first. Any other network: the first
    # producer's module name, in execution order (unique: a layer produces exactly one group).
    legacy = _registered(model)
    named: list[tuple[int, str, Any]] = []
    stage = 0
    for g in traced:
        name = g.producers[0]
        rank = 1
        if legacy and g.blocked is None and len(g.producers) > 1:
            stage += 1
            name, rank = f"stage{stage}", 0
        elif legacy and name.rsplit(".", 1)[-1] in ("conv", "fc") and "." in name:
            name = name.rsplit(".", 1)[0]
        named.append((rank, name, g))
    named.sort(key=lambda t: t[0])  # stable: execution order within each rank
    groups, blocked = [], {}
    for _, name, g in named:
        if g.blocked is not None:
            blocked[name] = g.blocked
            continue
        producers = tuple((p, graph.driven(p)[0]) for p in g.producers)
        groups.append(ChannelGroup(name, g.size, producers, g.neurons, g.consumers, g.norms,
                                   g.neuron_slices or tuple((n, 1, 0) for n in g.neurons)))
    return groups, blocked


def channel_groups(model: nn.Module, example: torch.Tensor | None = None) -> list[ChannelGroup]:
    """The prunable channel groups of any traced network (see the module docstring).

    Args:
        model: any ``nn.Module`` whose neurons are :class:`~spikeprune.LIF` (a registered model, an
            ``adapt()``-ed SpikingJelly/snnTorch net, a user's own module).
        example: an input batch as ``model(x)`` takes it (``[B, C, H, W]`` or ``[T, B, ...]``); optional
            for registered models (derived from ``model.spikeprune_config``).

    Groups that cannot be pruned (the network's output, an operation the tracer cannot follow through
    channels) are left out; :func:`blocked_channel_groups` says why. Raises a one-line ValueError when
    no group can be pruned.
    """
    groups, blocked = _analyse(model, example)
    if not groups:
        raise UserError(_nothing_prunable(model, blocked))
    return groups


def blocked_channel_groups(model: nn.Module, example: torch.Tensor | None = None) -> dict[str, str]:
    """``{group: why it cannot be pruned}`` for the groups :func:`channel_groups` leaves out."""
    return _analyse(model, example)[1]


def _nothing_prunable(model: nn.Module, blocked: Mapping[str, str]) -> str:
    if not blocked:
        return f"this {type(model).__name__} has no conv/linear layer whose channels could be removed"
    name, why = next(iter(blocked.items()))
    return (f"no channel group of this {type(model).__name__} can be pruned (e.g. {name}: {why})")


def _unknown_group(name: str, groups: Iterable[str], blocked: Mapping[str, str]) -> str:
    if name in blocked:
        return f"channel group {name!r} cannot be pruned: {blocked[name]}"
    return f"no channel group {name!r}; groups: {', '.join(groups)}"


def channel_config(model: nn.Module) -> dict[str, Any]:
    """The model-constructor options that rebuild a registered ``model``'s current channel widths (at
    width 1.0); each registered model class says it (``channel_options``)."""
    options = getattr(model, "channel_options", None)
    if options is None:
        raise UserError(f"no channel configuration for a {type(model).__name__} (not a registered spikeprune model)")
    return options()


def _update_config(model: nn.Module) -> None:
    config = getattr(model, "spikeprune_config", None)
    if not isinstance(config, dict) or not _registered(model):
        return  # a third-party network: the pruned modules carry their own shapes
    options = {k: v for k, v in config.get("options", {}).items() if k not in ("hidden", "depth")}
    options.update(channel_config(model))
    # Channel options are scaled by width; the pruned widths are absolute, so the rebuilt model has width 1.
    model.spikeprune_config = {**config, "width": 1.0, "options": options}


# ---------------------------------------------------------------------------------------------
# Statistics and criteria.
# ---------------------------------------------------------------------------------------------


@dataclass
class ChannelStatistics:
    """Per LIF layer, per channel: summed SVS rank, |u| and spikes over the calibration samples."""

    rank_sum: dict[str, torch.Tensor] = field(default_factory=dict)  # [C]
    abs_u_sum: dict[str, torch.Tensor] = field(default_factory=dict)  # [C]
    spike_sum: dict[str, torch.Tensor] = field(default_factory=dict)  # [C]
    samples: dict[str, int] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)  # T * B * H * W per channel

    def svs(self, lif: str) -> torch.Tensor:
        return self.rank_sum[lif] / max(self.samples[lif], 1)

    def mean_abs_u(self, lif: str) -> torch.Tensor:
        return self.abs_u_sum[lif] / max(self.slots[lif], 1)

    def firing_rate(self, lif: str) -> torch.Tensor:
        return self.spike_sum[lif] / max(self.slots[lif], 1)


def _spike_map_rank(spikes: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W]`` (or ``[T, B, N]``) -> ``[C]`` summed over B of rank(mean_t spikes[:, b, c])."""
    avg = spikes.detach().double().mean(0)  # [B, C, H, W] or [B, N]
    if avg.dim() == 2:  # 1 x 1 maps: rank 1 iff the neuron fired
        return (avg > 0).double().sum(0)
    b, c = avg.shape[:2]
    flat = avg.reshape(b * c, avg.shape[2], -1)
    ranks = torch.zeros(b * c, dtype=torch.float64)
    alive = flat.flatten(1).amax(1) > 0  # an all-zero map has rank 0: skip its SVD
    if alive.any():
        ranks[alive] = torch.linalg.matrix_rank(flat[alive]).double()
    return ranks.view(b, c).sum(0)


@torch.no_grad()
def channel_statistics(model: nn.Module, batches: Iterable[Any], num_batches: int | None = 8) -> ChannelStatistics:
    """One calibration pass (eval mode) recording, per LIF channel, the SVS rank, mean |u| and firing.

    Args:
        model: any module whose neurons are :class:`~spikeprune.LIF`.
        batches: ``(x, y)`` pairs or inputs ``x`` as ``model(x)`` takes them.
        num_batches: how many batches (``None``: all).
    """
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise UserError(f"calibration batches must be a positive integer; got {num_batches!r}")
    names = {id(m): n for n, m in model.named_modules() if isinstance(m, LIF)}
    stats = ChannelStatistics()

    def record(lif: LIF, u: torch.Tensor, s: torch.Tensor) -> None:
        name = names[id(lif)]
        channels = s.shape[2] if s.dim() > 2 else 1
        rank = _spike_map_rank(s) if s.dim() > 2 else (s.double().mean(0) > 0).double().sum(0).reshape(1)
        per = u.detach().reshape(u.shape[0], u.shape[1], channels, -1)
        abs_u = per.abs().double().sum(dim=(0, 1, 3))
        spk = s.detach().reshape(per.shape).double().sum(dim=(0, 1, 3))
        for key, value in (("rank_sum", rank), ("abs_u_sum", abs_u), ("spike_sum", spk)):
            table = getattr(stats, key)
            table[name] = table[name] + value if name in table else value
        stats.samples[name] = stats.samples.get(name, 0) + s.shape[1]
        stats.slots[name] = stats.slots.get(name, 0) + per.shape[0] * per.shape[1] * per.shape[3]

    # Not topology.run_batches: no trace (channel_scores has the channel groups already) and no sample count.
    seen = 0
    # evaluation() puts back every module's own flag: an adapted net may sit in eval mode inside a
    # wrapper in train mode, and model.train(flag) would switch its BatchNorm to training.
    with evaluation(model), observe(model, record):
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
            if num_batches is not None and seen >= num_batches:
                break
    if seen == 0:
        raise UserError("calibration needs at least one batch; the calibration data was empty")
    return stats


def _combine(members: list[torch.Tensor]) -> torch.Tensor:
    """One score per channel from several members: each divided by its mean, then averaged (Torch-Pruning's
    mean normalizer + mean group reduction). A single member is returned as it is."""
    if len(members) == 1:
        return members[0].float()
    scaled = [m.double() / m.double().mean() if m.double().mean() > 0 else m.double() for m in members]
    return torch.stack(scaled).mean(0).float()


def _filter_l1(model: nn.Module, layer: str) -> torch.Tensor:
    w = model.get_submodule(layer).weight.detach()
    return w.abs().reshape(w.shape[0], -1).sum(1)


def _bn_gamma(model: nn.Module, layer: str, bn: str | None) -> torch.Tensor:
    if bn is None:
        return _filter_l1(model, layer)
    module = model.get_submodule(bn)
    if getattr(module, "weight", None) is None:  # non-affine BN: no gamma to rank by
        return _filter_l1(model, layer)
    return module.weight.detach().abs() * float(getattr(module, "scale", 1.0))


CHANNEL_CRITERIA = ("svs", "membrane", "l1", "bn", "sf", "random")


def _first_input(batches: Iterable[Any] | None) -> torch.Tensor | None:
    """The input of the first calibration batch (``(x, y)`` or ``x``), or None. Only re-iterable data
    (a list, a DataLoader) is peeked: a one-shot iterator must stay whole for the calibration pass."""
    if batches is None or iter(batches) is batches:  # type: ignore[call-overload]
        return None
    first = next(iter(batches), None)
    if isinstance(first, (tuple, list)) and first:
        first = first[0]
    return first if torch.is_tensor(first) else None


def _per_channel(values: torch.Tensor, size: int, per: int, offset: int, what: str) -> torch.Tensor:
    """``[size]`` from a neuron's per-feature statistic ``[F]``: channel c owns features ``offset + c*per
    ... + per - 1`` (a neuron after a concatenation or over flattened features); averaged over them."""
    if offset + size * per > values.numel():
        raise RuntimeError(f"{what}: {values.numel()} features, the traced group needs {offset + size * per}")
    return values[offset:offset + size * per].reshape(size, per).mean(1)


def channel_scores(
    criterion: str,
    model: nn.Module,
    batches: Iterable[Any] | None = None,
    *,
    num_batches: int = 8,
    groups: list[ChannelGroup] | None = None,
    seed: int = 0,
    example: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``{group name: [size] scores}`` (higher = keep) of a channel criterion (see the module docstring).

    ``svs``, ``membrane`` and ``sf`` need calibration ``batches``. ``groups`` (default: traced on
    ``example``, else the first calibration batch, else the registered model's input shape).
    """
    if criterion not in CHANNEL_CRITERIA:
        raise UserError(f"unknown channel criterion {criterion!r}; choose one of {', '.join(CHANNEL_CRITERIA)}")
    needs_data = criterion in ("svs", "membrane", "sf")
    if needs_data and batches is None:
        raise UserError(f"channel criterion {criterion!r} needs calibration data (batches)")
    if groups is None:
        groups = channel_groups(model, example if example is not None else _first_input(batches))
    out: dict[str, torch.Tensor] = {}
    if criterion in ("svs", "membrane"):
        stats = channel_statistics(model, batches, num_batches)  # type: ignore[arg-type]
        get = stats.svs if criterion == "svs" else stats.mean_abs_u
        for g in groups:
            if not g.neuron_slices:
                raise UserError(f"channel group {g.name!r} reaches no spiking neuron, so criterion {criterion!r} "
                                 "cannot score it; use l1 or bn, or exclude it")
            missing = [n for n, _, _ in g.neuron_slices if n not in stats.samples]
            if missing:
                raise UserError(f"neuron {missing[0]!r} never ran during calibration")
            out[g.name] = _combine([_per_channel(get(n), g.size, per, offset, f"neuron {n}")
                                    for n, per, offset in g.neuron_slices])
    elif criterion == "sf":
        scores = sf_scores(model, calibrate(model, batches, num_batches))  # type: ignore[arg-type]
        for g in groups:
            members = []
            for layer, _ in g.producers:
                s = scores.values[f"{layer}.weight"]
                members.append(s.reshape(s.shape[0], -1).sum(1))
            out[g.name] = _combine(members)
    elif criterion == "l1":
        out = {g.name: _combine([_filter_l1(model, layer) for layer, _ in g.producers]) for g in groups}
    elif criterion == "bn":
        out = {g.name: _combine([_bn_gamma(model, layer, bn) for layer, bn in g.producers]) for g in groups}
    else:
        gen = torch.Generator().manual_seed(seed)
        out = {g.name: torch.rand(g.size, generator=gen) for g in groups}
    for g in groups:
        if out[g.name].shape != (g.size,) or torch.isnan(out[g.name]).any():
            raise UserError(f"criterion {criterion!r} gave invalid scores for channel group {g.name!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Strategy: scores -> kept channels.
# ---------------------------------------------------------------------------------------------


def _check_sparsity(value: Any, what: str = "channel sparsity", upper_inclusive: bool = False) -> float:
    return check_fraction(value, what, "[0, 1]" if upper_inclusive else "[0, 1)", "fraction of channels removed")


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k lowest scores; ties go to the earlier channel (deterministic)."""
    order = sorted(range(scores.numel()), key=lambda i: (float(scores[i]), i))
    return torch.tensor(order[:k], dtype=torch.long)


def select_channels(
    scores: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "layerwise",
    min_channels: int = 1,
) -> dict[str, torch.Tensor]:
    """``{group: sorted kept channel indices}``.

    Args:
        scores: ``{group: [size] scores}`` (higher = keep).
        sparsity: fraction of channels removed, a float in [0, 1): the same ratio in every group
            (``layerwise``) or of all channels together (``global``). A mapping ``{group: ratio}``
            gives per-layer ratios (``layerwise`` only; groups not named keep all channels).
        scope: ``"layerwise"`` (round(ratio x size) channels leave each group) or ``"global"`` (one
            budget over all groups; each group's scores are divided by their mean so layers compare,
            and every group keeps at least ``min_channels``).
    Raises ValueError when a ratio would remove every channel of a group.
    """
    if scope not in ("layerwise", "global"):
        raise UserError(f"unknown channel pruning scope {scope!r}; choose layerwise or global")
    if isinstance(sparsity, Mapping):
        if scope != "layerwise":
            raise UserError("per-layer channel ratios need scope='layerwise'")
        unknown = sorted(set(sparsity) - set(scores))
        if unknown:
            raise UserError(f"no channel group {unknown[0]!r}; groups: {', '.join(scores)}")
        ratios = {g: _check_sparsity(sparsity.get(g, 0.0), f"channel sparsity of {g}", True) for g in scores}
    else:
        s = _check_sparsity(sparsity)
        ratios = dict.fromkeys(scores, s)
    keep: dict[str, torch.Tensor] = {}
    if scope == "layerwise":
        for g, sc in scores.items():
            n = sc.numel()
            k = round(ratios[g] * n)
            if k >= n:
                raise UserError(f"channel sparsity {ratios[g]} would remove every channel of layer {g} "
                                 f"({n} channel{'s' if n != 1 else ''}); a layer keeps at least one")
            drop = set(_lowest(sc, k).tolist())
            keep[g] = torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)
        return keep
    total = sum(sc.numel() for sc in scores.values())
    budget = round(next(iter(ratios.values()), 0.0) * total)
    candidates = []  # (normalised score, group position, channel, group): ties go to earlier layers/channels
    for gi, (g, sc) in enumerate(scores.items()):
        mean = float(sc.double().mean())
        norm = sc.double() / mean if mean > 0 else sc.double()
        candidates += [(float(norm[i]), gi, i, g) for i in range(sc.numel())]
    candidates.sort()
    remaining = {g: sc.numel() for g, sc in scores.items()}
    dropped: dict[str, set[int]] = {g: set() for g in scores}
    taken = 0
    for _, _, i, g in candidates:
        if taken >= budget:
            break
        if remaining[g] <= min_channels:
            continue
        dropped[g].add(i)
        remaining[g] -= 1
        taken += 1
    if taken < budget:
        raise UserError(f"a global channel budget of {budget} of {total} channels would remove every "
                         f"channel of some layer; lower the channel sparsity")
    return {g: torch.tensor([i for i in range(sc.numel()) if i not in dropped[g]], dtype=torch.long)
            for g, sc in scores.items()}


# ---------------------------------------------------------------------------------------------
# Removal (the only function here that mutates a model).
# ---------------------------------------------------------------------------------------------


def _take(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    return t.detach().index_select(dim, idx.to(t.device)).clone()


def _slice_outputs(module: nn.Module, idx: torch.Tensor, old: int) -> None:
    """Keep output channels ``idx`` of a conv/linear (or entries of a BN): every parameter/buffer whose
    dim 0 is the ``old`` channel count - weight ``[C_out, ...]``, bias, BN weight/bias/running stats,
    a quantized layer's per-channel scale ``weight_gamma [C_out, 1, ...]``, a forward-only mask."""
    for name, p in list(module.named_parameters(recurse=False)):
        if p.dim() >= 1 and p.shape[0] == old:
            setattr(module, name, nn.Parameter(_take(p, 0, idx), requires_grad=p.requires_grad))
    for name, b in list(module.named_buffers(recurse=False)):
        if b is not None and b.dim() >= 1 and b.shape[0] == old:
            persistent = name not in module._non_persistent_buffers_set
            module.register_buffer(name, _take(b, 0, idx), persistent=persistent)
    n = int(idx.numel())
    if isinstance(module, _CONV):
        module.out_channels = n
    elif isinstance(module, nn.Linear):
        module.out_features = n
    elif isinstance(module, BATCHNORM):
        module.num_features = n


def _slice_inputs(module: nn.Module, cols: torch.Tensor) -> None:
    """Keep input columns ``cols`` (dim 1) of a conv/linear weight ``[C_out, C_in, ...]`` and of every
    tensor shaped like it (a forward-only mask)."""
    shape = module.weight.shape
    for name, p in list(module.named_parameters(recurse=False)):
        if p.shape == shape:
            setattr(module, name, nn.Parameter(_take(p, 1, cols), requires_grad=p.requires_grad))
    for name, b in list(module.named_buffers(recurse=False)):
        if b is not None and b.shape == shape:
            persistent = name not in module._non_persistent_buffers_set
            module.register_buffer(name, _take(b, 1, cols), persistent=persistent)
    if isinstance(module, _CONV):
        module.in_channels = int(cols.numel())
    else:
        module.in_features = int(cols.numel())


def _columns(idx: torch.Tensor, size: int, per: int, offset: int) -> set[int]:
    """Columns ``offset + c*per + j`` of the channels c *not* in ``idx`` (what one group removes)."""
    gone = sorted(set(range(size)) - set(idx.tolist()))
    return {offset + c * per + j for c in gone for j in range(per)}


def _check_keep(keep: Mapping[str, Sequence[int] | torch.Tensor], groups: Mapping[str, ChannelGroup],
                blocked: Mapping[str, str]) -> dict[str, torch.Tensor]:
    plan: dict[str, torch.Tensor] = {}
    for name, kept in keep.items():
        if name not in groups:
            raise UserError(_unknown_group(name, groups, blocked))
        idx = torch.as_tensor(list(kept) if not torch.is_tensor(kept) else kept, dtype=torch.long).flatten()
        size = groups[name].size
        if idx.numel() == 0:
            raise UserError(f"removing every channel of layer {name} ({size} channels) would disconnect the "
                             "network; keep at least one")
        if idx.unique().numel() != idx.numel() or int(idx.min()) < 0 or int(idx.max()) >= size:
            raise UserError(f"kept channels of {name} must be distinct indices in [0, {size}); got {idx.tolist()}")
        plan[name] = idx.sort().values
    return plan


@torch.no_grad()
def _remove(model: nn.Module, plan: Mapping[str, torch.Tensor], groups: Mapping[str, ChannelGroup]) -> None:
    # A consumer or BatchNorm may read several groups (after a torch.cat): its columns are collected over
    # all groups of this step and cut once, so the offsets of one group stay valid while another is cut.
    cut_in: dict[str, set[int]] = {}
    cut_norm: dict[str, set[int]] = {}
    for name, idx in plan.items():
        g = groups[name]
        if idx.numel() == g.size:
            continue
        for layer, _ in g.producers:
            _slice_outputs(model.get_submodule(layer), idx, g.size)
        for bn, per, offset in g.norms:
            cut_norm.setdefault(bn, set()).update(_columns(idx, g.size, per, offset))
        for layer, per, offset in g.consumers:
            cut_in.setdefault(layer, set()).update(_columns(idx, g.size, per, offset))
    for bn, gone in cut_norm.items():
        module = model.get_submodule(bn)
        old = int(module.num_features)
        _slice_outputs(module, torch.tensor([i for i in range(old) if i not in gone], dtype=torch.long), old)
    for layer, gone in cut_in.items():
        module = model.get_submodule(layer)
        width = int(module.weight.shape[1])
        _slice_inputs(module, torch.tensor([i for i in range(width) if i not in gone], dtype=torch.long))
    _update_config(model)


@torch.no_grad()
def remove_channels(model: nn.Module, keep: Mapping[str, Sequence[int] | torch.Tensor], *,
                    example: torch.Tensor | None = None) -> dict[str, list[int]]:
    """Physically remove every channel not in ``keep[group]`` (in place); returns the history entry.

    For each group (traced on ``example``, an input batch as ``model(x)`` takes it; optional for
    registered models): the producers' output rows ``W[c]`` (and bias, and any per-channel tensor such
    as a quantized layer's ``weight_gamma``), the entries ``offset + c*per ...`` of every BatchNorm over
    the group (weight, bias, running mean/var) and the same input columns of every consumer go, for
    any ``Conv1d/2d/3d`` (groups = 1) / ``Linear`` / ``BatchNorm1d/2d/3d`` and their subclasses
    (SpikingJelly's ``layer.*``, our quantized and forward-masked layers). Groups not named are
    untouched. A registered model's ``spikeprune_config`` is updated so a saved checkpoint rebuilds
    the smaller model.

    Parameters are new tensors: rebuild any optimizer. Masks: a forward-only mask (``mask_forward``)
    is a buffer shaped like the weight and is cut with it, so the layer keeps masking; a
    :class:`~spikeprune.Mask` or ``enforce()`` handle made before refers to the old shapes and
    tensors - take ``Mask.from_model(model)`` again after removal.
    """
    found, blocked = _analyse(model, example)
    groups = {g.name: g for g in found}
    plan = _check_keep(keep, groups, blocked)
    _remove(model, plan, groups)
    return {name: idx.tolist() for name, idx in plan.items()}


def replay(model: nn.Module, history: Iterable[Mapping[str, Sequence[int]]], *,
           example: torch.Tensor | None = None) -> nn.Module:
    """Re-apply a recorded removal history (a list of :func:`remove_channels` results) to an unpruned
    model (each step traced again on ``example``, optional for registered models)."""
    for step in history:
        remove_channels(model, step, example=example)
    return model


def prune_channels(
    model: nn.Module,
    sparsity: float | Mapping[str, float],
    *,
    criterion: str = "svs",
    scope: str = "layerwise",
    calibration: Iterable[Any] | None = None,
    calibration_batches: int = 8,
    exclude: Iterable[str] = (),
    seed: int = 0,
    example: torch.Tensor | None = None,
) -> dict[str, list[int]]:
    """Score, select and remove channels in one call (in place); returns ``{group: kept indices}``.

    Example (QP-SNN: SVS criterion, half the channels of every layer)::

        history = prune_channels(model, 0.5, criterion="svs", calibration=train_loader)

    The network is traced on ``example``, else the first calibration batch (a list of batches), else
    (registered models) its configured input shape. ``exclude`` names groups to leave untouched (e.g.
    ``["features.0"]`` keeps the encoding layer); naming a group that cannot be pruned is harmless there.
    """
    if example is None:
        example = _first_input(calibration)
    found, blocked = _analyse(model, example)
    if not found:
        raise UserError(_nothing_prunable(model, blocked))
    excluded = set(exclude)
    unknown = sorted(excluded - {g.name for g in found} - set(blocked))
    if unknown:
        raise UserError(_unknown_group(unknown[0], [g.name for g in found], blocked))
    if isinstance(sparsity, Mapping):
        for name in sparsity:
            if name in blocked:
                raise UserError(_unknown_group(name, [g.name for g in found], blocked))
    active = [g for g in found if g.name not in excluded]
    scores = channel_scores(criterion, model, calibration, num_batches=calibration_batches, groups=active,
                            seed=seed)
    keep = select_channels(scores, sparsity, scope=scope)
    groups = {g.name: g for g in found}
    plan = _check_keep(keep, groups, blocked)
    _remove(model, plan, groups)
    return {name: idx.tolist() for name, idx in plan.items()}
