"""The traced graph (:func:`spikeprune.topology.trace` builds it): nodes, the layout of every tensor,
the queries the features ask (which weight layer drives which BatchNorm and neuron, who reads a node),
and the coupled channel groups.

Channels. Every conv/linear output opens a *channel space* (its output channels). Spaces flow through
channel-preserving operations (BN, neurons, pooling, dropout, elementwise maths, time/batch reshapes,
flatten of ``[C, H, W]`` into ``C*H*W`` features, global pooling); an elementwise op joining two
tensors (a residual add, SEW's ADD/AND/IAND) couples their spaces; ``cat`` along channels concatenates
them. Spaces that are coupled form one :class:`ChannelGroup` - the channels that must be removed
together (Torch-Pruning's dependency groups, found from the trace, not declared per architecture).
A space that reaches the network's input or output, or an operation the tracer cannot follow through
channels (named in :attr:`ChannelGroup.blocked`), cannot be pruned.

"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.foreign import _is_third_party_neuron
from spikeprune.engine.neuron import LIF

__all__ = ["BATCHNORM", "ChannelGroup", "Graph", "Node", "TopologyError", "channel_axis", "evaluation", "role_of"]

_WEIGHT = (nn.modules.conv._ConvNd, nn.Linear)
#: every BatchNorm (1d/2d/3d, SyncBatchNorm, tdBN and other subclasses): the one definition the packages share
BATCHNORM = (nn.modules.batchnorm._BatchNorm,)
_POOL = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
         nn.modules.pooling._AdaptiveMaxPoolNd)
_ACT = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Identity)


class TopologyError(UserError):
    """The network contains something the tracer cannot follow (one line: what, where, what is supported)."""


# --------------------------------------------------------------------------------------------------
# Roles of leaf modules.
# --------------------------------------------------------------------------------------------------


def _is_sj_dropout(m: nn.Module) -> bool:
    return type(m).__module__.startswith("spikingjelly") and "Dropout" in type(m).__name__


def role_of(m: nn.Module) -> str | None:
    """The role of a leaf module (``weight``, ``bn``, ``neuron``, ``pool``, ``dropout``, ``flatten``,
    ``act``, ``module`` for any other childless module); ``None``: a container, traced through."""
    if isinstance(m, LIF):
        return "neuron"
    if _is_third_party_neuron(m):  # checked before "childless": snnTorch's neurons have no children
        return "foreign-neuron"
    if isinstance(m, _WEIGHT):
        return "weight"
    if isinstance(m, BATCHNORM):
        return "bn"
    if isinstance(m, _POOL):
        return "pool"
    if isinstance(m, nn.modules.dropout._DropoutNd) or _is_sj_dropout(m):
        return "dropout"
    if isinstance(m, nn.Flatten):
        return "flatten"
    if isinstance(m, _ACT):
        return "act"
    if next(m.children(), None) is None:
        return "module"
    return None


def channel_axis(module: nn.Module, x: torch.Tensor) -> int:
    """The channel (feature) axis of ``x`` as ``module`` reads it, whatever the leading layout.

    A ``ConvNd`` reads ``[..., C, *spatial(N)]`` (so ``[B, C, H, W]``, ``[T*B, C, H, W]`` and SpikingJelly's
    multi-step ``[T, B, C, H, W]`` all have C at ``-3`` for 2-D), a ``Linear`` reads ``[..., F]``, a
    BatchNorm ``[..., C, *spatial]`` with its own spatial rank.
    """
    if isinstance(module, nn.Linear):
        return x.dim() - 1
    if isinstance(module, nn.modules.conv._ConvNd):
        return x.dim() - 1 - len(module.kernel_size)
    if isinstance(module, BATCHNORM):
        spatial = 3 if isinstance(module, nn.BatchNorm3d) else 2 if isinstance(module, nn.BatchNorm2d) else None
        if spatial is None:  # BatchNorm1d: [N, C] or [N, C, L]; multi-step wrappers add a leading T
            return 1 if x.dim() in (2, 3) and not getattr(module, "step_mode", "s") == "m" else 2
        return x.dim() - 1 - spatial
    raise TypeError(f"no channel axis for a {type(module).__name__}")


@contextmanager
def evaluation(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and put back *every* module's own train/eval flag afterwards.

    ``model.train(was_training)`` would not do: an adapted user's net may be in eval mode inside a
    wrapper in train mode, and restoring the wrapper's flag recursively would switch the user's
    BatchNorm to training (overwriting its running statistics at the next batch).
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


# --------------------------------------------------------------------------------------------------
# The graph.
# --------------------------------------------------------------------------------------------------


@dataclass
class Node:
    """One leaf-module call or torch function call of the traced forward pass.

    ``inputs``: ids of the nodes whose (first) output tensors this node read, in argument order;
    ``in_shapes`` / ``out_shapes``: the traced tensors' shapes; ``layouts``: per output, ``"TB"``
    (``[T, B, ...]``), ``"N"`` (time folded into the batch, ``[T*B, ...]``), ``"B"`` (one static sample
    per batch entry, ``[B, ...]``) or ``None`` (no batch axis); ``scope``: the enclosing module.
    """

    id: int
    kind: str  # "input", "module", "op", "const"
    name: str  # module qualified name, or the function's name for ops
    role: str  # leaf role for modules ("weight", "bn", "neuron", ...), the function's name for ops
    module: nn.Module | None = field(default=None, repr=False)
    inputs: list[int] = field(default_factory=list)
    in_shapes: list[tuple[int, ...]] = field(default_factory=list)
    out_shapes: list[tuple[int, ...]] = field(default_factory=list)
    layouts: list[str | None] = field(default_factory=list)
    scope: str = ""
    args: dict[str, Any] = field(default_factory=dict, repr=False)
    const_inputs: list[tuple[int, ...]] = field(default_factory=list, repr=False)  # shapes of untraced tensors

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.out_shapes[0] if self.out_shapes else ()

    @property
    def layout(self) -> str | None:
        return self.layouts[0] if self.layouts else None

    def where(self) -> str:
        if self.kind == "module":
            return f"{self.name} ({type(self.module).__name__})"
        return f"torch.{self.name} in {self.scope or 'the top-level forward'}"


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together: one index space shared by every member.

    ``producers``: conv/linear layers whose output rows are these channels; ``norms``: ``(bn, per,
    offset)`` BatchNorms whose entries ``offset + c*per ... + per - 1`` are channel c (``per`` > 1 for a
    BatchNorm1d over flattened features); ``consumers``: ``(layer, per, offset)`` layers whose input
    columns ``offset + c*per ...`` read channel c (``per`` > 1: a linear layer reading a flattened
    ``[C, H, W]`` map; ``offset`` > 0: a concatenation placed other channels first); ``neurons``: the
    neurons that emit these channels' spikes; ``blocked``: why the group cannot be pruned, or ``None``;
    ``neuron_slices``: ``(neuron, per, offset)`` where channel c sits in each neuron's features (a neuron
    after a concatenation or over flattened features holds more than this group's channels).
    """

    name: str
    size: int
    producers: tuple[str, ...]
    norms: tuple[tuple[str, int, int], ...]
    consumers: tuple[tuple[str, int, int], ...]
    neurons: tuple[str, ...]
    blocked: str | None = None
    neuron_slices: tuple[tuple[str, int, int], ...] = ()


