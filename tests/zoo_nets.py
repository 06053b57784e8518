"""Third-party networks as users bring them: SpikingJelly 2.0's model zoo and snnTorch's tutorial nets.

Built from the installed packages (SpikingJelly with ``--no-deps``, snnTorch), at tiny sizes: input
3 x 32 x 32, batch <= 8, T = 4. Used by tests/test_zoo.py and tests/test_topology.py.

Why a stand-in for ``torchvision.models.utils``: SpikingJelly's ``spiking_resnet`` / ``sew_resnet`` /
``spiking_vgg`` modules import torchvision *only* for ``load_state_dict_from_url`` (pretrained
weights, which cannot be downloaded here anyway), and torchvision cannot be installed next to the CPU
torch without pulling a different torch. The stand-in provides that one function, raising if called;
the networks themselves are SpikingJelly's own code, unchanged.
"""

from __future__ import annotations

import sys
import types
from typing import Callable

import torch
from torch import nn

T = 4
IMAGE = (3, 32, 32)


def install_torchvision_standin() -> None:
    """Register a minimal ``torchvision.models.utils`` if torchvision is not importable (see module doc)."""
    try:
        import torchvision.models.utils  # noqa: F401  (the real package, where it is installed)
        return
    except Exception:
        pass
    if "torchvision" in sys.modules and not getattr(sys.modules["torchvision"], "_spikeprune_standin", False):
        return

    def load_state_dict_from_url(*_, **__):
        raise RuntimeError("pretrained weights are not available in the test stand-in for torchvision")

    tv = types.ModuleType("torchvision")
    tv._spikeprune_standin = True
    models = types.ModuleType("torchvision.models")
    utils = types.ModuleType("torchvision.models.utils")
    utils.load_state_dict_from_url = load_state_dict_from_url
    tv.models, models.utils = models, utils
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.utils": utils})


def _drive(net: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
    """Seeded weights and BatchNorm statistics under which every layer fires (5-70 % here).

    With the packages' default initialisation the deep layers of an untrained zoo net are silent, and a
    silent layer checks nothing (equal spikes, SF statistics and channel removal are all trivially
    right on zeros). BatchNorm gets non-trivial running statistics (so folding and slicing BN are
    exercised) and a positive gain/bias; linear layers, and convs of nets without BN, get weights
    large enough to drive their neurons.
    """
    g = torch.Generator().manual_seed(seed)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            if m.affine:
                m.weight.data.copy_((torch.rand(n, generator=g) + 1.5) * gain)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.3 + 0.5 * gain)
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 1, generator=g).mul_(4 / m.in_features ** 0.5)
            if m.bias is not None:
                m.bias.data.uniform_(0, 1.0, generator=g)
        elif isinstance(m, nn.Conv2d) and not has_bn:
            m.weight.data.normal_(0, 1, generator=g).mul_(3 / m.weight[0].numel() ** 0.5)
    return net


def _sj():
    install_torchvision_standin()
    from spikingjelly.activation_based import functional, layer, neuron
    return functional, layer, neuron


def _multistep_zoo(module: str, factory: str, neuron: str = "LIFNode", **kwargs) -> nn.Module:
    """``spikingjelly.activation_based.model.<module>.<factory>(spiking_neuron=..., **kwargs)`` in multi-step mode."""
    import importlib
    functional, _, neurons = _sj()
    build_fn = getattr(importlib.import_module(f"spikingjelly.activation_based.model.{module}"), factory)
    net = build_fn(spiking_neuron=getattr(neurons, neuron), **kwargs)
    functional.set_step_mode(net, "m")
    return net


def spiking_resnet18() -> nn.Module:
    return _multistep_zoo("spiking_resnet", "spiking_resnet18", num_classes=10)


def sew_resnet18() -> nn.Module:
    return _multistep_zoo("sew_resnet", "sew_resnet18", cnf="ADD", num_classes=10)


def spiking_vgg11_bn() -> nn.Module:
    return _multistep_zoo("spiking_vgg", "spiking_vgg11_bn", num_classes=10)


def plif_cifar10net() -> nn.Module:
    return _multistep_zoo("parametric_lif_net", "CIFAR10Net", "ParametricLIFNode", channels=8)


def sj_sequential_single_step(width: int = 8) -> nn.Sequential:
    """SpikingJelly's CSNN example style in single-step mode: an nn.Sequential run step by step."""
    _, layer, neuron = _sj()
    return nn.Sequential(
        layer.Conv2d(3, width, 3, padding=1, bias=False), layer.BatchNorm2d(width), neuron.LIFNode(tau=2.0),
        layer.MaxPool2d(2),
        layer.Conv2d(width, 2 * width, 3, padding=1, bias=False), layer.BatchNorm2d(2 * width),
        neuron.LIFNode(tau=2.0), layer.MaxPool2d(2),
        layer.Flatten(), layer.Linear(2 * width * 8 * 8, 10))


