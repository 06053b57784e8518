"""NeuroBench 2.3's metrics in the cost report, checked against NeuroBench itself (installed --no-deps).

Oracle: NeuroBench's own Benchmark, static metrics (Footprint, ConnectionSparsity) and workload metrics
(SynapticOperations, ActivationSparsity, MembraneUpdates) run on the same network and data. On our
convnet (NeuroBench's TorchModel) and on an snnTorch net (NeuroBench's SNNTorchModel on the user's own
net; our report on ``adapt(net)``), dense and 80 % pruned, the numbers must be equal to the last count,
or differ by exactly the convention docs/reports.md documents (the encoding layer counted once on a static
image; zero padding outside NeuroBench's dense count; NeuroBench's TorchModel sees no membrane of our LIF).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import spikeprune as sp
from spikeprune.compression import quant as q
from spikeprune.compression.cost import cost_report
from spikeprune.interop import adapt
from spikeprune.tickets.masks import Mask
from spikeprune.engine.neuron import LIF

import zoo_nets

nb_bench = pytest.importorskip("neurobench.benchmarks")
from neurobench.metrics.static import ConnectionSparsity, Footprint  # noqa: E402
from neurobench.metrics.workload import ActivationSparsity, MembraneUpdates, SynapticOperations  # noqa: E402
from neurobench.models import SNNTorchModel, TorchModel  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

METRICS = [[Footprint, ConnectionSparsity], [SynapticOperations, ActivationSparsity, MembraneUpdates]]


def neurobench(model, x, y, capsys):
    """NeuroBench's Benchmark on one batch (x batch-first, as NeuroBench specifies)."""
    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    out = nb_bench.Benchmark(model, loader, [], [], METRICS).run()
    capsys.readouterr()  # its progress bar
    return out


def prune80(model):
    """Global magnitude pruning to 80 % sparsity; returns the mask."""
    return sp.prune(model, "magnitude", 0.8, scope="global")


