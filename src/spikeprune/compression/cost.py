"""Cost report (SPEC §8): parameters, stored size, operations, SOPs, energy and measured latency.

Generic: forward hooks on every conv/linear layer of *any* model record, on real data, the input each
layer receives; nothing assumes a registered architecture. For every layer that ran:

* ``params`` = weight + bias elements; ``nonzero`` = non-zero weights; ``density`` = nonzero / weights
  (a :class:`~spikeprune.Mask` applied to the model shows up here; channel pruning shows up as
  smaller shapes).
* ``bits``: the stored weight bit-width (a quantized layer's ``quant.bits``, else ``bits=``, else 32).
* ``size_dense_bytes`` = weights x bits / 8 + bias x 4 + scales x 4 (one fp32 gamma per layer, or per
  output channel); ``size_sparse_bytes`` = nonzero x bits / 8 + **index overhead** + bias + scales,
  where the index is a bitmap of 1 bit per weight position (``ceil(weights / 8)`` bytes; a CSR index
  would cost ~log2(fan-in) bits per *kept* weight instead, cheaper only below ~1/log2(fan-in) density).
* ``flops``: multiply-accumulates of ONE dense execution of the layer for one sample at one timestep
  (``C_out H_out W_out x C_in k_h k_w / groups`` for a conv, ``out x in`` for a linear layer);
  ``executions``: how often it ran per sample (T for layers on ``[T*B, ...]``, 1 for the encoding
  layer, which runs once on the static image).
* ``input_rate``: fraction of non-zero input entries (the firing rate when the input is spikes);
  ``input_is_spikes``: every input value was a non-negative integer -- spikes in {0, 1}, or the event
  counts of a frame of an event camera (``--encoding events``: a pixel that saw 3 events in a time bin
  holds 3).
* ``sops`` (layers fed spikes or events) = mean input x executions x flops x density (SPEC §8: weight
  sparsity counts; SpikingJelly's counter ignores it). For spikes the mean input is the firing rate;
  for event counts every event drives its own accumulates, so a count of 3 costs 3 (an event-driven
  chip processes the events one by one). ``sops_measured`` counts the accumulates that really happen
  (input value x non-zero weight pairs, padding and correlations included).
* ``macs`` (layers fed analog values: the encoding layer under direct encoding; also a classifier
  reading average-pooled spikes) = executions x flops x density.
* ``energy_pj`` = E_MAC x macs + E_AC x sops with E_MAC = 4.6 pJ and E_AC = 0.9 pJ (32-bit float,
  45 nm, Horowitz ISSCC 2014), both overridable. A constant per operation regardless of bit-width: the
  literature's convention (QP-SNN, SpikingJelly); it understates what quantization saves.

Latency: :func:`measure_latency` times ``model(x)``; :func:`measure_latencies` times it alternately with
the event-driven engine (``spikeprune.deploy.event_engine``, passed in: this layer may not import
``deploy``) and counts the engine's synaptic events, which the SOPs of the layers it drives estimate
(:meth:`CostReport.event_sops`).

The model total adds the other parameters (BatchNorm, counted as its folded per-channel scale and
shift, 2 fp32 values per channel). Totals are per sample (summed over the T timesteps).

``CostReport.neurobench`` holds NeuroBench 2.3's metrics computed by NeuroBench's own definitions
(neurobench.metrics.static / .workload), measured in the same pass, so a paper can quote both without
installing NeuroBench; tests/test_neurobench.py checks them against NeuroBench itself. The conventions
that differ from ours (docs/reports.md, "NeuroBench"):

* ``footprint`` = bytes of every parameter *and buffer* at its storage dtype (a fake-quantized model
  counts 4 bytes per weight; BatchNorm's running statistics and ``num_batches_tracked`` count).
* ``connection_sparsity`` = zero entries / entries of every conv/linear ``.weight`` (NeuroBench rounds
  it to 4 decimals; ``connection_sparsity_exact`` is the unrounded ratio).
* ``synops``: per conv/linear call, NeuroBench binarizes the input (non-zero -> 1) and the weight; the
  call is *spiking* when every input entry is in {-1, 0, 1}. ``effective_acs`` (spiking calls) and
  ``effective_macs`` (the others) = sum over outputs of #(non-zero input x non-zero weight) pairs;
  ``dense`` = the same with all-ones input and weights: zero padding is *not* counted (our
  ``dense_ops`` counts the full fan-in at every output), bias never.
* ``activation_sparsity`` = 1 - non-zero / entries of the outputs of every activation layer
  (spiking neurons, ReLU, Sigmoid) over all timesteps and samples.
* ``membrane_updates``: per neuron layer and forward pass, every neuron at the first step plus every
  (neuron, step > 0) whose membrane potential changed, per sample. NeuroBench itself counts only
  snnTorch neurons (it reads their ``.mem``); this report applies the definition to every LIF.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from spikeprune.core.diagnostics import UserError
from spikeprune.topology import BATCHNORM, evaluation, run_batches, sample_count

__all__ = ["E_AC_PJ", "E_MAC_PJ", "CostReport", "LayerCost", "cost_report", "measure_latencies", "measure_latency"]

E_MAC_PJ = 4.6  # 32-bit float multiply-accumulate, 45 nm (Horowitz 2014)
E_AC_PJ = 0.9  # 32-bit float accumulate, 45 nm (Horowitz 2014)

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerCost:
    """Cost of one conv/linear layer (per sample; see the module docstring for every field)."""

    name: str
    kind: str
    shape: list[int]
    params: int
    weights: int
    nonzero: int
    bits: int
    scales: int
    size_dense_bytes: float
    size_sparse_bytes: float
    flops: float
    executions: float
    input_rate: float
    input_is_spikes: bool
    macs: float
    sops: float
    sops_measured: float
    energy_pj: float

    @property
    def density(self) -> float:
        return self.nonzero / max(self.weights, 1)


@dataclass
class CostReport:
    """Per-layer rows and model totals (per sample) of :func:`cost_report`."""

    layers: list[LayerCost]
    other_params: int
    other_bytes: float
    samples: int
    e_mac_pj: float
    e_ac_pj: float
    latency: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: NeuroBench 2.3's metrics by its definitions (module docstring); per sample where it divides by samples
    neurobench: dict[str, Any] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, Any]:
        s = lambda key: sum(getattr(r, key) for r in self.layers)  # noqa: E731
        weights = s("weights")
        return {
            "params": s("params") + self.other_params,
            "weights": weights,
            "nonzero": s("nonzero"),
            "density": s("nonzero") / max(weights, 1),
            "size_dense_bytes": s("size_dense_bytes") + self.other_bytes,
            "size_sparse_bytes": s("size_sparse_bytes") + self.other_bytes,
            "dense_ops": sum(r.flops * r.executions for r in self.layers),
            "macs": s("macs"),
            "sops": s("sops"),
            "sops_measured": s("sops_measured"),
            "energy_pj": s("energy_pj"),
            "energy_uj": s("energy_pj") * 1e-6,
        }

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.layers:
            row = dict(r.__dict__)
            row["density"] = r.density
            rows.append(row)
        latency = self.latency
        if latency and latency.get("event"):
            latency = {**latency, "event": {**latency["event"], "cost_sops_per_sample": self.event_sops()}}
        return {"layers": rows, "total": self.totals, "other_params": self.other_params,
                "other_bytes": self.other_bytes, "samples": self.samples,
                "energy_constants_pj": {"mac": self.e_mac_pj, "ac": self.e_ac_pj},
                "latency": latency, "neurobench": self.neurobench, **self.extra}

    def event_sops(self) -> float | None:
        """The SOPs (per sample) of the layers the event engine drives (``latency.event.layers``): what its
        counted synaptic events are to be compared with. The engine runs the encoding layer densely, which
        under event-frame input (``--encoding events``) has SOPs of its own. ``None`` without an engine timing;
        the total where the engine named no layers."""
        event = (self.latency or {}).get("event")
        if not event:
            return None
        names = set(event.get("layers") or ())
        return sum(r.sops for r in self.layers if r.name in names) if names else self.totals["sops"]

    def table(self) -> str:
        """A fixed-width text table (one line per layer, then the total)."""
        head = (f"{'layer':<28}{'bits':>5}{'params':>10}{'density':>9}{'size B':>11}{'FLOPs':>12}"
                f"{'in rate':>9}{'MACs':>12}{'SOPs':>12}{'energy pJ':>13}")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(f"{r.name:<28}{r.bits:>5}{r.params:>10}{r.density:>9.3f}{r.size_dense_bytes:>11.0f}"
                         f"{r.flops:>12.3g}{r.input_rate:>9.3f}{r.macs:>12.3g}{r.sops:>12.3g}{r.energy_pj:>13.4g}")
        t = self.totals
        lines.append("-" * len(head))
        lines.append(f"{'total (+ BN ' + str(self.other_params) + ')':<28}{'':>5}{t['params']:>10}"
                     f"{t['density']:>9.3f}{t['size_dense_bytes']:>11.0f}{t['dense_ops']:>12.3g}{'':>9}"
                     f"{t['macs']:>12.3g}{t['sops']:>12.3g}{t['energy_pj']:>13.4g}")
        nb = self.neurobench
        if nb:
            lines.append(f"NeuroBench: footprint {nb['footprint']} B, connection sparsity "
                         f"{nb['connection_sparsity']:.4f}, activation sparsity {nb['activation_sparsity']:.4f}, "
                         f"SynOps dense {nb['synops']['Dense']:.6g} / effective MACs "
                         f"{nb['synops']['Effective_MACs']:.6g} / effective ACs {nb['synops']['Effective_ACs']:.6g}, "
                         f"membrane updates {nb['membrane_updates']:.6g} (docs/reports.md: conventions)")
        if self.latency:
            lines.append(f"latency: {self.latency['median_ms']:.2f} ms per batch of {self.latency['batch']} "
                         f"(median of {self.latency['repeats']}, {self.latency['threads']} thread(s))")
            event = self.latency.get("event")
            if event:
                # the engine's counted work next to the cost model's SOPs: the reader sees whether the
                # SOPs predict what the engine does (benchmarks/event_engine fits its time against them)
                driven = self.event_sops()
                sops = f"{driven:.6g}" if driven == t["sops"] else f"{driven:.6g} over the layers it drives, {t['sops']:.6g} in all"
                lines.append(f"event engine: {event['median_ms']:.2f} ms per batch ({event['speedup']:.2f}x the dense "
                             f"path's speed, timed alternately); {event['synaptic_events_per_sample']:.6g} synaptic "
                             f"events per sample (SOPs column: {sops})")
            elif self.latency.get("event_fallback"):
                lines.append(f"event engine: not used ({self.latency['event_fallback']}); only the dense path was timed")
        return "\n".join(lines)


def _bits_of(name: str, module: nn.Module, bits: int | Mapping[str, int] | None) -> tuple[int, int]:
    """(stored weight bits, number of fp32 scales) of a layer."""
    spec = getattr(module, "quant", None)
    if spec is not None and hasattr(spec, "bits"):
        scales = module.weight.shape[0] if getattr(spec, "per_channel", False) else 1
        return int(spec.bits), scales
    b = bits.get(name, 32) if isinstance(bits, Mapping) else (32 if bits is None else bits)
    if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32:
        raise UserError(f"bits for layer {name!r} must be an integer in [1, 32]; got {b!r}")
    return b, (1 if b < 32 else 0)


def _effective_weight(module: nn.Module) -> torch.Tensor:
    fn = getattr(module, "quantized_weight", None)
    return (fn() if callable(fn) else module.weight).detach()


def _flops(module: nn.Module, y: torch.Tensor, lead: int) -> float:
    """MACs of one execution for one sample at one timestep: outputs per execution x fan-in.

    ``lead``: how many (sample, timestep) executions the call's leading dims hold (``T*B`` for
    ``[T, B, ...]`` and ``[T*B, ...]``, ``B`` for the encoding layer's ``[B, ...]``), from the traced layout.
    """
    if isinstance(module, nn.Linear):
        fan_in = module.in_features
    else:
        fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
    return float(y.numel() // lead * fan_in)


def _measured_sops(module: nn.Module, x: torch.Tensor) -> float:
    """Accumulates that really happen: sum over outputs of input count x #(non-zero weight) pairs (a spike
    counts 1, a pixel with k events counts k)."""
    active = x.to(torch.float32)
    wmask = (module.weight.detach() != 0).to(torch.float32)
    if isinstance(module, nn.Linear):
        return float((active.reshape(-1, active.shape[-1]).sum(0) * wmask.sum(0)).sum())
    # any leading layout ([T, B, C, H, W] of a multi-step layer included) folds into one batch axis
    active = active.reshape(-1, *x.shape[x.dim() - len(module.kernel_size) - 1:])
    conv = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[
        next(t for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d) if isinstance(module, t))]
    out = conv(active, wmask, None, module.stride, module.padding, module.dilation, module.groups)
    return float(out.sum())


def _conv_fn(module: nn.Module):
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(module.kernel_size)]


def _neurobench_ops(module: nn.Module, x: torch.Tensor) -> tuple[int, int, bool]:
    """NeuroBench's ``single_layer_MACs`` of one call: (effective, dense, spiking).

    As neurobench.metrics.utils.layers: input and weight binarized (non-zero -> 1; all ones for the
    dense count), bias excluded, summed over every output of the call; spiking = inputs in {-1, 0, 1}.
    """
    spiking = bool(((x == 0) | (x == 1) | (x == -1)).all())
    active = (x != 0).to(torch.float32)
    wmask = (module.weight.detach() != 0).to(torch.float32)
    ones_w = torch.ones_like(wmask)
    if isinstance(module, nn.Linear):
        eff = float((active @ wmask.t()).sum())
        dense = float(active[..., 0].numel()) * wmask.numel()
        return int(eff), int(dense), spiking
    conv = _conv_fn(module)
    a = active.reshape(-1, *x.shape[x.dim() - len(module.kernel_size) - 1:])
    args = (None, module.stride, module.padding, module.dilation, module.groups)
    eff = float(conv(a, wmask, *args).sum())
    dense = float(conv(torch.ones_like(a), ones_w, *args).sum())
    return int(eff), int(dense), spiking


def _activation_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers NeuroBench's activation hooks see: spiking neurons (ours, adapters of third-party
    neurons, snnTorch's), ReLU and Sigmoid; never the package neuron *inside* an adapter (counted once)."""
    from spikeprune.engine.neuron import LIF
    try:
        import snntorch
        snn_types: tuple[type, ...] = (snntorch.SpikingNeuron,)
    except Exception:  # snnTorch is optional
        snn_types = ()
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, m: nn.Module) -> None:
        for n, c in m.named_children():
            name = f"{prefix}.{n}" if prefix else n
            if isinstance(c, (LIF, nn.ReLU, nn.Sigmoid) + snn_types):
                out.append((name, c))
            else:
                walk(name, c)
    walk("", model)
    return out