def snntorch_csnn(batchnorm: bool = False, beta: float = 0.5) -> nn.Sequential:
    """snnTorch tutorial 6's convolutional SNN (nn.Sequential, init_hidden=True, output=True last)."""
    import snntorch as snn
    from snntorch import surrogate
    grad = surrogate.fast_sigmoid(slope=25)

    def bn(c):
        return [nn.BatchNorm2d(c)] if batchnorm else []

    return nn.Sequential(
        nn.Conv2d(3, 12, 5), *bn(12), nn.MaxPool2d(2), snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True),
        nn.Conv2d(12, 64, 5), *bn(64), nn.MaxPool2d(2), snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 10),
        snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True, output=True))


def snntorch_csnn_bn() -> nn.Sequential:
    """:func:`snntorch_csnn` with BatchNorm after each conv (a factory for ``spikeprune interop --model``)."""
    return snntorch_csnn(batchnorm=True)


#: name -> factory (each also usable as ``spikeprune interop --model tests/zoo_nets.py:<factory>``)
ZOO: dict[str, Callable[[], nn.Module]] = {
    "sj-spiking_resnet18": spiking_resnet18,
    "sj-sew_resnet18-ADD": sew_resnet18,
    "sj-spiking_vgg11_bn": spiking_vgg11_bn,
    "sj-plif-CIFAR10Net": plif_cifar10net,
    "sj-sequential-single-step": sj_sequential_single_step,
    "snntorch-csnn": snntorch_csnn,
    "snntorch-csnn-bn": snntorch_csnn_bn,
}


#: The three full-size SpikingJelly zoo networks: seconds per test each, so their cases are marked
#: ``slow`` (``pytest -m "not slow"`` still runs every test on the small zoo networks).
BIG = frozenset({"sj-spiking_resnet18", "sj-sew_resnet18-ADD", "sj-spiking_vgg11_bn"})


def params(names) -> list:
    """``names`` for ``pytest.mark.parametrize``, the :data:`BIG` networks marked ``slow``."""
    import pytest

    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in names]


def build(name: str, seed: int = 0, eval_mode: bool = True) -> nn.Module:
    """The network ``name`` of :data:`ZOO`, seeded and driven so that every layer fires (:func:`_drive`)."""
    torch.manual_seed(seed)
    net = _drive(ZOO[name](), seed, 2.0 if "plif" in name else 1.0)
    return net.eval() if eval_mode else net


def images(batch: int = 4, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    """Static images ``[B, 3, 32, 32]`` (direct encoding), scaled so that the first layers fire."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *IMAGE, generator=g) * scale


def package_run(net: nn.Module, x: torch.Tensor, timesteps: int = T, output: str = "auto") -> torch.Tensor:
    """The package's own run of the *unadapted* net on a static batch ``x``: ``[T, B, ...]`` outputs.

    SpikingJelly multi-step nets get the repeated sequence; single-step nets (SpikingJelly or snnTorch)
    are stepped ``timesteps`` times with their own state, then reset. snnTorch ``output=True`` layers
    return ``(spk, mem)``: ``output="auto"`` (as ``adapt``'s default) and ``"membrane"`` take ``mem``,
    ``"spikes"`` takes ``spk``.
    """
    from spikingjelly.activation_based import functional
    if output not in ("auto", "spikes", "membrane"):
        raise ValueError(f"output must be auto, spikes or membrane; got {output!r}")
    pick = 0 if output == "spikes" else 1
    steps = any(getattr(m, "step_mode", "s") == "m" for m in net.modules())
    functional.reset_net(net)
    _reset_snntorch(net)
    with torch.no_grad():
        if steps:
            out = net(x.unsqueeze(0).repeat(timesteps, *([1] * x.dim())))
        else:
            outs = []
            for _ in range(timesteps):
                o = net(x)
                outs.append(o[pick] if isinstance(o, tuple) else o)
            out = torch.stack(outs)
    functional.reset_net(net)
    _reset_snntorch(net)
    return out


def _reset_snntorch(net: nn.Module) -> None:
    try:
        import snntorch as snn
    except Exception:
        return
    for m in net.modules():
        if isinstance(m, snn.SpikingNeuron) and getattr(m, "init_hidden", False) and hasattr(m, "mem"):
            m.mem = torch.zeros(0)
