"""Event-driven CPU inference for compressed SNNs (issue 16): work proportional to spikes x synapses.

``compile(model) -> EventModel``; ``EventModel(x)`` returns the same ``[T, B, classes]`` logits as
``model(x)``. After the encoding layer (which stays dense: it sees real-valued pixels, not spikes, and
runs once on a static image), every layer is driven by its binary input spikes: each spike at
(y, x, c_in) scatter-adds the *surviving* weights of input channel c_in into the output accumulators
(spikeprune/_event_kernel.c). A pruned weight costs nothing, a silent neuron costs a byte test.

Exactness:

* Quantized layers (spikeprune.compression.quant, SPEC §7): ``W_hat = (gamma/s) * L`` with odd integers
  ``L = 2 W_int - s`` (0 where pruned). The engine accumulates the integers ``L`` in int32 (exact) and
  scales once, in double, together with the folded BatchNorm: ``current = acc * a_c + b_c``. This is
  the fake-quantized model's arithmetic without its float32 summation-order rounding; its spikes equal
  the dense model's evaluated in float64 (tests/test_event_engine.py), and any difference to the
  float32 dense path is a rounding flip of the dense path, counted by :func:`spike_flips`.
* Float layers: float32 accumulation in spike order; the summation order differs from oneDNN's, so a
  membrane potential within a few ulp of the threshold can flip. :func:`spike_flips` counts them.

BatchNorm is folded as the per-channel affine it is in eval mode (``a_c, b_c`` measured by evaluating
the module itself on 0 and 1 in float64, so tdBN's extra scale folds too). It cannot be folded where
it is in training mode (batch statistics), or where it does not directly follow the conv/linear
layer feeding a neuron (e.g. BN after pooling): such networks run dense (one line on stderr).

Supported graphs: chains of [conv|linear] -> [BN] -> LIF, 2-D max-pooling (kernel == stride) on
spikes, flatten, eval-mode dropout, and a linear readout: the registered ``mlp``, ``convnet``,
``vgg16`` (also masked, quantized, channel-pruned) and adapted SpikingJelly ``nn.Sequential`` nets
(``spikeprune.interop.adapt``) with LIF/IF neurons and hard reset to 0. Anything else (residual adds,
soft reset, pooling of currents, snnTorch's reset timing) falls back to the dense path with one line.
"""

from __future__ import annotations

import copy
import ctypes
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from spikeprune.engine import fused
from spikeprune.engine.neuron import LIF
from spikeprune.topology import BATCHNORM

__all__ = ["EventModel", "Unsupported", "compile", "load_kernel", "spike_flips"]

_SOURCE = Path(__file__).with_name("_event_kernel.c")
_VERSION = 4
#: a source row with at least this fraction of surviving weights is stored dense (see _event_kernel.c)
DENSE_ROW = 0.25
_lib: ctypes.CDLL | None = None
_failed: str | None = None


class Unsupported(Exception):
    """A layer or arrangement the event engine cannot run (the model then runs dense)."""


def load_kernel() -> ctypes.CDLL:
    """Build (once, cached; spikeprune.engine.fused's JIT path) and load ``_event_kernel.c``; raises on failure."""
    global _lib, _failed
    if _lib is not None:
        return _lib
    if _failed is not None:
        raise RuntimeError(_failed)
    try:
        lib = fused.build_library(_SOURCE, "event_kernel")
        if lib.event_kernel_version() != _VERSION:
            raise RuntimeError(f"stale kernel library {lib._name}")
        i64, cint, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
        for acc in ("i32", "f32"):
            f = getattr(lib, f"event_conv_{acc}")
            f.argtypes = [vp, vp] + [i64] * 13 + [vp] * 10 + [cint]
            f.restype = None
            f = getattr(lib, f"event_linear_{acc}")
            f.argtypes = [vp, vp, i64, i64, i64, vp, vp, vp, vp, vp, cint]
            f.restype = None
            f = getattr(lib, f"event_lif_{acc}")
            f.argtypes = [vp, vp, i64, i64, i64, vp, vp, ctypes.c_double, ctypes.c_double, ctypes.c_double,
                          cint, cint]
            f.restype = i64
            f = getattr(lib, f"event_affine_{acc}")
            f.argtypes = [vp, vp, i64, i64, vp, vp]
            f.restype = None
        lib.event_lif_static_f32.argtypes = [vp, vp, i64, i64, i64, i64, ctypes.c_float, ctypes.c_float,
                                              ctypes.c_float, cint]
        lib.event_lif_static_f32.restype = i64
        lib.event_maxpool_u8.argtypes = [vp, vp, i64, i64, i64, i64, i64, cint]
        lib.event_maxpool_u8.restype = None
    except Exception as exc:  # noqa: BLE001 - any build/load problem: the caller falls back
        _failed = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise RuntimeError(_failed) from None
    _lib = lib
    return lib


