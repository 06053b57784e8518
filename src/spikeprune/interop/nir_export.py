"""Export a (compressed) spikeprune network to NIR, the Neuromorphic Intermediate Representation, and read
it back (docs/interop.md, "NIR export").

``to_nir(model, example_input)`` traces one forward pass and requires the network to be a feed-forward
chain of: Conv2d / Linear (masked, channel-pruned or quantized: the *effective* weights are written), each
optionally followed by BatchNorm (folded into the layer's weight and bias), LIF, MaxPool2d on spikes,
AvgPool2d, Flatten. Node mapping:

* conv (+BN) -> ``nir.Conv2d``; linear (+BN) -> ``nir.Affine``. BN folding at inference:
  ``g = gamma * s / sqrt(var + eps)`` (``s``: tdBN's alpha * u_th, else 1), ``W' = g W``,
  ``b' = g (b - mean) + beta_BN``.
* LIF -> ``nir.LIF`` with ``tau = dt / (1 - beta)``, ``r = 1 / (1 - beta)``, ``v_leak = 0``,
  ``v_threshold = u_th``, ``v_reset = V_reset``. NIR's LIF ``tau dv/dt = (v_leak - v) + r I`` integrated
  by forward Euler with step ``dt`` gives ``v <- v + (dt / tau) (-v + r I) = beta v + I``: LTH-SNN Eq. 2
  (the convention of SpikingJelly's NIR exchange with ``decay_input=False``). Eq. 4 resets to V_reset
  *without* decaying it; NIR decays every potential, so only ``V_reset = 0`` is exported exactly (others
  are refused). Spikes: Eq. 3 fires at ``u >= u_th``; NIR documents ``v > v_threshold`` for its
  Threshold node and leaves the LIF boundary to the simulator (a measure-zero difference).
* MaxPool2d over spikes -> ``nir.SumPool2d`` + ``nir.Threshold(0.5)``: the max of 0/1 values is 1 iff
  their sum exceeds 0.5 (exact; the exporter checks the pool's input is binary).
* Direct encoding: the static image is the graph's input at every timestep (the encoding conv then
  computes the same current at every step, as spikeprune's models do once).

``from_nir(graph)`` rebuilds a runnable spikeprune model (:class:`NIRNetwork`, spiking layers are
:class:`~spikeprune.LIF`) from such a graph; the round trip reproduces the spikes (tests/test_nir.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..io import atomic_path
from ..neuron import LIF

__all__ = ["FORMATS", "NIRNetwork", "export_checkpoint", "from_nir", "read_nir", "to_nir", "write_nir"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_TRACED = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, LIF, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten,
           nn.Dropout)


def _nir():
    try:
        import nir
    except ImportError:
        raise ValueError("NIR export needs the 'nir' package: pip install 'spikeprune[nir]'") from None
    return nir


# --------------------------------------------------------------------------------------------------
# Tracing the chain.
# --------------------------------------------------------------------------------------------------


def _per_sample(module: nn.Module, t: torch.Tensor) -> tuple[int, ...]:
    """Shape of one sample at one timestep: LIF sees ``[T, B, ...]``, other layers ``[N, ...]``."""
    return tuple(t.shape[2:]) if isinstance(module, LIF) else tuple(t.shape[1:])


def _links(a: torch.Tensor, b: torch.Tensor, T: int) -> bool:
    """Is ``b`` (a layer's input) the tensor ``a`` (the previous output), up to reshaping / repetition over T?"""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.numel() == b.numel():
        return torch.equal(a, b)
    if a.numel() * T == b.numel():  # the encoding layer's static output, repeated over the T timesteps
        return torch.equal(a.unsqueeze(0).expand(T, -1).reshape(-1), b)
    return False


def _trace(model: nn.Module, x: torch.Tensor, T: int) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    records: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _TRACED):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, n=name: records.append((n, mod, i[0].detach(), o.detach()))))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    records = [r for r in records if not isinstance(r[1], nn.Dropout)]  # identity at inference
    if not records:
        raise ValueError(f"{type(model).__name__} has no layer NIR export understands")
    previous = x
    for name, _, inp, out_ in records:
        if not _links(previous, inp, T):
            raise ValueError(f"NIR export needs a feed-forward chain of layers; the input of {name!r} is not the "
                             "output of the layer before it (residual connections are not exported)")
        previous = out_
    if not _links(previous, out, T):
        raise ValueError("NIR export needs the network's output to be its last layer's output")
    return records


