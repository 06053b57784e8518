"""Export any spikeprune-runnable SNN (our models and :func:`~spikeprune.interop.adapt`-ed SpikingJelly /
snnTorch networks) to NIR, the Neuromorphic Intermediate Representation, and import NIR graphs - ours and
those written by SpikingJelly's and snnTorch's own exporters (docs/interop.md, "NIR export").

``to_nir(model, example_input)`` runs :func:`spikeprune.topology.trace` once and maps the traced graph
(leaf modules and the torch functions between them) node by node. NIR semantics used throughout: a
node's input is the *sum* of all its incoming edges; time constants refer to a step ``dt``; a discrete
simulator integrates ``tau dv/dt = (v_leak - v) + r I`` by forward Euler,
``v <- v + (dt/tau) (v_leak - v + r I)``, fires ``z = [v > v_threshold]`` and then sets ``v = v_reset``.

Weights. Conv1d / Conv2d -> ``nir.Conv1d`` / ``nir.Conv2d``, Linear -> ``nir.Affine`` (``nir.Linear``
never: a bias of zeros is written). The *effective* weight is written: masked weights are exact zeros,
quantized layers (:mod:`spikeprune.compression.quant`) their ``quantized_weight()`` levels. A BatchNorm that reads a
layer's output is folded into it: ``g = gamma * s / sqrt(var + eps)`` (``s``: tdBN's scale, else 1),
``W' = g W``, ``b' = g (b - mean) + beta`` (computed in float64, written as float32; g * 0 = 0 keeps
the mask, but a folded quantized weight is its level times g).

Neurons (``beta``: decay per step, ``a = 1 - beta``, ``u_th``: threshold). Each is written as the NIR
node whose Euler step *is* the neuron's update:

=====================  ===========================================================================
spikeprune ``LIF``     ``LIF(tau = dt/a, r = 1/a, v_leak = 0, v_reset = 0)``: ``v <- beta v + I``
                       (LTH-SNN Eq. 2; SpikingJelly's ``decay_input=False`` convention). Only
                       ``V_reset = 0``: Eq. 4 does not decay the reset value, NIR does.
sj-lif / sj-plif       ``LIF(tau = dt/a, r = input_gain/a, v_leak = v_reset, v_reset = v_reset)``:
                       ``decay_input=True`` gives ``r = 1``, ``v <- v + a (I - (v - v_reset))``;
                       ``False`` gives ``r = tau/dt``, ``v <- v - a (v - v_reset) + I`` (SpikingJelly's
                       own exporter writes the same numbers; its leak is towards v_reset, hence
                       ``v_leak = v_reset``, which keeps any hard ``v_reset`` exact).
sj-if                  ``IF(r = 1/dt, v_reset)``: ``v <- v + I``.
snn-leaky, "zero"      ``LIF(tau = dt/a, r = 1/a, v_leak = 0, v_reset = 0)`` (snnTorch's exporter and
                       importer convention); ``beta = 1``: ``IF(r = 1/dt, v_reset = 0)``.
=====================  ===========================================================================

Refused, one line naming the neuron: soft reset (SpikingJelly ``v_reset=None``, snnTorch
``"subtract"``: NIR's neurons reset *to* ``v_reset``, never by subtraction - both packages' own exporters
write it as a hard reset, which changes the spikes), no reset (snnTorch ``"none"``), spikeprune
``V_reset != 0``, a quantized membrane. Spike boundary: SpikingJelly and spikeprune fire at
``v >= u_th``, NIR documents ``v > v_threshold`` (snnTorch's rule); the exporter writes
``metadata["spike_condition"] = "v >= v_threshold"`` on such nodes and :func:`from_nir` honours it
(graphs without it get NIR's ``>``). Initial state: every neuron starts at ``v_reset`` (SpikingJelly's
initial value; 0 for the others).

Other layers. MaxPool2d of spikes -> ``SumPool2d`` + ``Threshold(0.5)`` (the max of 0/1 values is 1 iff
their sum exceeds 0.5; "spikes" is checked structurally: the pool reads one neuron's output, so a max
over currents or over a SEW sum of spikes is refused - NIR has no max). AvgPool2d -> ``AvgPool2d``;
AdaptiveAvgPool2d to a size dividing the input -> ``AvgPool2d`` (kernel = stride = input/output, e.g.
the input's spatial size for 1x1); an AdaptiveAvgPool2d that *replicates* (VGG's 1x1 -> 7x7 at small
inputs) is exact only as part of the following flatten + Linear, whose weight columns are summed over
the copies (folded). Dropout and ``nn.Identity``: nothing (inference). Flatten (module or
``torch.flatten``/``view``/``reshape`` of a whole sample) -> ``Flatten``; time/batch reshapes
(``unsqueeze``/``repeat``/``expand``/``flatten(0, 1)``/``unflatten``, ...): not nodes. Residual ``add`` of
traced tensors: no node - every consumer gets an edge from each summand (NIR sums incoming edges).
SpikingJelly ``VotingLayer(v)`` -> ``Affine`` with the fixed averaging matrix (1/v over each group of v
features). Anything else: ``ValueError`` naming the op/module and what is supported. Direct encoding:
the static image is the graph input at every timestep.

``from_nir(graph)`` (see its docstring) rebuilds a runnable :class:`NIRNetwork` from any acyclic graph of
those node types plus ``IF``, ``CubaLIF``, ``Linear``, ``Scale``, scalar or tuple kernel sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from spikeprune.core.diagnostics import UserError
from spikeprune.core.io import atomic_path
from spikeprune.engine.neuron import DEFAULT_DETACH_RESET, DEFAULT_SURROGATE, LIF, SURROGATES

__all__ = ["FORMATS", "NIRNetwork", "NIRNeuron", "export_checkpoint", "from_nir", "read_nir", "to_nir",
           "write_nir"]

_INCLUSIVE = "v >= v_threshold"  # node metadata: the neuron fires at the threshold itself


def _nir():
    try:
        import nir
    except ImportError:
        raise UserError("NIR export needs the 'nir' package: pip install 'spikeprune[nir]'") from None
    return nir


# --------------------------------------------------------------------------------------------------
# Export: traced graph -> NIR.
# --------------------------------------------------------------------------------------------------

_ADD = {"add", "add_", "__add__", "__iadd__", "__radd__"}
# torch functions that only move the time / batch axes (or copy) when a sample's shape is unchanged
_RESHAPE = {"unsqueeze", "squeeze", "repeat", "expand", "expand_as", "flatten", "unflatten", "view", "reshape",
            "view_as", "reshape_as", "contiguous", "clone", "detach", "to", "float", "type_as"}
_SUPPORTED_TEXT = ("supported: Conv1d/Conv2d/Linear (+BatchNorm), spikeprune LIF and adapted SpikingJelly "
                   "LIF/PLIF/IF and snnTorch Leaky neurons, MaxPool2d on spikes, AvgPool2d, AdaptiveAvgPool2d, "
                   "Dropout, Flatten, residual add, SpikingJelly VotingLayer, time/batch reshapes")


def _effective_weight(module: nn.Module) -> torch.Tensor:
    fn = getattr(module, "quantized_weight", None)  # spikeprune.compression.quant: the weights the layer computes with
    return (fn() if callable(fn) else module.weight).detach().double()


#: node metadata of a quantized layer (:func:`_quantized_levels`); what an importer needs to recover the integers
QUANT_FORMULA = ("weight[c, ...] = scale[c] * ((2 / (2**bits - 1)) * q - 1), q in {0, ..., 2**bits - 1} "
                 "(float32 arithmetic; scale = ReScaW gamma x folded BatchNorm gain); pruned weights are exact "
                 "zeros, not a level")


def _bn_gain64(bn: nn.Module | None, channels: int) -> torch.Tensor:
    if bn is None:
        return torch.ones(channels, dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(bn.num_features, dtype=torch.float64)
    return gamma * float(getattr(bn, "scale", 1.0)) / torch.sqrt(bn.running_var.detach().double() + bn.eps)


def _quantized_levels(layer: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """A quantized layer's weight with BN folded, *at its levels*, and the node metadata that says so.

    SPEC §7: ``W_hat = gamma ((2/s) W_int - 1)``. Folding a BatchNorm gain g_c into channel c gives
    ``g_c W_hat = (g_c gamma) ((2/s) W_int - 1)``: the same integers on the grid of scale
    ``scale_c = float32(g_c gamma)``. The weight is written as that float32 formula, term for term the one
    :func:`spikeprune.compression.quant.quantize_weight` evaluates, so re-quantizing it with ``scale`` (our importer)
    returns every value bit for bit and the integers are ``round((s/2)(w/scale_c + 1))``.
    Returns the weight ``[C_out, ...]`` (float64 holding float32 values) and the metadata.
    """
    from spikeprune.compression.quant import weight_codes

    bits = int(layer.quant.bits)
    s = (1 << bits) - 1
    w = layer.weight.detach()
    out = w.shape[0]
    gamma = layer.gamma().detach().double().reshape(-1).expand(out)
    scale = (gamma * _bn_gain64(bn, out)).to(torch.float32)  # [C_out]
    codes = weight_codes(w, bits, layer.gamma().detach())  # the integers the layer computes with
    shape = (-1, *([1] * (w.dim() - 1)))
    levels = scale.view(shape) * ((2.0 / s) * codes.to(torch.float32) - 1.0)  # float32, as _QuantizeSTE
    levels = torch.where(w == 0, torch.zeros((), dtype=torch.float32), levels)
    meta = {"bits": bits, "levels": 1 << bits, "scale": scale.numpy().astype(np.float32),
            "mask_density": float((w != 0).sum()) / max(w.numel(), 1), "quantization": QUANT_FORMULA,
            "quant_method": str(layer.quant.method)}
    return levels.double(), meta


def _fold(layer: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Effective weight ``[C_out, ...]`` and bias ``[C_out]`` of ``layer`` with ``bn`` folded in (float64)."""
    w = _effective_weight(layer)
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(bn.num_features, dtype=torch.float64)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(bn.num_features, dtype=torch.float64)
        g = gamma * float(getattr(bn, "scale", 1.0)) / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        w = w * g.view(-1, *([1] * (w.dim() - 1)))
        b = g * (b - bn.running_mean.detach().double()) + beta
    return w, b


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(a) for a in v)  # type: ignore[return-value]


