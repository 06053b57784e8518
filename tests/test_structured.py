"""Structured pruning (SPEC §7): channel groups, criteria, strategies and exact physical removal."""

from __future__ import annotations

import pytest
import torch

import spikeprune as sp
from spikeprune.compression import quant as q
from spikeprune.compression import structured as st
from spikeprune.tickets.criteria import sf
from spikeprune.engine.train import load_model, save_model

ARCHS = ["convnet", "vgg16", "resnet19", "mlp"]


def tiny(name, seed=0, width=0.25, size=8):
    torch.manual_seed(seed)
    return sp.create_model(name, 10, 1, 2, width, image_size=size)


def silence_every_third_channel(model):
    """Channels 0, 3, 6... of every group never fire (BN bias -1e3); the others fire sometimes (bias 0.7)."""
    with torch.no_grad():
        for g in st.channel_groups(model):
            for layer, bn in g.producers:
                module = model.get_submodule(bn if bn else layer)
                module.bias.fill_(0.7)
                module.bias[::3] = -1e3


@pytest.mark.parametrize("name", [pytest.param(a, marks=pytest.mark.slow) if a == "resnet19" else a for a in ARCHS])
def test_removing_channels_that_never_spike_is_exact(name, tmp_path):
    model = tiny(name, width=0.5, size=16).double().eval()
    silence_every_third_channel(model)
    data = [torch.randn(12, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
            for i in range(2)]
    stats = st.channel_statistics(model, data, None)
    keep = {}
    for g in st.channel_groups(model):
        fired = sum(stats.spike_sum[n] for n in g.neurons)
        keep[g.name] = torch.nonzero(fired > 0).flatten()
        assert 0 < keep[g.name].numel() < g.size  # something to remove, something left
    before = [model(x) for x in data]
    n_before = sum(p.numel() for p in model.parameters())
    history = st.remove_channels(model, keep)
    after = [model(x) for x in data]
    for a, b in zip(before, after):
        assert torch.equal(a, b) or (a - b).abs().max() < 1e-10
    assert sum(p.numel() for p in model.parameters()) < n_before
    assert history == {k: v.tolist() for k, v in keep.items()}
    # a channel-pruned model is saved and rebuilt from its checkpoint alone
    save_model(tmp_path / "pruned.safetensors", model)
    rebuilt, _ = load_model(tmp_path / "pruned.safetensors")
    rebuilt = rebuilt.double().eval()
    assert [g.size for g in st.channel_groups(rebuilt)] == [len(v) for v in keep.values()]
    assert torch.equal(rebuilt(data[0]), after[0])


def test_svs_removes_the_silent_channels_first():
    model = tiny("convnet", width=0.5, size=16).eval()
    silence_every_third_channel(model)
    data = [torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    scores = st.channel_scores("svs", model, data)
    for g in st.channel_groups(model):
        silent = torch.arange(0, g.size, 3)
        assert (scores[g.name][silent] == 0).all()
    expected = [model(x) for x in data]
    # remove exactly the silent channels of every layer: the output does not change
    ratios = {g.name: len(range(0, g.size, 3)) / g.size for g in st.channel_groups(model)}
    st.remove_channels(model, st.select_channels(scores, ratios))
    for x, y in zip(data, expected):
        assert torch.allclose(model(x), y, atol=1e-5)


def test_a_zero_weight_channel_still_fires_from_the_bn_bias():
    """Zeroing a filter is not removing it: BN's bias alone can drive the neuron over threshold."""
    model = tiny("convnet", width=0.5, size=16).eval()
    with torch.no_grad():
        for block in (model.features[2], model.features[4]):
            block.bn.bias.fill_(0.7)  # deeper layers fire, so the first layer's spikes reach the output
        model.features[0].conv.weight[2].zero_()
        model.features[0].bn.bias[2] = 1.5
    data = [torch.randn(8, 1, 16, 16)]
    stats = st.channel_statistics(model, data)
    assert stats.firing_rate("features.0.lif")[2] == 1.0
    assert st.channel_scores("svs", model, data)["features.0"][2] > 0  # SVS keeps it...
    assert st.channel_scores("l1", model)["features.0"][2] == 0  # ...filter L1 would remove it first
    before = model(data[0])
    keep = [i for i in range(st.channel_groups(model)[0].size) if i != 2]
    st.remove_channels(model, {"features.0": keep})
    assert not torch.allclose(model(data[0]), before)  # and removing it does change the output


def test_svs_is_the_rank_of_the_time_averaged_spike_map():
    lif = sp.LIF(u_th=1.0)
    T, B, C = 2, 1, 3
    on = 10.0
    x = torch.full((T, B, C, 4, 4), -10.0)
    x[:, 0, 0] = on * torch.eye(4)  # channel 0: identity map, rank 4
    x[:, 0, 1, :2, :] = on  # channel 1: two equal rows, rank 1
    # channel 2: silent, rank 0
    x[0, 0, 1, 3, 3] = on  # fires at t = 0 only: the time average 0.5 adds one independent row
    stats = st.channel_statistics(lif, [x])
    assert stats.svs("").tolist() == [4.0, 2.0, 0.0]


@pytest.mark.parametrize("name", ARCHS)
def test_every_criterion_gives_one_score_per_channel(name):
    model = tiny(name, size=16)
    data = [torch.randn(8, 1, 16, 16)]
    groups = st.channel_groups(model)
    for crit in st.CHANNEL_CRITERIA:
        scores = st.channel_scores(crit, model, data)
        assert list(scores) == [g.name for g in groups]
        for g in groups:
            assert scores[g.name].shape == (g.size,) and torch.isfinite(scores[g.name]).all()


def test_criteria_match_their_definitions():
    model = tiny("convnet", size=16)
    data = [torch.randn(8, 1, 16, 16)]
    conv, bn = model.features[2].conv, model.features[2].bn
    l1 = st.channel_scores("l1", model)["features.2"]
    assert torch.allclose(l1, conv.weight.detach().abs().sum(dim=(1, 2, 3)))
    assert torch.equal(st.channel_scores("bn", model)["features.2"], bn.weight.detach().abs())
    weight_scores = sf(model, sp.calibrate(model, data))["features.2.conv.weight"]
    assert torch.allclose(st.channel_scores("sf", model, data)["features.2"], weight_scores.sum(dim=(1, 2, 3)))
    us = []
    with sp.engine.neuron.observe(model, lambda lif, u, s: us.append(u) if lif is model.features[2].lif else None):
        model.eval()(data[0])
    assert torch.allclose(st.channel_scores("membrane", model, data)["features.2"],
                          us[0].abs().mean(dim=(0, 1, 3, 4)).float(), rtol=1e-5)


def test_resnet_groups_keep_residual_channels_consistent():
    model = tiny("resnet19")
    groups = {g.name: g for g in st.channel_groups(model)}
    stage1 = groups["stage1"]
    assert ("conv1.conv", "conv1.bn") in stage1.producers
    assert [p for p, _ in stage1.producers][1:] == [f"layers.{i}.conv2.conv" for i in range(3)]
    assert ("layers.3.shortcut.conv", 1, 0) in stage1.consumers  # (layer, features per channel, offset)
    assert ("layers.3.shortcut.conv", "layers.3.shortcut.bn") in groups["stage2"].producers
    keep = {"stage1": [0, 2, 5], "stage2": list(range(0, 64, 2)), "layers.4.conv1": [1, 7]}
    st.remove_channels(model, keep)
    assert model.conv1.conv.out_channels == 3 and model.layers[2].conv2.conv.out_channels == 3
    assert model.layers[3].shortcut.conv.in_channels == 3 and model.layers[3].conv1.conv.in_channels == 3
    assert model.layers[4].conv1.conv.out_channels == 2 and model.layers[4].conv2.conv.in_channels == 2
    assert model.spikeprune_config["options"]["stage_channels"] == [3, 32, 128]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 2, 10)


def test_layerwise_and_global_budgets():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0, 2.0]), "b": torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])}
    keep = st.select_channels(scores, 0.5)
    assert keep["a"].tolist() == [0, 2] and keep["b"].tolist() == [3, 4, 5]
    keep = st.select_channels(scores, 0.5, scope="global")
    assert sum(v.numel() for v in keep.values()) == 10 - 5
    assert all(v.numel() >= 1 for v in keep.values())
    keep = st.select_channels(scores, {"b": 0.5})
    assert keep["a"].tolist() == [0, 1, 2, 3] and keep["b"].numel() == 3
    assert st.select_channels(scores, 0.0)["b"].numel() == 6


