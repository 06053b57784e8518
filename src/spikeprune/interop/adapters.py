"""Interop: run spikeprune's statistics, pruning, flip analysis, quantization and cost report on models
built with SpikingJelly or snnTorch, without rewriting them (docs/interop.md).

:func:`adapt` wraps a third-party network so it looks like a spikeprune model:

* every supported neuron is replaced, in place, by a :class:`NeuronAdapter` that *holds* the original
  neuron object (its parameters, e.g. PLIF's learned ``w``, stay trainable) and runs the package's own
  dynamics over the whole sequence ``[T, B, ...]``. The adapter is a :class:`~spikeprune.LIF` subclass, so
  ``observe``/``record_statistics``/``calibrate``/the ``sf`` criteria/``flip_analysis`` find it; it reads
  the neuron's threshold ``u_th``, decay ``beta``, reset and input gain from the package's attributes;
* the pre-spike membrane potential ``u_t`` that the observers need is recomputed from the neuron's input
  ``x_t`` and the package's own post-reset state ``h_{t-1}`` with the package's documented charge
  equation, and checked against the package's spikes (:class:`SpikeMismatchError` if they disagree
  beyond float rounding at the threshold);
* an :class:`AdaptedModel` runs the network time-major: a static image ``[B, C, H, W]`` goes through the
  layers before the first neuron once (the encoding layer, as in spikeprune's own models) and is then
  repeated over T; stateless layers run on ``[T*B, ...]``; the result is per-timestep ``[T, B, ...]``.

Neuron state never survives a forward pass: each adapter resets its neuron before and after every
sequence, so ``copy.deepcopy``, ``state_dict`` snapshots (rewinding) and repeated evaluation are safe,
exactly as with spikeprune's stateless :class:`~spikeprune.LIF` (both packages keep the membrane on the
module - SpikingJelly ``v``, snnTorch ``mem`` - and a copy taken after a forward pass would otherwise
start its next pass from the stale potential).

Stateful SpikingJelly layers that are not neurons (``layer.Dropout``'s mask) are reset before and after every
sequence as well, as ``functional.reset_net`` would. The adapted model is in the mode the user's net is in.

Supported: SpikingJelly ``LIFNode``, ``ParametricLIFNode``, ``IFNode`` (single- or multi-step, hard or
soft reset, ``decay_input`` either way) and snnTorch ``Leaky`` with ``init_hidden=True`` (reset
``"subtract"``, ``"zero"`` or ``"none"``; scalar beta/threshold), and subclasses of them that override only
``__init__``/``extra_repr``. Anything else that is recognisably a spiking neuron of those packages (an instance
of SpikingJelly's ``BaseNode`` or snnTorch's ``SpikingNeuron``, wherever its class is defined) raises
``ValueError`` naming its class and listing what is supported. A final snnTorch ``output=True`` neuron is read
out by its membrane potential (``adapt(output=...)``, docs/interop.md "Decisions").
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.foreign import (
    _SUPPORTED_TEXT,
    SUPPORTED_NEURONS,
    _is_sj_memory,
    _is_sj_neuron,
    _is_third_party_neuron,
    _qualname,
    _sj,
    _snn,
    _unsupported,
)
from spikeprune.engine.neuron import LIF

__all__ = ["AdaptedModel", "NeuronAdapter", "OUTPUTS", "SUPPORTED_NEURONS", "SpikeMismatchError", "adapt",
           "find_neurons", "load_factory", "neuron_summary"]

class SpikeMismatchError(RuntimeError):
    """The recomputed membrane potential does not reproduce the package's own spikes."""


def _scalar(value: Any, what: str, path: str, m: nn.Module) -> float:
    t = torch.as_tensor(value).detach()
    if t.numel() != 1:
        raise _unsupported(path, m, f"{what} must be one number for the layer, got shape {tuple(t.shape)}")
    return float(t.reshape(()))


#: what a subclass of a supported neuron may define and still run exactly as its base class: anything else
#: (``neuronal_charge``, ``single_step_forward``, ``*_functional_forward``, ``forward``, ``fire``, ``mem_reset``,
#: ``_base_state_function``, a property, a class attribute...) can change the dynamics the adapter recomputes
_SAFE_OVERRIDES = frozenset({"__init__", "extra_repr", "__doc__", "__module__", "__qualname__", "__dict__",
                             "__weakref__", "__annotations__", "__firstlineno__", "__static_attributes__",
                             "__orig_bases__", "__parameters__"})


