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

Supported: SpikingJelly ``LIFNode``, ``ParametricLIFNode``, ``IFNode`` (single- or multi-step, hard or
soft reset, ``decay_input`` either way) and snnTorch ``Leaky`` with ``init_hidden=True`` (reset
``"subtract"``, ``"zero"`` or ``"none"``; scalar beta/threshold). Anything else that is recognisably a
spiking neuron of those packages raises ``ValueError`` naming its class and listing what is supported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..neuron import LIF

__all__ = ["AdaptedModel", "NeuronAdapter", "SUPPORTED_NEURONS", "SpikeMismatchError", "adapt",
           "find_neurons", "load_factory", "neuron_summary"]

#: what :func:`adapt` accepts, as shown in error messages
SUPPORTED_NEURONS = (
    "spikingjelly LIFNode", "spikingjelly ParametricLIFNode", "spikingjelly IFNode",
    "snntorch Leaky(init_hidden=True)",
)
_SUPPORTED_TEXT = ", ".join(SUPPORTED_NEURONS)


class SpikeMismatchError(RuntimeError):
    """The recomputed membrane potential does not reproduce the package's own spikes."""


# --------------------------------------------------------------------------------------------------
# Recognising third-party neurons (imports are lazy: neither package is a dependency).
# --------------------------------------------------------------------------------------------------


def _sj():
    try:
        from spikingjelly.activation_based import base, neuron
    except Exception:  # not installed (or broken): no SpikingJelly module can be in the model
        return None
    return base, neuron


def _snn():
    try:
        import snntorch
    except Exception:
        return None
    return snntorch