def test_removing_every_channel_of_a_layer_is_refused():
    scores = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([1.0])}
    with pytest.raises(ValueError, match="every channel of layer b"):
        st.select_channels(scores, 0.6)
    with pytest.raises(ValueError, match="every channel of layer a"):
        st.select_channels(scores, {"a": 1.0})
    for bad in (1.0, -0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="channel sparsity"):
            st.select_channels(scores, bad)
    model = tiny("convnet")
    with pytest.raises(ValueError, match="every channel of layer features.0"):
        st.remove_channels(model, {"features.0": []})
    with pytest.raises(ValueError, match="no channel group"):
        st.remove_channels(model, {"features.7": [0]})
    with pytest.raises(ValueError, match="distinct indices"):
        st.remove_channels(model, {"features.0": [0, 0, 99]})


def test_a_network_without_prunable_channels_is_refused_in_one_line():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="pass example="):  # an unregistered net does not say its input
        st.channel_groups(net)
    with pytest.raises(ValueError, match="no channel group .* can be pruned .*network's output") as info:
        st.channel_groups(net, torch.randn(2, 1, 8, 8))
    assert "\n" not in str(info.value)


def test_prune_channels_on_a_quantized_model_keeps_it_quantized():
    model = tiny("convnet", size=16)
    data = [torch.randn(8, 1, 16, 16)]
    q.quantize_model(model, 4, per_channel=True)
    q.freeze(model)
    history = st.prune_channels(model, 0.5, criterion="svs", calibration=data)
    assert [len(v) for v in history.values()] == [4, 8, 16]
    conv = model.features[2].conv
    assert isinstance(conv, q.QuantConv2d) and conv.weight_gamma.shape[0] == conv.out_channels == 8
    assert model(data[0]).shape == (2, 8, 10)
    model.train()
    model(data[0]).sum().backward()


def test_history_replays_on_a_fresh_model():
    """Torch-Pruning's lesson: a pruned model is (original model, history of (layer, channels))."""
    data = [torch.randn(8, 1, 16, 16)]
    model = tiny("resnet19", size=16)
    fresh = tiny("resnet19", size=16)
    history = st.prune_channels(model, 0.4, criterion="l1", scope="global")
    st.replay(fresh, [history])
    assert fresh.spikeprune_config == model.spikeprune_config
    assert torch.equal(fresh.eval()(data[0]), model.eval()(data[0]))
