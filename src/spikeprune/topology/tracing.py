"""Tracing: one hooked forward pass of any ``nn.Module`` into a :class:`~spikeprune.topology.graph.Graph`,
and how an input batch is read (time-major or not, how many samples).

How it traces. One real forward pass (eval mode, no gradients, on a few samples of the caller's
batch) with two instruments:

* forward hooks on *leaf* modules - weight layers (any ``nn.Conv*d`` / ``nn.Linear``, including
  SpikingJelly's ``layer.*`` wrappers, our masked and quantized layers), BatchNorm, neurons
  (:class:`~spikeprune.LIF` and the adapters of third-party neurons), pooling, dropout, flatten,
  activations and any module without children. A leaf is one node; what runs inside it is not
  recorded, so stateful multi-step modules are simply run (this is how Torch-Pruning and nirtorch
  trace too: hooks on a real pass, neurons as leaves);
* a :class:`torch.overrides.TorchFunctionMode` that records every torch function called *between*
  leaves: ``x + identity`` of a residual block, ``torch.cat``, ``torch.flatten(x, 2)``, the
  ``unsqueeze(0).repeat(T, ...)`` of direct encoding, ``flatten(0, 1)`` time folding, ...

Tensors are followed by object identity (in-place ops such as ``out += identity`` re-point the tensor
to the new node). T and B are read from the neurons' inputs (every neuron sees ``[T, B, ...]``); the
trace uses B = 3 samples (2 when T = 3), so that ``[T, B]``, ``[T*B]`` and ``[B]`` leading dimensions
can never be confused, and the layout of every tensor follows from its shape alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.foreign import _unsupported
from spikeprune.topology.graph import Graph, Node, TopologyError, _layout, evaluation, role_of

__all__ = ["input_reading", "is_time_major", "sample_count", "trace"]


class _Recorder(TorchFunctionMode):
    def __init__(self, tracer: "_Tracer") -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        t = self.tracer
        if t.depth == 0 and t.active:
            t.record_op(func, args, kwargs, out)
        return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # a property such as Tensor.shape
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class _Tracer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.nodes: list[Node] = []
        self.producer: dict[int, int] = {}  # id(tensor) -> node id
        self.keep: list[torch.Tensor] = []  # keeps traced tensors alive so their ids stay unique
        self.depth = 0  # > 0 while inside a leaf module
        self.scope: list[str] = []
        self.active = True
        self.names = {id(m): n for n, m in model.named_modules()}
        self.roles = {id(m): role_of(m) for m in model.modules()}  # hooks run per call: classify once
        self.leaf_inputs: list[tuple[list[torch.Tensor], list[tuple[int, ...]]]] = []

    def _input_ids(self, tensors: list[torch.Tensor]) -> tuple[list[int], list[tuple[int, ...]], list[tuple[int, ...]]]:
        ids, shapes, consts = [], [], []
        for t in tensors:
            if id(t) in self.producer:
                ids.append(self.producer[id(t)])
                shapes.append(tuple(t.shape))
            elif not isinstance(t, nn.Parameter):
                consts.append(tuple(t.shape))
        return ids, shapes, consts

    def _register(self, node: Node, outputs: list[torch.Tensor]) -> None:
        node.out_shapes = [tuple(o.shape) for o in outputs]
        self.nodes.append(node)
        for o in outputs:
            self.producer[id(o)] = node.id
            self.keep.append(o)

    def add_input(self, x: torch.Tensor) -> None:
        self._register(Node(0, "input", "input", "input"), [x])

    def record_op(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        outputs = _tensors(out)
        if not outputs:
            return
        tensors = _tensors(args) + _tensors(kwargs)
        ids, shapes, consts = self._input_ids(tensors)
        name = _func_name(func)
        if not ids:  # a constant created from nothing traced (torch.zeros, a parameter's view, ...)
            node = Node(len(self.nodes), "const", name, name, scope=self._scope())
            self._register(node, outputs)
            return
        extra = {k: v for k, v in kwargs.items() if not torch.is_tensor(v)}
        extra["args"] = [a for a in args if not torch.is_tensor(a) and not isinstance(a, (list, tuple))
                         or isinstance(a, (list, tuple)) and not _tensors(a)]
        node = Node(len(self.nodes), "op", name, name, inputs=ids, in_shapes=shapes, scope=self._scope(),
                    args=extra, const_inputs=consts)
        self._register(node, outputs)

    def _scope(self) -> str:
        return self.scope[-1] if self.scope else ""

    # module hooks
    def pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        role = self.roles.get(id(module), role_of(module))
        if self.depth == 0 and role is None:
            self.scope.append(self.names.get(id(module), type(module).__name__))
        if role is not None and module is not self.model:
            if self.depth == 0:
                self.leaf_inputs.append((_tensors(args) + _tensors(kwargs), []))
            self.depth += 1

    def post(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        role = self.roles.get(id(module), role_of(module))
        if role is None or module is self.model:
            if self.depth == 0 and self.scope:
                self.scope.pop()
            return
        self.depth -= 1
        if self.depth > 0:
            return
        tensors, _ = self.leaf_inputs.pop()
        ids, shapes, consts = self._input_ids(tensors)
        outputs = _tensors(out)
        name = self.names.get(id(module), type(module).__name__)
        if role == "foreign-neuron":
            raise TopologyError(str(_unsupported(name, module, "adapt() the network first")))
        node = Node(len(self.nodes), "module", name, role, module=module, inputs=ids, in_shapes=shapes,
                    scope=self._scope(), const_inputs=consts)
        self._register(node, outputs)


def _static_dims(model: nn.Module) -> int:
    return int(getattr(model, "static_dims", 4))


def is_time_major(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``x`` is a time-major ``[T, B, ...]`` input of ``model`` (one more dim than a static batch;
    ``model.static_dims``, default 4 = images ``[B, C, H, W]``)."""
    return x.dim() == _static_dims(model) + 1