def _supported_base(path: str, m: nn.Module, bases: dict[type, str]) -> str | None:
    """The kind of the supported class ``m`` is an instance of, if any; ``ValueError`` if ``m``'s class is a
    subclass of it that overrides anything besides ``__init__``/``extra_repr``."""
    for cls in type(m).__mro__:
        if cls in bases:
            break
    else:
        return None
    overridden = sorted({k for c in type(m).__mro__[:type(m).__mro__.index(cls)] for k in vars(c)}
                        - _SAFE_OVERRIDES)
    if overridden:
        raise _unsupported(path, m, f"a subclass of {cls.__module__}.{cls.__qualname__} that overrides "
                           f"{', '.join(overridden)}; only __init__ and extra_repr may be overridden")
    return bases[cls]


def _kind(path: str, m: nn.Module) -> str:
    """``"sj-lif"``, ``"sj-plif"``, ``"sj-if"`` or ``"snn-leaky"``; ``ValueError`` for anything else."""
    sj = _sj()
    if sj is not None and _is_sj_neuron(m):
        neuron = sj[1]
        bases = {getattr(neuron, name): kind for name, kind in
                 (("LIFNode", "sj-lif"), ("ParametricLIFNode", "sj-plif"), ("IFNode", "sj-if")) if hasattr(neuron, name)}
        kind = _supported_base(path, m, bases)
        if kind is None:
            raise _unsupported(path, m)
        if getattr(m, "_neuron_precision", None) is not None:
            raise _unsupported(path, m, "explicit neuron precision (Triton kernels) is not supported")
        return kind
    snn = _snn()
    if snn is not None and isinstance(m, snn.SpikingNeuron) and _supported_base(path, m, {snn.Leaky: "snn-leaky"}):
        if not m.init_hidden:
            raise _unsupported(path, m, "snntorch Leaky needs init_hidden=True so the membrane lives on the module")
        if not getattr(m, "reset_delay", True):
            raise _unsupported(path, m, "reset_delay=False hides the pre-spike membrane potential")
        if m.inhibition:
            raise _unsupported(path, m, "inhibition=True couples the neurons of a layer")
        if m.state_quant:
            raise _unsupported(path, m, "state_quant is not supported")
        if _scalar(m.graded_spikes_factor, "graded_spikes_factor", path, m) != 1.0:
            raise _unsupported(path, m, "graded spikes (graded_spikes_factor != 1) are not binary")
        _scalar(m.beta, "beta", path, m)
        _scalar(m.threshold, "threshold", path, m)
        return "snn-leaky"
    raise _unsupported(path, m)


