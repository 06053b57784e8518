"""Structured channel pruning of any traced network (issue 12): SpikingJelly zoo nets, snnTorch tutorial
nets, a hand-written net with ``torch.cat``, and the registered models, all through one code path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import spikeprune as sp
from spikeprune.compression import structured as st
from spikeprune.engine.models.layers import fold

sys.path.insert(0, str(Path(__file__).parent))
import zoo_nets  # noqa: E402

REGISTERED = ["convnet", "mlp", "resnet19", "vgg16"]
NETS = list(zoo_nets.ZOO) + REGISTERED


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """``(network, example batch [4, 3, 32, 32])``: an adapted zoo net, or a registered model."""
    if name in REGISTERED:
        torch.manual_seed(seed)
        return sp.create_model(name, 10, 3, T=4, width=0.25, image_size=(32, 32)).eval(), zoo_nets.images(4, seed)
    return sp.adapt(zoo_nets.build(name, seed), zoo_nets.T), zoo_nets.images(4, seed)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Parameters before -> after 50 % layerwise channel removal (measured; exact, since layerwise removal takes
# round(0.5 x size) channels of every group whatever the scores). Every net's large layers are prunable
# (the blocked ones are small output layers), so all pass 40 %: resnet18 (both) 74.9 %, VGG-11-BN 75.0 %,
# PLIF CIFAR10Net 70.9 % (its last linear feeds a VotingLayer: blocked, only its inputs are cut),
# single-step Sequential 52.4 % and snnTorch CSNN 63 % (their classifier is most of the net, only its
# inputs are cut), convnet 62.8 %, mlp 50.5 % (the 3072-input first layer loses only its outputs).
PARAMS = {
    "sj-spiking_resnet18": (11181642, 2801450), "sj-sew_resnet18-ADD": (11181642, 2801450),
    "sj-spiking_vgg11_bn": (128812810, 32217994), "sj-plif-CIFAR10Net": (1258724, 366552),
    "sj-sequential-single-step": (11666, 5550), "snntorch-csnn": (36186, 13298), "snntorch-csnn-bn": (36338, 13374),
    "convnet": (11218, 4174), "mlp": (201610, 99786), "resnet19": (796778, 200250), "vgg16": (923130, 231746),
}


@pytest.mark.parametrize("name", zoo_nets.params(NETS))
def test_half_the_channels_cut_the_parameters_and_the_net_still_runs(name):
    net, x = build(name)
    with torch.no_grad():
        before = net(x)
    n0 = n_params(net)
    history = st.prune_channels(net, 0.5, criterion="l1", calibration=[x])
    assert history and all(len(v) >= 1 for v in history.values())
    reduction = 1 - n_params(net) / n0
    print(f"{name}: {n0} -> {n_params(net)} parameters, {reduction:.1%} removed")
    assert reduction >= 0.4
    assert (n0, n_params(net)) == PARAMS[name]
    with torch.no_grad():
        after = net(x)
    assert after.shape == before.shape and torch.isfinite(after).all()
    # the traced groups of the pruned net are the kept widths
    assert {g.name: g.size for g in st.channel_groups(net, x)} == {k: len(v) for k, v in history.items()}


CRITERIA_CASES = [(n, c) for n in ("sj-sew_resnet18-ADD", "snntorch-csnn-bn", "sj-plif-CIFAR10Net")
                  for c in ("svs", "membrane", "bn", "sf")]


@pytest.mark.parametrize(("name", "criterion"), CRITERIA_CASES)
def test_spiking_criteria_prune_third_party_nets(name, criterion):
    net, x = build(name)
    n0 = n_params(net)
    scores = st.channel_scores(criterion, net, [x], example=x)
    groups = st.channel_groups(net, x)
    assert list(scores) == [g.name for g in groups]
    assert all(scores[g.name].shape == (g.size,) and torch.isfinite(scores[g.name]).all() for g in groups)
    if criterion in ("svs", "membrane"):  # the drive makes every layer fire: the spiking scores are informative
        assert all(scores[g.name].max() > 0 for g in groups)
    st.prune_channels(net, 0.5, criterion=criterion, calibration=[x])
    assert 1 - n_params(net) / n0 >= 0.4
    with torch.no_grad():
        assert net(x).shape[-1] == 10 or name == "sj-plif-CIFAR10Net"


def silence(net: nn.Module, groups: list[st.ChannelGroup], drop: dict[str, list[int]]) -> None:
    """Channels ``drop[group]`` never fire: for *every* producer of the group (all members of a residual
    group), the BN that follows it outputs -1e3 for them (gamma 0, beta -1e3); a producer without BN
    gets zero filters and bias -1e3. So every neuron of the group sees -1e3 (+ silent or negative
    residual terms) on those channels."""
    with torch.no_grad():
        for g in groups:
            c = torch.tensor(drop[g.name])
            for layer, bn in g.producers:
                if bn is not None:
                    m = net.get_submodule(bn)
                    m.weight[c] = 0.0
                    m.bias[c] = -1e3
                else:
                    m = net.get_submodule(layer)
                    m.weight[c] = 0.0
                    if m.bias is not None:
                        m.bias[c] = -1e3


@pytest.mark.parametrize("name", zoo_nets.params(NETS))
def test_removing_channels_that_never_fire_leaves_the_output_unchanged(name):
    """Exact construction: every third channel of every group is silenced, then removed.

    Compared in float64 to 1e-9 rather than bit for bit: a conv/linear with fewer input channels may sum
    the remaining (identical) products in another order, and float64 keeps that rounding (~1e-16
    relative) far from flipping any spike threshold crossing downstream. The snnTorch nets run in
    float32 (their adapted neurons emit float32 spikes whatever the model's dtype), compared to 1e-5.
    """
    net, x = build(name)
    double = not name.startswith("snntorch")
    if double:
        net, x = net.double(), x.double()
    groups = st.channel_groups(net, x)
    drop = {g.name: list(range(0, g.size, 3)) for g in groups}
    silence(net, groups, drop)
    stats = st.channel_statistics(net, [x], None)
    for g in groups:
        for neuron, per, offset in g.neuron_slices:
            spikes = stats.spike_sum[neuron][offset:offset + g.size * per].reshape(g.size, per).sum(1)
            assert (spikes[drop[g.name]] == 0).all(), (g.name, neuron)  # the construction holds
    assert sum(float(v.sum()) for v in stats.spike_sum.values()) > 0  # and the rest still fires
    keep = {g.name: [c for c in range(g.size) if c % 3] for g in groups}
    with torch.no_grad():
        before = net(x)
    n0 = n_params(net)
    st.remove_channels(net, keep, example=x)
    with torch.no_grad():
        after = net(x)
    assert n_params(net) < n0
    assert before.abs().sum() > 0
    assert torch.equal(before, after) or (before - after).abs().max() < (1e-9 if double else 1e-5)


# --------------------------------------------------------------------------------------------------
# Residual groups of SpikingJelly's ResNets: the downsample conv + BN go with the block's conv2.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sj-spiking_resnet18", "sj-sew_resnet18-ADD"])
def test_residual_groups_are_removed_consistently(name):
    net, x = build(name)
    groups = {g.name: g for g in st.channel_groups(net, x)}
    stage2 = groups["net.layer2.0.conv2"]
    assert [p for p, _ in stage2.producers] == ["net.layer2.0.conv2", "net.layer2.0.downsample.0",
                                               "net.layer2.1.conv2"]
    assert ("net.layer2.0.downsample.0", "net.layer2.0.downsample.1") in stage2.producers
    assert ("net.layer2.0.downsample.1", 1, 0) in stage2.norms
    assert [c for c, _, _ in stage2.consumers] == ["net.layer2.1.conv1", "net.layer3.0.conv1",
                                                  "net.layer3.0.downsample.0"]
    stem = groups["net.conv1"]
    assert [p for p, _ in stem.producers] == ["net.conv1", "net.layer1.0.conv2", "net.layer1.1.conv2"]
    if "sew" in name:  # SEW ADD adds spikes: the downsample branch has its own neuron in the group
        assert "net.layer2.0.downsample_sn" in stage2.neurons
    kept = list(range(0, 128, 4))
    bn_before = net.get_submodule("net.layer2.0.downsample.1").running_mean.clone()
    st.remove_channels(net, {"net.layer2.0.conv2": kept, "net.conv1": [1, 2, 3]}, example=x)
    m = net.get_submodule
    for layer in ("net.layer2.0.conv2", "net.layer2.0.downsample.0", "net.layer2.1.conv2"):
        assert m(layer).out_channels == m(layer).weight.shape[0] == 32
    for bn in ("net.layer2.0.bn2", "net.layer2.0.downsample.1", "net.layer2.1.bn2"):
        assert m(bn).num_features == m(bn).weight.shape[0] == m(bn).running_var.shape[0] == 32
    assert torch.equal(m("net.layer2.0.downsample.1").running_mean, bn_before[kept])
    for layer in ("net.layer2.1.conv1", "net.layer3.0.conv1", "net.layer3.0.downsample.0"):
        assert m(layer).in_channels == m(layer).weight.shape[1] == 32
    for layer in ("net.conv1", "net.layer1.0.conv2", "net.layer1.1.conv2"):
        assert m(layer).out_channels == 3
    for layer in ("net.layer2.0.conv1", "net.layer2.0.downsample.0", "net.layer1.0.conv1"):
        assert m(layer).in_channels == 3
    with torch.no_grad():
        assert net(x).shape == (zoo_nets.T, 4, 10)  # [T, B, classes]


# --------------------------------------------------------------------------------------------------
# torch.cat along channels: consumers (and a BN + neuron after the cat) read groups at an offset.
# --------------------------------------------------------------------------------------------------


class CatNet(nn.Module):
    """Two branches concatenated along channels into a conv. ``[B, 3, 8, 8]`` -> ``[T, B, 3]``.

    ``norm_after_cat=False``: conv-BN-LIF per branch, then ``cat`` -> conv c. ``True``: conv per branch,
    ``cat`` -> one BN(10) -> one LIF -> conv c (the BN and the neuron hold both groups, the second at
    offset 4).
    """

    def __init__(self, norm_after_cat: bool = False, T: int = 2) -> None:
        super().__init__()
        self.T, self.norm_after_cat = T, norm_after_cat
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        if norm_after_cat:
            self.bn, self.lif = nn.BatchNorm2d(10), sp.LIF()
        else:
            self.bn_a, self.bn_b, self.lif_a, self.lif_b = nn.BatchNorm2d(4), nn.BatchNorm2d(6), sp.LIF(), sp.LIF()
        self.c, self.bn_c, self.lif_c = nn.Conv2d(10, 5, 3, padding=1), nn.BatchNorm2d(5), sp.LIF()
        self.head = nn.Linear(5 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)  # [T, B, 3, 8, 8]
        if self.norm_after_cat:
            s = self.lif(fold(self.bn, torch.cat([fold(self.a, x), fold(self.b, x)], dim=2)))
        else:
            s = torch.cat([self.lif_a(fold(self.bn_a, fold(self.a, x))),
                           self.lif_b(fold(self.bn_b, fold(self.b, x)))], dim=2)
        s = self.lif_c(fold(self.bn_c, fold(self.c, s)))
        return fold(self.head, s.flatten(2))


def _cat_net(norm_after_cat: bool) -> CatNet:
    torch.manual_seed(0)
    net = CatNet(norm_after_cat)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(1.5, 2.5)
                m.bias.uniform_(1.0, 1.5)  # every channel fires often (u_th = 1)
                m.running_mean.normal_(0, 0.1)
    return net.eval()


@pytest.mark.parametrize("norm_after_cat", [False, True])
def test_concatenated_channels_are_cut_at_their_offsets(norm_after_cat):
    net = _cat_net(norm_after_cat)
    x = torch.rand(4, 3, 8, 8) * 3
    groups = {g.name: g for g in st.channel_groups(net, x)}
    assert list(groups) == ["a", "b", "c"]
    assert groups["a"].consumers == (("c", 1, 0),) and groups["b"].consumers == (("c", 1, 4),)
    assert groups["c"].consumers == (("head", 64, 0),)
    if norm_after_cat:
        assert groups["b"].norms == (("bn", 1, 4),) and groups["b"].neuron_slices == (("lif", 1, 4),)
        # no BN reads a producer directly (the cat does): the bn criterion falls back to filter L1 there
        assert groups["a"].producers == (("a", None),) and groups["b"].producers == (("b", None),)
    w, bn = net.c.weight.detach().clone(), (net.bn if norm_after_cat else net.bn_b)
    bn_mean = bn.running_mean.clone()
    head = net.head.weight.detach().clone()
    st.remove_channels(net, {"a": [0, 2], "b": [1, 3, 5], "c": [0, 4]}, example=x)
    cols = [0, 2, 4 + 1, 4 + 3, 4 + 5]
    assert net.c.in_channels == 5 and torch.equal(net.c.weight, w[[0, 4]][:, cols])
    assert torch.equal(bn.running_mean, bn_mean[cols] if norm_after_cat else bn_mean[[1, 3, 5]])
    head_cols = [c * 64 + j for c in (0, 4) for j in range(64)]
    assert net.head.in_features == 128 and torch.equal(net.head.weight, head[:, head_cols])
    assert net(x).shape == (2, 4, 3)


@pytest.mark.parametrize("norm_after_cat", [False, True])
def test_concat_removal_of_silent_channels_is_exact(norm_after_cat):
    net = _cat_net(norm_after_cat).double()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 3
    drop = {"a": [1, 3], "b": [0, 4], "c": [2]}
    with torch.no_grad():  # silence them where their BN entries sit (offset 4 for b after the cat)
        for g, bn, offset in (("a", "bn_a", 0), ("b", "bn_b", 0), ("c", "bn_c", 0)) if not norm_after_cat else \
                (("a", "bn", 0), ("b", "bn", 4), ("c", "bn_c", 0)):
            m = net.get_submodule(bn)
            idx = torch.tensor(drop[g]) + offset
            m.weight[idx], m.bias[idx] = 0.0, -1e3
    scores = st.channel_scores("svs", net, [x], example=x)
    for g, silent in drop.items():
        assert (scores[g][silent] == 0).all() and (scores[g][[i for i in range(len(scores[g])) if i not in silent]] > 0).all()
    before = net(x)
    keep = {g: [i for i in range(len(scores[g])) if i not in d] for g, d in drop.items()}
    st.remove_channels(net, keep, example=x)
    after = net(x)
    assert before.abs().sum() > 0
    assert torch.equal(before, after) or (before - after).abs().max() < 1e-9  # float64


# --------------------------------------------------------------------------------------------------
# The registered models: traced groups equal the hand-written groups of the previous implementation.
# --------------------------------------------------------------------------------------------------


def _expected_groups(name: str) -> list[tuple]:
    """The groups structured.py declared by hand for convnet / mlp / resnet19 (width 0.25, 3 x 32 x 32):
    ``(name, size, producers (layer, bn), neurons, consumers (layer, per, offset))`` in its order."""
    if name == "convnet":
        sizes = [8, 16, 32]
        out = []
        for i, (blk, size) in enumerate(zip(("features.0", "features.2", "features.4"), sizes)):
            consumer = (f"features.{2 * i + 2}.conv", 1, 0) if i < 2 else ("classifier", 4 * 4, 0)
            out.append((blk, size, ((f"{blk}.conv", f"{blk}.bn"),), (f"{blk}.lif",), (consumer,)))
        return out
    if name == "mlp":
        return [("features.0", 64, (("features.0.fc", "features.0.bn"),), ("features.0.lif",),
                 (("features.1.fc", 1, 0),)),
                ("features.1", 64, (("features.1.fc", "features.1.bn"),), ("features.1.lif",),
                 (("classifier", 1, 0),))]
    assert name == "resnet19"
    widths = [32, 32, 32, 64, 64, 64, 128, 128]
    shortcut = {3, 6}
    stages, inner = [], []
    current = {"producers": [("conv1.conv", "conv1.bn")], "neurons": ["conv1.lif"], "consumers": []}
    for i, w in enumerate(widths):
        blk = f"layers.{i}"
        if i in shortcut:
            current["consumers"] += [(f"{blk}.conv1.conv", 1, 0), (f"{blk}.shortcut.conv", 1, 0)]
            stages.append(current)
            current = {"producers": [(f"{blk}.conv2.conv", f"{blk}.conv2.bn"),
                                     (f"{blk}.shortcut.conv", f"{blk}.shortcut.bn")],
                       "neurons": [f"{blk}.lif"], "consumers": []}
        else:
            current["consumers"].append((f"{blk}.conv1.conv", 1, 0))
            if i:
                current["producers"].append((f"{blk}.conv2.conv", f"{blk}.conv2.bn"))
                current["neurons"].append(f"{blk}.lif")
            else:
                current["producers"].append(("layers.0.conv2.conv", "layers.0.conv2.bn"))
                current["neurons"].append("layers.0.lif")
        inner.append((f"{blk}.conv1", w, ((f"{blk}.conv1.conv", f"{blk}.conv1.bn"),), (f"{blk}.conv1.lif",),
                      ((f"{blk}.conv2.conv", 1, 0),)))
    current["consumers"].append(("fc1", 1, 0))
    stages.append(current)
    out = [(f"stage{k + 1}", [32, 64, 128][k], tuple(s["producers"]), tuple(s["neurons"]), tuple(s["consumers"]))
           for k, s in enumerate(stages)]
    return out + inner + [("fc1", 64, (("fc1", None),), ("lif_fc",), (("classifier", 1, 0),))]


@pytest.mark.parametrize("name", ["convnet", "mlp", "resnet19"])
def test_traced_groups_of_registered_models_equal_the_hand_written_ones(name):
    model, x = build(name)
    traced = [(g.name, g.size, g.producers, g.neurons, tuple(sorted(g.consumers))) for g in st.channel_groups(model)]
    expected = [(n, s, p, ne, tuple(sorted(c))) for n, s, p, ne, c in _expected_groups(name)]
    assert traced == expected
    for g in st.channel_groups(model, x):  # BNs: exactly the producers' own, one entry per channel
        assert g.norms == tuple((bn, 1, 0) for _, bn in g.producers if bn is not None)
    assert st.blocked_channel_groups(model) == {"classifier": "it is the network's output"}


# --------------------------------------------------------------------------------------------------
# Errors: one line each.
# --------------------------------------------------------------------------------------------------


def _one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_naming_a_blocked_group_says_why():
    net, x = build("sj-plif-CIFAR10Net")
    blocked = st.blocked_channel_groups(net, x)
    assert "VotingLayer" in blocked["net.conv_fc.25"]  # an untraceable op blocks its group, no crash
    with pytest.raises(ValueError) as info:
        st.remove_channels(net, {"net.conv_fc.25": [0, 1]}, example=x)
    assert "cannot be pruned" in _one_line(info) and "VotingLayer" in str(info.value)
    with pytest.raises(ValueError, match="cannot be pruned"):
        st.prune_channels(net, {"net.conv_fc.25": 0.5}, criterion="l1", calibration=[x])
    with pytest.raises(ValueError, match="no channel group 'nope'"):
        st.prune_channels(net, 0.5, criterion="l1", calibration=[x], exclude=["nope"])
    st.prune_channels(net, 0.5, criterion="l1", calibration=[x], exclude=["net.conv_fc.25"])  # harmless


class _Rolled(nn.Module):
    """conv-BN-LIF whose channels are rolled (an op the tracer cannot follow through channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.T = 2
        self.conv, self.bn, self.lif = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), sp.LIF()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        s = self.lif(fold(self.bn, fold(self.conv, x.unsqueeze(0).repeat(2, 1, 1, 1, 1))))
        return fold(self.head, torch.roll(s, 1, dims=2).mean(dim=(3, 4)))


def test_when_every_group_is_blocked_the_error_is_one_line():
    net, x = _Rolled().eval(), torch.rand(2, 3, 6, 6)
    assert "roll" in st.blocked_channel_groups(net, x)["conv"]
    for call in (lambda: st.channel_groups(net, x),
                 lambda: st.prune_channels(net, 0.5, criterion="l1", calibration=[x])):
        with pytest.raises(ValueError) as info:
            call()
        assert "no channel group of this _Rolled can be pruned" in _one_line(info)


def test_an_unregistered_net_needs_an_example():
    net, _ = build("snntorch-csnn")
    for call in (lambda: st.remove_channels(net, {"net.0": [0]}), lambda: st.prune_channels(net, 0.5, criterion="l1"),
                 lambda: st.replay(net, [{"net.0": [0]}])):
        with pytest.raises(ValueError, match="pass example=") as info:
            call()
        _one_line(info)


def test_forward_masks_and_quantized_per_channel_scales_are_cut_with_their_channels():
    from spikeprune.compression import quant as q
    from spikeprune.tickets.masks import Mask, mask_forward

    net, x = build("snntorch-csnn-bn")
    q.quantize_model(net, 4, per_channel=True)
    q.freeze(net)
    gamma = net.get_submodule("net.4").weight_gamma.clone()  # [64, 1, 1, 1]
    history = st.prune_channels(net, 0.5, criterion="bn", calibration=[x])
    conv = net.get_submodule("net.4")
    assert isinstance(conv, q.QuantConv2d) and torch.equal(conv.weight_gamma, gamma[history["net.4"]])
    with torch.no_grad():
        assert net(x).shape == (zoo_nets.T, 4, 10)

    net, x = build("snntorch-csnn-bn")
    keep = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.3
            for n, w in Mask.ones(net).items()}
    mask_forward(net, Mask(keep))
    history = st.prune_channels(net, 0.5, criterion="l1", calibration=[x])
    conv = net.get_submodule("net.4")
    assert torch.equal(conv.forward_mask, keep["net.4.weight"][history["net.4"]][:, history["net.0"]])
    assert conv.forward_mask.shape == conv.weight.shape == (32, 6, 5, 5)
    with torch.no_grad():
        assert net(x).shape == (zoo_nets.T, 4, 10)


def test_the_traced_input_comes_from_re_iterable_calibration_data():
    net, x = build("snntorch-csnn-bn")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(4)), batch_size=2)
    history = st.prune_channels(net, 0.5, criterion="svs", calibration=loader)
    assert [len(v) for v in history.values()] == [6, 32]
    with pytest.raises(ValueError, match="pass example="):  # a one-shot iterator is not consumed to trace
        st.prune_channels(build("snntorch-csnn-bn")[0], 0.5, criterion="svs", calibration=iter([x]))
