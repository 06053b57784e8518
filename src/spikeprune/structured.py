"""Structured (channel) pruning: channel criteria and PHYSICAL channel removal (SPEC §7; QP-SNN §4.2).

Three steps, as for weights (SPEC §3): a **criterion** gives one score per channel of every channel
group (higher = keep), a **strategy** picks the channels to keep (``layerwise`` ratios or one
``global`` channel budget), and **removal** cuts them out of the model: the producing conv/linear rows,
their BatchNorm entries, and the matching input columns of every layer that reads them. The pruned
model is a smaller *dense* model (it really is faster), and its new widths go into
``model.spikeprune_config`` so ``train.save_model`` / ``train.load_model`` rebuild it.

Channel groups. Channels that must go together form a group (Torch-Pruning's dependency groups):
in a ResNet the stem and the outputs of every block joined to it by identity shortcuts share one
channel index space, so removing channel c removes it from all of them at once. Groups are listed by
:func:`channel_groups` for the registered architectures (``mlp``, ``convnet``, ``vgg16``, ``resnet19``).
Torch-Pruning (1.6.0) was tried first and does not handle these models: its dependency graph is traced
through ``flatten(0, 1)``/``unflatten`` (time folded into the batch) and the encoding layer's
``expand`` over T, and it mis-indexes (convnet: IndexError; vgg16: wrong input channels; resnet19:
ZeroDivisionError) — ``benchmarks/qpsnn/torch_pruning_check.py`` reproduces this. The surgery here is
explicit per architecture instead, and recorded as a replayable history ``{group: kept indices}``.

Criteria (one score per channel; a group averages its members, each divided by its own mean):

* ``svs`` (QP-SNN): the rank of each channel's time-averaged spike map ``mean_t s[t, b, c]`` (an
  H x W matrix), averaged over the calibration samples. A channel that never fires has rank 0. For
  neurons without a spatial map (linear layers) the "map" is 1 x 1 and its rank is 1 if it fired.
* ``membrane`` (SCA-style): mean |u| of the channel's pre-spike membrane potential over (T, B, H, W).
* ``l1``: L1 norm of the producing filter(s) ``sum |W[j]|`` (Li et al. 2017).
* ``bn``: |gamma_j| of the producing BatchNorm(s) (network slimming); L1 where a producer has no BN.
* ``sf``: the channel sum of the SF weight score (LTH-SNN Eq. 13, :func:`spikeprune.criteria.sf`).
* ``random``: uniform scores (the baseline).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .calibration import calibrate
from .criteria import sf as sf_scores
from .models.resnet import SpikingBasicBlock, SpikingResNet
from .models.small import SpikingConvNet, SpikingMLP
from .neuron import LIF, observe

__all__ = [
    "CHANNEL_CRITERIA",
    "ChannelGroup",
    "ChannelStatistics",
    "channel_config",
    "channel_groups",
    "channel_scores",
    "channel_statistics",
    "prune_channels",
    "remove_channels",
    "replay",
    "select_channels",
]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together.

    ``producers``: ``(layer, bn or None)`` whose output channels are this group's channels;
    ``neurons``: the LIF layers that emit these channels' spikes; ``consumers``: ``(layer, features
    per channel)`` whose input channels read them (``features per channel`` > 1 when a linear layer
    reads a flattened ``[C, H, W]`` map: channel c owns columns ``c*HW ... (c+1)*HW - 1``).
    """

    name: str
    size: int
    producers: tuple[tuple[str, str | None], ...]
    neurons: tuple[str, ...]
    consumers: tuple[tuple[str, int], ...]


# ---------------------------------------------------------------------------------------------
# Groups of the registered architectures.
# ---------------------------------------------------------------------------------------------


def _out(model: nn.Module, layer: str) -> int:
    return int(model.get_submodule(layer).weight.shape[0])