# --------------------------------------------------------------------------------------------------
# The compiled plan: one entry per operation after the encoding layer.
# --------------------------------------------------------------------------------------------------


@dataclass
class _Synapses:
    """Surviving weights of a conv/linear layer as CSR over the source index (see _event_kernel.c)."""

    kind: str  # "conv" | "linear"
    integer: bool  # int32 levels (quantized) or float32 values
    rowptr: torch.Tensor  # int64 [sources + 1] (empty ranges for the rows stored dense)
    cols: torch.Tensor  # int32 [sparse nnz] destination channel / feature
    vals: torch.Tensor  # int32 or float32 [sparse nnz]
    doff: torch.Tensor  # int64 [sources]: offset of the source's dense row in dvals, or -1 (sparse list)
    dvals: torch.Tensor  # int32 or float32 [dense rows * C_out]
    a: torch.Tensor  # float64 [C_out]: weight scale x BN gain (x input gain of the neuron)
    b: torch.Tensor  # float64 [C_out]: bias and BN shift (x input gain)
    out_channels: int
    geometry: tuple[int, ...] = ()  # conv: (KH, KW, sh, sw, ph, pw)
    nnz: int = 0
    dense_synapses: int = 0
    alive_per_source: torch.Tensor | None = None
    # stride-1 convs: per input channel, all its synapses as one list of (offset, value) (_event_kernel.c)
    flat: tuple[torch.Tensor, ...] | None = None


def _flat_lists(syn: _Synapses, wo: int) -> tuple[torch.Tensor, ...] | None:
    """(fbeg, fend, foff, fval, fdense) of a stride-1 conv whose output maps are ``wo`` wide: each input
    channel's sparse-row synapses (all k*k taps) as one list, with their destination's offset
    ``(-ky * wo - kx) * C_out + co`` from the output pixel (y + ph, x + pw), and its number of dense
    rows (_event_kernel.c). int64 [C_in], [C_in], [nnz], [nnz], [C_in]; None for strided convs."""
    kh, kw, sh, sw = syn.geometry[:4]
    if (sh, sw) != (1, 1):
        return None
    taps = kh * kw
    cin = syn.doff.numel() // taps
    counts = syn.rowptr[1:] - syn.rowptr[:-1]  # [C_in * k * k] sparse weights per row
    src = torch.repeat_interleave(torch.arange(cin * taps), counts)  # the row of each sparse weight (sorted)
    ky, kx = (src % taps) // kw, src % kw
    foff = ((-ky * wo - kx) * syn.out_channels + syn.cols.long()).contiguous()
    fend = torch.bincount(src // taps, minlength=cin).cumsum(0)
    fbeg = torch.cat([torch.zeros(1, dtype=torch.int64), fend[:-1]])
    fdense = (syn.doff.reshape(cin, taps) >= 0).sum(1)
    return fbeg.contiguous(), fend.contiguous(), foff, syn.vals, fdense.contiguous()


@dataclass
class _Neuron:
    beta: float
    u_th: float
    h_reset: float
    strict: bool  # fire at u > u_th (False: u >= u_th)


@dataclass
class _Step:
    op: str  # "conv" | "linear" | "pool" | "flatten" | "readout"
    name: str
    syn: _Synapses | None = None
    neuron: _Neuron | None = None
    pool: int = 0
    module: nn.Module | None = None  # the neuron module (spike recording in tests)
    neuron_name: str = ""


@dataclass
class EventStats:
    """Counters of the last call.

    ``fired[name]`` / ``slots[name]``: output spikes and neuron-timesteps of each event-driven neuron
    layer (its firing rate is the ratio). With ``EventModel.count = True`` also ``synaptic_events``: the
    weight additions the kernels performed (input spikes x surviving synapses of their channel; border
    pixels counted as interior) and ``dense_ops``: the multiply-adds the dense layers would do for the
    same inputs, same convention. Their ratio is the "firing rate x weight density" of the run.
    """

    fired: dict[str, int] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)
    synaptic_events: int = 0
    dense_ops: int = 0