def _effective_weight(module: nn.Module) -> torch.Tensor:
    fn = getattr(module, "quantized_weight", None)  # spikeprune.quant: the weights the layer computes with
    return (fn() if callable(fn) else module.weight).detach().double()


def _fold(layer: nn.Module, bn: nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
    w = _effective_weight(layer)
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(bn.num_features, dtype=torch.float64)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(bn.num_features, dtype=torch.float64)
        g = gamma * float(getattr(bn, "scale", 1.0)) / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        w = w * g.view(-1, *([1] * (w.dim() - 1)))
        b = g * (b - bn.running_mean.detach().double()) + beta
    return w.float().numpy(), b.float().numpy()


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(a) for a in v)  # type: ignore[return-value]


def to_nir(model: nn.Module, example_input: torch.Tensor, *, timesteps: int | None = None, dt: float = 1e-4):
    """The ``nir.NIRGraph`` of ``model`` (see the module docstring for the mapping).

    Args:
        model: a spikeprune feed-forward model (``convnet``, ``mlp``, ...), possibly masked, channel-pruned
            or quantized (weights only: a quantized membrane is refused).
        example_input: one static batch ``[B, C, H, W]`` (random values are best: the tracer checks that
            every layer's input is the previous layer's output).
        timesteps: T (default: ``model.T``); stored in the graph's metadata.
        dt: the time step NIR's continuous time constants refer to (SpikingJelly's NIR default, 1e-4 s).
    """
    nir = _nir()
    T = timesteps if timesteps is not None else getattr(model, "T", None)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"timesteps must be a positive integer; got {T!r}")
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not dt > 0:
        raise ValueError(f"dt must be a number > 0; got {dt!r}")
    for name, m in model.named_modules():
        if isinstance(m, LIF) and getattr(m, "third_party", False):
            raise ValueError(f"{name!r} is an adapted third-party neuron; export such networks with their own "
                             "package's NIR exporter (SpikingJelly: nir_exchange.export_to_nir)")
        if isinstance(m, LIF) and hasattr(m, "membrane_bits"):
            raise ValueError(f"{name!r} quantizes its membrane potential, which NIR cannot express")
    records = _trace(model, example_input, T)
    nodes: dict[str, Any] = {}
    chain: list[str] = []
    shape = tuple(example_input.shape[1:])
    nodes["input"] = nir.Input(input_type=np.array(shape))
    chain.append("input")

    def add(key: str, node: Any) -> None:
        nodes[key] = node
        chain.append(key)

    i = 0
    while i < len(records):
        name, m, inp, out = records[i]
        in_shape = _per_sample(m, inp)
        key = name.replace(".", "_") or "layer"
        if in_shape != shape:
            if int(np.prod(in_shape)) != int(np.prod(shape)) or len(in_shape) != 1:
                raise ValueError(f"unsupported reshape before {name!r}: {shape} -> {in_shape}")
            add(f"{key}_flatten", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))
            shape = in_shape
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bn = None
            if i + 1 < len(records) and isinstance(records[i + 1][1], _BN):
                bn = records[i + 1][1]
                i += 1
            w, b = _fold(m, bn)
            if isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros":
                    raise ValueError(f"{name!r}: NIR convolutions are zero-padded; got padding_mode={m.padding_mode!r}")
                add(key, nir.Conv2d(input_shape=shape[1:], weight=w, stride=_pair(m.stride),
                                    padding=m.padding if isinstance(m.padding, str) else _pair(m.padding),
                                    dilation=_pair(m.dilation), groups=m.groups, bias=b))
            else:
                add(key, nir.Affine(weight=w, bias=b))
            shape = _per_sample(m, records[i][3])
        elif isinstance(m, _BN):
            raise ValueError(f"BatchNorm {name!r} does not follow a conv/linear layer; NIR export folds BN into "
                             "the layer before it")
        elif isinstance(m, LIF):
            if m.v_reset != 0.0:
                raise ValueError(f"{name!r} resets to V_reset={m.v_reset}: LTH-SNN Eq. 4 does not decay the reset "
                                 "value but NIR's LIF does, so only V_reset = 0 is exported exactly")
            full = lambda v: np.full(shape, v, dtype=np.float32)  # noqa: E731
            add(key, nir.LIF(tau=full(dt / (1.0 - m.beta)), r=full(1.0 / (1.0 - m.beta)), v_leak=full(0.0),
                             v_threshold=full(m.u_th), v_reset=full(0.0)))
        elif isinstance(m, nn.MaxPool2d):
            if not bool(((inp == 0) | (inp == 1)).all()):
                raise ValueError(f"{name!r} max-pools non-spike values; NIR has no max pooling (only sum/average)")
            if m.dilation not in (1, (1, 1)) or m.ceil_mode:
                raise ValueError(f"{name!r}: dilated or ceil-mode max pooling is not exported")
            out_shape = _per_sample(m, out)
            add(key, nir.SumPool2d(kernel_size=np.array(_pair(m.kernel_size)), stride=np.array(_pair(m.stride)),
                                   padding=np.array(_pair(m.padding))))
            add(f"{key}_any", nir.Threshold(threshold=np.full(out_shape, 0.5, dtype=np.float32)))
            shape = out_shape
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or m.divisor_override is not None or (any(_pair(m.padding)) and not m.count_include_pad):
                raise ValueError(f"{name!r}: this AvgPool2d configuration has no NIR equivalent")
            add(key, nir.AvgPool2d(kernel_size=np.array(_pair(m.kernel_size)), stride=np.array(_pair(m.stride)),
                                   padding=np.array(_pair(m.padding))))
            shape = _per_sample(m, out)
        elif isinstance(m, nn.Flatten):
            out_shape = _per_sample(m, out)
            add(key, nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1))
            shape = out_shape
        i += 1
    nodes["output"] = nir.Output(output_type=np.array(shape))
    chain.append("output")
    edges = list(zip(chain[:-1], chain[1:]))
    metadata = {"producer": "spikeprune", "dt": float(dt), "timesteps": int(T),
                "encoding": "direct: the static input is presented at every timestep",
                "lif": "forward Euler, v <- v + dt/tau (v_leak - v + r I); spike at v >= v_threshold; hard reset"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)


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
        raise ValueError(f"{path} is not a readable NIR file ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------------
# Importing: NIR graph -> runnable spikeprune model.
# --------------------------------------------------------------------------------------------------


def _uniform(value: Any, what: str) -> float:
    a = np.asarray(value, dtype=np.float64)
    if a.size == 0 or not np.all(a == a.reshape(-1)[0]):
        raise ValueError(f"{what} must be the same for every neuron of a layer (spikeprune's LIF is per layer)")
    return float(a.reshape(-1)[0])


class _SumPool2d(nn.Module):
    def __init__(self, kernel_size, stride, padding) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, divisor_override=1)