def find_neurons(model: nn.Module) -> dict[str, nn.Module]:
    """Third-party spiking neurons of ``model`` by qualified name (supported or not), in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module; got {type(model).__name__}")
    found: dict[str, nn.Module] = {}
    skip: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue  # inside a neuron (e.g. its surrogate function module) or an adapter
        if isinstance(m, NeuronAdapter):
            skip.append(name)
        elif _is_third_party_neuron(m):
            found[name] = m
            skip.append(name)
    return found


# --------------------------------------------------------------------------------------------------
# The neuron adapter.
# --------------------------------------------------------------------------------------------------


class NeuronAdapter(LIF):
    """A third-party neuron seen as a :class:`~spikeprune.LIF`: ``[T, B, ...]`` currents -> spikes.

    Holds the original module as ``.neuron`` and runs the package's own forward (and so its surrogate
    gradient and learnable parameters). Attributes read live from the neuron: ``u_th`` (threshold),
    ``beta`` (membrane decay per step: SpikingJelly ``1 - 1/tau``, PLIF ``1 - sigmoid(w)``, IF ``1``;
    snnTorch ``beta``), ``v_reset`` (hard-reset value, ``None`` for a soft reset), ``reset_mode``
    (``"hard"``, ``"soft"`` = subtract the threshold, ``"none"``), ``input_gain`` (the factor the input
    current enters the membrane with: ``1/tau`` with SpikingJelly's ``decay_input=True``, else 1) and
    ``fires_at_threshold`` (SpikingJelly fires at ``u >= u_th``, snnTorch at ``u > u_th``).
    """

    third_party = True  # spikeprune.compression.quant refuses to swap these for its own QuantizedLIF

    def __init__(self, neuron: nn.Module, kind: str, path: str = "") -> None:
        nn.Module.__init__(self)  # LIF.__init__ would set its own float parameters
        self.neuron = neuron
        self.kind = kind
        self.path = path
        #: what forward returns: "spikes", or "membrane" (the pre-spike u_t, with its gradient) for a final
        #: neuron read out by its potential (adapt(output=...))
        self.emit = "spikes"
        self.observer = None
        self.check_spikes = True  # verify recomputed u against the package's spikes when observed
        self.step_mode = getattr(neuron, "step_mode", "s")
        self.training = neuron.training  # the user's mode, not nn.Module's default (train)

    # -- parameters read from the package's module ------------------------------------------------
    @property
    def u_th(self) -> float:  # type: ignore[override]
        n = self.neuron
        return float(n.v_threshold) if self.kind.startswith("sj") else _scalar(n.threshold, "threshold", "", n)

    @property
    def beta(self) -> float:  # type: ignore[override]
        n = self.neuron
        if self.kind == "sj-lif":
            return 1.0 - 1.0 / float(n.tau)
        if self.kind == "sj-plif":
            return 1.0 - float(torch.sigmoid(n.w.detach()))
        if self.kind == "sj-if":
            return 1.0
        return min(max(_scalar(n.beta, "beta", "", n), 0.0), 1.0)  # snnTorch clamps beta to [0, 1]

    @property
    def reset_mode(self) -> str:
        # not called ``reset``: SpikingJelly's functional.reset_net calls every module's ``reset()``
        n = self.neuron
        if self.kind.startswith("sj"):
            return "soft" if n.v_reset is None else "hard"
        return {"subtract": "soft", "zero": "hard", "none": "none"}[n.reset_mechanism]

    @property
    def v_reset(self) -> float | None:  # type: ignore[override]
        if self.reset_mode != "hard":
            return None
        return float(self.neuron.v_reset) if self.kind.startswith("sj") else 0.0

    @property
    def input_gain(self) -> float:
        n = self.neuron
        if self.kind.startswith("sj") and self.kind != "sj-if" and n.decay_input:
            return 1.0 - self.beta  # SpikingJelly: H = V + (X - (V - V_reset)) / tau
        return 1.0

    @property
    def fires_at_threshold(self) -> bool:
        return self.kind.startswith("sj")

    @property
    def detach_reset(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.neuron, "detach_reset", False))

    def mapping(self) -> dict[str, Any]:
        """The neuron's parameters in spikeprune's terms (JSON-ready)."""
        return {"source": _qualname(self.neuron), "kind": self.kind, "beta": self.beta, "u_th": self.u_th,
                "reset": self.reset_mode, "v_reset": self.v_reset, "input_gain": self.input_gain,
                "fires_at_threshold": self.fires_at_threshold, "step_mode": self.step_mode, "output": self.emit}

    # -- state handling -----------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget the membrane (the package's own reset; snnTorch: back to its empty initial state)."""
        n = self.neuron
        if self.kind.startswith("sj"):
            n.reset()
        else:
            n.mem = torch.zeros(0, device=n.mem.device, dtype=n.mem.dtype)

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: input currents ``[T, B, ...]`` -> spikes ``[T, B, ...]`` (the package's own), or with
        ``emit == "membrane"`` the pre-spike membrane potential ``u_t`` ``[T, B, ...]`` (differentiable)."""
        if x.dim() < 2:
            raise UserError(f"{self.kind} adapter expects a time-major input [T, B, ...]; got {tuple(x.shape)}")
        observing = self.observer is not None
        membrane = self.emit == "membrane"
        self.reset_state()
        try:
            if self.kind.startswith("sj"):
                spikes, u = self._run_sj(x, observing or membrane, membrane)
            else:
                spikes, u = self._run_snn(x, observing or membrane, membrane)
        finally:
            self.reset_state()  # no state survives the call: deepcopy / rewinding stay clean
        if observing:
            if self.check_spikes:
                self._check(u.detach(), spikes)
            self.observer(self, u.detach(), spikes)
        return u if membrane else spikes

    def _run_sj(self, x: torch.Tensor, need_u: bool, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Spikes and (if ``need_u``) ``u_t``, ``[T, B, ...]`` each; ``u_t`` keeps its graph if ``grad``."""
        n = self.neuron
        if not need_u:
            return n.multi_step_forward(x), None
        stored = n.store_v_seq
        n.store_v_seq = True  # keep the package's post-reset state h_t of every step
        try:
            spikes = n.multi_step_forward(x)
            h = n.v_seq if grad else n.v_seq.detach()
        finally:
            n.store_v_seq = stored
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            v0 = torch.full_like(h[:1], 0.0 if n.v_reset is None else float(n.v_reset)).detach()
            prev = torch.cat([v0, h[:-1]])  # h_{t-1}, with the package's initial value at t = 0
            u = self._sj_charge((x if grad else x.detach()).to(prev.dtype), prev)
        return spikes, u

    def _sj_charge(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """SpikingJelly's charge equations (spikingjelly/_ops/{lif,plif,if_}/reference.py), same op order."""
        n = self.neuron
        if self.kind == "sj-if":
            return v + x
        reset = 0.0 if n.v_reset is None else float(n.v_reset)
        if self.kind == "sj-lif":
            tau = n.tau
            return v + (x - (v - reset)) / tau if n.decay_input else v - (v - reset) / tau + x
        q = n.w.detach().sigmoid()
        return v + (x - (v - reset)) * q if n.decay_input else v - (v - reset) * q + x

    def _run_snn(self, x: torch.Tensor, need_u: bool, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Spikes and (if ``need_u``) ``u_t``, ``[T, B, ...]`` each; ``u_t`` keeps its graph if ``grad``."""
        n = self.neuron
        spikes, us = [], []
        for t in range(x.shape[0]):
            out = n(x[t])
            spikes.append(out[0] if isinstance(out, tuple) else out)
            if need_u:  # with reset_delay=True, mem after the call is the pre-spike u_t (what output=True returns)
                us.append(n.mem if grad else n.mem.detach())
        return torch.stack(spikes), (torch.stack(us) if need_u else None)

    def _check(self, u: torch.Tensor, spikes: torch.Tensor) -> None:
        th = self.u_th
        mine = u >= th if self.fires_at_threshold else u > th
        wrong = mine != (spikes.detach() != 0)
        if bool(wrong.any()):
            # A different summation order in the package's kernel may round u across the threshold:
            # tolerate disagreements within a few ulps of u_th, nothing else.
            tol = 8 * torch.finfo(u.dtype).eps * max(1.0, abs(th))
            far = wrong & ((u - th).abs() > tol)
            if bool(far.any()):
                raise SpikeMismatchError(
                    f"{self.path or self.kind}: the recomputed membrane potential disagrees with "
                    f"{_qualname(self.neuron)}'s spikes at {int(far.sum())} of {far.numel()} positions")

    def extra_repr(self) -> str:
        return (f"beta={self.beta:.4g}, u_th={self.u_th}, reset={self.reset_mode}, v_reset={self.v_reset}, "
                f"input_gain={self.input_gain:.4g}")


# --------------------------------------------------------------------------------------------------
# The model wrapper.
# --------------------------------------------------------------------------------------------------


def _contains_adapter(m: nn.Module) -> bool:
    return any(isinstance(c, NeuronAdapter) for c in m.modules())


def _is_multistep(m: nn.Module) -> bool:
    return getattr(m, "step_mode", "s") == "m"


def _call_stateless(m: nn.Module, x: torch.Tensor, static: bool) -> torch.Tensor:
    """Run a module that holds no neuron on ``[B, ...]`` (static) or ``[T, B, ...]``."""
    if _is_multistep(m):  # SpikingJelly multi-step layers fold time themselves
        return m(x.unsqueeze(0)).squeeze(0) if static else m(x)
    if static:
        return m(x)
    if _is_sj_memory(m):
        # A stateful SpikingJelly layer in single-step mode (layer.Dropout) keeps its state across the steps of
        # one sequence (one dropout mask for all T): its multi-step forward is exactly the user's step loop,
        # whereas folding T into the batch would draw a different mask per step. Called through forward (the
        # module's hooks run) in multi-step mode for this call.
        m.step_mode = "m"
        try:
            return m(x)
        finally:
            m.step_mode = "s"
    return m(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class AdaptedModel(nn.Module):
    """A third-party SNN seen as a spikeprune model: input ``[B, C, H, W]`` (static, direct encoding) or
    ``[T, B, ...]``; output ``[T, B, ...]`` (per-timestep logits or spikes).

    ``net`` is the user's network, with its neurons replaced by :class:`NeuronAdapter`; weights are shared,
    so pruning or quantizing this model prunes the user's network. :meth:`unwrap` puts the original
    neurons back and returns it.
    """

    def __init__(self, net: nn.Module, timesteps: int, static_dims: int, layer_classes: dict[str, type],
                 output: str = "spikes") -> None:
        super().__init__()
        self.net = net
        self.T = timesteps
        self.static_dims = static_dims
        self._layer_classes = layer_classes
        self.sequential = type(net) is nn.Sequential
        #: what forward returns: "spikes" (or the last layer's currents), or "membrane" (adapt(output=...))
        self.output = output
        # The wrapper is in the mode the user's net is in: calibrate/evaluate restore ``model.training`` and
        # would otherwise switch an eval-mode net (BatchNorm statistics, dropout) to training. Set directly,
        # not with train(): that would also overwrite the modes of the net's submodules.
        self.training = net.training

    def neurons(self) -> dict[str, NeuronAdapter]:
        """The adapters by qualified name (relative to this model, e.g. ``net.2``)."""
        return {n: m for n, m in self.named_modules() if isinstance(m, NeuronAdapter)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (self.static_dims, self.static_dims + 1):
            raise UserError(f"expected a static input with {self.static_dims} dims or a time-major one with "
                             f"{self.static_dims + 1}; got shape {tuple(x.shape)}")
        static = x.dim() == self.static_dims
        self._reset_memories()
        try:
            if self.sequential:
                out, static = self._run(self.net, x, static)
                if static:
                    out = out.unsqueeze(0).repeat(self.T, *([1] * out.dim()))
            else:  # a multi-step SpikingJelly model with its own forward: give it the whole sequence
                seq = x.unsqueeze(0).repeat(self.T, *([1] * x.dim())) if static else x
                out = self.net(seq)
        finally:
            self._reset_memories()
        if not torch.is_tensor(out) or out.dim() < 2:
            raise UserError(f"the adapted network must return a time-major tensor [T, B, ...]; got "
                             f"{type(out).__name__}{tuple(out.shape) if torch.is_tensor(out) else ''}")
        return out

    def _reset_memories(self) -> None:
        """``reset()`` every stateful SpikingJelly module that is not a neuron (``layer.Dropout``'s mask, ...),
        as ``functional.reset_net`` between sequences would; the adapters reset their own neurons."""
        sj = _sj()
        if sj is None:
            return
        stack = [self.net]
        while stack:
            m = stack.pop()
            if isinstance(m, NeuronAdapter):
                continue
            if isinstance(m, sj[0].MemoryModule):
                m.reset()
            stack.extend(m.children())

    def _run(self, seq: nn.Sequential, x: torch.Tensor, static: bool) -> tuple[torch.Tensor, bool]:
        for name, m in seq.named_children():
            if isinstance(m, NeuronAdapter):
                if static:  # the encoding layers ran once on the static image: repeat over T now
                    x = x.unsqueeze(0).repeat(self.T, *([1] * x.dim()))
                    static = False
                x = m(x)
            elif type(m) is nn.Sequential:
                x, static = self._run(m, x, static)
            elif _contains_adapter(m):
                if not all(a.step_mode == "m" for a in m.modules() if isinstance(a, NeuronAdapter)):
                    raise UserError(f"block {name!r} ({type(m).__name__}) holds single-step neurons inside its own "
                                     "forward; spikeprune can run it only in SpikingJelly multi-step mode "
                                     "(functional.set_step_mode(net, 'm')) or as an nn.Sequential")
                if static:
                    x = x.unsqueeze(0).repeat(self.T, *([1] * x.dim()))
                    static = False
                x = m(x)
            else:
                x = _call_stateless(m, x, static)
        return x, static

    def unwrap(self) -> nn.Module:
        """Put the original neurons (and SpikingJelly layer classes) back; returns the user's network."""
        for name, adapter in list(self.neurons().items()):
            _set(self, name, adapter.neuron)
        for name, cls in self._layer_classes.items():
            m = self.net.get_submodule(name)
            if getattr(m, "quant", None) is not None:
                # quantized since adapt(): put the package's class back *with* quantization (the twin
                # derives from both), or the user's net would silently compute with float weights again
                from spikeprune.compression.quant import quantized_class
                m.__class__ = quantized_class(cls)
            else:
                m.__class__ = cls
        self._layer_classes = {}
        return self.net


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _plain_layer_class(m: nn.Module) -> type | None:
    """The torch.nn class a SpikingJelly stateless layer wrapper (``layer.Conv2d`` etc.) extends."""
    if not type(m).__module__.startswith("spikingjelly.activation_based.layer") or not hasattr(m, "step_mode"):
        return None
    for cls in type(m).__mro__[1:]:
        if cls.__module__.startswith("torch.nn.modules") and cls is not nn.Module:
            return cls
    return None


#: values of adapt(output=...)
OUTPUTS = ("auto", "spikes", "membrane")


def _final_module(model: nn.Module) -> nn.Module | None:
    """The module whose output is the network's output, for an ``nn.Sequential`` (nested ones followed)."""
    m = model
    while type(m) is nn.Sequential:
        if len(m) == 0:
            return None
        m = m[-1]
    return m if m is not model else None


def _resolve_output(model: nn.Module, output: str, neurons: dict[str, nn.Module]) -> str | None:
    """The name of the neuron to read out by its membrane potential, or ``None`` (spikes)."""
    if output not in OUTPUTS:
        raise UserError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    if output == "spikes":
        return None
    final = _final_module(model) if type(model) is nn.Sequential else None
    name = next((n for n, m in neurons.items() if m is final), None)
    if output == "membrane":
        if name is None:
            raise UserError("output='membrane' needs an nn.Sequential whose last layer is a supported spiking neuron "
                             f"(the one read out); {type(model).__name__}'s last layer is "
                             f"{type(final).__name__ if final is not None else 'not a layer of a Sequential'}")
        return name
    # auto: snnTorch's output=True marks a neuron whose potential the user reads (the tutorials' mem_rec)
    return name if name is not None and getattr(final, "output", False) and _snn() is not None \
        and isinstance(final, _snn().SpikingNeuron) else None


def adapt(model: nn.Module, timesteps: int, *, static_dims: int = 4, output: str = "auto") -> AdaptedModel:
    """Wrap a SpikingJelly / snnTorch network for spikeprune (in place: neurons are swapped for adapters).

    Args:
        model: an ``nn.Sequential`` (single- or multi-step; nested Sequentials are fine) or a SpikingJelly
            multi-step module (``step_mode='m'``) whose forward takes ``[T, B, ...]`` and returns
            ``[T, B, ...]``.
        timesteps: T, how often a static input is presented (direct encoding).
        static_dims: dimensions of a static input batch (4 for images ``[B, C, H, W]``, 2 for ``[B, F]``).
        output: what the adapted model returns when its last layer is a neuron: ``"spikes"``; ``"membrane"``,
            that neuron's pre-spike membrane potential ``u_t`` ``[T, B, ...]`` (differentiable: the readout
            to train on); ``"auto"`` (default): ``"membrane"`` if that neuron is an snnTorch neuron built with
            ``output=True`` (which returns ``(spk, mem)``, and whose ``mem`` the snnTorch tutorials train on),
            else ``"spikes"``. ``AdaptedModel.output`` and ``neuron_summary`` record the choice.

    Raises:
        ValueError: an unsupported neuron (naming its class and what is supported), no neuron at all,
            or a single-step model that is not an ``nn.Sequential``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"adapt() needs a torch.nn.Module; got {type(model).__name__}")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise UserError(f"timesteps must be a positive integer; got {timesteps!r}")
    if isinstance(static_dims, bool) or not isinstance(static_dims, int) or static_dims < 1:
        raise UserError(f"static_dims must be a positive integer; got {static_dims!r}")
    if isinstance(model, AdaptedModel) or any(isinstance(m, NeuronAdapter) for m in model.modules()):
        raise UserError(f"{type(model).__name__} is already adapted; adapt() it once (unwrap() undoes it)")
    neurons = find_neurons(model)
    if not neurons:
        raise UserError(f"found no spiking neuron in {type(model).__name__}; supported: {_SUPPORTED_TEXT}")
    kinds = {name: _kind(name, m) for name, m in neurons.items()}  # raises before anything is modified
    readout = _resolve_output(model, output, neurons)
    sequential = type(model) is nn.Sequential
    if not sequential:
        single = [n for n, m in neurons.items() if getattr(m, "step_mode", "s") != "m"]
        if single:
            raise UserError(f"{type(model).__name__} is not an nn.Sequential and neuron {single[0]!r} is single-step; "
                             "spikeprune runs single-step networks layer by layer, so pass an nn.Sequential "
                             "(or a SpikingJelly network in multi-step mode)")
    layer_classes: dict[str, type] = {}
    if sequential:
        # SpikingJelly's layer.Conv2d / Linear / BatchNorm2d ... only add step-mode handling, which the
        # sequential runner does itself; as plain torch layers spikeprune's quantizer and exporters see them.
        for name, m in model.named_modules():
            if any(name == n or name.startswith(n + ".") for n in neurons):
                continue
            cls = _plain_layer_class(m)
            if cls is not None:
                layer_classes[name] = type(m)
                m.__class__ = cls
    for name, m in neurons.items():
        adapter = NeuronAdapter(m, kinds[name], name)
        if name == readout:
            adapter.emit = "membrane"
        _set(model, name, adapter)
    return AdaptedModel(model, timesteps, static_dims, layer_classes, "membrane" if readout else "spikes")


def neuron_summary(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{adapter name: its mapping}`` for every :class:`NeuronAdapter` in ``model``."""
    return {n: m.mapping() for n, m in model.named_modules() if isinstance(m, NeuronAdapter)}


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The model factory named by ``"package.module:function"`` or ``"path/to/file.py:function"``.

    This imports (runs) the user's own code, as ``python -c`` would; it never unpickles a file. The
    callable takes no arguments and returns the network.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise UserError(f"a model factory is 'package.module:function' or 'file.py:function'; got {spec!r}")
    where, attr = spec.split(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UserError(f"model file {where!r} does not exist")
        name = f"spikeprune_user_model_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            run_user_code(f"importing {where}", module_spec.loader.exec_module, module)
        except UserError:
            sys.modules.pop(name, None)
            raise
    else:
        module = run_user_code(f"importing {where}", importlib.import_module, where)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{where!r} has no callable {attr!r}")
    return fn


def run_user_code(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` where ``fn`` is the user's own code (a model file, a factory): whatever it raises -- an
    exception, a syntax error, ``sys.exit()`` -- becomes one :class:`UserError` naming the exception and the
    line of the user's code it came from. Ctrl-C still interrupts."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        raise
    except UserError:
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's code may raise anything, SystemExit included
        where = ""
        if isinstance(exc, SyntaxError) and exc.filename:
            where = f" ({exc.filename}:{exc.lineno})"
        else:
            # the innermost frame in the user's files: not spikeprune's, not an installed library's
            library = (str(Path(__file__).resolve().parents[1]), sys.prefix, sys.base_prefix, "<frozen")
            tb, last = exc.__traceback__, None
            while tb is not None:
                if not tb.tb_frame.f_code.co_filename.startswith(library):
                    last = tb
                tb = tb.tb_next
            if last is not None:
                where = f" ({last.tb_frame.f_code.co_filename}:{last.tb_lineno})"
        if isinstance(exc, SystemExit):
            message = f"called sys.exit({exc.code!r})"
        else:
            message = f"raised {type(exc).__name__}: {str(exc).strip() or '(no message)'}"
        raise UserError(f"{what} {message}{where}") from None