def _qualname(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def _is_sj_neuron(m: nn.Module) -> bool:
    sj = _sj()
    if sj is None or not type(m).__module__.startswith("spikingjelly"):
        return False
    base, neuron = sj
    neuron_types = tuple(getattr(neuron, n) for n in ("BaseNode", "SimpleBaseNode", "NonSpikingBaseNode")
                         if hasattr(neuron, n))
    return isinstance(m, neuron_types) or ".neuron" in type(m).__module__ and isinstance(m, base.MemoryModule)


def _is_snn_neuron(m: nn.Module) -> bool:
    snn = _snn()
    return snn is not None and isinstance(m, snn.SpikingNeuron)


def _is_third_party_neuron(m: nn.Module) -> bool:
    if isinstance(m, LIF):
        return False
    return _is_sj_neuron(m) or _is_snn_neuron(m) or type(m).__module__.startswith("norse.")


def _unsupported(path: str, m: nn.Module, why: str = "") -> ValueError:
    where = f" at {path!r}" if path else ""
    reason = f" ({why})" if why else ""
    return ValueError(f"unsupported spiking neuron {_qualname(m)}{where}{reason}; supported: {_SUPPORTED_TEXT}")


def _scalar(value: Any, what: str, path: str, m: nn.Module) -> float:
    t = torch.as_tensor(value).detach()
    if t.numel() != 1:
        raise _unsupported(path, m, f"{what} must be one number for the layer, got shape {tuple(t.shape)}")
    return float(t.reshape(()))


def _kind(path: str, m: nn.Module) -> str:
    """``"sj-lif"``, ``"sj-plif"``, ``"sj-if"`` or ``"snn-leaky"``; ``ValueError`` for anything else."""
    sj = _sj()
    if sj is not None and type(m).__module__.startswith("spikingjelly"):
        neuron = sj[1]
        kinds = {"LIFNode": "sj-lif", "ParametricLIFNode": "sj-plif", "IFNode": "sj-if"}
        for cls_name, kind in kinds.items():
            # Exact types only: a subclass may change the dynamics the adapter recomputes.
            if type(m) is getattr(neuron, cls_name, None):
                if getattr(m, "_neuron_precision", None) is not None:
                    raise _unsupported(path, m, "explicit neuron precision (Triton kernels) is not supported")
                return kind
        raise _unsupported(path, m)
    snn = _snn()
    if snn is not None and type(m) is snn.Leaky:
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

    third_party = True  # spikeprune.quant refuses to swap these for its own QuantizedLIF

    def __init__(self, neuron: nn.Module, kind: str, path: str = "") -> None:
        nn.Module.__init__(self)  # LIF.__init__ would set its own float parameters
        self.neuron = neuron
        self.kind = kind
        self.path = path
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
                "fires_at_threshold": self.fires_at_threshold, "step_mode": self.step_mode}

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
        """``x``: input currents ``[T, B, ...]`` -> spikes ``[T, B, ...]`` (the package's own)."""
        if x.dim() < 2:
            raise ValueError(f"{self.kind} adapter expects a time-major input [T, B, ...]; got {tuple(x.shape)}")
        observing = self.observer is not None
        self.reset_state()
        try:
            if self.kind.startswith("sj"):
                spikes, u = self._run_sj(x, observing)
            else:
                spikes, u = self._run_snn(x, observing)
        finally:
            self.reset_state()  # no state survives the call: deepcopy / rewinding stay clean
        if observing:
            if self.check_spikes:
                self._check(u, spikes)
            self.observer(self, u, spikes)
        return spikes

    def _run_sj(self, x: torch.Tensor, observing: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.neuron
        if not observing:
            return n.multi_step_forward(x), None
        stored = n.store_v_seq
        n.store_v_seq = True  # keep the package's post-reset state h_t of every step
        try:
            spikes = n.multi_step_forward(x)
            h = n.v_seq.detach()
        finally:
            n.store_v_seq = stored
        with torch.no_grad():
            v0 = torch.full_like(h[:1], 0.0 if n.v_reset is None else float(n.v_reset))
            prev = torch.cat([v0, h[:-1]])  # h_{t-1}, with the package's initial value at t = 0
            u = self._sj_charge(x.detach().to(prev.dtype), prev)
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

    def _run_snn(self, x: torch.Tensor, observing: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.neuron
        spikes, us = [], []
        for t in range(x.shape[0]):
            out = n(x[t])
            spikes.append(out[0] if isinstance(out, tuple) else out)
            if observing:
                us.append(n.mem.detach())  # with reset_delay=True, mem after the call is the pre-spike u_t
        return torch.stack(spikes), (torch.stack(us) if observing else None)

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
    """Run a time-independent module on ``[B, ...]`` (static) or ``[T, B, ...]``."""
    if _is_multistep(m):  # SpikingJelly multi-step layers fold time themselves
        return m(x.unsqueeze(0)).squeeze(0) if static else m(x)
    if static:
        return m(x)
    return m(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class AdaptedModel(nn.Module):
    """A third-party SNN seen as a spikeprune model: input ``[B, C, H, W]`` (static, direct encoding) or
    ``[T, B, ...]``; output ``[T, B, ...]`` (per-timestep logits or spikes).

    ``net`` is the user's network, with its neurons replaced by :class:`NeuronAdapter`; weights are shared,
    so pruning or quantizing this model prunes the user's network. :meth:`unwrap` puts the original
    neurons back and returns it.
    """

    def __init__(self, net: nn.Module, timesteps: int, static_dims: int, layer_classes: dict[str, type]) -> None:
        super().__init__()
        self.net = net
        self.T = timesteps
        self.static_dims = static_dims
        self._layer_classes = layer_classes
        self.sequential = type(net) is nn.Sequential

    def neurons(self) -> dict[str, NeuronAdapter]:
        """The adapters by qualified name (relative to this model, e.g. ``net.2``)."""
        return {n: m for n, m in self.named_modules() if isinstance(m, NeuronAdapter)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (self.static_dims, self.static_dims + 1):
            raise ValueError(f"expected a static input with {self.static_dims} dims or a time-major one with "
                             f"{self.static_dims + 1}; got shape {tuple(x.shape)}")
        static = x.dim() == self.static_dims
        if self.sequential:
            out, static = self._run(self.net, x, static)
            if static:
                out = out.unsqueeze(0).repeat(self.T, *([1] * out.dim()))
        else:  # a multi-step SpikingJelly model with its own forward: give it the whole sequence
            seq = x.unsqueeze(0).repeat(self.T, *([1] * x.dim())) if static else x
            out = self.net(seq)
        if not torch.is_tensor(out) or out.dim() < 2:
            raise ValueError(f"the adapted network must return a time-major tensor [T, B, ...]; got "
                             f"{type(out).__name__}{tuple(out.shape) if torch.is_tensor(out) else ''}")
        return out

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
                    raise ValueError(f"block {name!r} ({type(m).__name__}) holds single-step neurons inside its own "
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
                from ..quant import quantized_class
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


def adapt(model: nn.Module, timesteps: int, *, static_dims: int = 4) -> AdaptedModel:
    """Wrap a SpikingJelly / snnTorch network for spikeprune (in place: neurons are swapped for adapters).

    Args:
        model: an ``nn.Sequential`` (single- or multi-step; nested Sequentials are fine) or a SpikingJelly
            multi-step module (``step_mode='m'``) whose forward takes ``[T, B, ...]`` and returns
            ``[T, B, ...]``.
        timesteps: T, how often a static input is presented (direct encoding).
        static_dims: dimensions of a static input batch (4 for images ``[B, C, H, W]``, 2 for ``[B, F]``).

    Raises:
        ValueError: an unsupported neuron (naming its class and what is supported), no neuron at all,
            or a single-step model that is not an ``nn.Sequential``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"adapt() needs a torch.nn.Module; got {type(model).__name__}")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer; got {timesteps!r}")
    if isinstance(static_dims, bool) or not isinstance(static_dims, int) or static_dims < 1:
        raise ValueError(f"static_dims must be a positive integer; got {static_dims!r}")
    if isinstance(model, AdaptedModel) or any(isinstance(m, NeuronAdapter) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is already adapted; adapt() it once (unwrap() undoes it)")
    neurons = find_neurons(model)
    if not neurons:
        raise ValueError(f"found no spiking neuron in {type(model).__name__}; supported: {_SUPPORTED_TEXT}")
    kinds = {name: _kind(name, m) for name, m in neurons.items()}  # raises before anything is modified
    sequential = type(model) is nn.Sequential
    if not sequential:
        single = [n for n, m in neurons.items() if getattr(m, "step_mode", "s") != "m"]
        if single:
            raise ValueError(f"{type(model).__name__} is not an nn.Sequential and neuron {single[0]!r} is single-step; "
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
        _set(model, name, NeuronAdapter(m, kinds[name], name))
    return AdaptedModel(model, timesteps, static_dims, layer_classes)


def neuron_summary(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{adapter name: its mapping}`` for every :class:`NeuronAdapter` in ``model``."""
    return {n: m.mapping() for n, m in model.named_modules() if isinstance(m, NeuronAdapter)}


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The model factory named by ``"package.module:function"`` or ``"path/to/file.py:function"``.

    This imports (runs) the user's own code, as ``python -c`` would; it never unpickles a file. The
    callable takes no arguments and returns the network.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"a model factory is 'package.module:function' or 'file.py:function'; got {spec!r}")
    where, attr = spec.split(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"model file {where!r} does not exist")
        name = f"spikeprune_user_model_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ValueError(f"cannot import model module {where!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{where!r} has no callable {attr!r}")
    return fn