def valid_taps(size, kernel, stride, pad, dilation):
    """Closed form: kernel taps that land inside the input (not on zero padding), summed over outputs."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    return sum(sum(1 for j in range(kernel) if 0 <= o * stride - pad + j * dilation < size) for o in range(out))


def convnet(pruned):
    torch.manual_seed(0)
    m = sp.create_model("convnet", 10, 1, 2, 0.25, image_size=8).eval()
    with torch.no_grad():
        for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
            bn.bias.fill_(0.7)  # an untrained net barely fires: make every layer spike
    if pruned:
        prune80(m)
    return m


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned80"])
def test_convnet_equals_neurobench(pruned, capsys):
    model = convnet(pruned)
    x, y = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.zeros(16, dtype=torch.long)
    rep = cost_report(model, [(x, y)])
    mine = rep.neurobench
    nbm = TorchModel(model)
    nbm.add_activation_module(LIF)  # NeuroBench hooks ReLU/Sigmoid only, unless told the neuron class
    theirs = neurobench(nbm, x, y, capsys)
    assert mine["footprint"] == theirs["Footprint"]
    assert mine["connection_sparsity"] == theirs["ConnectionSparsity"]
    assert mine["synops"] == theirs["SynapticOperations"]
    assert mine["activation_sparsity"] == theirs["ActivationSparsity"]
    # NeuroBench reads membranes only from snnTorch neurons: our LIF's count is NeuroBench's definition
    # applied by us (checked against NeuroBench on snnTorch below); NeuroBench's own TorchModel says 0.
    assert theirs["MembraneUpdates"] == 0 and mine["membrane_updates"] > 0
    if pruned:
        assert theirs["ConnectionSparsity"] == pytest.approx(0.8, abs=1e-3)
        assert mine["connection_sparsity_exact"] == pytest.approx(1 - rep.totals["density"], abs=1e-12)
    # our SOPs count the accumulates that really happen: NeuroBench's effective ACs, to the last count
    assert rep.totals["sops_measured"] == theirs["SynapticOperations"]["Effective_ACs"]
    # the convention that differs: NeuroBench's dense count skips kernel taps on zero padding, ours does not
    # (closed form per conv from its real input size; a linear layer has no padding)
    dense_nb = 0.0
    for row in rep.layers:
        m = model.get_submodule(row.name)
        if isinstance(m, nn.Linear):
            dense_nb += row.flops * row.executions
        else:
            taps = _taps(model, m, x)
            assert row.flops == m.out_channels * m.in_channels // m.groups * math.prod(m.kernel_size) \
                * _outputs(model, m, x)
            dense_nb += row.executions * m.out_channels * m.in_channels // m.groups * taps
    assert theirs["SynapticOperations"]["Dense"] == dense_nb < rep.totals["dense_ops"]


def _input_hw(model, m, x):
    sizes = {}

    def grab(mod, inp, out):  # returns None: the output is left alone
        sizes.setdefault("hw", (inp[0].shape[-2:], out.shape[-2:]))
    h = m.register_forward_hook(grab)
    with torch.no_grad():
        model(x[:1])
    h.remove()
    return sizes["hw"]


def _outputs(model, m, x):
    return math.prod(_input_hw(model, m, x)[1])


def _taps(model, m, x):
    """Kernel taps on real input (not padding), summed over output positions, for one in/out channel pair."""
    (hh, ww), _ = _input_hw(model, m, x)
    return (valid_taps(hh, m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0])
            * valid_taps(ww, m.kernel_size[1], m.stride[1], m.padding[1], m.dilation[1]))


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned80"])
def test_snntorch_net_equals_neurobench(pruned, capsys):
    """NeuroBench's SNNTorchModel steps the user's own snnTorch net; we report on ``adapt(net)``."""
    T = zoo_nets.T
    raw = zoo_nets.build("snntorch-csnn", 0)
    model = adapt(zoo_nets.build("snntorch-csnn", 0), T)
    if pruned:
        mask = prune80(model)
        # the same mask on NeuroBench's copy (the adapter's parameter names are the net's under ``net.``)
        Mask({name[len("net."):]: keep for name, keep in mask.items()}).apply(raw)
    x, y = zoo_nets.images(4), torch.zeros(4, dtype=torch.long)
    seq = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)  # [T, B, C, H, W]: the image at every step
    theirs = neurobench(SNNTorchModel(raw), seq.transpose(0, 1).contiguous(), y, capsys)  # NeuroBench: [B, T, ...]
    mine = cost_report(model, [(seq, y)]).neurobench
    assert mine["footprint"] == theirs["Footprint"]
    assert mine["connection_sparsity"] == theirs["ConnectionSparsity"]
    assert mine["synops"] == theirs["SynapticOperations"]
    assert mine["activation_sparsity"] == theirs["ActivationSparsity"]
    assert mine["membrane_updates"] == theirs["MembraneUpdates"] > 0
    if pruned:
        assert theirs["ConnectionSparsity"] == pytest.approx(0.8, abs=1e-3)
    # The documented convention: fed the static image, our encoding conv runs once, NeuroBench's T times.
    static = cost_report(model, [(x, y)])
    assert static.neurobench["synops"]["Effective_MACs"] * T == theirs["SynapticOperations"]["Effective_MACs"]
    assert static.neurobench["synops"]["Effective_ACs"] == theirs["SynapticOperations"]["Effective_ACs"]
    first = static.layers[0]
    assert first.executions == 1 and not first.input_is_spikes
    # every pixel of the image is non-zero: effective = dense for that layer, so the Dense totals differ by (T-1) x it
    assert bool((x != 0).all())


def test_footprint_of_a_fake_quantized_model_is_fp32():
    """NeuroBench's footprint counts stored tensors at their dtype: a 4-bit fake-quantized model still
    costs 4 bytes per weight there, b/8 in ours; BatchNorm counts 4 tensors + num_batches_tracked there."""
    model = convnet(False)
    q.quantize_model(model, 4)
    rep = cost_report(model, [torch.randn(4, 1, 8, 8)])
    fp32 = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    assert rep.neurobench["footprint"] == fp32
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = rep.totals["weights"]
    assert rep.neurobench["footprint"] >= weights * 4 + sum(4 * m.num_features * 4 + 8 for m in bn)
    assert rep.totals["size_dense_bytes"] < rep.neurobench["footprint"] / 4
    theirs = Footprint()(TorchModel(model))
    assert theirs == rep.neurobench["footprint"]
    # the report's JSON and table carry them next to ours
    assert json.loads(json.dumps(rep.to_dict()))["neurobench"] == rep.neurobench
    assert f"footprint {theirs} B" in rep.table().splitlines()[-1]