class Graph:
    """The traced network. ``T``: timesteps; ``B``: traced batch size; ``nodes`` in execution order."""

    def __init__(self, model: nn.Module, nodes: list[Node], outputs: list[int], T: int, B: int,
                 time_major_input: bool) -> None:
        self.model = model
        self.nodes = nodes
        self.outputs = outputs
        self.T = T
        self.B = B
        self.time_major_input = time_major_input
        self._consumers: dict[int, list[int]] = {n.id: [] for n in nodes}
        for n in nodes:
            for i in n.inputs:
                self._consumers[i].append(n.id)
        self._groups: list[ChannelGroup] | None = None

    # -- queries ----------------------------------------------------------------------------------
    def consumers(self, node: int) -> list[Node]:
        """Nodes that read ``node``'s output, in execution order."""
        return [self.nodes[i] for i in self._consumers[node]]

    def successors(self, node: int) -> list[Node]:
        """Consumers of ``node``'s output, looking through ops that only move time/batch axes
        (``flatten(0, 1)``, ``unflatten``, ``unsqueeze(0).repeat(T, ...)``): the layers that really read it."""
        out, frontier = [], list(self._consumers[node])
        while frontier:
            c = self.nodes[frontier.pop(0)]
            if self._same_per_sample(c):
                frontier.extend(self._consumers[c.id])
            elif c not in out:
                out.append(c)
        return sorted(out, key=lambda n: n.id)

    def calls(self, module_name: str) -> list[Node]:
        """Every call of the module ``module_name`` (more than one when a module is reused)."""
        return [n for n in self.nodes if n.kind == "module" and n.name == module_name]

    def modules(self, role: str) -> dict[str, nn.Module]:
        """Modules of a role (``weight``, ``bn``, ``neuron``, ...) that ran, by name, in execution order."""
        out: dict[str, nn.Module] = {}
        for n in self.nodes:
            if n.kind == "module" and n.role == role:
                out.setdefault(n.name, n.module)
        return out

    def samples_per_call(self, node: Node, which: str = "in") -> tuple[int, int]:
        """``(leading elements, per-sample executions)`` of one call: e.g. ``[T, B, C, H, W]`` -> (T*B, T),
        ``[T*B, C, H, W]`` -> (T*B, T), ``[B, C, H, W]`` (encoding layer) -> (B, 1)."""
        shape = (node.in_shapes if which == "in" else node.out_shapes)[0]
        layout = _layout(shape, self.T, self.B)
        lead = {"TB": self.T * self.B, "N": self.T * self.B, "B": self.B}.get(layout)
        if lead is None:
            raise TopologyError(f"cannot tell the batch axes of {node.where()}'s input {shape} (T={self.T}, B={self.B})")
        return lead, lead // self.B

    _PASS_TO_NEURON = ("pool", "dropout", "act", "add", "add_", "__add__", "__iadd__", "__radd__", "sub",
                       "__sub__", "mul", "__mul__", "contiguous", "clone", "to", "float")

    def driven(self, layer: str) -> tuple[str | None, str | None]:
        """``(bn, neuron)`` that the weight layer ``layer`` drives: the BatchNorm that reads its output
        directly (``None`` if none), and the first neuron reached from there through pooling, dropout,
        activations and elementwise ops (a residual block's second conv drives the neuron after the add).
        The neuron is only reported when a BatchNorm was found (what the SF criteria require)."""
        calls = self.calls(layer)
        if not calls:
            return None, None
        node = calls[0]
        nxt = self.successors(node.id)
        if len(nxt) != 1 or nxt[0].role != "bn":
            return None, None
        bn = nxt[0]
        return bn.name, self.first_neuron_after(bn.id)

    def first_neuron_after(self, start: int, through: Iterable[str] = ()) -> str | None:
        """Name of the first neuron (in execution order) that node ``start``'s output reaches through
        pooling, dropout, activations, elementwise ops and per-sample ops, plus the roles in ``through``;
        ``None`` if none does (e.g. the classifier)."""
        passable = set(self._PASS_TO_NEURON) | set(through)
        frontier, seen = [start], set()
        while frontier:
            i = min(frontier)  # execution order: the nearest neuron first
            frontier.remove(i)
            for c in self.consumers(i):
                if c.id in seen:
                    continue
                seen.add(c.id)
                if c.role == "neuron":
                    return c.name
                if c.role in passable or self._same_per_sample(c):
                    frontier.append(c.id)
        return None

    def input_layout(self, node: Node) -> str | None:
        """Layout of a node's first input: ``"TB"``, ``"N"``, ``"B"`` or ``None``."""
        return _layout(node.in_shapes[0], self.T, self.B) if node.in_shapes else None

    def per_sample(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The per-sample part of a traced shape (``[T, B, C, H, W]`` -> ``(C, H, W)``), ``None`` if unknown."""
        layout = _layout(shape, self.T, self.B)
        return None if layout is None else tuple(shape[_batch_dims(layout):])

    def _same_per_sample(self, node: Node) -> bool:
        """An op that only moves time/batch axes (flatten(0, 1), unflatten, unsqueeze(0), repeat over T)."""
        if node.kind != "op" or not node.in_shapes:
            return False
        ps = self.per_sample(node.in_shapes[0])
        return ps is not None and ps == self.per_sample(node.out_shape)

    _JOIN = ("add", "add_", "__add__", "__iadd__", "__radd__")

    def drivers(self) -> dict[str, tuple[str, str | None]]:
        """``{neuron: (weight layer, bn or None)}``: the layer whose (normalised) output is the neuron's
        input current ``x_t`` (Eq. 2). Walks back from the neuron through time/batch reshapes and
        residual adds; of several layers (a block's main branch and its shortcut conv) the first to
        execute is the driver - the main branch, whose BN sets the membrane's scale."""
        out: dict[str, tuple[str, str | None]] = {}
        for node in self.nodes:
            if node.role != "neuron" or node.name in out or not node.inputs:
                continue
            found: list[tuple[int, str, str | None]] = []
            frontier, seen = list(node.inputs), set()
            while frontier:
                c = self.nodes[frontier.pop()]
                if c.id in seen:
                    continue
                seen.add(c.id)
                if c.role == "weight":
                    found.append((c.id, c.name, None))
                elif c.role == "bn":
                    src = self._through_reshapes(c.inputs[0]) if c.inputs else None
                    if src is not None and src.role == "weight":
                        found.append((src.id, src.name, c.name))
                elif c.kind == "op" and (c.name in self._JOIN or self._same_per_sample(c)):
                    frontier.extend(c.inputs)
            if found:
                _, layer, bn = min(found)
                out[node.name] = (layer, bn)
        return out

    def _through_reshapes(self, node: int) -> Node:
        n = self.nodes[node]
        while self._same_per_sample(n) and n.inputs:
            n = self.nodes[n.inputs[0]]
        return n

    def describe(self) -> str:
        """One line per node (for debugging and docs)."""
        lines = []
        for n in self.nodes:
            lines.append(f"{n.id:4d} {n.kind:6s} {n.role:10s} {n.name:32s} <- {n.inputs} "
                         f"{n.in_shapes} -> {n.out_shapes} {n.layouts}")
        return "\n".join(lines)

    # -- channel groups -----------------------------------------------------------------------------
    def channel_groups(self) -> list[ChannelGroup]:
        """The coupled channel groups of every conv/linear output, in execution order of their producers."""
        if self._groups is None:
            self._groups = _ChannelAnalysis(self).groups()
        return self._groups


def _layout(shape: tuple[int, ...], T: int, B: int) -> str | None:
    if len(shape) >= 2 and shape[0] in (T, 1) and shape[1] == B:
        return "TB"  # [1, B, ...]: a static batch unsqueezed before being repeated over T
    if len(shape) >= 1 and shape[0] == T * B and T > 1:
        return "N"
    if len(shape) >= 1 and shape[0] == B:
        return "B"
    return None


def _batch_dims(layout: str | None) -> int:
    return {"TB": 2, "N": 1, "B": 1}.get(layout, 0)


# --------------------------------------------------------------------------------------------------
# Channel analysis.
# --------------------------------------------------------------------------------------------------

# Functions through which channel c of the input stays channel c of the output (given the shape rules
# of _ChannelAnalysis._flow). Anything else on a channel-carrying tensor blocks its groups.
_ELEMENTWISE = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "neg", "abs", "relu", "relu_",
    "sigmoid", "tanh", "clamp", "clamp_", "clamp_min", "clamp_max", "where", "maximum", "minimum", "float",
    "double", "half", "bfloat16", "to", "type", "type_as", "contiguous", "clone", "detach", "__add__",
    "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__",
    "__truediv__", "__rtruediv__", "__itruediv__", "__and__", "__or__", "__xor__", "__rand__", "__ror__",
    "logical_and", "logical_or", "logical_not", "logical_xor", "__invert__", "bitwise_and", "bitwise_or",
    "bitwise_not", "bitwise_xor", "pow", "__pow__", "exp", "log", "sign", "heaviside", "ge", "gt", "le",
    "lt", "eq", "ne", "__ge__", "__gt__", "__le__", "__lt__", "__eq__", "__ne__", "rsub", "dropout",
    "gelu", "silu", "leaky_relu", "hardtanh", "elu", "square", "sqrt", "reciprocal", "masked_fill",
    "zeros_like", "ones_like", "empty_like", "rand_like", "full_like", "requires_grad_", "sum_to_size",
}
_RESHAPE = {"flatten", "unflatten", "view", "reshape", "view_as", "reshape_as", "unsqueeze", "squeeze",
            "expand", "expand_as", "repeat", "__getitem__", "select", "narrow", "transpose", "permute",
            "stack", "cat", "concat", "chunk", "split", "unbind", "mean", "sum", "amax", "max",
            "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
            "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d",
            "interpolate"}
_PASS_MODULES = {"bn", "neuron", "pool", "dropout", "flatten", "act"}


@dataclass
class _Chan:
    """Where channels sit in a tensor: ``axis`` and the ordered segments ``(space, size, per)``."""

    axis: int
    segments: tuple[tuple[str, int, int], ...]

    @property
    def width(self) -> int:
        return sum(size * per for _, size, per in self.segments)


class _ChannelAnalysis:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}
        self.blocked: dict[str, str] = {}
        self.members: dict[str, dict[str, list]] = {}
        self.chan: dict[int, _Chan | None] = {}

    # union-find over spaces
    def find(self, s: str) -> str:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def new(self, s: str, size: int) -> None:
        if s not in self.parent:
            self.parent[s] = s
            self.size[s] = size
            self.members[s] = {"producers": [], "norms": [], "consumers": [], "neurons": [], "neuron_slices": []}

    def union(self, a: str, b: str, node: Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.block_space(ra, f"{node.where()} joins {self.size[ra]} and {self.size[rb]} channels")
            self.block_space(rb, f"{node.where()} joins {self.size[ra]} and {self.size[rb]} channels")
            return
        first, second = sorted((ra, rb), key=lambda r: self._order.get(r, 0))
        self.parent[second] = first
        for k, v in self.members[second].items():
            self.members[first][k].extend(v)
        if second in self.blocked and first not in self.blocked:
            self.blocked[first] = self.blocked[second]

    def block_space(self, s: str, why: str) -> None:
        self.blocked.setdefault(self.find(s), why)

    def block(self, chan: _Chan | None, why: str) -> None:
        if chan is not None:
            for s, _, _ in chan.segments:
                self.block_space(s, why)

    # flow
    def groups(self) -> list[ChannelGroup]:
        g = self.g
        self._order: dict[str, int] = {}
        for n in g.nodes:
            self.chan[n.id] = self._flow(n)
        for o in g.outputs:
            self.block(self.chan.get(o), "it is the network's output")
        roots: dict[str, list[str]] = {}
        for s in self.parent:
            roots.setdefault(self.find(s), []).append(s)
        out = []
        for root in sorted(roots, key=lambda r: self._order.get(r, 0)):
            if root == "input":
                continue
            m = self.members[root]
            out.append(ChannelGroup(
                name=root, size=self.size[root], producers=tuple(dict.fromkeys(m["producers"])),
                norms=tuple(dict.fromkeys(m["norms"])), consumers=tuple(dict.fromkeys(m["consumers"])),
                neurons=tuple(dict.fromkeys(m["neurons"])), blocked=self.blocked.get(root),
                neuron_slices=tuple(dict.fromkeys(m["neuron_slices"]))))
        return out

    def _in(self, n: Node, i: int = 0) -> _Chan | None:
        return self.chan.get(n.inputs[i]) if i < len(n.inputs) else None

    def _flow(self, n: Node) -> _Chan | None:
        g = self.g
        if n.kind == "input":
            shape = n.out_shape
            lay = _layout(shape, g.T, g.B)
            if lay is None or len(shape) <= _batch_dims(lay):
                return None
            self.new("input", shape[_batch_dims(lay)])
            self._order["input"] = -1
            self.block_space("input", "it is the network's input")
            return _Chan(_batch_dims(lay), (("input", shape[_batch_dims(lay)], 1),))
        if n.kind == "const":
            return None
        if n.kind == "module" and n.role == "weight":
            return self._weight(n)
        ins = [self.chan.get(i) for i in n.inputs]
        carried = [c for c in ins if c is not None]
        if not carried:
            return None
        if n.kind == "module" and n.role not in _PASS_MODULES:
            self.block(carried[0], f"{n.where()} is not a layer spikeprune can follow through channels "
                                   "(supported: conv, linear, BatchNorm, neurons, pooling, dropout, flatten, "
                                   "activations)")
            return None
        if n.kind == "op" and n.name not in _ELEMENTWISE | _RESHAPE:
            for c in carried:
                self.block(c, f"{n.where()} is not an operation spikeprune can follow through channels")
            return None
        if n.kind == "op" and n.name in ("cat", "concat"):
            return self._cat(n, ins)
        if n.kind == "op" and n.name == "stack" or n.kind == "op" and n.name in _ELEMENTWISE and len(carried) > 1:
            return self._join(n, ins)
        chan = carried[0]
        for shape in n.const_inputs:  # an untraced tensor broadcast against the channels (x * scale[C, 1, 1])
            if math.prod(shape) > 1 and n.name in _ELEMENTWISE:
                self.block(chan, f"{n.where()} combines the channels with a constant tensor of shape {shape}")
                return None
        first = next(i for i, c in enumerate(ins) if c is not None)
        out = self._reshape(n, n.in_shapes[first], n.out_shape, chan)
        if n.kind == "module" and out is not None:
            self._record_member(n, out)
        if out is None:
            self.block(chan, f"{n.where()} reshapes {n.in_shapes[first]} -> {n.out_shape} across channels")
        return out

    def _weight(self, n: Node) -> _Chan:
        m = n.module
        x_shape, y_shape = n.in_shapes[0] if n.in_shapes else None, n.out_shape
        chan = self._in(n)
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups != 1:
            self.block(chan, f"{n.where()} is a grouped convolution (groups={m.groups}), not supported by "
                             "channel removal")
            chan = None
        if chan is not None and x_shape is not None:
            axis = len(x_shape) - 1 if isinstance(m, nn.Linear) else len(x_shape) - 1 - len(m.kernel_size)
            if chan.axis != axis:
                self.block(chan, f"{n.where()} reads axis {axis} but the channels sit on axis {chan.axis}")
            else:
                offset = 0
                for s, size, per in chan.segments:
                    if isinstance(m, nn.modules.conv._ConvNd) and per != 1:
                        self.block_space(s, f"{n.where()} reads flattened channels")
                    self.members[self.find(s)]["consumers"].append((n.name, per, offset))
                    offset += size * per
        space = n.name
        out_channels = int(m.weight.shape[0])
        self.new(space, out_channels)
        self._order.setdefault(space, n.id)
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups != 1:
            self.block_space(space, f"{n.where()} is a grouped convolution (groups={m.groups}), not supported by "
                                    "channel removal")
        self.members[self.find(space)]["producers"].append(n.name)
        axis = len(y_shape) - 1 if isinstance(m, nn.Linear) else len(y_shape) - 1 - len(m.kernel_size)
        return _Chan(axis, ((space, out_channels, 1),))

    def _record_member(self, n: Node, chan: _Chan) -> None:
        if n.role == "bn":
            offset = 0
            for s, size, per in chan.segments:
                self.members[self.find(s)]["norms"].append((n.name, per, offset))
                offset += size * per
        elif n.role == "neuron":
            offset = 0
            for s, size, per in chan.segments:
                self.members[self.find(s)]["neurons"].append(n.name)
                self.members[self.find(s)]["neuron_slices"].append((n.name, per, offset))
                offset += size * per

    def _reshape(self, n: Node, x: tuple[int, ...], y: tuple[int, ...], chan: _Chan) -> _Chan | None:
        """Channels of ``y`` given those of ``x``, from the shapes (see the module docstring)."""
        g = self.g
        lx, ly = _layout(x, g.T, g.B), _layout(y, g.T, g.B)
        if lx is None or ly is None:
            return None
        bx, by = _batch_dims(lx), _batch_dims(ly)
        k = chan.axis - bx  # position of the channel axis among the per-sample dims
        px, py = x[bx:], y[by:]
        if k < 0 or k >= len(px):
            return None
        if px == py:
            return _Chan(by + k, chan.segments)
        spatial_ok = n.kind == "module" and n.role in ("pool", "flatten") or n.name in (
            "flatten", "view", "reshape", "mean", "sum", "amax", "max", "avg_pool1d", "avg_pool2d", "avg_pool3d",
            "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
            "adaptive_avg_pool3d", "adaptive_max_pool2d", "interpolate", "transpose", "permute", "squeeze",
            "unsqueeze")
        if not spatial_ok:
            return None
        # the prefix up to the channel axis is unchanged and only dims after it change (pooling, global
        # pooling, reshaping H x W): channel c stays channel c, unless a transpose/permute moved it.
        if len(py) > k and py[:k + 1] == px[:k + 1] and n.name not in ("transpose", "permute"):
            return _Chan(by + k, chan.segments)
        if n.name in ("transpose", "permute"):
            return _Chan(by + k, chan.segments) if len(py) > k and py[:k + 1] == px[:k + 1] and \
                self._keeps_axis(n, chan.axis, len(x)) else None
        # flatten of the channel with the dims after it: [.., C, H, W] -> [.., C*H*W]; channel c owns
        # features c*H*W ... (c+1)*H*W - 1 (C-major, as torch.flatten lays them out)
        for j in range(k + 1, len(px) + 1):
            if py[:k] == px[:k] and len(py) > k and py[k] == math.prod(px[k:j]) and py[k + 1:] == px[j:]:
                per = math.prod(px[k + 1:j])
                return _Chan(by + k, tuple((s, size, p * per) for s, size, p in chan.segments))
        return None

    def _keeps_axis(self, n: Node, axis: int, ndim: int) -> bool:
        a = n.args.get("args", [])
        if n.name == "transpose" and len(a) >= 2:
            d0, d1 = (int(d) % ndim for d in a[:2])
            return axis not in (d0, d1)
        if n.name == "permute":
            dims = a[0] if a and isinstance(a[0], (list, tuple)) else a
            return len(dims) == ndim and int(dims[axis]) % ndim == axis
        return False

    def _join(self, n: Node, ins: list[_Chan | None]) -> _Chan | None:
        """Elementwise ops of several channel-carrying tensors (residual add, SEW AND/IAND) and stack."""
        shapes = n.in_shapes
        carried = [(c, s) for c, s in zip(ins, shapes) if c is not None]
        c0, s0 = carried[0]
        ok = True
        for c, s in carried[1:]:
            same = s == s0 and c.axis == c0.axis
            if not same or len(c.segments) != len(c0.segments) or \
                    any(a[1:] != b[1:] for a, b in zip(c.segments, c0.segments)):
                ok = False
                break
        if not ok:
            for c, _ in carried:
                self.block(c, f"{n.where()} combines tensors whose channels do not line up ({shapes})")
            return None
        for c, _ in carried[1:]:
            for a, b in zip(c0.segments, c.segments):
                self.union(a[0], b[0], n)
        return self._reshape(n, s0, n.out_shape, c0) if s0 != n.out_shape else _Chan(c0.axis, c0.segments)

    def _cat(self, n: Node, ins: list[_Chan | None]) -> _Chan | None:
        a = n.args.get("args", [])
        dim = n.args.get("dim", a[0] if a and isinstance(a[0], int) else 0)
        shapes = n.in_shapes
        if any(c is None for c in ins) or len(ins) != len(shapes):
            for c in ins:
                self.block(c, f"{n.where()} concatenates channels with untraced tensors")
            return None
        ndim = len(shapes[0])
        dim = int(dim) % ndim
        axes = {c.axis for c in ins}
        if len(axes) != 1:
            for c in ins:
                self.block(c, f"{n.where()} concatenates tensors whose channels sit on different axes")
            return None
        axis = axes.pop()
        if dim == axis:
            segments = tuple(s for c in ins for s in c.segments)
            return _Chan(axis, segments)
        return self._join(n, ins)  # along time or batch: same channels in every part