def _lead(time_major: bool, x: torch.Tensor) -> int:
    """(sample, timestep) executions held by the leading dims of a layer's input ``x``: ``T*B`` for a
    time-major ``[T, B, ...]`` input (as traced), else dim 0 (``[T*B, ...]`` or the encoding ``[B, ...]``)."""
    return int(x.shape[0] * x.shape[1]) if time_major else int(x.shape[0])


def _traced_time_major(graph: Any, name: str) -> bool:
    calls = graph.calls(name)
    return bool(calls) and graph.input_layout(calls[0]) == "TB"


@torch.no_grad()
def cost_report(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    num_batches: int | None = 4,
    bits: int | Mapping[str, int] | None = None,
    e_mac_pj: float = E_MAC_PJ,
    e_ac_pj: float = E_AC_PJ,
    measure_sops: bool = True,
    batch_size: int | None = None,
) -> CostReport:
    """Cost of ``model`` measured on ``batches`` (eval mode, no gradients).

    Args:
        model: any module; its conv/linear layers are walked with hooks.
        batches: ``(x, y)`` pairs or inputs; ``x`` is ``[B, C, H, W]`` (static, direct encoding) or
            ``[T, B, ...]``. Firing rates are averaged over them; every count is per sample, whatever
            the batch sizes (each layer's layout - ``[T, B, ...]``, ``[T*B, ...]`` or the encoding
            layer's ``[B, ...]`` - comes from the traced graph, :mod:`spikeprune.topology`).
        num_batches: how many batches to use (``None``: all).
        bits: stored weight bit-width of layers that are not quantization-aware modules (an int for
            all, or ``{module name: bits}``); default 32.
        e_mac_pj, e_ac_pj: energy per MAC and per accumulate (pJ).
        measure_sops: also count the accumulates that really happen (one extra conv per layer).
        batch_size: samples per batch when it cannot be read from ``x`` (dim 1 of a time-major input, else dim 0).

    Every module's train/eval flag is restored afterwards (BatchNorm statistics are never updated).
    """
    for label, value in (("e_mac_pj", e_mac_pj), ("e_ac_pj", e_ac_pj)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
            raise UserError(f"{label} must be a finite number >= 0; got {value!r}")
    for name, b in (bits.items() if isinstance(bits, Mapping) else [("all layers", bits)]):
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32):
            raise UserError(f"bits for {name} must be an integer in [1, 32]; got {b!r}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _LAYERS) and getattr(m, "weight", None) is not None}
    if not layers:
        raise UserError(f"{type(model).__name__} has no conv or linear layer to cost")
    acc: dict[str, dict[str, float]] = {}
    from spikeprune.engine.neuron import LIF
    act = {"nonzero": 0, "numel": 0, "updates": 0}

    def act_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, LIF):  # spikes and membrane come from the observer (an adapter may emit u)
            return
        y = output[0] if isinstance(output, tuple) else output
        act["nonzero"] += int(torch.count_nonzero(y))
        act["numel"] += int(y.numel())

    def lif_observer(lif: nn.Module, u: torch.Tensor, spikes: torch.Tensor) -> None:
        act["nonzero"] += int(torch.count_nonzero(spikes))
        act["numel"] += int(spikes.numel())
        # NeuroBench's MembraneUpdates: all neurons at the first step, then those whose potential changed
        act["updates"] += int(u[0].numel()) + int(torch.count_nonzero(u[1:] - u[:-1]))

    def hook(name: str, time_major: bool):
        def fn(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach()
            a = acc.setdefault(name, {"flops": 0.0, "rows": 0.0, "nonzero": 0.0, "numel": 0.0, "binary": 1.0, "sum": 0.0,
                                      "measured": 0.0, "nb_mac": 0, "nb_ac": 0, "nb_dense": 0})
            eff, dense, spiking = _neurobench_ops(module, x)
            a["nb_ac" if spiking else "nb_mac"] += eff
            a["nb_dense"] += dense
            lead = _lead(time_major, x)
            a["flops"] = _flops(module, output, lead)
            a["rows"] += lead
            a["nonzero"] += float((x != 0).sum())
            a["numel"] += float(x.numel())
            a["sum"] += float(x.sum())
            # "binary" keeps its historical name: spikes, or event counts (non-negative integers)
            if a["binary"] and not bool(((x >= 0) & (x == torch.round(x))).all()):
                a["binary"] = 0.0
            if measure_sops:
                a["measured"] += _measured_sops(module, x)
        return fn

    def install(graph: Any) -> list[Any]:  # each layer's layout, from the graph traced on the first batch
        handles = [m.register_forward_hook(hook(n, _traced_time_major(graph, n))) for n, m in layers.items()]
        return handles + [m.register_forward_hook(act_hook) for _, m in _activation_modules(model)]

    _, samples, _ = run_batches(model, batches, num_batches, observer=lif_observer, install=install,
                                empty="the cost report needs at least one batch; the data was empty",
                                batch_size=batch_size)

    rows: list[LayerCost] = []
    for name, module in layers.items():
        if name not in acc:  # never executed
            continue
        a = acc[name]
        w = _effective_weight(module)
        weights = w.numel()
        nonzero = int((w != 0).sum())
        bias = module.bias.numel() if getattr(module, "bias", None) is not None else 0
        b, scales = _bits_of(name, module, bits)
        density = nonzero / max(weights, 1)
        executions = a["rows"] / samples
        rate = a["nonzero"] / max(a["numel"], 1)
        spikes = bool(a["binary"])
        fixed = bias * 4 + scales * 4
        ops = executions * a["flops"] * density
        macs = 0.0 if spikes else ops
        sops = a["sum"] / max(a["numel"], 1) * ops if spikes else 0.0  # = rate * ops for {0, 1} spikes
        measured = a["measured"] / samples if spikes and measure_sops else 0.0
        rows.append(LayerCost(
            name=name, kind="linear" if isinstance(module, nn.Linear) else "conv", shape=list(w.shape),
            params=weights + bias, weights=weights, nonzero=nonzero, bits=b, scales=scales,
            size_dense_bytes=weights * b / 8 + fixed,
            size_sparse_bytes=nonzero * b / 8 + math.ceil(weights / 8) + fixed,
            flops=a["flops"], executions=executions, input_rate=rate, input_is_spikes=spikes,
            macs=macs, sops=sops, sops_measured=measured, energy_pj=e_mac_pj * macs + e_ac_pj * sops,
        ))
    other = sum(2 * m.num_features for m in model.modules() if isinstance(m, BATCHNORM))
    report = CostReport(rows, other, other * 4.0, samples, float(e_mac_pj), float(e_ac_pj))
    report.neurobench = _neurobench_summary(model, layers, acc, act, samples)
    return report


def _neurobench_summary(model: nn.Module, layers: Mapping[str, nn.Module], acc: Mapping[str, Mapping[str, float]],
                        act: Mapping[str, int], samples: int) -> dict[str, Any]:
    """NeuroBench 2.3's static and workload metrics by its definitions (module docstring)."""
    footprint = sum(p.numel() * p.element_size() for p in model.parameters())
    footprint += sum(b.numel() * b.element_size() for b in model.buffers())
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    entries = sum(m.weight.numel() for m in layers.values())
    sparsity = zeros / max(entries, 1)
    total = lambda key: sum(a[key] for a in acc.values())  # noqa: E731
    return {
        "version": "2.3",
        "footprint": int(footprint),
        "connection_sparsity": round(sparsity, 4),
        "connection_sparsity_exact": sparsity,
        "activation_sparsity": (act["numel"] - act["nonzero"]) / act["numel"] if act["numel"] else 0.0,
        "synops": {"Effective_MACs": total("nb_mac") / samples, "Effective_ACs": total("nb_ac") / samples,
                   "Dense": total("nb_dense") / samples},
        "membrane_updates": act["updates"] / samples,
    }


@torch.no_grad()
def measure_latency(model: nn.Module, x: torch.Tensor, *, repeats: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Wall-clock inference time of ``model(x)`` on the CPU (eval mode, no gradients).

    Returns the median, 10th and 90th percentile in ms over ``repeats`` timed runs (after ``warmup``),
    the batch size and the number of intra-op threads. Only ratios measured in one process, side by
    side, are meaningful on a shared machine.
    """
    return measure_latencies(model, x, repeats=repeats, warmup=warmup)


def _summary(times: list[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile (nearest rank) of timings in ms."""
    times = sorted(times)
    q = lambda p: times[min(len(times) - 1, int(p * (len(times) - 1) + 0.5))]  # noqa: E731
    return {"median_ms": statistics.median(times), "p10_ms": q(0.1), "p90_ms": q(0.9)}


@torch.no_grad()
def measure_latencies(model: nn.Module, x: torch.Tensor, *, repeats: int = 10, warmup: int = 2,
                      event_engine: Any | None = None, count_on: Iterable[Any] | None = None) -> dict[str, Any]:
    """:func:`measure_latency` of the dense path and, given ``event_engine``, of that engine on the same batch.

    Args:
        model: the network (run in eval mode, no gradients).
        x: one input batch, ``[B, C, H, W]`` (static) or ``[T, B, ...]``.
        repeats, warmup: timed and untimed calls of *each* path.
        event_engine: a compiled event-driven engine of ``model`` (``spikeprune.deploy.event_engine.compile``;
            passed in because this layer may not import ``deploy``): called like the model, with ``dense``
            (true where it could not run and runs the model itself), ``reason`` (why), ``count`` (when set,
            the next call counts its work), after a counted call ``stats.synaptic_events`` (weight
            additions performed, summed over the batch) and, optionally, ``layers`` (names of the layers it drives).
        count_on: the batches (``(x, y)`` pairs or inputs) whose synaptic events are counted; default ``[x]``.
            Pass the batches :func:`cost_report` read, so the count and the SOPs column see the same spikes.

    The calls alternate (dense, engine, dense, engine, ...) so that the load of a shared machine slows
    both alike; the speed-up is the ratio of the medians. Returns :func:`measure_latency`'s keys (the dense
    path) and, when the engine ran, ``event``: ``median_ms``, ``p10_ms``, ``p90_ms``, ``speedup`` (dense
    median / event median), ``alternate`` (True), ``synaptic_events_per_sample`` (counted over
    ``count_on``, per sample), ``counted_samples`` and ``layers`` (the engine's ``layers``: the conv/linear
    layers it drives by spikes; :meth:`CostReport.event_sops` sums their SOPs). Where the engine fell back to the dense path (at
    compilation or at its first call) there is no ``event`` entry but ``event_fallback``: the engine's reason.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"latency repeats must be a positive integer; got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise UserError(f"latency warm-up must be an integer >= 0; got {warmup!r}")
    engine = event_engine
    dense_ms: list[float] = []
    event_ms: list[float] = []
    with evaluation(model):
        if engine is not None:
            # one untimed call first: the engine builds its synapse lists there, and may only then find
            # that it cannot run this network (it then runs the model, which would time dense as "event")
            engine(x)
            if engine.dense:
                engine = None
        for i in range(warmup + repeats):
            tick = time.perf_counter()
            model(x)
            tock = time.perf_counter()
            if engine is not None:
                engine(x)
                done = time.perf_counter()
            if i >= warmup:
                dense_ms.append((tock - tick) * 1e3)
                if engine is not None:
                    event_ms.append((done - tock) * 1e3)
        result: dict[str, Any] = {**_summary(dense_ms), "repeats": repeats, "batch": sample_count(model, x),
                                  "threads": torch.get_num_threads()}
        if event_engine is None:
            return result
        if engine is None:
            result["event_fallback"] = event_engine.reason or "the engine runs the dense path"
            return result
        events = samples = 0
        engine.count = True
        try:
            for batch in ([x] if count_on is None else count_on):
                xb = batch[0] if isinstance(batch, (tuple, list)) else batch
                engine(xb)
                events += int(engine.stats.synaptic_events)
                samples += sample_count(model, xb)
        finally:
            engine.count = False
    if samples == 0:
        raise UserError("counting the event engine's synaptic events needs at least one batch; count_on was empty")
    timed = _summary(event_ms)
    result["event"] = {**timed, "speedup": result["median_ms"] / timed["median_ms"] if timed["median_ms"] else math.inf,
                       "alternate": True, "synaptic_events_per_sample": events / samples, "counted_samples": samples,
                       "layers": list(getattr(engine, "layers", ()))}
    return result
