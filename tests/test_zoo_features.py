"""Calibration / SF, quantization and the cost report on networks users bring (tests/zoo_nets.py).

Every network is SpikingJelly's or snnTorch's own code, adapted with ``spikeprune.adapt``. Each test
checks a feature against an independent computation: hand-written statistics, the package's own run,
hand counts of the operations.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

pytest.importorskip("spikingjelly.activation_based")
pytest.importorskip("snntorch")

import zoo_nets  # noqa: E402
from spikeprune import adapt, calibrate, cost_report, prune, quantize_model  # noqa: E402
from spikeprune.tickets.criteria import bn_gain, compute_scores, gaussian_density_at_threshold  # noqa: E402
from spikeprune.engine.neuron import LIF, observe  # noqa: E402
from spikeprune.compression.quant import QUANT_TYPES  # noqa: E402
from spikeprune.topology import trace  # noqa: E402

NETS = list(zoo_nets.ZOO)
T = zoo_nets.T


def _adapted(name: str, seed: int = 0):
    return adapt(zoo_nets.build(name, seed), T)


def _multistep(name: str) -> bool:
    return name.startswith("sj-") and "single-step" not in name


def _bn_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


# --------------------------------------------------------------------------------------------------
# Train/eval mode and the user's BatchNorm statistics.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo_nets.params(NETS))
def test_features_leave_the_users_modes_and_bn_statistics_alone(name):
    net = zoo_nets.build(name)  # eval mode, as a user evaluates a trained net
    model = adapt(net, T)
    before = _bn_state(net)
    x = zoo_nets.images(4)
    calibrate(model, [x], 1)
    cost_report(model, [x], measure_sops=False)
    prune(model, "sf", 0.3, calibration=[x])
    assert all(not m.training for m in net.modules()), "a feature switched the user's net to training mode"
    after = _bn_state(net)
    assert all(torch.equal(before[k], after[k]) for k in before), "running statistics were overwritten"
    # a net in training mode stays in training mode (its flags are restored, not forced to eval)
    net.train()
    calibrate(model, [x], 1)
    assert all(m.training for m in net.modules())


# --------------------------------------------------------------------------------------------------
# SF statistics: per channel, independent of batching, equal to a hand computation.
# --------------------------------------------------------------------------------------------------


def _hand_statistics(model: nn.Module, layer: str, neuron: str, batches: list[torch.Tensor]):
    """Per-input-channel rate of ``layer`` and per-channel mean/var of ``neuron``'s u, by hand.

    The channel axis is written out per layout: SpikingJelly multi-step layers see [T, B, C, H, W]
    (channel dim 2), layers of a Sequential run by the adapter see [T*B, C, H, W] or [B, C, H, W]
    (dim 1); linear layers read the last dim.
    """
    mod = model.get_submodule(layer)
    ins: list[torch.Tensor] = []
    us: list[torch.Tensor] = []

    def grab(_, inputs):
        x = inputs[0].detach()
        if isinstance(mod, nn.Linear):
            ins.append(x.reshape(-1, x.shape[-1]))
        else:
            c = 2 if x.dim() == 5 else 1
            ins.append(x.transpose(0, c).reshape(x.shape[c], -1).T)

    lif = model.get_submodule(neuron)
    h = mod.register_forward_pre_hook(grab)
    try:
        with torch.no_grad(), observe(model, lambda m, u, s: us.append(u.detach()) if m is lif else None):
            for x in batches:
                model(x)
    finally:
        h.remove()
    rate = torch.cat(ins).double().mean(0)
    u = torch.cat([v.transpose(0, 2).reshape(v.shape[2], -1) for v in us], dim=1).double()  # [C, N]
    return rate, u.mean(1), u.var(1, unbiased=False)


@pytest.mark.parametrize("name", zoo_nets.params(NETS))
def test_sf_scores_equal_hand_computation_and_do_not_depend_on_batching(name):
    model = _adapted(name)
    x = zoo_nets.images(8, seed=1)
    calib = calibrate(model, [x], None)
    scores = compute_scores("sf", model, calib)
    sf_layers = [w for w, k in scores.kinds.items() if k == "sf"]
    if name == "snntorch-csnn":  # no BatchNorm: Eq. 13 needs BN's gain, every layer keeps magnitude
        assert sf_layers == []
        return
    assert sf_layers, f"no layer of {name} got SF scores"
    # one layer by hand: P = r_i |w| |gamma_j| / sqrt(var_B + eps) N(0 | mu_j - u_th, var_j)  (Eq. 12-13)
    weight = sf_layers[len(sf_layers) // 2]
    rec = calib.layers[weight]
    assert rec.input_is_spikes and rec.bn is not None and rec.neuron is not None
    rate, mu, var = _hand_statistics(model, rec.module, rec.neuron, [x])
    lif = model.get_submodule(rec.neuron)
    w = model.get_submodule(rec.module).weight.detach().abs()
    gain = bn_gain(model.get_submodule(rec.bn)).double() * gaussian_density_at_threshold(mu, var, lif.u_th)
    extra = (1,) * (w.dim() - 2)
    expected = (rate.view(1, -1, *extra) * w.double() * gain.view(-1, 1, *extra)).float()
    assert torch.allclose(scores[weight], expected, rtol=1e-4, atol=1e-12)
    # the same 8 samples in other batches give the same statistics and scores
    for split in ([3, 5], [2, 2, 2, 2]):
        parts = list(torch.split(x, split))
        other = compute_scores("sf", model, calibrate(model, parts, None))
        for wname in sf_layers:
            assert torch.allclose(other[wname], scores[wname], rtol=1e-5, atol=1e-12), (split, wname)


# --------------------------------------------------------------------------------------------------
# Quantization.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo_nets.params(NETS))
def test_4bit_quantization_levels_and_spikes_survive_unwrap(name):
    net = zoo_nets.build(name)
    model = adapt(net, T)
    quantize_model(model, 4)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    assert layers and all(isinstance(m, QUANT_TYPES) for m in layers.values()), \
        [n for n, m in layers.items() if not isinstance(m, QUANT_TYPES)]
    for n, m in layers.items():
        # 2^4 levels; an exact zero stays zero (a pruned weight - VGG's 10^8 random weights hold a few)
        wq = m.quantized_weight().detach()
        assert wq[wq != 0].unique().numel() <= 16, n
        assert torch.equal(wq == 0, m.weight == 0), n
    x = zoo_nets.images(3, seed=2)
    with torch.no_grad():
        quantized = model(x)
    # the quantized model really computes with the levels: the float model differs
    float_model = adapt(zoo_nets.build(name), T)
    with torch.no_grad():
        assert not torch.equal(float_model(x), quantized)
    user_net = model.unwrap()
    assert all(isinstance(m, QUANT_TYPES) for n, m in user_net.named_modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)))
    if name.startswith("sj-"):  # the package's classes are back, quantized
        from spikingjelly.activation_based import layer as sj_layer
        assert any(isinstance(m, sj_layer.Conv2d) for m in user_net.modules())
    again = zoo_nets.package_run(user_net, x)
    assert torch.equal(again, quantized), "the unwrapped user's net does not run the quantized weights"


# --------------------------------------------------------------------------------------------------
# Cost report: per-sample counts, whatever the batch sizes.
# --------------------------------------------------------------------------------------------------


def _hand_counts(model: nn.Module, name: str, x: torch.Tensor) -> dict[str, tuple[float, float, float, float]]:
    """``{layer: (MACs per execution per sample, executions per sample, input non-zero rate, mean input)}``
    by hand. The mean input is what drives the accumulates of a layer fed spikes (= the rate) or integer
    counts (SEW's ADD of two spike trains gives 2: two accumulates, docs/reports.md).

    Executions: in a SpikingJelly multi-step net every layer sees the whole sequence (T per sample);
    in a Sequential run by the adapter, layers before the first neuron run once on the static image
    (the encoding layer), the others T times.
    """
    B = x.shape[0]
    out: dict[str, tuple[float, float, float]] = {}
    first_neuron_seen = [False]
    hooks = []
    for lname, m in model.named_modules():
        if isinstance(m, LIF):
            hooks.append(m.register_forward_hook(lambda *_: first_neuron_seen.__setitem__(0, True)))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inputs, y, lname=lname):
                xin = inputs[0]
                execs = T if (_multistep(name) or first_neuron_seen[0]) else 1
                per_exec = y.numel() / (B * execs)
                fan_in = mod.in_features if isinstance(mod, nn.Linear) else \
                    mod.in_channels * math.prod(mod.kernel_size)
                out[lname] = (per_exec * fan_in, float(execs), float((xin != 0).float().mean()),
                              float(xin.float().mean()))
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


@pytest.mark.parametrize("name", zoo_nets.params(NETS))
def test_cost_report_counts_equal_hand_counts_for_any_batch_sizes(name):
    model = _adapted(name)
    x = zoo_nets.images(6, seed=3)
    hand = _hand_counts(model, name, x)
    reports = [cost_report(model, [x], num_batches=None),
               cost_report(model, list(torch.split(x, [1, 5])), num_batches=None),
               cost_report(model, list(torch.split(x, [4, 2])), num_batches=None, measure_sops=False)]
    for report in reports:
        rows = {r.name: r for r in report.layers}
        assert set(rows) == set(hand)
        assert report.samples == 6
        for lname, (flops, execs, rate, mean) in hand.items():
            r = rows[lname]
            assert r.flops == flops and r.executions == execs, (lname, r.flops, flops, r.executions, execs)
            assert r.input_rate == pytest.approx(rate, rel=1e-6)
            expected = r.executions * r.flops * r.density
            assert (r.sops if r.input_is_spikes else r.macs) == pytest.approx(
                (mean if r.input_is_spikes else 1.0) * expected, rel=1e-6)
    measured = [{r.name: r.sops_measured for r in rep.layers} for rep in reports[:2]]
    assert measured[0] == pytest.approx(measured[1], rel=1e-9)  # per sample, not per batch
    assert any(v > 0 for v in measured[0].values())


# --------------------------------------------------------------------------------------------------
# The traced graph itself.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo_nets.params(NETS))
def test_trace_pairs_every_bn_layer_with_its_neuron(name):
    model = _adapted(name)
    g = trace(model, zoo_nets.images(2))
    assert g.T == T
    bns = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    paired = {g.driven(layer)[0] for layer in g.modules("weight")} - {None}
    assert paired == bns
    for layer in g.modules("weight"):
        bn, neuron = g.driven(layer)
        if bn is not None:
            assert neuron is not None, f"{layer} -> {bn} drives no neuron"


def test_freeze_writes_the_levels_where_other_packages_read_them():
    """Another package's exporter reads ``.weight`` (the latent float weight of a quantized layer);
    ``quant.freeze`` writes the levels there, and the network computes the same."""
    from spikeprune.compression.quant import freeze

    model = _adapted("sj-plif-CIFAR10Net")
    quantize_model(model, 4)
    x = zoo_nets.images(2)
    with torch.no_grad():
        before = model(x)
    freeze(model)
    for n, m in model.named_modules():
        if isinstance(m, QUANT_TYPES):
            assert torch.equal(m.weight, m.quantized_weight()), n
            assert m.weight[m.weight != 0].unique().numel() <= 16, n
    with torch.no_grad():
        assert torch.equal(model(x), before)
