"""Cost report (SPEC §8): sizes, FLOPs, SOPs and energy against hand counts; generic over models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spikeprune as sp
from spikeprune.compression import quant as q
from spikeprune.compression import structured as st
from spikeprune.compression.cost import cost_report, measure_latency
from spikeprune.tickets.masks import Mask


class Tiny(nn.Module):
    """An encoding conv on the analog image (runs once) and a linear layer fed T = 2 timesteps of spikes.

    Spikes are the pixels > 0.5, so the firing rate is known by construction.
    """

    T = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):  # x: [B, 1, 4, 4]
        a = self.conv(x)
        s = (x.flatten(1) > 0.5).float()
        s = s.unsqueeze(0).expand(self.T, *s.shape).flatten(0, 1)  # [T*B, 16]
        return a.sum() + self.fc(s).sum()


def tiny_input():
    x = torch.zeros(2, 1, 4, 4)
    x.view(2, 16)[0, [0, 5, 10, 15]] = 1.0  # 4 spikes of 16 per sample
    x.view(2, 16)[1, [1, 2, 3, 4]] = 1.0
    x.view(2, 16)[:, [6, 7, 8]] = 0.3  # analog values: the conv input is not spikes
    return x


def test_hand_counts_on_a_tiny_model():
    torch.manual_seed(0)
    model, x = Tiny(), tiny_input()
    rep = cost_report(model, [x])
    conv, fc = rep.layers
    # conv: 2 x 1 x 3 x 3 weights; per execution 2 * 4 * 4 outputs x 9 MACs; runs once per sample
    assert (conv.params, conv.flops, conv.executions, conv.input_is_spikes) == (18, 288, 1, False)
    assert conv.macs == 288 and conv.sops == 0
    # fc: 16 x 3 + 3; per execution 48 MACs; T = 2 executions per sample; rate 4/16
    assert (fc.params, fc.flops, fc.executions, fc.input_is_spikes) == (51, 48, 2, True)
    assert fc.input_rate == 0.25
    assert fc.sops == 0.25 * 2 * 48 * 1.0 == 24
    assert fc.sops_measured == 24  # 4 active inputs x 3 weights x 2 timesteps
    assert fc.energy_pj == pytest.approx(0.9 * 24) and conv.energy_pj == pytest.approx(4.6 * 288)
    t = rep.totals
    assert t["energy_pj"] == pytest.approx(4.6 * 288 + 0.9 * 24)
    assert t["size_dense_bytes"] == 18 * 4 + (48 + 3) * 4  # fp32, no BatchNorm
    assert t["params"] == 69 and t["dense_ops"] == 288 + 2 * 48
    # overridable constants
    rep = cost_report(model, [x], e_mac_pj=1.0, e_ac_pj=0.5)
    assert rep.totals["energy_pj"] == pytest.approx(288 + 12)


def test_sizes_at_the_stored_bit_width_dense_and_sparse():
    torch.manual_seed(0)
    model, x = Tiny(), tiny_input()
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep[:, ::2] = True  # 24 of the 48 fc weights
    Mask({"fc.weight": keep, "conv.weight": torch.ones(2, 1, 3, 3, dtype=torch.bool)}).apply(model)
    rep = cost_report(model, [x], bits=4)
    conv, fc = rep.layers
    assert conv.size_dense_bytes == 18 * 4 / 8 + 4  # 4-bit weights + one fp32 scale
    assert fc.size_dense_bytes == 48 * 4 / 8 + 3 * 4 + 4  # + fp32 bias
    assert fc.size_sparse_bytes == 24 * 4 / 8 + 48 / 8 + 3 * 4 + 4  # kept weights + 1-bit/position bitmap
    # the same numbers from a quantization-aware model (bits read from the layers)
    q.quantize_model(model, 4)
    rep_q = cost_report(model, [x])
    assert [r.size_dense_bytes for r in rep_q.layers] == [conv.size_dense_bytes, fc.size_dense_bytes]
    assert rep_q.layers[1].nonzero == 24  # quantization keeps pruned weights at zero
    with pytest.raises(ValueError, match="bits"):
        cost_report(model, [x], bits=0)


def test_sops_fall_with_weight_sparsity():
    torch.manual_seed(0)
    model, x = Tiny(), tiny_input()
    dense = cost_report(model, [x]).layers[1]
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep[:, ::2] = True
    with torch.no_grad():
        model.fc.weight.mul_(keep)
    sparse = cost_report(model, [x]).layers[1]
    assert sparse.density == 0.5 and sparse.sops == dense.sops / 2 == 12
    # measured: each sample's active inputs times the kept weights in their columns, by hand
    s = (x.flatten(1) > 0.5).float()
    by_hand = sum(float(s[b, i]) * int(keep[:, i].sum()) for b in range(2) for i in range(16)) * Tiny.T / 2
    assert sparse.sops_measured == by_hand

    # on a spiking convnet: masking the classifier leaves every input rate alone, so its SOPs fall by
    # exactly the kept fraction and the model's total falls with it
    model = sp.create_model("convnet", 10, 1, 2, 0.25, image_size=8)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.bias.fill_(0.7)  # an untrained net barely fires; make every layer spike
    data = [torch.randn(16, 1, 8, 8)]
    totals, heads = [], []
    for sparsity in (0.0, 0.5, 0.9):
        m = sp.create_model("convnet", 10, 1, 2, 0.25, image_size=8)
        m.load_state_dict(model.state_dict())
        w = m.classifier.weight
        k = round(sparsity * w.numel())
        with torch.no_grad():
            w.view(-1)[torch.argsort(w.detach().abs().flatten())[:k]] = 0
        rep = cost_report(m, data)
        head = rep.layers[-1]
        assert head.sops == pytest.approx(head.input_rate * head.executions * head.flops * head.density)
        totals.append(rep.totals["sops"])
        heads.append(head)
    assert heads[0].input_rate == heads[1].input_rate == heads[2].input_rate > 0
    assert heads[1].sops == pytest.approx(heads[0].sops * heads[1].density)
    assert totals[0] > totals[1] > totals[2]


def test_channel_pruned_and_quantized_models_cost_less():
    torch.manual_seed(0)
    model = sp.create_model("convnet", 10, 1, 2, 0.5, image_size=16)
    data = [torch.randn(16, 1, 16, 16)]
    dense = cost_report(model, data)
    st.prune_channels(model, 0.5, criterion="l1")
    pruned = cost_report(model, data)
    assert pruned.totals["params"] == sum(p.numel() for p in model.parameters() if p.dim() > 1) \
        + model.classifier.bias.numel() + 2 * sum(m.num_features for m in model.modules()
                                                   if isinstance(m, nn.BatchNorm2d))
    # middle convs lose half their inputs and half their outputs: a quarter of their operations stay
    assert pruned.layers[1].flops == dense.layers[1].flops / 4
    q.quantize_model(model, 2)
    quantized = cost_report(model, data)
    assert quantized.layers[1].size_dense_bytes == pruned.layers[1].weights * 2 / 8 + 4
    assert quantized.totals["size_dense_bytes"] < pruned.totals["size_dense_bytes"] / 8


def test_latency_is_measured():
    model = sp.create_model("convnet", 10, 1, 2, 0.25, image_size=8)
    lat = measure_latency(model, torch.randn(4, 1, 8, 8), repeats=3, warmup=1)
    assert lat["median_ms"] > 0 and lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    assert lat["batch"] == 4 and lat["repeats"] == 3
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, torch.randn(4, 1, 8, 8), repeats=0)


def test_bad_energy_constants():
    with pytest.raises(ValueError, match="e_mac_pj"):
        cost_report(Tiny(), [tiny_input()], e_mac_pj=-1.0)


def test_measured_sops_equal_spikingjelly_synops_on_dense_and_fall_below_them_when_masked():
    """SpikingJelly's SynOpCounter is the independent reference for the exact count on a dense model;
    it counts every synapse of a firing input, so it does not fall when weights are pruned."""
    op_counter = pytest.importorskip("spikingjelly.activation_based.op_counter")
    torch.manual_seed(0)
    model = sp.create_model("convnet", 10, 1, 2, 0.25, image_size=8).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.bias.fill_(0.7)
    x = torch.randn(16, 1, 8, 8)

    def synops():
        counter = op_counter.SynOpCounter()
        with torch.no_grad(), op_counter.DispatchCounterMode([counter]):
            model(x)
        return counter.get_total() / 16  # per sample

    dense = cost_report(model, [x]).totals
    assert dense["sops_measured"] == synops() > 0
    sp.prune(model, "magnitude", 0.6)
    sparse = cost_report(model, [x]).totals
    assert sparse["sops_measured"] < 0.7 * synops()


def test_event_counts_drive_one_accumulate_per_event():
    """Frames of an event camera hold counts (a pixel that saw 3 events holds 3): every event costs its
    fan-out in accumulates, so SOPs = mean count x ops, and the measured SOPs = sum over events of the
    surviving weights they reach (hand-computed with a 1x1 conv, where each event reaches C_out weights)."""

    class EventNet(nn.Module):  # [T, B, 2, H, W] event frames -> 1x1 conv -> LIF
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 1, bias=False)
            self.lif = sp.LIF()
            self.T = 2  # declares its input time-major [T, B, ...], as spikeprune's models do

        def forward(self, x):
            T, B = x.shape[:2]
            return self.lif(self.conv(x.flatten(0, 1)).reshape(T, B, 3, *x.shape[-2:]))

    torch.manual_seed(0)
    net = EventNet()
    with torch.no_grad():
        net.conv.weight[0, 1] = 0.0  # one of the 6 weights pruned
    x = torch.randint(0, 4, (2, 3, 2, 4, 4)).float()  # counts 0..3
    row = cost_report(net, [x], num_batches=None).layers[0]
    assert row.input_is_spikes and row.macs == 0
    ops = row.executions * row.flops * row.density
    assert row.sops == pytest.approx(float(x.mean()) * ops)
    assert row.sops > row.input_rate * ops  # counts above 1 cost more than their non-zero rate says
    kept = (net.conv.weight[:, :, 0, 0] != 0).sum(0)  # per input channel: the outputs each event reaches
    per_sample = float((x.sum(dim=(0, 3, 4)) * kept).sum()) / x.shape[1]
    assert row.sops_measured == pytest.approx(per_sample)