def _bn_affine(bn: nn.Module | None, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` float64 ``[C]`` with ``bn(x) = a x + b`` per channel, measured on the module itself."""
    if bn is None:
        return torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    if bn.training or getattr(bn, "running_mean", None) is None:
        raise Unsupported(f"BatchNorm {type(bn).__name__} in training mode (or without running statistics) "
                          "normalises with batch statistics and cannot be folded")
    probe = copy.deepcopy(bn).double().eval()
    shape = (2, channels, 1, 1) if isinstance(bn, nn.BatchNorm2d) else (2, channels)
    x = torch.zeros(shape, dtype=torch.float64)
    x[1] = 1.0
    with torch.no_grad():
        y = probe(x).reshape(2, channels)
    return y[1] - y[0], y[0].clone()


def _weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """``(W, unit, integer)``: integer levels and their per-output scale ``[C_out]`` for a quantized layer,
    else the float weight the layer computes with (masks applied) and ``None``."""
    quant = getattr(layer, "quant", None)
    if quant is not None and callable(getattr(layer, "quantized_weight", None)):
        from spikeprune.compression.quant import weight_codes

        s = (1 << int(quant.bits)) - 1
        w = layer.weight.detach()
        gamma = layer.gamma().detach()
        codes = weight_codes(w, int(quant.bits), gamma).to(torch.int64)
        levels = torch.where(w == 0, torch.zeros((), dtype=torch.int64), 2 * codes - s)
        unit = (gamma.double() / s).reshape(-1).expand(w.shape[0]).clone()
        return levels, unit, True
    w = layer.weight.detach()
    mask = getattr(layer, "forward_mask", None)
    if mask is not None:
        w = w * mask
    return w.float(), None, False


def _csr(matrix: torch.Tensor, integer: bool) -> tuple[torch.Tensor, ...]:
    """Hybrid CSR of ``matrix [sources, dests]``: rows with >= DENSE_ROW surviving weights as dense rows,
    the others as (dest, value) lists of their nonzeros. Returns rowptr, cols, vals, doff, dvals."""
    dtype = torch.int32 if integer else torch.float32
    alive = matrix != 0
    per_row = alive.sum(1)
    dense_rows = per_row >= max(1, int(DENSE_ROW * matrix.shape[1] + 0.999999)) if matrix.shape[1] else per_row > 0
    sparse = alive & ~dense_rows[:, None]
    nz = sparse.nonzero()  # row-major order: sorted by source
    rowptr = torch.zeros(matrix.shape[0] + 1, dtype=torch.int64)
    if nz.numel():
        rowptr[1:] = torch.bincount(nz[:, 0], minlength=matrix.shape[0]).cumsum(0)
    vals = matrix[nz[:, 0], nz[:, 1]].to(dtype)
    idx = dense_rows.nonzero().flatten()
    doff = torch.full((matrix.shape[0],), -1, dtype=torch.int64)
    doff[idx] = torch.arange(len(idx), dtype=torch.int64) * matrix.shape[1]
    dvals = matrix[idx].to(dtype).reshape(-1)
    return (rowptr.contiguous(), nz[:, 1].to(torch.int32).contiguous(), vals.contiguous(), doff.contiguous(),
            dvals.contiguous())


class _GlobalAvgPool(nn.Module):
    """Marker: the mean over (H, W) of the spike map before a linear readout (SNN-VGG-16's head)."""


def _synapses(layer: nn.Module, bn: nn.Module | None, gain: float, flatten_from: tuple[int, int, int] | None,
              in_features: int | None = None, gap_from: tuple[int, int, int] | None = None) -> _Synapses:
    w, unit, integer = _weights(layer)
    if gap_from is not None:
        # mean_hw(s) @ W^T = (1 / HW) * sum over (h, w) of s @ W^T: the weight repeated at every position,
        # the 1/HW folded into the output scale (exact for the integer path).
        c, h, wd = gap_from
        if w.shape[1] != c:
            raise Unsupported(f"readout expects {w.shape[1]} features, the pooled map has {c}")
        w = w[:, None, :].expand(w.shape[0], h * wd, c).reshape(w.shape[0], -1)
        gain = gain / (h * wd)
    out = w.shape[0]
    if integer and int(w.abs().max() if w.numel() else 0) * max(w[0].numel(), 1) >= 2**31:
        raise Unsupported("quantized weights too wide for int32 accumulation")
    bn_a, bn_b = _bn_affine(bn, out)
    scale = unit if unit is not None else torch.ones(out, dtype=torch.float64)
    bias = layer.bias.detach().double() if getattr(layer, "bias", None) is not None \
        else torch.zeros(out, dtype=torch.float64)
    a = (scale * bn_a * gain).contiguous()
    b = ((bias * bn_a + bn_b) * gain).contiguous()
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros" \
                or isinstance(layer.padding, str):
            raise Unsupported(f"conv with groups/dilation/padding mode {layer.groups}/{layer.dilation}/"
                              f"{layer.padding_mode}/{layer.padding}")
        cin, kh, kw = w.shape[1:]
        csr = _csr(w.permute(1, 2, 3, 0).reshape(cin * kh * kw, out), integer)
        geo = (kh, kw, *layer.stride, *layer.padding)
        return _Synapses("conv", integer, *csr, a, b, out, geo, int((w != 0).sum()), w.numel(),
                         (w != 0).permute(1, 2, 3, 0).reshape(cin * kh * kw, out).sum(1))
    if isinstance(layer, nn.Linear):
        if flatten_from is not None:  # dense flatten is C-major ([C, H, W]); our maps are channel-last
            c, h, wd = flatten_from
            w = w.reshape(out, c, h, wd).permute(0, 2, 3, 1).reshape(out, -1)
        if in_features is not None and w.shape[1] != in_features:
            raise Unsupported(f"linear layer expects {w.shape[1]} inputs, the spike map has {in_features}")
        csr = _csr(w.t().contiguous(), integer)
        return _Synapses("linear", integer, *csr, a, b, out, (), int((w != 0).sum()), w.numel(), (w != 0).sum(0))
    raise Unsupported(f"layer {type(layer).__name__} (only Conv2d and Linear are event-driven)")


def _neuron(m: nn.Module) -> tuple[_Neuron, float]:
    """Parameters of a supported neuron and the gain its input enters the membrane with."""
    from spikeprune.interop.adapters import NeuronAdapter

    if isinstance(m, NeuronAdapter):
        if not m.kind in ("sj-lif", "sj-if") or m.reset_mode != "hard" or m.v_reset != 0.0 or m.emit != "spikes":
            raise Unsupported(f"neuron {m.kind} with {m.reset_mode} reset to {m.v_reset} (only SpikingJelly "
                              "LIF/IF with hard reset to 0)")
        return _Neuron(float(m.beta), float(m.u_th), 0.0, not m.fires_at_threshold), float(m.input_gain)
    if type(m) is LIF:
        return _Neuron(m.beta, m.u_th, m.v_reset, False), 1.0
    raise Unsupported(f"neuron {type(m).__name__}")


def _is_pool(m: nn.Module) -> bool:
    return isinstance(m, nn.MaxPool2d)


def _pool_size(m: nn.MaxPool2d) -> int:
    k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
    ks = (m.kernel_size, m.kernel_size) if isinstance(m.kernel_size, int) else tuple(m.kernel_size)
    ss = (m.stride, m.stride) if isinstance(m.stride, int) else tuple(m.stride)
    pad = m.padding if isinstance(m.padding, int) else max(m.padding)
    dil = m.dilation if isinstance(m.dilation, int) else max(m.dilation)
    if ks != (k, k) or ss != ks or pad != 0 or dil != 1 or m.ceil_mode:
        raise Unsupported(f"max-pool {ks}/{ss}/{pad}/{dil}/{m.ceil_mode} (only k x k, stride k, no padding)")
    return k


def _leaves(seq: nn.Module) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, m in seq.named_children():
        if type(m) is nn.Sequential:
            out += [(f"{name}.{n}", c) for n, c in _leaves(m)]
        else:
            out.append((name, m))
    return out


def _plan_chain(items: list[tuple[str, nn.Module]]) -> list[_Step]:
    """Group ``[conv|linear] [BN] neuron``, pools, flattens and the final readout layer into steps."""
    from spikeprune.interop.adapters import NeuronAdapter

    steps: list[_Step] = []
    i = 0
    while i < len(items):
        name, m = items[i]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bn = None
            j = i + 1
            if j < len(items) and isinstance(items[j][1], BATCHNORM):
                bn = items[j][1]
                j += 1
            if j < len(items) and isinstance(items[j][1], (LIF, NeuronAdapter)):
                neuron, gain = _neuron(items[j][1])
                steps.append(_Step("conv" if isinstance(m, nn.Conv2d) else "linear", name, neuron=neuron,
                                   module=items[j][1], syn=_pending(m, bn, gain), neuron_name=items[j][0]))
                i = j + 1
            elif j == len(items) and isinstance(m, nn.Linear):
                steps.append(_Step("readout", name, syn=_pending(m, bn, 1.0)))
                i = j
            else:
                raise Unsupported(f"{name}: {type(m).__name__} not followed by a spiking neuron (or a final readout)")
        elif _is_pool(m):
            steps.append(_Step("pool", name, pool=_pool_size(m)))
            i += 1
        elif isinstance(m, _GlobalAvgPool):
            steps.append(_Step("gap", name))
            i += 1
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise Unsupported(f"{name}: Flatten({m.start_dim}, {m.end_dim})")
            steps.append(_Step("flatten", name))
            i += 1
        elif isinstance(m, (nn.Dropout, nn.Identity)) and not m.training:
            i += 1
        else:
            raise Unsupported(f"{name}: {type(m).__name__}")
    if not steps or steps[-1].op != "readout":
        raise Unsupported("the network does not end in a linear readout")
    return steps


def _pending(layer: nn.Module, bn: nn.Module | None, gain: float) -> Any:
    # Synapses need the input shape (flatten order); built in EventModel._bind once shapes are known.
    return (layer, bn, gain)


def _split_registered(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[tuple[str, nn.Module]], nn.Module]:
    """(encoder, leaves after it, encoder neuron) for spikeprune's registered models and adapted nets."""
    from spikeprune.interop.adapters import AdaptedModel, NeuronAdapter
    from spikeprune.engine.models.layers import ConvBNLIF, LinearBNLIF, TimeFolded
    from spikeprune.engine.models.small import SpikingConvNet, SpikingMLP
    from spikeprune.engine.models.vgg import SpikingVGG

    def unfold(blocks) -> list[tuple[str, nn.Module]]:
        out = []
        for name, blk in blocks:
            if isinstance(blk, ConvBNLIF):
                out += [(f"{name}.conv", blk.conv), (f"{name}.bn", blk.bn), (f"{name}.lif", blk.lif)]
            elif isinstance(blk, LinearBNLIF):
                out += [(f"{name}.fc", blk.fc), (f"{name}.bn", blk.bn), (f"{name}.lif", blk.lif)]
            elif isinstance(blk, TimeFolded):
                out.append((f"{name}.module", blk.module))
            else:
                out.append((name, blk))
        return out

    if type(model) in (SpikingConvNet, SpikingVGG):
        if type(model) is SpikingVGG and type(model)._head is not SpikingVGG._head:
            raise Unsupported("SpikingVGG with a custom head")
        feats = list(model.features.named_children())
        first = model.features[0]
        if not isinstance(first, ConvBNLIF):
            raise Unsupported("convnet without a conv encoding block")
        head = _GlobalAvgPool() if type(model) is SpikingVGG else nn.Flatten()
        rest = unfold([(f"features.{n}", m) for n, m in feats[1:]]) + [("head", head), ("classifier", model.classifier)]
        def encode(x: torch.Tensor):
            if x.dim() == 4 and type(first.lif) is LIF and x.dtype == torch.float32:
                # static image: conv + BN once; the LIF runs in the engine, repeated over T (StaticCurrent)
                return _StaticCurrent(first.bn(first.conv(x)), first.lif, model.T)
            return first(x, model.T) if x.dim() == 4 else first(x)

        return encode, rest, first.lif
    if type(model) is SpikingMLP:
        first = model.features[0]
        rest = unfold([(f"features.{i}", m) for i, m in enumerate(model.features) if i > 0]) + [
            ("classifier", model.classifier)]
        return (lambda x: first(x.flatten(1), model.T) if x.dim() == 4 else first(x.flatten(2))), rest, first.lif
    if isinstance(model, AdaptedModel) and model.sequential:
        leaves = _leaves(model.net)
        idx = next((i for i, (_, m) in enumerate(leaves) if isinstance(m, NeuronAdapter)), None)
        if idx is None:
            raise Unsupported("no spiking neuron")
        prefix = nn.Sequential()
        for k, (_, m) in enumerate(leaves[: idx + 1]):
            prefix.add_module(str(k), m)

        def encode(x: torch.Tensor) -> torch.Tensor:
            static = x.dim() == model.static_dims
            model._reset_memories()
            return model._run(prefix, x, static)[0]

        return encode, [(f"net.{n}", m) for n, m in leaves[idx + 1:]], leaves[idx][1]
    raise Unsupported(f"model {type(model).__name__} (registered mlp/convnet/vgg16 or an adapted nn.Sequential)")


@dataclass
class _StaticCurrent:
    """The encoding layer's current ``[B, C, H, W]`` (direct encoding: the same at every timestep)."""

    current: torch.Tensor
    lif: LIF
    T: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.T, *self.current.shape)


class EventModel:
    """A compiled network: ``__call__(x) -> [T, B, classes]`` logits, like the dense model.

    ``x``: ``[B, C, H, W]`` (static, direct encoding) or ``[T, B, ...]``. After a call, ``stats`` holds
    the spikes per layer and the synaptic events processed; with ``record=True`` ``spikes`` holds every
    layer's spikes ``[T, B, C, H, W]`` / ``[T, B, N]`` (float, the dense layout) for comparison.
    ``dense`` is true where the engine could not run and ``__call__`` runs ``model`` itself; ``reason`` says
    why, and unless ``quiet`` one line on stderr does too.
    """

    def __init__(self, model: nn.Module, *, threads: int | None = None, quiet: bool = False) -> None:
        self.model = model
        self.threads = threads
        self.quiet = quiet
        self.dense = False
        self.reason = ""
        self.stats = EventStats()
        self.spikes: list[torch.Tensor] = []
        self.record = False
        self.count = False
        self._bound_shape: tuple[int, ...] | None = None
        # Work buffers reused across calls of the same shape: a fresh 50 MB accumulator costs a page
        # fault per 4 KiB on first touch (as in neuron.py's inference path).
        self._buffers: dict[tuple, torch.Tensor] = {}
        try:
            self.lib = load_kernel()
            self.encode, rest, self.encoder_neuron = _split_registered(model)
            self.steps = _plan_chain(rest)
            self.encoder_name = next((n for n, m in model.named_modules() if m is self.encoder_neuron), "encoder")
        except (Unsupported, RuntimeError) as exc:
            self._fallback(str(exc))

    def _fallback(self, why: str) -> None:
        self.dense, self.reason = True, why
        if not self.quiet:  # a caller that reports the reason itself (``spikeprune cost``'s table) says it once
            print(f"spikeprune: event engine not used ({why}); running the dense path", file=sys.stderr)

    @property
    def layers(self) -> list[str]:
        return [] if self.dense else [s.name for s in self.steps if s.op in ("conv", "linear", "readout")]

    def synapse_density(self) -> float:
        """Surviving / dense synapses over the event-driven layers."""
        syn = [s.syn for s in self.steps if isinstance(getattr(s, "syn", None), _Synapses)]
        return sum(s.nnz for s in syn) / max(sum(s.dense_synapses for s in syn), 1)

    def _bind(self, shape: tuple[int, ...]) -> None:
        """Build the synapse lists once the spike-map shape after the encoder is known ([C, H, W] or [N])."""
        cur = shape
        flat_from = gap_from = None
        for step in self.steps:
            if step.op == "pool":
                if len(cur) != 3:
                    raise Unsupported(f"{step.name}: pooling a non-spatial map")
                cur = (cur[0], cur[1] // step.pool, cur[2] // step.pool)
            elif step.op == "flatten":
                flat_from = cur if len(cur) == 3 else None
                cur = (int(torch.tensor(cur).prod()),)
            elif step.op == "gap":
                if len(cur) != 3:
                    raise Unsupported(f"{step.name}: average pool of a non-spatial map")
                gap_from, cur = cur, (int(torch.tensor(cur).prod()),)
            else:
                pend = step.syn if isinstance(step.syn, tuple) else step._pending
                step._pending = pend
                layer, bn, gain = pend
                if isinstance(layer, nn.Conv2d):
                    if len(cur) != 3:
                        raise Unsupported(f"{step.name}: conv on a non-spatial map")
                    syn = _synapses(layer, bn, gain, None)
                    if layer.in_channels != cur[0]:
                        raise Unsupported(f"{step.name}: {layer.in_channels} input channels, map has {cur[0]}")
                    kh, kw, sh, sw, ph, pw = syn.geometry
                    cur = (syn.out_channels, (cur[1] + 2 * ph - kh) // sh + 1, (cur[2] + 2 * pw - kw) // sw + 1)
                    syn.flat = _flat_lists(syn, cur[2])
                else:
                    if len(cur) == 3 and flat_from is None:
                        raise Unsupported(f"{step.name}: linear layer on a spatial map without Flatten")
                    if gap_from is not None and step.op != "readout":
                        raise Unsupported(f"{step.name}: average-pooled spikes feed a spiking layer")
                    syn = _synapses(layer, bn, gain, flat_from, None if gap_from else cur[0], gap_from)
                    flat_from = gap_from = None
                    cur = (syn.out_channels,)
                if step.op == "readout" and cur != (syn.out_channels,):
                    raise Unsupported("readout is not linear")
                step.syn = syn
        self._bound_shape = shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return self.model(x)
        with torch.no_grad():
            s = self.encode(x)  # [T, B, C, H, W] or [T, B, N] float spikes (dense encoding layer)
        shape = tuple(s.shape[2:]) if not isinstance(s, _StaticCurrent) else tuple(s.current.shape[1:])
        if self._bound_shape != shape:
            try:
                self._bind(shape)
            except Unsupported as exc:
                self._fallback(str(exc))
                return self.model(x)
        return self._run(s)

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        k = (key, tuple(shape), dtype)
        buf = self._buffers.get(k)
        if buf is None:
            if len(self._buffers) > 64:  # many shapes seen: keep memory bounded
                self._buffers.clear()
            buf = self._buffers[k] = torch.empty(shape, dtype=dtype)
        return buf

    def _run(self, s: torch.Tensor | _StaticCurrent) -> torch.Tensor:
        lib, nt = self.lib, int(self.threads or torch.get_num_threads())
        T, B = s.shape[:2]
        N = T * B
        self.stats = EventStats()
        self.spikes = []
        if isinstance(s, _StaticCurrent):
            cur = s.current.detach().contiguous()
            _, C, H, W = cur.shape
            spk = self._buffer("enc", (N, H, W, C), torch.uint8)
            fired = lib.event_lif_static_f32(cur.data_ptr(), spk.data_ptr(), T, B, C, H * W, s.lif.beta, s.lif.u_th,
                                             s.lif.v_reset, nt)
            if self.record:
                self.spikes.append(spk.reshape(T, B, H, W, C).permute(0, 1, 4, 2, 3).float().contiguous())
        else:
            if self.record:
                self.spikes.append(s.detach().float().clone())
            # channel-last uint8 spikes [N, H, W, C] (or [N, F])
            spk = (s.permute(0, 1, 3, 4, 2) if s.dim() == 5 else s).reshape(
                N, *([s.shape[3], s.shape[4], s.shape[2]] if s.dim() == 5 else [s.shape[2]]))
            spk = spk.to(torch.uint8).contiguous()
            fired = int(spk.sum(dtype=torch.int64))
        self.stats.fired[self.encoder_name] = int(fired)
        self.stats.slots[self.encoder_name] = spk.numel()
        for step in self.steps:
            if step.op == "pool":
                n_, h, w, c = spk.shape
                out = self._buffer(step.name, (n_, h // step.pool, w // step.pool, c), torch.uint8)
                lib.event_maxpool_u8(spk.data_ptr(), out.data_ptr(), n_, h, w, c, step.pool, nt)
                spk = out
                continue
            if step.op in ("flatten", "gap"):
                spk = spk.reshape(N, -1)
                continue
            syn = step.syn
            acc_t = torch.int32 if syn.integer else torch.float32
            suffix = "i32" if syn.integer else "f32"
            if self.count:
                self._count(spk, syn)
            if syn.kind == "conv":
                n_, h, w, c = spk.shape
                kh, kw, sh, sw, ph, pw = syn.geometry
                ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
                acc = self._buffer(step.name + "/acc", (N, ho, wo, syn.out_channels), acc_t)
                getattr(lib, f"event_conv_{suffix}")(
                    spk.data_ptr(), acc.data_ptr(), N, h, w, c, ho, wo, syn.out_channels, kh, kw, sh, sw, ph, pw,
                    syn.rowptr.data_ptr(), syn.cols.data_ptr(), syn.vals.data_ptr(), syn.doff.data_ptr(),
                    syn.dvals.data_ptr(), *([t.data_ptr() for t in syn.flat] if syn.flat else [None] * 5), nt)
            else:
                fin = spk.shape[1]
                acc = self._buffer(step.name + "/acc", (N, syn.out_channels), acc_t)
                getattr(lib, f"event_linear_{suffix}")(
                    spk.data_ptr(), acc.data_ptr(), N, fin, syn.out_channels, syn.rowptr.data_ptr(),
                    syn.cols.data_ptr(), syn.vals.data_ptr(), syn.doff.data_ptr(), syn.dvals.data_ptr(), nt)
            if step.op == "readout":
                out = torch.empty(N, syn.out_channels, dtype=torch.float32)
                getattr(lib, f"event_affine_{suffix}")(acc.data_ptr(), out.data_ptr(), acc.numel(), syn.out_channels,
                                                       syn.a.data_ptr(), syn.b.data_ptr())
                return out.reshape(T, B, syn.out_channels)
            new = self._buffer(step.name + "/spikes", acc.shape, torch.uint8)
            nrn = step.neuron
            fired = getattr(lib, f"event_lif_{suffix}")(
                acc.data_ptr(), new.data_ptr(), T, acc.numel() // T, syn.out_channels, syn.a.data_ptr(),
                syn.b.data_ptr(), nrn.beta, nrn.u_th, nrn.h_reset, int(nrn.strict), nt)
            self.stats.fired[step.neuron_name] = int(fired)
            self.stats.slots[step.neuron_name] = new.numel()
            spk = new
            if self.record:
                dense = spk.reshape(T, B, *spk.shape[1:])
                self.spikes.append((dense.permute(0, 1, 4, 2, 3) if dense.dim() == 5 else dense).float().contiguous())
        raise AssertionError("plan without readout")  # _plan_chain guarantees one

    def _count(self, spk: torch.Tensor, syn: _Synapses) -> None:
        per_source = syn.alive_per_source  # surviving synapses of each source
        if syn.kind == "conv":
            kh, kw = syn.geometry[:2]
            per_channel = per_source.reshape(-1, kh * kw).sum(1)  # [C_in]
            spikes = spk.sum(dim=(0, 1, 2), dtype=torch.int64)  # [C_in]
            sh, sw = syn.geometry[2:4]
            self.stats.synaptic_events += int((spikes * per_channel).sum()) // (sh * sw)
            self.stats.dense_ops += spk.numel() * syn.out_channels * kh * kw // (sh * sw)
        else:
            spikes = spk.sum(dim=0, dtype=torch.int64)
            self.stats.synaptic_events += int((spikes * per_source).sum())
            self.stats.dense_ops += spk.numel() * syn.out_channels


def evaluate_event(engine: EventModel, loader: Any, *, split: str = "test") -> dict[str, Any]:
    """:func:`spikeprune.engine.train.evaluate` run through the engine: ``{split}_accuracy``,
    ``{split}_loss``, ``firing_rate`` and ``firing_rates`` (the same keys as ``evaluate``).

    Firing rates come from the engine's counters (every neuron layer, the encoding one included).
    """
    from spikeprune.engine.train import evaluate

    fired: dict[str, int] = {}
    slots: dict[str, int] = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = engine(x)
        for k, v in engine.stats.fired.items():
            fired[k] = fired.get(k, 0) + v
            slots[k] = slots.get(k, 0) + engine.stats.slots[k]
        return out

    result = evaluate(engine.model, loader, forward=forward, split=split)
    if engine.dense:
        return result
    result["firing_rates"] = {k: fired[k] / slots[k] for k in fired if slots[k]}
    result["firing_rate"] = sum(fired.values()) / max(sum(slots.values()), 1)
    return result


def compile(model: nn.Module, *, threads: int | None = None, quiet: bool = False) -> EventModel:  # noqa: A001
    """Compile ``model`` (eval mode: BatchNorm with running statistics) for event-driven inference.

    Synapse lists are built at the first call (they need the encoder's output shape). Unsupported
    models give an :class:`EventModel` with ``dense=True`` (one line on stderr unless ``quiet``; the
    reason in ``reason``) that runs ``model``. (``compile`` is the public verb, shadowing the builtin.)
    """
    return EventModel(model, threads=threads, quiet=quiet)


def dense_spikes(model: nn.Module, x: torch.Tensor, neurons: list[nn.Module]) -> list[torch.Tensor]:
    """Spikes of ``neurons`` (in order) in a dense forward of ``model``, each ``[T, B, ...]`` float."""
    got: dict[int, torch.Tensor] = {}
    hooks = [n.register_forward_hook(lambda m, _i, o: got.__setitem__(id(m), o.detach().float().clone()))
             for n in neurons]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return [got[id(n)] for n in neurons], logits


def spike_flips(engine: EventModel, x: torch.Tensor, reference: nn.Module | None = None) -> dict[str, Any]:
    """Compare the engine with the dense path (``reference``, default the compiled model) on ``x``.

    Returns ``{"flips": [per-layer count of differing spikes], "spikes": [per-layer dense spike counts],
    "max_logit_diff": float}``. Flips cascade: a flip in layer l changes layer l+1's input.
    """
    reference = engine.model if reference is None else reference
    engine.record = True
    try:
        logits = engine(x)
    finally:
        engine.record = False
    names = dict(reference.named_modules())
    ours = dict(engine.model.named_modules())
    inv = {id(m): n for n, m in ours.items()}
    neurons = [names[inv[id(engine.encoder_neuron)]]] + [names[inv[id(s.module)]] for s in engine.steps
                                                         if s.op in ("conv", "linear")]
    dense, dense_logits = dense_spikes(reference, x, neurons)
    flips = [int((a != b.reshape(a.shape)).sum()) for a, b in zip(engine.spikes, dense)]
    return {"flips": flips, "spikes": [int(d.sum()) for d in dense],
            "max_logit_diff": float((logits.double() - dense_logits.double()).abs().max())}