def _sequential_groups(model: nn.Module, blocks: Sequence[tuple[str, nn.Module]], classifier: str,
                       kind: str) -> list[ChannelGroup]:
    groups = []
    for i, (name, block) in enumerate(blocks):
        layer = f"{name}.{kind}"
        if i + 1 < len(blocks):
            consumer = (f"{blocks[i + 1][0]}.{kind}", 1)
        else:
            head = model.get_submodule(classifier)
            per = head.in_features // _out(model, layer)  # flattened [C, H, W] map (convnet) or pooled (VGG)
            consumer = (classifier, per)
        groups.append(ChannelGroup(name, _out(model, layer), ((layer, f"{name}.bn"),), (f"{name}.lif",),
                                   (consumer,)))
    return groups


def _resnet_groups(model: SpikingResNet) -> list[ChannelGroup]:
    groups: list[ChannelGroup] = []
    # The running residual group: producers and neurons whose channel index space is shared.
    current = {"name": "stage1", "producers": [("conv1.conv", "conv1.bn")], "neurons": ["conv1.lif"],
               "consumers": []}
    stage = 1
    blocks = list(model.layers.named_children())
    for idx, (child, block) in enumerate(blocks):
        if not isinstance(block, SpikingBasicBlock):
            raise ValueError(f"unexpected block {type(block).__name__} in a Res-SNN; cannot group its channels")
        name = f"layers.{child}"
        if not isinstance(block.shortcut, nn.Identity):  # a new channel space starts here
            current["consumers"].append((f"{name}.shortcut.conv", 1))
            current["consumers"].append((f"{name}.conv1.conv", 1))
            groups.append(_finish(model, current))
            stage += 1
            current = {"name": f"stage{stage}",
                       "producers": [(f"{name}.conv2.conv", f"{name}.conv2.bn"),
                                     (f"{name}.shortcut.conv", f"{name}.shortcut.bn")],
                       "neurons": [f"{name}.lif"], "consumers": []}
        else:
            current["consumers"].append((f"{name}.conv1.conv", 1))
            current["producers"].append((f"{name}.conv2.conv", f"{name}.conv2.bn"))
            current["neurons"].append(f"{name}.lif")
        groups.append(ChannelGroup(f"{name}.conv1", _out(model, f"{name}.conv1.conv"),
                                   ((f"{name}.conv1.conv", f"{name}.conv1.bn"),), (f"{name}.conv1.lif",),
                                   ((f"{name}.conv2.conv", 1),)))
    current["consumers"].append(("fc1", 1))
    groups.append(_finish(model, current))
    groups.append(ChannelGroup("fc1", _out(model, "fc1"), (("fc1", None),), ("lif_fc",), (("classifier", 1),)))
    order = {g.name: i for i, g in enumerate(groups)}
    return sorted(groups, key=lambda g: (0 if g.name.startswith("stage") else 1, order[g.name]))


def _finish(model: nn.Module, group: dict[str, Any]) -> ChannelGroup:
    return ChannelGroup(group["name"], _out(model, group["producers"][0][0]), tuple(group["producers"]),
                        tuple(group["neurons"]), tuple(group["consumers"]))


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The channel groups of a registered architecture (``mlp``, ``convnet``, ``vgg16``, ``resnet19``).

    Raises ValueError for any other model: channel removal needs to know which layers read which
    channels (see the module docstring for why this is not traced automatically).
    """
    if isinstance(model, SpikingResNet):
        return _resnet_groups(model)
    if isinstance(model, SpikingConvNet):  # includes SpikingVGG
        blocks = [(f"features.{i}", m) for i, m in enumerate(model.features) if hasattr(m, "lif")]
        return _sequential_groups(model, blocks, "classifier", "conv")
    if isinstance(model, SpikingMLP):
        blocks = [(f"features.{i}", m) for i, m in enumerate(model.features)]
        return _sequential_groups(model, blocks, "classifier", "fc")
    raise ValueError(f"channel pruning supports the registered architectures (mlp, convnet, vgg16, resnet19); "
                     f"got a {type(model).__name__}")


def channel_config(model: nn.Module) -> dict[str, Any]:
    """The model-constructor options that rebuild ``model``'s current channel widths (at width 1.0)."""
    if isinstance(model, SpikingResNet):
        stages, widths = [], []
        for block in model.layers:
            if not isinstance(block.shortcut, nn.Identity) or not stages:
                stages.append(None)
            stages[-1] = block.conv2.conv.out_channels
            widths.append(block.conv1.conv.out_channels)
        if model.conv1.conv.out_channels != stages[0]:
            raise ValueError("this ResNet's stem and first stage have different widths; it cannot be rebuilt")
        return {"stage_channels": stages, "block_channels": widths, "hidden": model.fc1.out_features}
    if isinstance(model, SpikingConvNet):
        return {"channels": [m.conv.out_channels for m in model.features if hasattr(m, "lif")]}
    if isinstance(model, SpikingMLP):
        return {"hidden_sizes": [m.fc.out_features for m in model.features]}
    raise ValueError(f"no channel configuration for a {type(model).__name__}")