def _f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _neuron_node(nir: Any, name: str, m: LIF, shape: tuple[int, ...], dt: float) -> Any:
    """The NIR node for neuron ``m`` reading ``[T, B, *shape]`` (see the module docstring's table)."""
    full = lambda v: np.full(shape, v, dtype=np.float32)  # noqa: E731
    inclusive = {"spike_condition": _INCLUSIVE}
    if hasattr(m, "membrane_bits"):
        raise UserError(f"{name!r} quantizes its membrane potential, which NIR cannot express")
    kind = getattr(m, "kind", None) if getattr(m, "third_party", False) else "spikeprune"
    if kind == "spikeprune":
        if m.v_reset != 0.0:
            raise UserError(f"{name!r} resets to V_reset={m.v_reset}: LTH-SNN Eq. 4 does not decay the reset "
                             "value but NIR's LIF does, so only V_reset = 0 is exported exactly")
        a = 1.0 - m.beta
        return nir.LIF(tau=full(dt / a), r=full(1.0 / a), v_leak=full(0.0), v_threshold=full(m.u_th),
                       v_reset=full(0.0), metadata=inclusive)
    if kind not in ("sj-lif", "sj-plif", "sj-if", "snn-leaky"):
        raise UserError(f"{name!r} is a {type(m).__name__} of kind {kind!r}, which NIR export does not map")
    if m.reset_mode == "soft":
        raise UserError(f"{name!r} ({kind}) resets by subtracting the threshold (soft reset); NIR neurons reset "
                         "to v_reset, so it has no exact NIR form")
    if m.reset_mode != "hard":
        raise UserError(f"{name!r} ({kind}) never resets (reset_mechanism='none'); NIR's LIF/IF always reset, "
                         "so it has no exact NIR form")
    v_reset = float(m.v_reset)
    meta = inclusive if m.fires_at_threshold else {}
    if kind == "sj-if" or m.beta == 1.0:
        return nir.IF(r=full(1.0 / dt), v_threshold=full(m.u_th), v_reset=full(v_reset), metadata=meta)
    n = m.neuron
    # a = 1 - beta straight from the package's parameter (1/tau, sigmoid(w)), not via 1 - (1 - a)
    a = {"sj-lif": lambda: 1.0 / float(n.tau), "sj-plif": lambda: float(torch.sigmoid(n.w.detach())),
         "snn-leaky": lambda: 1.0 - m.beta}[kind]()
    if not a > 0.0:
        raise UserError(f"{name!r} ({kind}) has no leak towards rest (beta = {m.beta}): not an LIF")
    return nir.LIF(tau=full(dt / a), r=full(m.input_gain / a), v_leak=full(v_reset if kind != "snn-leaky" else 0.0),
                   v_threshold=full(m.u_th), v_reset=full(v_reset), metadata=meta)