class _Threshold(nn.Module):
    def __init__(self, threshold: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class NIRNetwork(nn.Module):
    """A NIR chain run by spikeprune: input ``[B, ...]`` (static, presented at every step) or ``[T, B, ...]``,
    output ``[T, B, ...]``. Spiking nodes are :class:`~spikeprune.LIF`, so every analysis works on it."""

    def __init__(self, layers: list[tuple[str, nn.Module]], timesteps: int, static_dims: int) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.T = timesteps
        self.static_dims = static_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        static = x.dim() == self.static_dims
        for layer in self.layers.values():
            if isinstance(layer, LIF):
                if static:
                    x = x.unsqueeze(0).expand(self.T, *x.shape)
                    static = False
                x = layer(x)
            elif static:
                x = layer(x)
            else:
                x = layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        if static:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        return x


def from_nir(graph: Any, *, timesteps: int | None = None, dt: float | None = None) -> NIRNetwork:
    """Rebuild a spikeprune model from a NIR chain (a graph object or a ``.nir`` file path).

    Nodes: Input, Conv2d, Affine, Linear, LIF (uniform per layer; ``v_leak = 0``; ``beta = 1 - dt / tau`` and
    ``r = 1 / (1 - beta)`` required, i.e. forward Euler with the graph's ``dt``), IF (``beta = 1`` is not a
    spikeprune LIF: refused), SumPool2d, AvgPool2d, Threshold, Flatten, Output.
    """
    nir = _nir()
    if isinstance(graph, (str, Path)):
        graph = read_nir(graph)
    meta = dict(getattr(graph, "metadata", {}) or {})
    T = timesteps if timesteps is not None else meta.get("timesteps")
    dt = dt if dt is not None else meta.get("dt")
    if T is None or dt is None:
        raise ValueError("the NIR graph does not record timesteps and dt; pass them")
    T, dt = int(T), float(dt)
    # walk the chain from the input
    nexts: dict[str, list[str]] = {}
    for a, b in graph.edges:
        nexts.setdefault(a, []).append(b)
    starts = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    if len(starts) != 1:
        raise ValueError(f"expected one Input node; found {len(starts)}")
    layers: list[tuple[str, nn.Module]] = []
    key = starts[0]
    static_dims = 1 + len(np.asarray(graph.nodes[key].input_type["input"]).reshape(-1))
    seen = set()
    while True:
        following = nexts.get(key, [])
        if len(following) != 1:
            if not following:
                raise ValueError(f"node {key!r} has no successor and is not an Output")
            raise ValueError(f"node {key!r} feeds {len(following)} nodes; only chains are imported")
        key = following[0]
        if key in seen:
            raise ValueError("recurrent NIR graphs are not imported")
        seen.add(key)
        node = graph.nodes[key]
        name = f"{len(layers)}_{type(node).__name__}"
        if isinstance(node, nir.Output):
            break
        if isinstance(node, nir.Conv2d):
            w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
            padding = node.padding if isinstance(node.padding, str) else _pair(tuple(int(p) for p in node.padding))
            conv = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]), stride=_pair(tuple(node.stride)),
                             padding=padding, dilation=_pair(tuple(node.dilation)), groups=int(node.groups))
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)))
            layers.append((name, conv))
        elif isinstance(node, (nir.Affine, nir.Linear)):
            w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
            fc = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
            with torch.no_grad():
                fc.weight.copy_(w)
                if isinstance(node, nir.Affine):
                    fc.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)))
            layers.append((name, fc))
        elif isinstance(node, nir.LIF):
            tau, r = _uniform(node.tau, "LIF tau"), _uniform(node.r, "LIF r")
            if _uniform(node.v_leak, "LIF v_leak") != 0.0:
                raise ValueError(f"{key}: spikeprune's LIF leaks towards 0 (v_leak must be 0)")
            beta = 1.0 - dt / tau
            if not 0.0 < beta < 1.0 or not np.isclose(r * (1.0 - beta), 1.0, rtol=1e-5):
                raise ValueError(f"{key}: LIF with tau={tau:g}, r={r:g} at dt={dt:g} is not LTH-SNN Eq. 2 "
                                 "(needs dt < tau and r = tau / dt)")
            v_reset = 0.0 if node.v_reset is None else _uniform(node.v_reset, "LIF v_reset")
            layers.append((name, LIF(beta=beta, u_th=_uniform(node.v_threshold, "LIF v_threshold"), v_reset=v_reset)))
        elif isinstance(node, nir.SumPool2d):
            layers.append((name, _SumPool2d(_pair(tuple(node.kernel_size)), _pair(tuple(node.stride)),
                                            _pair(tuple(node.padding)))))
        elif isinstance(node, nir.AvgPool2d):
            layers.append((name, nn.AvgPool2d(_pair(tuple(node.kernel_size)), _pair(tuple(node.stride)),
                                              _pair(tuple(node.padding)))))
        elif isinstance(node, nir.Threshold):
            layers.append((name, _Threshold(np.asarray(node.threshold))))
        elif isinstance(node, nir.Flatten):
            if node.start_dim != 0 or node.end_dim != -1:
                raise ValueError(f"{key}: only full flattening of a sample is imported")
            layers.append((name, _Flatten()))
        else:
            raise ValueError(f"{key}: NIR node {type(node).__name__} is not imported by spikeprune")
    return NIRNetwork(layers, T, static_dims)


# --------------------------------------------------------------------------------------------------
# Checkpoint -> file (what ``spikeprune export`` calls).
# --------------------------------------------------------------------------------------------------

#: export formats understood by :func:`export_checkpoint`
FORMATS = ("nir",)


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, format: str = "nir", mask: str | Path | None = None,
                      dt: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Load a spikeprune checkpoint (dense, channel-pruned or quantized; ``mask`` applied on top), export it
    to ``out`` and return a summary (nodes, timesteps, dt, exported weights and non-zeros)."""
    from ..compress import load_compressed
    from ..masks import Mask

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
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