def input_reading(model: nn.Module, x: torch.Tensor, graph: "Graph | None" = None) -> bool:
    """Time-major or not: what the model declares, else what its trace found."""
    if _declares_layout(model) or graph is None:
        return is_time_major(model, x)
    return graph.time_major_input


def sample_count(model: nn.Module, x: torch.Tensor, graph: "Graph | None" = None) -> int:
    """Samples in the input batch ``x`` of ``model``: dim 1 of a time-major input, else dim 0."""
    return int(x.shape[1] if input_reading(model, x, graph) else x.shape[0])


def _example(model: nn.Module, x: torch.Tensor, time_major: bool, T_hint: int | None) -> tuple[torch.Tensor, int]:
    """A few samples of ``x`` (static ``[B, ...]`` or time-major ``[T, B, ...]``) sized so B != T, B > 1."""
    axis = 1 if time_major else 0
    T = T_hint or int(getattr(model, "T", 0) or (x.shape[0] if time_major else 0))
    B = 2 if T == 3 else 3
    if x.dim() <= axis or x.shape[axis] < 1:
        raise UserError(f"tracing needs at least one sample; the example batch has shape {tuple(x.shape)}")
    idx = torch.arange(B, device=x.device) % x.shape[axis]
    return x.index_select(axis, idx), B


def _declares_layout(model: nn.Module) -> bool:
    """spikeprune's models (``T`` + images) and adapted nets (``static_dims``) say how to read an input."""
    return hasattr(model, "static_dims") or hasattr(model, "T")


@torch.no_grad()
def trace(model: nn.Module, example: torch.Tensor, *, timesteps: int | None = None) -> Graph:
    """Trace ``model`` on (a few samples of) ``example`` into a :class:`Graph`.

    Args:
        model: any ``nn.Module`` whose neurons are :class:`~spikeprune.LIF` (our models, adapted
            SpikingJelly/snnTorch nets, a user's own module).
        example: what ``model(x)`` takes: a static batch ``[B, C, H, W]`` (or ``[B, F]``) or a
            time-major ``[T, B, ...]``. spikeprune's models and adapted nets say which (``static_dims``);
            for any other module both readings are tried and the one under which every neuron receives
            ``[T, B, ...]`` is kept.
        timesteps: T, if the model does not say (``model.T``); otherwise read from the neurons.

    Runs one forward pass on 2-3 samples in eval mode; every module's train/eval flag is restored.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace() needs a torch.nn.Module; got {type(model).__name__}")
    if not torch.is_tensor(example):
        raise TypeError(f"trace() needs an example input tensor; got {type(example).__name__}")
    readings = [is_time_major(model, example)] if _declares_layout(model) else [False, True]
    for i, time_major in enumerate(readings):
        last = i == len(readings) - 1
        try:
            return _trace_once(model, example, time_major, timesteps)
        except TopologyError:
            if last:
                raise
        except Exception:
            if last or _declares_layout(model):
                raise
    raise AssertionError("unreachable")


def _trace_once(model: nn.Module, example: torch.Tensor, time_major: bool, timesteps: int | None) -> Graph:
    x, B = _example(model, example, time_major, timesteps)
    tracer = _Tracer(model)
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(tracer.pre, with_kwargs=True))
        handles.append(m.register_forward_hook(tracer.post, with_kwargs=True))
    tracer.add_input(x)
    try:
        with evaluation(model), _Recorder(tracer):
            out = model(x)
        tracer.active = False
    finally:
        for h in handles:
            h.remove()
    outputs = [tracer.producer[id(t)] for t in _tensors(out) if id(t) in tracer.producer]
    nodes = tracer.nodes
    neuron_inputs = [n.in_shapes[0] for n in nodes if n.role == "neuron" and n.in_shapes]
    if neuron_inputs:
        T = neuron_inputs[0][0]
        bad = [s for s in neuron_inputs if len(s) < 2 or s[:2] != (T, B)]
        if bad:
            raise TopologyError(f"neurons must receive time-major [T, B, ...] input; one got {bad[0]} "
                                f"(T={T}, traced batch {B})")
    else:
        T = timesteps or int(getattr(model, "T", 1) or 1)
    for n in nodes:
        n.layouts = [_layout(s, T, B) for s in n.out_shapes]
    return Graph(model, nodes, outputs, T, B, time_major)
