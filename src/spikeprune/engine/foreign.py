"""Recognising the spiking neurons of other packages (SpikingJelly, snnTorch, Norse) in a user's network.

Both the topology graph (which must refuse a network whose neurons it cannot simulate) and the adapters
of :mod:`spikeprune.interop` (which replace them by exact :class:`~spikeprune.engine.neuron.LIF`
equivalents) need to know what a third-party neuron is; it lives here, below both. The packages are
imported lazily: neither is a dependency.
"""

from __future__ import annotations

from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.engine.neuron import LIF

#: what :func:`adapt` accepts, as shown in error messages
SUPPORTED_NEURONS = (
    "spikingjelly LIFNode", "spikingjelly ParametricLIFNode", "spikingjelly IFNode",
    "snntorch Leaky(init_hidden=True)",
)
_SUPPORTED_TEXT = ", ".join(SUPPORTED_NEURONS)


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


def _sj_neuron_types() -> tuple[type, ...]:
    sj = _sj()
    if sj is None:
        return ()
    neuron = sj[1]
    return tuple(getattr(neuron, n) for n in ("BaseNode", "SimpleBaseNode", "NonSpikingBaseNode") if hasattr(neuron, n))


def _is_sj_neuron(m: nn.Module) -> bool:
    """A SpikingJelly neuron, wherever its class is defined (a user's ``LIFNode`` subclass included)."""
    sj = _sj()
    if sj is None:
        return False
    base = sj[0]
    return isinstance(m, _sj_neuron_types()) or (".neuron" in type(m).__module__
                                                 and type(m).__module__.startswith("spikingjelly")
                                                 and isinstance(m, base.MemoryModule))


def _is_sj_memory(m: nn.Module) -> bool:
    """A stateful SpikingJelly module (``MemoryModule``: neurons, ``layer.Dropout``, ...)."""
    sj = _sj()
    return sj is not None and isinstance(m, sj[0].MemoryModule)


def _is_snn_neuron(m: nn.Module) -> bool:
    snn = _snn()
    return snn is not None and isinstance(m, snn.SpikingNeuron)


def _is_third_party_neuron(m: nn.Module) -> bool:
    if isinstance(m, LIF):
        return False
    return _is_sj_neuron(m) or _is_snn_neuron(m) or type(m).__module__.startswith("norse.")


def _unsupported(path: str, m: nn.Module, why: str = "") -> UserError:
    where = f" at {path!r}" if path else ""
    reason = f" ({why})" if why else ""
    return UserError(f"unsupported spiking neuron {_qualname(m)}{where}{reason}; supported: {_SUPPORTED_TEXT}")
