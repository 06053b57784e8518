"""The event-driven engine (issue 16) computes what the dense path computes.

Checked on masked, quantized and channel-pruned versions of the registered models and on an adapted
SpikingJelly net: every layer's spikes and the logits. Quantized layers accumulate integers: their
spikes must equal the dense model's evaluated in float64 (the fake-quantized model without float32
rounding) *exactly*; against the float32 dense path any difference is a rounding flip of that path,
counted. Edge cases: no spike at all, every neuron spiking, a layer with no surviving weight.
Unsupported networks fall back to the dense path with one line on stderr.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spikeprune import create_model
from spikeprune.deploy import event_engine as ee
from spikeprune.compression.quant import freeze, quantize_model
from spikeprune.compression.structured import prune_channels


def _drive(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affines under which every layer fires at 5-60 % (a silent layer checks nothing)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.8)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3 + 0.4)
    return model.eval()


def _mask(model: nn.Module, density: float, seed: int = 1) -> nn.Module:
    """Zero a random (1 - density) of every conv/linear weight except the encoding layer's (IMP-like)."""
    g = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers[1:]:
        keep = torch.rand(m.weight.shape, generator=g) < density
        m.weight.data.mul_(keep)
    return model


def _convnet(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return _drive(create_model("convnet", 10, 1, T=4, image_size=16, channels=(8, 16, 16), **kw), seed)


def _images(b: int = 4, shape=(1, 16, 16), seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.rand(b, *shape, generator=torch.Generator().manual_seed(seed)) * scale


def _check_equal(model: nn.Module, x: torch.Tensor, *, integer: bool | None = None):
    engine = ee.compile(model)
    assert not engine.dense, engine.reason
    report = ee.spike_flips(engine, x)
    if integer is not None:
        assert all(s.syn.integer == integer for s in engine.steps if s.syn is not None)
    assert sum(report["spikes"][1:]) > 0, "the test network must fire beyond the encoding layer"
    return engine, report


def _check_float64(model: nn.Module, x: torch.Tensor) -> None:
    """Engine vs the dense model, both in float64: spikes identical, logits to float32 rounding."""
    m64 = copy.deepcopy(model).double()
    report = ee.spike_flips(ee.compile(m64), x.double())
    assert report["flips"] == [0] * len(report["flips"]), report
    assert report["max_logit_diff"] < 1e-4, report


@pytest.mark.parametrize("density", [1.0, 0.3, 0.05])
def test_masked_convnet_identical(density):
    model = _mask(_convnet(), density)
    x = _images()
    _, report = _check_equal(model, x, integer=False)
    # Float weights: float32 sums in spike order vs oneDNN's order; on these nets no flip happens.
    assert report["flips"] == [0] * len(report["flips"]), report
    assert report["max_logit_diff"] < 1e-4
    _check_float64(model, x)


@pytest.mark.parametrize("bits,per_channel", [(4, False), (2, True), (8, False)])
def test_quantized_masked_convnet_integer_path(bits, per_channel):
    model = _mask(_convnet(1), 0.2)
    quantize_model(model, bits, per_channel=per_channel)
    freeze(model)
    x = _images(seed=1)
    _, report = _check_equal(model, x, integer=True)
    # int32 accumulation is exact: equal to the float64 fake-quantized model bit for bit...
    _check_float64(model, x)
    # ...and to the float32 one except where float32 rounding moves a potential across u_th.
    total = sum(report["spikes"])
    assert sum(report["flips"]) <= 1e-3 * total, report


def test_channel_pruned_quantized_convnet():
    """The 4-bit + 50 %-channel model of the QP-SNN pipeline, at small size."""
    model = _convnet(2)
    x = _images(seed=2)
    prune_channels(model, 0.5, criterion="l1", calibration=[(x, torch.zeros(4, dtype=torch.long))],
                   exclude=[])
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [4, 8, 8]
    quantize_model(model, 4)
    freeze(model)
    _check_equal(model, x, integer=True)
    _check_float64(model, x)


def test_mlp_and_vgg16():
    torch.manual_seed(3)
    mlp = _drive(create_model("mlp", 10, 1, T=3, image_size=8, hidden=32, depth=2), 3)
    _mask(mlp, 0.5)
    x = _images(3, (1, 8, 8), seed=3)
    _check_equal(mlp, x)
    _check_float64(mlp, x)
    torch.manual_seed(4)
    vgg = _drive(create_model("vgg16", 10, 3, T=2, width=0.0625, image_size=32), 4)
    _mask(vgg, 0.5)
    xv = _images(2, (3, 32, 32), seed=4)
    engine = ee.compile(vgg)
    assert not engine.dense, engine.reason
    _check_float64(vgg, xv)


def test_adapted_spikingjelly_net():
    zoo = pytest.importorskip("zoo_nets")
    pytest.importorskip("spikingjelly")
    from spikeprune.interop import adapt

    net = zoo.build("sj-sequential-single-step")
    model = adapt(net, zoo.T)
    x = zoo.images(4)
    _check_equal(model, x)
    _check_float64(model, x)
    # and against SpikingJelly's own step loop on the unadapted network (same weights)
    engine = ee.compile(model)
    ours = engine(x)
    theirs = zoo.package_run(model.unwrap(), x)
    assert torch.allclose(ours, theirs, atol=1e-4), float((ours - theirs).abs().max())


def test_adapted_spikingjelly_net_quantized():
    zoo = pytest.importorskip("zoo_nets")
    pytest.importorskip("spikingjelly")
    from spikeprune.interop import adapt

    model = adapt(zoo.build("sj-sequential-single-step", seed=1), zoo.T)
    _mask(model, 0.3)
    quantize_model(model, 4)
    freeze(model)
    x = zoo.images(4, seed=1)
    _check_equal(model, x, integer=True)
    _check_float64(model, x)


def test_no_spike_at_all():
    model = _convnet(5)
    for m in model.modules():  # every BN shifts its layer far below threshold
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.fill_(-100.0)
    engine = ee.compile(model)
    x = _images(seed=5)
    out = engine(x)
    engine.record = True
    engine(x)
    assert all(int(s.sum()) == 0 for s in engine.spikes)
    with torch.no_grad():
        assert torch.allclose(out, model(x), atol=1e-6)
    assert torch.allclose(out, model.classifier.bias.expand_as(out))


def test_all_spiking():
    torch.manual_seed(6)
    model = _drive(create_model("convnet", 10, 1, T=3, image_size=16, channels=(8, 16),
                                neuron={"u_th": -1.0}), 6)  # u >= -1 always for these positive currents
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.fill_(5.0)
            m.weight.data.fill_(1e-3)
    x = _images(seed=6)
    engine, report = _check_equal(model, x)
    assert all(int(s.sum()) == s.numel() for s in engine.spikes), "every neuron must fire every step"
    assert report["flips"] == [0] * len(report["flips"]) and report["max_logit_diff"] < 1e-4


def test_empty_layer():
    model = _convnet(7)
    model.features[2].conv.weight.data.zero_()  # no surviving synapse: the layer is driven by BN's shift only
    x = _images(seed=7)
    engine = ee.compile(model)
    report = ee.spike_flips(engine, x)
    (empty,) = [s for s in engine.steps if s.name == "features.2.conv"]
    assert empty.syn.nnz == 0 and report["spikes"][1] in (0, report["spikes"][1])
    assert report["flips"] == [0] * len(report["flips"]), report
    assert report["max_logit_diff"] < 1e-4
    # an all-zero quantized layer too (gamma clamps to tiny; the integer path has no synapse)
    quantize_model(model, 4)
    freeze(model)
    _check_float64(model, x)


def test_unsupported_falls_back_with_one_line(capsys):
    torch.manual_seed(8)
    model = _drive(create_model("resnet19", 10, 3, T=2, width=0.0625, image_size=16), 8)
    engine = ee.compile(model)
    err = capsys.readouterr().err.strip().splitlines()
    assert engine.dense and len(err) == 1 and "event engine not used" in err[0]
    x = _images(2, (3, 16, 16), seed=8)
    with torch.no_grad():
        assert torch.equal(engine(x), model(x))


def test_kernel_unavailable_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(ee, "_lib", None)
    monkeypatch.setattr(ee, "_failed", "RuntimeError: no C compiler (cc/gcc) on PATH")
    model = _convnet(9)
    engine = ee.compile(model)
    err = capsys.readouterr().err.strip().splitlines()
    assert engine.dense and len(err) == 1 and "no C compiler" in err[0]
    x = _images(seed=9)
    with torch.no_grad():
        assert torch.equal(engine(x), model(x))


def test_cli_evaluate_engine_event(tmp_path, capsys):
    """``spikeprune evaluate --engine event`` gives the dense path's accuracy, loss and firing rates."""
    import json

    from spikeprune.cli import main
    from spikeprune.engine.data import load_dataset
    from spikeprune.engine.train import save_model

    data = load_dataset("digits")
    torch.manual_seed(10)
    model = _drive(create_model("convnet", 10, data.in_channels, T=2, image_size=data.image_size,
                                channels=(8, 16)), 10)
    _mask(model, 0.3)
    ckpt = tmp_path / "m.safetensors"
    save_model(ckpt, model)
    got = {}
    for engine in ("dense", "event"):
        assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "digits", "--engine", engine,
                     "--out", str(tmp_path / engine)]) == 0
        got[engine] = json.loads((tmp_path / engine / "metrics.json").read_text())
    capsys.readouterr()
    assert got["event"]["engine"] == "event" and got["dense"]["engine"] == "dense"
    assert got["event"]["test_accuracy"] == got["dense"]["test_accuracy"]
    assert abs(got["event"]["test_loss"] - got["dense"]["test_loss"]) < 1e-5
    assert got["event"]["firing_rates"].keys() == got["dense"]["firing_rates"].keys()
    for k, v in got["dense"]["firing_rates"].items():
        assert abs(got["event"]["firing_rates"][k] - v) < 1e-6
    assert got["event"]["firing_rate"] > 0.01