def _update_config(model: nn.Module) -> None:
    config = getattr(model, "spikeprune_config", None)
    if not isinstance(config, dict):
        return
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
        raise ValueError(f"calibration batches must be a positive integer; got {num_batches!r}")
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

    was_training = model.training
    model.eval()
    seen = 0
    try:
        with observe(model, record):
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
                if num_batches is not None and seen >= num_batches:
                    break
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration needs at least one batch; the calibration data was empty")
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


def channel_scores(
    criterion: str,
    model: nn.Module,
    batches: Iterable[Any] | None = None,
    *,
    num_batches: int = 8,
    groups: list[ChannelGroup] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``{group name: [size] scores}`` (higher = keep) of a channel criterion (see the module docstring).

    ``svs``, ``membrane`` and ``sf`` need calibration ``batches``.
    """
    if criterion not in CHANNEL_CRITERIA:
        raise ValueError(f"unknown channel criterion {criterion!r}; choose one of {', '.join(CHANNEL_CRITERIA)}")
    groups = groups if groups is not None else channel_groups(model)
    needs_data = criterion in ("svs", "membrane", "sf")
    if needs_data and batches is None:
        raise ValueError(f"channel criterion {criterion!r} needs calibration data (batches)")
    out: dict[str, torch.Tensor] = {}
    if criterion in ("svs", "membrane"):
        stats = channel_statistics(model, batches, num_batches)  # type: ignore[arg-type]
        for g in groups:
            missing = [n for n in g.neurons if n not in stats.samples]
            if missing:
                raise ValueError(f"neuron {missing[0]!r} never ran during calibration")
            get = stats.svs if criterion == "svs" else stats.mean_abs_u
            out[g.name] = _combine([get(n) for n in g.neurons])
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
            raise ValueError(f"criterion {criterion!r} gave invalid scores for channel group {g.name!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Strategy: scores -> kept channels.
# ---------------------------------------------------------------------------------------------


def _check_sparsity(value: Any, what: str = "channel sparsity", upper_inclusive: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and 0.0 <= value and (value <= 1.0 if upper_inclusive else value < 1.0)
    if not ok:
        bound = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{what} (fraction of channels removed) must be a number in {bound}; got {value!r}")
    return float(value)


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
        raise ValueError(f"unknown channel pruning scope {scope!r}; choose layerwise or global")
    if isinstance(sparsity, Mapping):
        if scope != "layerwise":
            raise ValueError("per-layer channel ratios need scope='layerwise'")
        unknown = sorted(set(sparsity) - set(scores))
        if unknown:
            raise ValueError(f"no channel group {unknown[0]!r}; groups: {', '.join(scores)}")
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
                raise ValueError(f"channel sparsity {ratios[g]} would remove every channel of layer {g} "
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
        raise ValueError(f"a global channel budget of {budget} of {total} channels would remove every "
                         f"channel of some layer; lower the channel sparsity")
    return {g: torch.tensor([i for i in range(sc.numel()) if i not in dropped[g]], dtype=torch.long)
            for g, sc in scores.items()}


# ---------------------------------------------------------------------------------------------
# Removal (the only function here that mutates a model).
# ---------------------------------------------------------------------------------------------


def _take(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    return t.detach().index_select(dim, idx.to(t.device)).clone()


def _slice_outputs(module: nn.Module, idx: torch.Tensor, old: int) -> None:
    """Keep output channels ``idx`` of a conv/linear/BN: every parameter/buffer whose dim 0 is the channel."""
    for name, p in list(module.named_parameters(recurse=False)):
        if p.dim() >= 1 and p.shape[0] == old:
            setattr(module, name, nn.Parameter(_take(p, 0, idx), requires_grad=p.requires_grad))
    for name, b in list(module.named_buffers(recurse=False)):
        if b is not None and b.dim() >= 1 and b.shape[0] == old:
            persistent = name not in module._non_persistent_buffers_set
            module.register_buffer(name, _take(b, 0, idx), persistent=persistent)
    n = int(idx.numel())
    if isinstance(module, nn.Conv2d):
        module.out_channels = n
    elif isinstance(module, nn.Linear):
        module.out_features = n
    elif isinstance(module, _BN):
        module.num_features = n


def _slice_inputs(module: nn.Module, idx: torch.Tensor, per: int) -> None:
    cols = (idx[:, None] * per + torch.arange(per)[None, :]).flatten() if per > 1 else idx
    w = module.weight
    module.weight = nn.Parameter(_take(w, 1, cols), requires_grad=w.requires_grad)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError("channel removal does not support grouped convolutions")
        module.in_channels = int(idx.numel())
    else:
        module.in_features = int(cols.numel())


@torch.no_grad()
def remove_channels(model: nn.Module, keep: Mapping[str, Sequence[int] | torch.Tensor]) -> dict[str, list[int]]:
    """Physically remove every channel not in ``keep[group]`` (in place); returns the history entry.

    For each group: the producers' output rows (and bias), their BatchNorm entries (weight, bias,
    running mean/var) and the consumers' input columns go. Groups not named are untouched. The model's
    ``spikeprune_config`` is updated so a saved checkpoint rebuilds the smaller model. Any optimizer
    built before must be rebuilt (the parameters are new tensors).
    """
    groups = {g.name: g for g in channel_groups(model)}
    plan: dict[str, torch.Tensor] = {}
    for name, kept in keep.items():
        if name not in groups:
            raise ValueError(f"no channel group {name!r}; groups: {', '.join(groups)}")
        idx = torch.as_tensor(list(kept) if not torch.is_tensor(kept) else kept, dtype=torch.long).flatten()
        size = groups[name].size
        if idx.numel() == 0:
            raise ValueError(f"removing every channel of layer {name} ({size} channels) would disconnect the "
                             "network; keep at least one")
        if idx.unique().numel() != idx.numel() or int(idx.min()) < 0 or int(idx.max()) >= size:
            raise ValueError(f"kept channels of {name} must be distinct indices in [0, {size}); got {idx.tolist()}")
        plan[name] = idx.sort().values
    for name, idx in plan.items():
        g = groups[name]
        if idx.numel() == g.size:
            continue
        for layer, bn in g.producers:
            _slice_outputs(model.get_submodule(layer), idx, g.size)
            if bn is not None:
                _slice_outputs(model.get_submodule(bn), idx, g.size)
        for layer, per in g.consumers:
            _slice_inputs(model.get_submodule(layer), idx, per)
    _update_config(model)
    return {name: idx.tolist() for name, idx in plan.items()}


def replay(model: nn.Module, history: Iterable[Mapping[str, Sequence[int]]]) -> nn.Module:
    """Re-apply a recorded removal history (a list of :func:`remove_channels` results) to an unpruned model."""
    for step in history:
        remove_channels(model, step)
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
) -> dict[str, list[int]]:
    """Score, select and remove channels in one call (in place); returns ``{group: kept indices}``.

    Example (QP-SNN: SVS criterion, half the channels of every layer)::

        history = prune_channels(model, 0.5, criterion="svs", calibration=train_loader)

    ``exclude`` names groups to leave untouched (e.g. ``["features.0"]`` keeps the encoding layer).
    """
    groups = channel_groups(model)
    excluded = set(exclude)
    unknown = sorted(excluded - {g.name for g in groups})
    if unknown:
        raise ValueError(f"no channel group {unknown[0]!r}; groups: {', '.join(g.name for g in groups)}")
    active = [g for g in groups if g.name not in excluded]
    scores = channel_scores(criterion, model, calibration, num_batches=calibration_batches, groups=active,
                            seed=seed)
    keep = select_channels(scores, sparsity, scope=scope)
    return remove_channels(model, keep)