def _voting_matrix(v: int, n: int) -> np.ndarray:
    """``[n // v, n]``: output j averages input features ``j*v ... j*v + v - 1`` (avg_pool1d, no padding)."""
    w = np.zeros((n // v, n), dtype=np.float32)
    for j in range(n // v):
        w[j, j * v:(j + 1) * v] = 1.0 / v
    return w


def _is_voting(m: nn.Module) -> bool:
    return type(m).__name__ == "VotingLayer" and type(m).__module__.startswith("spikingjelly")


def to_nir(model: nn.Module, example_input: torch.Tensor, *, timesteps: int | None = None, dt: float = 1e-4):
    """The ``nir.NIRGraph`` of ``model`` (see the module docstring for the mapping).

    Args:
        model: a spikeprune model (``convnet``, ``resnet19``, ...) or an adapted network
            (:func:`spikeprune.interop.adapt`), possibly masked, channel-pruned or weight-quantized.
        example_input: one static batch ``[B, C, H, W]`` (or ``[B, F]``), as ``model`` takes it.
        timesteps: T (default: ``model.T``); stored in the graph's metadata.
        dt: the time step NIR's continuous time constants refer to (SpikingJelly's and snnTorch's NIR
            default, 1e-4 s).
    """
    from spikeprune.topology import trace

    nir = _nir()
    T = timesteps if timesteps is not None else getattr(model, "T", None)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise UserError(f"timesteps must be a positive integer; got {T!r}")
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not dt > 0:
        raise UserError(f"dt must be a number > 0; got {dt!r}")
    if getattr(model, "output", "spikes") == "membrane":
        # NIR neuron nodes emit spikes; exporting would silently change what the network returns
        raise UserError("this adapted network returns its last neuron's membrane potential (snnTorch "
                         "output=True), which NIR cannot express; adapt it with output='spikes' to export it")
    graph = trace(model, example_input, timesteps=T)  # TopologyError is a ValueError
    return _Exporter(nir, graph, float(dt)).run(model, T)


class _Exporter:
    def __init__(self, nir: Any, graph: Any, dt: float) -> None:
        from spikeprune.topology.graph import _batch_dims, _layout

        self.nir, self.g, self.dt = nir, graph, dt
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.sources: dict[int, list[str]] = {}  # traced node id -> NIR nodes whose sum it is
        self.spiking: set[str] = set()  # NIR nodes that emit 0/1 spikes
        self.replicated: dict[int, tuple[tuple[int, ...], torch.Tensor]] = {}  # see _adaptive
        self._ps = lambda shape: tuple(shape[_batch_dims(_layout(shape, graph.T, graph.B)):])

    # per-sample shapes (time and batch axes stripped, whatever the layout)
    def ps_in(self, n: Any, i: int = 0) -> tuple[int, ...]:
        return self._ps(n.in_shapes[i])

    def ps_out(self, n: Any) -> tuple[int, ...]:
        return self._ps(n.out_shape)

    def emit(self, n: Any, base: str, node: Any, inputs: list[int] | None = None) -> str:
        key = base.replace(".", "_") or "layer"
        k, i = key, 1
        while k in self.nodes:  # a module called twice gets two nodes
            i += 1
            k = f"{key}_{i}"
        self.nodes[k] = node
        srcs = [s for j in (n.inputs if inputs is None else inputs) for s in self.sources[j]]
        if len(set(srcs)) != len(srcs):
            raise UserError(f"{n.where()} adds a tensor to itself; NIR edges cannot express a doubled input")
        self.edges.extend((s, k) for s in srcs)
        return k

    def one(self, n: Any, node: Any, base: str | None = None) -> str:
        key = self.emit(n, base or n.name, node)
        self.sources[n.id] = [key]
        return key

    def run(self, model: nn.Module, T: int):
        nir, g = self.nir, self.g
        for n in g.nodes:
            if n.id in self.sources:  # already mapped (a BatchNorm folded into its layer)
                continue
            if n.kind != "input" and any(i not in self.sources for i in n.inputs):
                raise UserError(f"{n.where()} reads a tensor that is not computed from the network input")
            if n.kind == "input":
                self.nodes["input"] = nir.Input(input_type=np.array(self.ps_out(n)))
                self.sources[n.id] = ["input"]
            elif n.kind == "const":
                continue  # a tensor made from nothing traced: reading it fails the check above
            elif n.kind == "op":
                self._op(n)
            else:
                self._module(n)
        if len(g.outputs) != 1:
            raise UserError(f"NIR export needs one output tensor; the network returns {len(g.outputs)}")
        out = g.nodes[g.outputs[0]]
        if out.id in self.replicated:
            raise UserError("the network's output is a replicating AdaptiveAvgPool2d; nothing to fold it into")
        self.nodes["output"] = nir.Output(output_type=np.array(self.ps_out(out)))
        self.edges.extend((s, "output") for s in self.sources[out.id])
        metadata = {"producer": "spikeprune", "dt": self.dt, "timesteps": int(T),
                    "encoding": "direct: the static input is presented at every timestep",
                    "neurons": "forward Euler, v <- v + dt/tau (v_leak - v + r I); hard reset to v_reset; "
                               "nodes with metadata spike_condition 'v >= v_threshold' fire at the threshold"}
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata, type_check=False)

    # -- ops ----------------------------------------------------------------------------------------
    def _op(self, n: Any) -> None:
        numbers = [a for a in n.args.get("args", []) if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if n.name in _ADD:
            if n.const_inputs or numbers or n.args.get("alpha", 1) != 1 or len(n.inputs) < 2:
                raise UserError(f"{n.where()} adds a constant or scaled tensor; only sums of traced tensors "
                                 "(residual connections) are exported")
            if any(i in self.replicated for i in n.inputs):
                raise UserError(f"{n.where()} adds a replicating AdaptiveAvgPool2d output; not exported")
            srcs = [s for i in n.inputs for s in self.sources[i]]
            self.sources[n.id] = srcs
            return
        if n.name in _RESHAPE and len(n.inputs) == 1 and not n.const_inputs:
            self._reshape(n)
            return
        if n.name == "mean" and len(n.inputs) == 1 and self._global_mean(n):
            return
        raise UserError(f"{n.where()} has no NIR equivalent; {_SUPPORTED_TEXT}")

    def _global_mean(self, n: Any) -> bool:
        """``x.mean(dim=(-2, -1))`` of a ``[C, H, W]`` sample: ``AvgPool2d(H, W)`` (+ ``Flatten`` to ``[C]``)."""
        x, y = self.ps_in(n), self.ps_out(n)
        a = n.args.get("args", [])
        dims = n.args.get("dim", a[0] if a else None)
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        nd = len(n.in_shapes[0])
        if len(x) != 3 or n.args.get("dtype") is not None or sorted(d % nd for d in dims) != [nd - 2, nd - 1]:
            return False
        if n.inputs[0] in self.replicated:
            raise UserError(f"{n.where()} averages a replicating AdaptiveAvgPool2d output; not exported")
        pool = self.nir.AvgPool2d(kernel_size=np.array(x[1:]), stride=np.array(x[1:]), padding=np.array((0, 0)))
        key = self.one(n, pool, f"{n.scope or 'top'}_mean")
        if len(y) == 1:
            flat = f"{key}_flatten"
            self.nodes[flat] = self.nir.Flatten(input_type={"input": np.array((x[0], 1, 1))}, start_dim=0, end_dim=-1)
            self.edges.append((key, flat))
            self.sources[n.id] = [flat]
        return True

    def _reshape(self, n: Any) -> None:
        x, y = self.ps_in(n), self.ps_out(n)
        if x == y:  # only the time / batch axes moved
            self.sources[n.id] = self.sources[n.inputs[0]]
            if n.inputs[0] in self.replicated:
                self.replicated[n.id] = self.replicated[n.inputs[0]]
            return
        if len(y) == 1 and int(np.prod(x)) == y[0]:
            self._flatten(n, x)
            return
        raise UserError(f"{n.where()} reshapes a sample {x} -> {y}; NIR export supports flattening a whole sample")

    def _flatten(self, n: Any, x: tuple[int, ...]) -> None:
        src = n.inputs[0]
        if src in self.replicated:  # flatten the pool's *input*; the following Linear folds the copies
            shape, idx = self.replicated[src]
            self.one(n, self.nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1),
                     f"{n.name}_flatten")
            self.replicated[n.id] = ((int(np.prod(shape)),), idx)
            return
        self.one(n, self.nir.Flatten(input_type={"input": np.array(x)}, start_dim=0, end_dim=-1),
                 n.name if n.kind == "module" else f"{n.scope or 'top'}_flatten")

    # -- modules ------------------------------------------------------------------------------------
    def _module(self, n: Any) -> None:
        nir, m, role = self.nir, n.module, n.role
        if any(i in self.replicated for i in n.inputs) and not (role == "weight" and isinstance(m, nn.Linear)) \
                and role not in ("dropout", "flatten"):
            raise UserError(f"{n.where()} reads a replicating AdaptiveAvgPool2d output; it is exported only "
                             "when a flatten and a Linear follow (folded into the Linear's weights)")
        if role == "weight":
            self._weight(n)
        elif role == "bn":
            raise UserError(f"BatchNorm {n.where()} does not read a conv/linear layer's output directly; NIR "
                             "export folds BN into the layer before it")
        elif role == "neuron":
            key = self.one(n, _neuron_node(nir, n.name, m, self.ps_in(n), self.dt))
            self.spiking.add(key)
        elif role == "pool":
            self._pool(n)
        elif role in ("dropout",) or role == "act" and isinstance(m, nn.Identity):
            self.sources[n.id] = self.sources[n.inputs[0]]
            if n.inputs[0] in self.replicated:
                self.replicated[n.id] = self.replicated[n.inputs[0]]
        elif role == "flatten":
            self._reshape(n)
        elif _is_voting(m):
            (features,) = self.ps_in(n) if len(self.ps_in(n)) == 1 else (None,)
            if features is None or features % m.voting_size:
                raise UserError(f"{n.where()} needs [.., C * voting_size] features; got a sample {self.ps_in(n)}")
            w = _voting_matrix(int(m.voting_size), features)
            self.one(n, nir.Affine(weight=w, bias=np.zeros(w.shape[0], dtype=np.float32)))
        else:
            raise UserError(f"{n.where()} has no NIR equivalent; {_SUPPORTED_TEXT}")

    def _weight(self, n: Any) -> None:
        nir, m, g = self.nir, n.module, self.g
        # the BatchNorm reading this layer's output, possibly through time/batch reshapes (a single-step
        # Sequential run time-folded: conv -> unflatten -> flatten -> bn)
        path, cur = [], n
        while True:
            after = g.consumers(cur.id)
            if len(after) == 1 and after[0].kind == "op" and after[0].name in _RESHAPE and \
                    self.ps_in(after[0]) == self.ps_out(after[0]):
                cur = after[0]
                path.append(cur)
                continue
            break
        bn = after[0] if after and after[0].role == "bn" else None
        if bn is not None and len(after) != 1:
            raise UserError(f"{n.where()}'s output is read by its BatchNorm and by other layers; BN cannot be folded")
        if bn is None:
            path = []
        w, b = _fold(m, bn.module if bn is not None else None)
        src = n.inputs[0]
        # a quantized layer is written at its levels with bits / scale / mask density in the node metadata
        # (not when the columns of replicated inputs are summed below: sums of levels are not levels)
        meta: dict[str, Any] = {}
        if callable(getattr(m, "quantized_weight", None)) and hasattr(getattr(m, "quant", None), "bits") \
                and src not in self.replicated:
            w, meta = _quantized_levels(m, bn.module if bn is not None else None)
        else:
            meta = {"mask_density": float((w != 0).sum()) / max(w.numel(), 1)}
        if src in self.replicated:  # W' = W P: sum the columns that read copies of the same input feature
            shape, idx = self.replicated[src]
            w = torch.zeros(w.shape[0], shape[0], dtype=w.dtype).index_add_(1, idx, w)
        if isinstance(m, nn.Linear):
            node = nir.Affine(weight=_f32(w), bias=_f32(b), metadata=meta)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            if m.padding_mode != "zeros":
                raise UserError(f"{n.where()}: NIR convolutions are zero-padded; got padding_mode={m.padding_mode!r}")
            x = self.ps_in(n)
            if isinstance(m, nn.Conv2d):
                node = nir.Conv2d(input_shape=x[1:], weight=_f32(w), stride=_pair(m.stride),
                                  padding=m.padding if isinstance(m.padding, str) else _pair(m.padding),
                                  dilation=_pair(m.dilation), groups=m.groups, bias=_f32(b), metadata=meta)
            else:
                node = nir.Conv1d(input_shape=x[1], weight=_f32(w), stride=int(m.stride[0]),
                                  padding=m.padding if isinstance(m.padding, str) else int(m.padding[0]),
                                  dilation=int(m.dilation[0]), groups=m.groups, bias=_f32(b), metadata=meta)
        else:
            raise UserError(f"{n.where()} is a {type(m).__name__}; NIR export maps Conv1d, Conv2d and Linear")
        key = self.one(n, node)
        for p in path + ([bn] if bn is not None else []):
            self.sources[p.id] = [key]

    def _pool(self, n: Any) -> None:
        nir, m = self.nir, n.module
        x, y = self.ps_in(n), self.ps_out(n)
        if isinstance(m, nn.MaxPool2d):
            srcs = self.sources[n.inputs[0]]
            if len(srcs) != 1 or srcs[0] not in self.spiking:
                raise UserError(f"{n.where()} max-pools values that are not one neuron layer's spikes; NIR has no "
                                 "max pooling (exact only on 0/1 spikes, as SumPool2d + Threshold)")
            if _pair(m.dilation) != (1, 1) or m.ceil_mode:
                raise UserError(f"{n.where()}: dilated or ceil-mode max pooling is not exported")
            stride = m.stride if m.stride is not None else m.kernel_size
            key = self.emit(n, n.name, nir.SumPool2d(kernel_size=np.array(_pair(m.kernel_size)),
                                                     stride=np.array(_pair(stride)), padding=np.array(_pair(m.padding))))
            any_ = f"{key}_any"
            self.nodes[any_] = nir.Threshold(threshold=np.full(y, 0.5, dtype=np.float32))
            self.edges.append((key, any_))
            self.sources[n.id] = [any_]
            self.spiking.add(any_)
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or m.divisor_override is not None or (any(_pair(m.padding)) and not m.count_include_pad):
                raise UserError(f"{n.where()}: this AvgPool2d configuration has no NIR equivalent")
            stride = m.stride if m.stride is not None else m.kernel_size
            self.one(n, nir.AvgPool2d(kernel_size=np.array(_pair(m.kernel_size)), stride=np.array(_pair(stride)),
                                      padding=np.array(_pair(m.padding))))
        elif isinstance(m, nn.AdaptiveAvgPool2d) and len(x) == 3 and len(y) == 3:
            (h, w), (oh, ow) = x[1:], y[1:]
            if h % oh == 0 and w % ow == 0:  # adaptive pooling to a divisor is a plain average pool
                k = (h // oh, w // ow)
                self.one(n, nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(k), padding=np.array((0, 0))))
            elif oh % h == 0 and ow % w == 0:
                # replication: output (y, x) is input (y // (oh/h), x // (ow/w)); idx[feature of the flattened
                # output] = feature of the flattened input, for the Linear that folds it
                c = x[0]
                iy = torch.arange(oh) // (oh // h)
                ix = torch.arange(ow) // (ow // w)
                idx = (torch.arange(c).view(c, 1, 1) * h * w + iy.view(1, oh, 1) * w + ix.view(1, 1, ow)).reshape(-1)
                self.sources[n.id] = self.sources[n.inputs[0]]
                self.replicated[n.id] = (x, idx)
            else:
                raise UserError(f"{n.where()} pools {h}x{w} to {oh}x{ow}: overlapping adaptive windows have no "
                                 "NIR equivalent")
        else:
            raise UserError(f"{n.where()} has no NIR equivalent (NIR pools: sum and average over 2-D maps); "
                             f"{_SUPPORTED_TEXT}")


def write_nir(path: str | Path, graph: Any) -> None:
    """Write ``graph`` to ``path`` (HDF5, NIR's format) atomically."""
    nir = _nir()
    with atomic_path(path) as tmp:
        nir.write(str(tmp), graph)


def read_nir(path: str | Path):
    """``nir.read`` with a one-line error for files that are not NIR graphs."""
    nir = _nir()
    try:
        return nir.read(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:  # h5py / NIR raise many kinds for foreign files
        raise UserError(f"{path} is not a readable NIR file ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------------
# Importing: NIR graph -> runnable spikeprune model.
# --------------------------------------------------------------------------------------------------


def _uniform(value: Any, what: str) -> float:
    a = np.asarray(value, dtype=np.float64)
    if a.size == 0 or not np.all(a == a.reshape(-1)[0]):
        raise UserError(f"{what} must be the same for every neuron of a layer (spikeprune's neurons are per layer)")
    return float(a.reshape(-1)[0])


def _ints(v: Any, n: int, what: str) -> tuple[int, ...]:
    """``v`` (a scalar, as SpikingJelly writes kernel sizes, or a sequence) as ``n`` ints."""
    a = np.asarray(v).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, n)
    if a.size != n:
        raise UserError(f"{what} must have 1 or {n} entries; got {v!r}")
    return tuple(int(x) for x in a)


def _f32s(x: float) -> float:
    """``x`` rounded to float32: the coefficients act on float32 tensors, as in the packages' own kernels."""
    return float(np.float32(x))


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.shape == ():
        return _text(v[()])
    return str(v)


class NIRNeuron(LIF):
    """A NIR ``LIF`` / ``IF`` / ``CubaLIF`` node run exactly, ``[T, B, ...]`` currents -> spikes (a
    :class:`~spikeprune.LIF`, so observers and statistics see it; ``beta`` is ``1 - a``).

    One forward-Euler step of NIR's neuron equations, with ``a = dt/tau`` and gain ``g = r dt/tau``
    (``IF``: ``a = 0``, ``g = r dt``), in the operation order of the package it most likely came from
    (so the spikes match bit for bit, not only up to rounding):

    * ``form="beta"`` (``v_leak = 0``; spikeprune, snnTorch, SpikingJelly ``decay_input=False``):
      ``v = (1 - a) v + g x``;
    * ``form="sj"`` (``r = 1``, SpikingJelly ``decay_input=True``): ``v = v + (x - (v - v_leak)) a``;
    * ``form="sj-nodecay"`` (``v_leak != 0``): ``v = v - (v - v_leak) a + g x``.

    Then ``s = [v >= u_th]`` (``inclusive``) or ``[v > u_th]`` (NIR's rule), ``v = v_reset`` where
    ``s``. ``CubaLIF``: a synaptic current ``i = (1 - a_s) i + g_s x`` feeds the membrane (skipped when
    it is the identity, ``a_s = g_s = 1``: SpikingJelly / snnTorch nets without a synaptic filter).
    The state starts at ``v_reset`` (and ``i = 0``).
    """

    def __init__(self, *, a: float, gain: float, v_leak: float, u_th: float, v_reset: float, inclusive: bool,
                 form: str, synapse: tuple[float, float] | None = None) -> None:
        nn.Module.__init__(self)
        self.a, self.gain, self.v_leak = _f32s(a), _f32s(gain), _f32s(v_leak)
        self.beta = _f32s(1.0 - a)
        self.u_th, self.v_reset = _f32s(u_th), _f32s(v_reset)
        self.inclusive, self.form = bool(inclusive), form
        self.synapse = None if synapse is None else (_f32s(1.0 - synapse[0]), _f32s(synapse[1]))
        self.surrogate, self.detach_reset = DEFAULT_SURROGATE, DEFAULT_DETACH_RESET
        self.alpha = SURROGATES[DEFAULT_SURROGATE][1]
        self.observer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise UserError(f"NIRNeuron expects a time-major input [T, B, ...]; got {tuple(x.shape)}")
        v = torch.full_like(x[0], self.v_reset)
        i = torch.zeros_like(x[0]) if self.synapse is not None else None
        spikes, us = torch.empty_like(x), torch.empty_like(x)
        for t in range(x.shape[0]):
            xt = x[t]
            if i is not None:
                i = i * self.synapse[0] + (xt if self.synapse[1] == 1.0 else xt * self.synapse[1])
                xt = i
            gx = xt if self.gain == 1.0 else xt * self.gain
            if self.form == "beta":
                u = (v if self.beta == 1.0 else v * self.beta) + gx
            elif self.form == "sj":
                u = v + (xt - (v - self.v_leak)) * self.a
            else:
                u = v - (v - self.v_leak) * self.a + gx
            s = u >= self.u_th if self.inclusive else u > self.u_th
            us[t] = u
            spikes[t] = s.to(x.dtype)
            v = torch.where(s, torch.full_like(u, self.v_reset), u)
        if self.observer is not None:
            self.observer(self, us, spikes)
        return spikes

    def extra_repr(self) -> str:
        return (f"form={self.form}, a={self.a:.6g}, gain={self.gain:.6g}, v_leak={self.v_leak}, u_th={self.u_th}, "
                f"v_reset={self.v_reset}, fires_at={'>=' if self.inclusive else '>'}"
                + (f", synapse={self.synapse}" if self.synapse else ""))


def _neuron_module(key: str, node: Any, nir: Any, dt: float) -> LIF:
    """spikeprune's ``LIF`` where it is exactly the node's dynamics, else a :class:`NIRNeuron`."""
    meta = dict(getattr(node, "metadata", {}) or {})
    inclusive = _text(meta.get("spike_condition", "")) == _INCLUSIVE
    u_th = _uniform(node.v_threshold, f"{key}: v_threshold")
    v_reset = 0.0 if node.v_reset is None else _uniform(node.v_reset, f"{key}: v_reset")
    synapse = None
    if isinstance(node, nir.IF):
        a, v_leak = 0.0, 0.0
        gain = _uniform(node.r, f"{key}: r") * dt
    else:
        tau = _uniform(node.tau_mem if isinstance(node, nir.CubaLIF) else node.tau, f"{key}: tau")
        r = _uniform(node.r, f"{key}: r")
        v_leak = _uniform(node.v_leak, f"{key}: v_leak")
        if not tau >= dt:
            raise UserError(f"{key}: tau={tau:g} < dt={dt:g}; forward Euler at this dt would overshoot (not an LIF)")
        a = dt / tau
        gain = r * a
        if isinstance(node, nir.CubaLIF):
            tau_syn = _uniform(node.tau_syn, f"{key}: tau_syn")
            if not tau_syn >= dt:
                raise UserError(f"{key}: tau_syn={tau_syn:g} < dt={dt:g} (not a synaptic filter)")
            a_s = dt / tau_syn
            g_s = _uniform(node.w_in, f"{key}: w_in") * a_s
            if not (np.isclose(a_s, 1.0, rtol=1e-6) and np.isclose(g_s, 1.0, rtol=1e-6)):
                synapse = (a_s, g_s)
    gain = 1.0 if np.isclose(gain, 1.0, rtol=1e-6, atol=0) else gain  # r dt/tau = 1 up to float64 rounding
    if a != 0.0 and np.isclose(gain, a, rtol=1e-6, atol=0) and a != 1.0:
        form = "sj"
    elif v_leak == 0.0:
        form = "beta"
    else:
        form = "sj-nodecay"
    beta = _f32s(1.0 - a)
    if form == "beta" and gain == 1.0 and v_reset == 0.0 and inclusive and synapse is None and 0.0 < beta < 1.0:
        return LIF(beta=beta, u_th=_f32s(u_th), v_reset=0.0)  # LTH-SNN Eq. 2-4 exactly
    return NIRNeuron(a=a, gain=gain, v_leak=v_leak, u_th=u_th, v_reset=v_reset, inclusive=inclusive, form=form,
                     synapse=synapse)


class _SumPool2d(nn.Module):
    def __init__(self, kernel_size, stride, padding) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, divisor_override=1)


class _Threshold(nn.Module):
    def __init__(self, threshold: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(np.asarray(threshold, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)


class _Scale(nn.Module):
    def __init__(self, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _Flatten(nn.Module):
    """NIR ``Flatten`` (dims counted within one sample) on ``[N, ...]``."""

    def __init__(self, start_dim: int, end_dim: int) -> None:
        super().__init__()
        self.start_dim = start_dim + 1 if start_dim >= 0 else start_dim
        self.end_dim = end_dim + 1 if end_dim >= 0 else end_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(self.start_dim, self.end_dim)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NIRNetwork(nn.Module):
    """A NIR graph run by spikeprune: input ``[B, ...]`` (static, presented at every step) or ``[T, B, ...]``,
    output ``[T, B, ...]``.

    ``layers`` holds one module per NIR node (``Input``/``Output`` are identities), ``order`` the node
    keys in topological order and ``inputs`` each node's predecessors: a node reads the *sum* of its
    predecessors' outputs (NIR's rule), in edge order. Stateless layers run once on a static tensor
    (the encoding layers) and on ``[T*B, ...]`` otherwise; neurons run on ``[T, B, ...]``.
    """

    def __init__(self, layers: dict[str, nn.Module], order: list[str], inputs: dict[str, list[str]],
                 source: str, sink: str, timesteps: int, static_dims: int) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({k.replace(".", "_"): layers[k] for k in order})
        self.keys = {k: k.replace(".", "_") for k in order}
        self.order, self.inputs, self.source, self.sink = order, inputs, source, sink
        self.T = timesteps
        self.static_dims = static_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (self.static_dims, self.static_dims + 1):
            raise UserError(f"expected a static input with {self.static_dims} dims or a time-major one with "
                             f"{self.static_dims + 1}; got shape {tuple(x.shape)}")
        values: dict[str, tuple[torch.Tensor, bool]] = {self.source: (x, x.dim() == self.static_dims)}
        for key in self.order:
            if key == self.source:
                continue
            parts = [values[p] for p in self.inputs[key]]
            static = all(s for _, s in parts)
            total = None
            for v, s in parts:
                if s and not static:
                    v = v.unsqueeze(0).expand(self.T, *v.shape)
                total = v if total is None else total + v
            layer = self.layers[self.keys[key]]
            if isinstance(layer, LIF):
                if static:
                    total = total.unsqueeze(0).expand(self.T, *total.shape)
                values[key] = (layer(total), False)
            elif static or isinstance(layer, _Identity):
                values[key] = (layer(total), static)
            else:
                values[key] = (layer(total.flatten(0, 1)).unflatten(0, total.shape[:2]), False)
        out, static = values[self.sink]
        return out.unsqueeze(0).expand(self.T, *out.shape) if static else out


def _topological(keys: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Kahn's order, taking ready nodes by their first incoming edge: spikeprune writes edges in execution
    order, so the imported neurons run - and report to observers - in the original's order (HDF5 does
    not keep the order of the node dict; it does keep the edge list)."""
    import heapq

    first = {b: i for i, (_, b) in reversed(list(enumerate(edges)))}
    keys = sorted(keys, key=lambda k: (first.get(k, -1), k))
    pos = {k: i for i, k in enumerate(keys)}
    indegree = {k: 0 for k in keys}
    nexts: dict[str, list[str]] = {k: [] for k in keys}
    for a, b in edges:
        nexts[a].append(b)
        indegree[b] += 1
    ready = [pos[k] for k in keys if indegree[k] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = keys[heapq.heappop(ready)]
        order.append(k)
        for b in nexts[k]:
            indegree[b] -= 1
            if indegree[b] == 0:
                heapq.heappush(ready, pos[b])
    if len(order) != len(keys):
        raise UserError("the NIR graph has a cycle (recurrent connections); spikeprune imports acyclic graphs")
    return order


def from_nir(graph: Any, *, timesteps: int | None = None, dt: float | None = None) -> NIRNetwork:
    """Rebuild a runnable spikeprune model from a NIR graph (a graph object or a ``.nir`` file path).

    Any acyclic graph with one ``Input`` and one ``Output``; a node with several incoming edges reads
    their sum. Nodes: ``Conv1d``, ``Conv2d``, ``Affine``, ``Linear``, ``Scale``, ``Flatten``,
    ``SumPool2d``, ``AvgPool2d`` (kernel/stride/padding scalar or per axis), ``Threshold``, and the
    neurons ``LIF``, ``IF``, ``CubaLIF`` (parameters uniform per layer) as :class:`~spikeprune.LIF` when
    they are exactly LTH-SNN Eq. 2-4 (``v_leak = 0``, ``r = tau/dt``, ``v_reset = 0``, firing at the
    threshold), else as :class:`NIRNeuron`. ``timesteps`` / ``dt`` default to the graph's metadata
    (spikeprune writes both; SpikingJelly's and snnTorch's exporters use ``dt = 1e-4`` and record
    neither: pass them).
    """
    nir = _nir()
    if isinstance(graph, (str, Path)):
        graph = read_nir(graph)
    meta = dict(getattr(graph, "metadata", {}) or {})
    T = timesteps if timesteps is not None else meta.get("timesteps")
    dt = dt if dt is not None else meta.get("dt")
    if T is None or dt is None:
        raise UserError("the NIR graph does not record timesteps and dt; pass them (SpikingJelly's and "
                         "snnTorch's exporters use dt=1e-4)")
    T, dt = int(np.asarray(T)), float(np.asarray(dt))
    if T < 1 or not dt > 0:
        raise UserError(f"timesteps must be >= 1 and dt > 0; got {T} and {dt}")
    keys = list(graph.nodes)
    for a, b in graph.edges:
        if a not in graph.nodes or b not in graph.nodes:
            raise UserError(f"edge ({a!r}, {b!r}) names a node the graph does not have")
    starts = [k for k in keys if isinstance(graph.nodes[k], nir.Input)]
    ends = [k for k in keys if isinstance(graph.nodes[k], nir.Output)]
    if len(starts) != 1 or len(ends) != 1:
        raise UserError(f"expected one Input and one Output node; found {len(starts)} and {len(ends)}")
    order = _topological(keys, list(graph.edges))
    inputs = {k: [a for a, b in graph.edges if b == k] for k in keys}
    reached = {starts[0]}
    for k in order:
        if k != starts[0]:
            if not inputs[k]:
                raise UserError(f"node {k!r} has no incoming edge and is not the Input")
            if any(p in reached for p in inputs[k]):
                reached.add(k)
    if ends[0] not in reached:
        raise UserError("the Output node is not reachable from the Input node")
    in_type = np.asarray(next(iter(graph.nodes[starts[0]].input_type.values()))).reshape(-1)
    static_dims = 1 + len(in_type)
    layers = {k: _layer(k, graph.nodes[k], nir, dt) for k in order}
    return NIRNetwork(layers, order, inputs, starts[0], ends[0], T, static_dims)


def _requantized(key: str, layer: nn.Module, node: Any) -> nn.Module:
    """A layer whose node metadata carries ``bits`` / ``scale`` (:func:`_quantized_levels`) comes back as the
    frozen quantized layer of :mod:`spikeprune.compression.quant` (per-channel gamma = ``scale``): its
    ``quantized_weight()`` must reproduce the stored weight bit for bit, else the file is refused."""
    meta = dict(getattr(node, "metadata", {}) or {})
    if "bits" not in meta:
        return layer
    from spikeprune.compression.quant import QuantSpec, quantized_class

    bits = int(np.asarray(meta["bits"]))
    scale = torch.as_tensor(np.asarray(meta.get("scale"), dtype=np.float32)).reshape(-1)
    out = layer.weight.shape[0]
    if not 1 <= bits <= 16 or scale.numel() not in (1, out) or not bool(torch.isfinite(scale).all()):
        raise ValueError(f"{key}: quantization metadata needs bits in [1, 16] and one finite scale per output "
                         f"channel; got bits={bits}, {scale.numel()} scales for {out} channels")
    q = layer
    q.__class__ = quantized_class(type(layer))  # as quantize_model does: same parameters, quantized forward
    q._init_quant(QuantSpec(bits=bits, method=_text(meta.get("quant_method", "mean")), per_channel=True))
    q.weight_gamma = scale.expand(out).reshape(-1, *([1] * (layer.weight.dim() - 1))).clone()
    q.frozen = True
    with torch.no_grad():
        if not torch.equal(q.quantized_weight(), layer.weight):
            raise ValueError(f"{key}: the weights are not at the {1 << bits} levels its metadata describes "
                             "(bits, scale)")
    return q


def _layer(key: str, node: Any, nir: Any, dt: float) -> nn.Module:
    if isinstance(node, (nir.Input, nir.Output)):
        return _Identity()
    if isinstance(node, nir.NIRGraph):
        raise UserError(f"{key}: nested NIR graphs (recurrent subgraphs) are not imported")
    if isinstance(node, (nir.Conv2d, nir.Conv1d)):
        w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
        d = 2 if isinstance(node, nir.Conv2d) else 1
        if w.dim() != d + 2:
            raise UserError(f"{key}: a {type(node).__name__} weight needs {d + 2} dims; got {tuple(w.shape)}")
        cls = nn.Conv2d if d == 2 else nn.Conv1d
        padding = node.padding if isinstance(node.padding, str) else _ints(node.padding, d, f"{key}: padding")
        groups = int(np.asarray(node.groups))
        conv = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_ints(node.stride, d, f"{key}: stride"),
                   padding=padding, dilation=_ints(node.dilation, d, f"{key}: dilation"), groups=groups)
        with torch.no_grad():
            conv.weight.copy_(w)
            bias = np.zeros(w.shape[0]) if node.bias is None else np.asarray(node.bias, dtype=np.float32)
            conv.bias.copy_(torch.as_tensor(bias, dtype=torch.float32).reshape(-1))
        return _requantized(key, conv, node)
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
        fc = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
        with torch.no_grad():
            fc.weight.copy_(w)
            if isinstance(node, nir.Affine):
                fc.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)))
        return _requantized(key, fc, node)
    if isinstance(node, (nir.LIF, nir.IF, nir.CubaLIF)):
        return _neuron_module(key, node, nir, dt)
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        k = _ints(node.kernel_size, 2, f"{key}: kernel_size")
        s = _ints(node.stride, 2, f"{key}: stride") if node.stride is not None else k
        p = _ints(node.padding, 2, f"{key}: padding")
        return _SumPool2d(k, s, p) if isinstance(node, nir.SumPool2d) else nn.AvgPool2d(k, s, p)
    if isinstance(node, nir.Threshold):
        return _Threshold(np.asarray(node.threshold))
    if isinstance(node, nir.Scale):
        return _Scale(np.asarray(node.scale))
    if isinstance(node, nir.Flatten):
        return _Flatten(int(np.asarray(node.start_dim)), int(np.asarray(node.end_dim)))
    raise UserError(f"{key}: NIR node {type(node).__name__} is not imported by spikeprune (supported: Conv1d, "
                     "Conv2d, Affine, Linear, Scale, Flatten, SumPool2d, AvgPool2d, Threshold, LIF, IF, CubaLIF)")


# --------------------------------------------------------------------------------------------------
# Checkpoint -> file (what ``spikeprune export`` calls).
# --------------------------------------------------------------------------------------------------

#: export formats understood by :func:`export_checkpoint`
FORMATS = ("nir",)


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, format: str = "nir", mask: str | Path | None = None,
                      dt: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Load a spikeprune checkpoint (dense, channel-pruned or quantized; ``mask`` applied on top), export it
    to ``out`` and return a summary (nodes, timesteps, dt, exported weights and non-zeros)."""
    from spikeprune.compression.compress import load_compressed
    from spikeprune.tickets.masks import Mask

    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    _nir()
    model, meta = load_compressed(checkpoint)
    if mask is not None:
        Mask.load(mask).apply(model)
    config = meta.get("model_config") or {}
    shape = (int(config.get("in_channels", 1)), *(int(s) for s in config.get("image_size", (8, 8))))
    example = torch.rand((4, *shape), generator=torch.Generator().manual_seed(seed))
    graph = to_nir(model, example, dt=dt)
    write_nir(out, graph)
    weights = [np.asarray(n.weight) for n in graph.nodes.values() if hasattr(n, "weight")]
    return {"format": format, "out": str(out), "nodes": {k: type(v).__name__ for k, v in graph.nodes.items()},
            "timesteps": graph.metadata["timesteps"], "dt": dt, "weights": int(sum(w.size for w in weights)),
            "nonzero": int(sum(np.count_nonzero(w) for w in weights))}
