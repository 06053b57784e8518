"""The traced graph (spikeprune.topology): layouts, drivers, channel groups, what cannot be followed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spikeprune as sp
from spikeprune.engine.neuron import LIF
from spikeprune.topology import TopologyError, channel_axis, evaluation, trace


def test_layouts_of_our_convnet_encoding_folded_and_time_major():
    model = sp.create_model("convnet", 10, 1, T=4, image_size=(8, 8))
    g = trace(model, torch.rand(16, 1, 8, 8))
    assert (g.T, g.B) == (4, 3)
    conv0 = g.calls("features.0.conv")[0]
    assert conv0.layout == "B" and g.samples_per_call(conv0) == (3, 1)  # the encoding layer runs once
    conv1 = g.calls("features.2.conv")[0]
    assert conv1.layout == "N" and g.samples_per_call(conv1) == (12, 4)  # [T*B, C, H, W]
    lif = g.calls("features.0.lif")[0]
    assert lif.layout == "TB"
    assert g.driven("features.2.conv") == ("features.2.bn", "features.2.lif")
    assert g.drivers()["features.2.lif"] == ("features.2.conv", "features.2.bn")


def test_trace_costs_one_forward_of_three_samples():
    """Tracing runs the model once, on 3 samples (2 when T = 3), whatever the batch it is given."""
    model = sp.create_model("convnet", 10, 1, T=4, image_size=(8, 8))
    seen = []
    h = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    trace(model, torch.rand(256, 1, 8, 8))
    h.remove()
    assert seen == [3]
    model3 = sp.create_model("convnet", 10, 1, T=3, image_size=(8, 8))
    h = model3.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    trace(model3, torch.rand(256, 1, 8, 8))
    h.remove()
    assert seen == [3, 2]


def test_an_undeclared_time_major_model_is_read_from_its_neurons():
    class Custom(nn.Module):  # takes [T, B, F] and says nothing about it
        def __init__(self):
            super().__init__()
            self.fc1, self.bn, self.lif, self.fc2 = nn.Linear(6, 5), nn.BatchNorm1d(5), LIF(), nn.Linear(5, 2)

        def forward(self, x):
            T, B = x.shape[:2]
            return self.fc2(self.lif(self.bn(self.fc1(x.flatten(0, 1))).view(T, B, -1)))

    g = trace(Custom(), torch.rand(4, 8, 6))
    assert g.time_major_input and (g.T, g.B) == (4, 3)
    assert g.driven("fc1") == ("bn", "lif")


def test_concatenated_branches_give_offsets_to_the_consumer():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.abn, self.alif = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), LIF()
            self.b, self.bbn, self.blif = nn.Conv2d(2, 5, 1), nn.BatchNorm2d(5), LIF()
            self.head = nn.Conv2d(8, 4, 1)
            self.T = 2

        def forward(self, x):  # static [B, 2, H, W] -> [T, B, 4, H, W]
            seq = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1).flatten(0, 1)
            a = self.alif(self.abn(self.a(seq)).unflatten(0, (self.T, -1)))
            b = self.blif(self.bbn(self.b(seq)).unflatten(0, (self.T, -1)))
            return self.head(torch.cat([a, b], dim=2).flatten(0, 1)).unflatten(0, (self.T, -1))

    groups = {g.name: g for g in trace(Branches(), torch.rand(5, 2, 6, 6)).channel_groups()}
    assert groups["a"].consumers == (("head", 1, 0),) and groups["a"].norms == (("abn", 1, 0),)
    assert groups["b"].consumers == (("head", 1, 3),) and groups["b"].blocked is None
    assert groups["head"].blocked == "it is the network's output"


def test_an_operation_the_tracer_cannot_follow_blocks_only_its_group():
    class Softmaxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif1, self.fc2, self.lif2, self.fc3 = (nn.Linear(4, 6), LIF(), nn.Linear(6, 7), LIF(),
                                                                  nn.Linear(7, 2))
            self.T = 2

        def forward(self, x):  # [B, 4]
            h = self.lif1(self.fc1(x).unsqueeze(0).repeat(self.T, 1, 1))
            h = torch.softmax(self.fc2(h), dim=-1)  # mixes fc2's channels
            return self.fc3(self.lif2(h))

    model = Softmaxed()
    model.static_dims = 2
    groups = {g.name: g for g in trace(model, torch.rand(5, 4)).channel_groups()}
    assert groups["fc1"].blocked is None
    assert "softmax" in groups["fc2"].blocked


def test_unadapted_third_party_neuron_is_refused_in_one_line():
    snn = pytest.importorskip("snntorch")
    net = nn.Sequential(nn.Linear(3, 4), snn.Leaky(beta=0.5, init_hidden=True))
    with pytest.raises(TopologyError, match=r"snntorch.*Leaky.*adapt\(\) the network first"):
        trace(net, torch.rand(5, 3))


def test_channel_axis_for_every_layout():
    conv, fc, bn = nn.Conv2d(3, 4, 3), nn.Linear(3, 4), nn.BatchNorm2d(3)
    assert channel_axis(conv, torch.zeros(2, 3, 5, 5)) == 1
    assert channel_axis(conv, torch.zeros(4, 2, 3, 5, 5)) == 2
    assert channel_axis(fc, torch.zeros(4, 2, 3)) == 2
    assert channel_axis(bn, torch.zeros(4, 2, 3, 5, 5)) == 2


def test_evaluation_restores_every_modules_own_flag():
    outer = nn.Sequential(nn.BatchNorm1d(2), nn.Sequential(nn.BatchNorm1d(2)))
    outer.train()
    outer[1].eval()  # a user's eval-mode net inside a wrapper in train mode
    with evaluation(outer):
        assert not any(m.training for m in outer.modules())
    assert outer.training and outer[0].training and not outer[1].training and not outer[1][0].training


def _calls_and_lifs(model):
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(tuple(a[0].shape)))
    return calls, [m for m in model.modules() if isinstance(m, LIF)]


def test_run_batches_stops_at_num_batches_and_counts_samples():
    from spikeprune.topology import run_batches
    model = sp.create_model("convnet", 10, 1, T=2, image_size=(8, 8))
    calls, lifs = _calls_and_lifs(model)
    taken = []

    def data():
        for i in range(5):
            taken.append(i)
            yield torch.rand(4 + i, 1, 8, 8), torch.zeros(4 + i)  # (x, y) pairs

    seen, installed = [], []

    def install(graph):
        installed.append(graph)
        return [model.features[0].conv.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))]

    observed = []
    run = run_batches(model, data(), 2, observer=lambda lif, u, s: observed.append(tuple(u.shape)),
                      install=install, empty="no data")
    assert (run.batches, run.samples) == (2, 4 + 5) and run.graph is installed[0]
    assert taken == [0, 1]  # the loop stops: the third batch is never drawn
    assert calls == [(3, 1, 8, 8), (4, 1, 8, 8), (5, 1, 8, 8)]  # the trace (3 samples) and 2 batches
    assert seen == [4, 5]  # hooks see the measured batches, not the trace
    assert observed == [(2, b, *s) for b in (4, 5) for s in [run.graph.calls(n)[0].out_shape[2:]
                                                          for n in run.graph.modules("neuron")]]
    assert not model.features[0].conv._forward_hooks and all(lif.observer is None for lif in lifs)
    # all batches (None), bare tensors, an explicit batch size
    run = run_batches(model, [torch.rand(3, 1, 8, 8)] * 3, None, observer=lambda *_: None, install=lambda g: [],
                      empty="no data", batch_size=7)
    assert (run.batches, run.samples) == (3, 21)


def test_run_batches_refuses_empty_data_before_running_anything():
    from spikeprune.topology import run_batches
    model = sp.create_model("mlp", 10, 1, T=2, image_size=(8, 8))
    calls, _ = _calls_and_lifs(model)
    installed = []
    with pytest.raises(sp.UserError, match=r"^the data was empty$"):
        run_batches(model, iter([]), 4, observer=lambda *_: None, install=installed.append, empty="the data was empty")
    assert calls == [] and installed == []


def test_run_batches_removes_hooks_and_observers_and_restores_flags_when_a_batch_raises():
    from spikeprune.topology import run_batches
    model = sp.create_model("convnet", 10, 1, T=2, image_size=(8, 8))
    model.train()
    lifs = [m for m in model.modules() if isinstance(m, LIF)]
    conv = model.features[0].conv
    bad = torch.rand(4, 2, 8, 8)  # two channels: the first conv refuses it
    with pytest.raises(RuntimeError):
        run_batches(model, [torch.rand(4, 1, 8, 8), bad], 5, observer=lambda *_: None,
                    install=lambda g: [conv.register_forward_hook(lambda *a: None),
                                       conv.register_forward_pre_hook(lambda *a: None)], empty="no data")
    assert not conv._forward_hooks and not conv._forward_pre_hooks
    assert all(lif.observer is None for lif in lifs)
    assert all(m.training for m in model.modules())
