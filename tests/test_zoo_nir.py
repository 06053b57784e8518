"""NIR export of adapted third-party networks and import of the packages' own NIR exports.

Every zoo net (tests/zoo_nets.py) either round-trips - export -> write -> read -> from_nir reproduces every
spike of every neuron layer at every step, and the output - or is refused with one line saying why.
Measured on these nets: 0 flipped spikes and an output max |difference| of 0.0 (BN folding is done in
float64 and rounded once; the tolerance below only allows float32 summation-order noise in the output).
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

import zoo_nets
from spikeprune import adapt, prune, quantize_model
from spikeprune.interop.nir_export import NIRNeuron, from_nir, read_nir, to_nir, write_nir
from spikeprune.engine.neuron import LIF, observe

nir = pytest.importorskip("nir")
pytest.importorskip("spikingjelly")
pytest.importorskip("snntorch")

#: zoo nets NIR cannot represent exactly, and the words of the one-line refusal
REFUSED = {
    # snnTorch's tutorial CSNN max-pools the conv *currents* before the neuron: NIR has no max pooling
    "snntorch-csnn": "max-pools values that are not one neuron layer's spikes",
    "snntorch-csnn-bn": "max-pools values that are not one neuron layer's spikes",
}
EXPORTABLE = [n for n in zoo_nets.ZOO if n not in REFUSED]
OUTPUT_ATOL = 1e-5


def snntorch_csnn_zero() -> nn.Sequential:
    """The tutorial CSNN rearranged to be NIR-exact: reset to zero, max pooling after the neuron (on spikes)."""
    import snntorch as snn

    def leaky(**kw):
        return snn.Leaky(beta=0.5, init_hidden=True, reset_mechanism="zero", **kw)

    return nn.Sequential(nn.Conv2d(3, 12, 5), nn.BatchNorm2d(12), leaky(), nn.MaxPool2d(2),
                         nn.Conv2d(12, 64, 5), leaky(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 5 * 5, 10), leaky(output=True))


def _net(name: str) -> nn.Module:
    if name == "snntorch-csnn-zero":
        torch.manual_seed(0)
        return zoo_nets._drive(snntorch_csnn_zero(), 0).eval()
    return zoo_nets.build(name)


def _adapt(net: nn.Module) -> nn.Module:
    # NIR's neuron nodes emit spikes: compare with the adapted model's spikes, not the membrane readout that
    # adapt()'s default gives a final snnTorch output=True layer (docs/interop.md, Decisions)
    return adapt(net, zoo_nets.T, output="spikes")


def _run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    spikes: list[torch.Tensor] = []
    with torch.no_grad(), observe(model, lambda lif, u, s: spikes.append(s.clone())):
        out = model(x)
    return out, spikes


def _compare(a: nn.Module, b: nn.Module, x: torch.Tensor) -> tuple[float, int]:
    """(output max |difference|, flipped spikes) of ``b`` against ``a``; every layer must fire somewhere."""
    out_a, spikes_a = _run(a, x)
    out_b, spikes_b = _run(b, x)
    assert len(spikes_a) == len(spikes_b) > 0
    flips = 0
    for sa, sb in zip(spikes_a, spikes_b):
        assert sa.shape == sb.shape
        assert 0 < float(sa.mean()) < 1  # a silent (or saturated) layer would check nothing
        flips += int((sa != sb).sum())
    assert out_a.shape == out_b.shape
    return float((out_a - out_b).abs().max()), flips


def _round_trip(model: nn.Module, x: torch.Tensor, path) -> tuple[object, nn.Module]:
    write_nir(path, to_nir(model, x))
    graph = read_nir(path)
    return graph, from_nir(graph)


@pytest.mark.parametrize("name", zoo_nets.params(EXPORTABLE + ["snntorch-csnn-zero"]))
def test_zoo_round_trip_reproduces_every_spike(name, tmp_path):
    model = _adapt(_net(name))
    x = zoo_nets.images(4)
    graph, rebuilt = _round_trip(model, x, tmp_path / "net.nir")
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert "BatchNorm" not in " ".join(kinds)
    neurons = sum(isinstance(m, LIF) for m in rebuilt.modules())
    assert neurons == len(model.neurons())
    diff, flips = _compare(model, rebuilt, x)
    assert flips == 0
    assert diff <= OUTPUT_ATOL
    if name == "sj-plif-CIFAR10Net":  # VotingLayer(10) became an averaging Affine
        last = [n for n in graph.nodes.values() if isinstance(n, nir.Affine)][-1]
        assert last.weight.shape == (10, 100) and np.allclose(last.weight.sum(1), 1.0)
    if name.startswith("sj-sew") or name.startswith("sj-spiking_resnet"):  # residual adds: nodes with 2+ inputs
        fan_in = {}
        for _, b in graph.edges:
            fan_in[b] = fan_in.get(b, 0) + 1
        assert max(fan_in.values()) >= 2


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_zoo_refusals_are_one_line(name):
    model = _adapt(_net(name))
    with pytest.raises(ValueError) as info:
        to_nir(model, zoo_nets.images(2))
    msg = str(info.value)
    assert REFUSED[name] in msg and "\n" not in msg and "MaxPool2d" in msg


def test_soft_reset_is_refused_naming_the_neuron():
    zoo_nets.install_torchvision_standin()
    from spikingjelly.activation_based import layer, neuron

    net = nn.Sequential(layer.Conv2d(3, 4, 3), neuron.LIFNode(v_reset=None), layer.Flatten(),
                        layer.Linear(4 * 30 * 30, 10))
    with pytest.raises(ValueError, match=r"'net\.1' \(sj-lif\) resets by subtracting the threshold"):
        to_nir(adapt(net, 4), zoo_nets.images(2))


@pytest.mark.parametrize("name", zoo_nets.params(["sj-spiking_resnet18", "sj-sew_resnet18-ADD", "sj-plif-CIFAR10Net",
                                                   "sj-sequential-single-step", "snntorch-csnn-zero"]))
def test_masked_export_keeps_exact_zeros(name, tmp_path):
    model = _adapt(_net(name))
    prune(model, "magnitude", 0.5)
    x = zoo_nets.images(4)
    graph, rebuilt = _round_trip(model, x, tmp_path / "masked.nir")
    checked = 0
    for mod_name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            node = graph.nodes[mod_name.replace(".", "_")]
            zero = (m.weight.detach() == 0).numpy()
            assert zero.any()
            assert np.array_equal(np.asarray(node.weight) == 0, zero)  # BN folding: g * 0 = 0, nothing else
            checked += 1
    assert checked >= 3
    diff, flips = _compare(model, rebuilt, x)
    assert flips == 0 and diff <= OUTPUT_ATOL


@pytest.mark.parametrize("name", ["sj-sequential-single-step", "snntorch-csnn-zero"])
def test_quantized_export_writes_the_levels(name, tmp_path):
    """4-bit weights: layers without BN carry exactly the quantized levels, BN-folded ones levels * g.

    adapt() turns a Sequential's SpikingJelly layers into plain torch layers (multi-step zoo nets: see
    test_quantized_multistep_zoo_nets_export_their_levels)."""
    model = _adapt(_net(name))
    quantize_model(model, bits=4)
    x = zoo_nets.images(4)
    graph, rebuilt = _round_trip(model, x, tmp_path / "q.nir")
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    exact = 0
    for mod_name, m in model.named_modules():
        if not hasattr(m, "quantized_weight"):
            continue
        q = m.quantized_weight().detach().double()
        levels = torch.unique(q)
        assert len(levels) <= 2 ** 4 + 1  # 2^b levels, plus the exact zero of pruned weights
        node = graph.nodes[mod_name.replace(".", "_")]
        parent, _, idx = mod_name.rpartition(".")
        bn = bns.get(f"{parent}.{int(idx) + 1}")
        if bn is None:
            assert np.array_equal(np.asarray(node.weight), q.float().numpy())
            exact += 1
        else:
            g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double()
            assert np.allclose(node.weight, (q * g.view(-1, 1, 1, 1)).numpy(), rtol=1e-6, atol=1e-7)
    assert exact >= 1
    diff, flips = _compare(model, rebuilt, x)
    assert flips == 0 and diff <= OUTPUT_ATOL


@pytest.mark.parametrize("name", zoo_nets.params(["sj-plif-CIFAR10Net", "sj-sew_resnet18-ADD"]))
def test_quantized_multistep_zoo_nets_export_their_levels(name, tmp_path):
    """Multi-step zoo nets keep SpikingJelly's layer classes; quantize_model gives them quantized twins
    (spikeprune.compression.quant.is_layout_wrapper). Linear layers (no BN to fold) carry exactly the levels; every
    spike survives the round trip."""
    model = _adapt(_net(name))
    quantize_model(model, bits=4)
    x = zoo_nets.images(4)
    graph, rebuilt = _round_trip(model, x, tmp_path / "q.nir")
    exact = 0
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            q = m.quantized_weight().detach()
            assert q[q != 0].unique().numel() <= 2 ** 4
            node = graph.nodes[mod_name.replace(".", "_")]
            assert np.array_equal(np.asarray(node.weight), q.numpy())
            exact += 1
    assert exact >= 1
    diff, flips = _compare(model, rebuilt, x)
    assert flips == 0 and diff <= OUTPUT_ATOL


# --------------------------------------------------------------------------------------------------
# Graphs written by the packages' own exporters.
# --------------------------------------------------------------------------------------------------


def test_import_spikingjelly_export_reproduces_its_spikes(tmp_path):
    """SpikingJelly's nir_exchange.export_to_nir writes scalar pool kernels, IF nodes, LIF with
    r = 1 (decay_input) or r = tau (not) and v_leak = v_reset; no dt/timesteps metadata."""
    pytest.importorskip("nirtorch")
    zoo_nets.install_torchvision_standin()
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(3, 8, 3, padding=1), neuron.LIFNode(tau=2.0), layer.AvgPool2d(2),
        layer.Conv2d(8, 8, 3, padding=1), neuron.IFNode(), layer.AvgPool2d(2),
        layer.Flatten(), layer.Linear(8 * 8 * 8, 10), neuron.LIFNode(tau=2.0, decay_input=False, v_reset=-0.2))
    zoo_nets._drive(net, 0)
    x = zoo_nets.images(4)
    export_to_nir(net.eval(), x, save_path=str(tmp_path / "sj.nir"))
    graph = read_nir(tmp_path / "sj.nir")
    assert any(np.asarray(n.kernel_size).shape == () for n in graph.nodes.values() if isinstance(n, nir.AvgPool2d))
    with pytest.raises(ValueError, match="pass them"):
        from_nir(graph)
    rebuilt = from_nir(graph, timesteps=zoo_nets.T, dt=1e-4)
    assert sum(isinstance(m, NIRNeuron) for m in rebuilt.modules()) == 3
    ref = zoo_nets.package_run(net, x)
    with torch.no_grad():
        out = rebuilt(x)
    assert 0 < float(ref.mean()) < 1
    assert torch.equal(out, ref)


def test_import_snntorch_export_reproduces_its_spikes(tmp_path):
    """snnTorch's export_to_nir (Leaky -> LIF with tau = dt/(1-beta), r = tau/dt, v_reset = 0; it writes
    that for every reset mechanism, so the reference net resets to zero, the case it represents exactly).
    Its exporter needs per-neuron beta/threshold for type inference and fails on convolutions with the
    installed nirtorch (infer_types), hence an MLP."""
    pytest.importorskip("nirtorch")
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)

    def leaky(n, beta, **kw):
        return snn.Leaky(beta=torch.full((n,), beta), threshold=torch.ones(n), init_hidden=True,
                         reset_mechanism="zero", **kw)

    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), leaky(64, 0.5), nn.Linear(64, 10),
                        leaky(10, 0.75, output=True))
    zoo_nets._drive(net, 0)
    x = zoo_nets.images(4)
    graph = export_to_nir(net.eval(), x[:1], ignore_dims=[0])
    write_nir(tmp_path / "snn.nir", graph)
    rebuilt = from_nir(tmp_path / "snn.nir", timesteps=zoo_nets.T, dt=1e-4)
    neurons = [m for m in rebuilt.modules() if isinstance(m, NIRNeuron)]
    assert len(neurons) == 2 and not any(m.inclusive for m in neurons)  # snnTorch fires at u > threshold
    ref = zoo_nets.package_run(net, x, output="spikes")  # the output=True layer's spikes, as NIR's LIF emits
    with torch.no_grad():
        out = rebuilt(x)
    assert 0 < float(ref.mean()) < 1
    assert torch.equal(out, ref)


def test_import_refusals():
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([4])),
                                "a": nir.Affine(weight=np.eye(4, dtype=np.float32), bias=np.zeros(4, np.float32)),
                                "b": nir.Affine(weight=np.eye(4, dtype=np.float32), bias=np.zeros(4, np.float32)),
                                "output": nir.Output(output_type=np.array([4]))},
                         edges=[("input", "a"), ("a", "b"), ("b", "a"), ("b", "output")], type_check=False)
    with pytest.raises(ValueError, match="cycle"):
        from_nir(graph, timesteps=2, dt=1e-4)
    graph.nodes["b"] = nir.Delay(delay=np.ones(4))
    graph.edges = [("input", "a"), ("a", "b"), ("b", "output")]
    with pytest.raises(ValueError, match="Delay is not imported"):
        from_nir(graph, timesteps=2, dt=1e-4)


def test_a_membrane_readout_is_refused_in_one_line():
    """adapt()'s default reads a final snnTorch output=True neuron out by its membrane; NIR cannot say so."""
    model = adapt(zoo_nets.build("snntorch-csnn"), zoo_nets.T)
    assert model.output == "membrane"
    with pytest.raises(ValueError, match="membrane potential.*output='spikes'"):
        to_nir(model, zoo_nets.images(2))
