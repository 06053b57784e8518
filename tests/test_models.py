"""Every registered model runs forward + backward; structural facts of the paper's architectures."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spikeprune import LIF, create_model, list_models
from spikeprune.engine.models.layers import ThresholdDependentBatchNorm2d
from spikeprune.engine.neuron import spiking_layers

SMALL = {"mlp": 0.25, "convnet": 0.25, "vgg16": 0.0625, "resnet19": 0.0625}


def test_registry_lists_the_paper_models():
    assert {"mlp", "convnet", "vgg16", "resnet19"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("image_size,channels", [(32, 3), (8, 1)])
def test_forward_backward_every_model(name, image_size, channels):
    torch.manual_seed(0)
    T, B, classes = 3, 4, 7
    model = create_model(name, classes, channels, T, SMALL.get(name, 0.25), image_size=image_size)
    x = torch.randn(B, channels, image_size, image_size)
    out = model(x)
    assert out.shape == (T, B, classes)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # A time-major input (e.g. Poisson spikes) also works and takes its T from the input.
    spikes = (torch.rand(5, B, channels, image_size, image_size) < 0.3).float()
    assert model(spikes).shape == (5, B, classes)


@pytest.mark.parametrize("name", list_models())
def test_repeated_forward_is_identical_and_deepcopy_safe(name):
    torch.manual_seed(1)
    model = create_model(name, 10, 3, 4, SMALL.get(name, 0.25), image_size=16).eval()
    x = torch.randn(2, 3, 16, 16)
    a = model(x)
    b = model(x)
    c = copy.deepcopy(model)(x)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_encoding_layer_runs_once_on_static_input():
    model = create_model("convnet", 10, 1, 6, 0.25, image_size=8)
    calls = []
    model.features[0].conv.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    model(torch.randn(2, 1, 8, 8))
    assert calls == [(2, 1, 8, 8)]  # once on [B, C, H, W], not T times


def test_vgg16_structure():
    model = create_model("vgg16", 10, 3, 5, 1.0, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert len(spiking_layers(model)) == 13
    assert model.classifier.in_features == 512
    assert 14.5e6 < sum(p.numel() for p in model.parameters()) < 15.0e6


def test_resnet19_structure_and_tdbn():
    model = create_model("resnet19", 10, 3, 5, 1.0, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 2 * (3 + 3 + 2)  # 17 conv3x3 + FC 256 + FC classes = 19 weight layers
    assert model.fc1.out_features == 256
    assert 12.5e6 < sum(p.numel() for p in model.parameters()) < 12.8e6
    td = create_model("resnet19", 10, 3, 2, 0.0625, image_size=8, tdbn=True, neuron={"u_th": 0.5})
    scales = sorted({round(m.scale, 6) for m in td.modules() if isinstance(m, ThresholdDependentBatchNorm2d)})
    assert scales == [round(0.5 / 2**0.5, 6), 0.5]  # alpha * u_th, alpha = 1/sqrt(2) before an add


def test_tdbn_formula():
    torch.manual_seed(2)
    bn = ThresholdDependentBatchNorm2d(3, alpha=0.5, u_th=2.0)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    x = torch.randn(8, 3, 4, 4)
    x_hat = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + bn.eps)
    expected = bn.weight.view(1, 3, 1, 1) * 1.0 * x_hat + bn.bias.view(1, 3, 1, 1)  # alpha * u_th = 1
    assert torch.allclose(bn(x), expected, atol=1e-5)


def test_neuron_argument():
    m = create_model("mlp", 10, 1, 2, 0.25, image_size=8, neuron={"beta": 0.9, "u_th": 0.5})
    lifs = list(spiking_layers(m).values())
    assert lifs and all(l.beta == 0.9 and l.u_th == 0.5 for l in lifs)
    relu = create_model("mlp", 10, 1, 2, 0.25, image_size=8, neuron="relu")
    assert not spiking_layers(relu)
    custom = create_model("mlp", 10, 1, 2, 0.25, image_size=8, neuron=lambda: LIF(beta=0.3))
    assert all(l.beta == 0.3 for l in spiking_layers(custom).values())
    assert custom.spikeprune_config["neuron"] == "custom"


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="nope"), "unknown model"),
    (dict(name="mlp", T=0), "T"),
    (dict(name="mlp", width=0), "width"),
    (dict(name="mlp", width=-1.0), "width"),
    (dict(name="mlp", num_classes=0), "num_classes"),
    (dict(name="mlp", neuron={"beta": 1.2}), "beta"),
    (dict(name="convnet", foo=1), "no option 'foo'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(**kwargs)


@pytest.mark.parametrize("shape", [(6, 3, 8, 8), (5, 2, 7, 9), (4, 1, 28, 28)])
def test_maxpool2x2_inference_path_equals_max_pool2d(shape):
    # The strided-view forward (no gradients) must give max_pool2d's values exactly, odd sizes included;
    # with gradients the module is max_pool2d itself (first-maximum routing on tied spike windows).
    from torch.nn import functional as F

    from spikeprune.engine.models.layers import MaxPool2x2

    torch.manual_seed(0)
    pool = MaxPool2x2()
    spikes = (torch.rand(shape) > 0.5).float()  # many ties
    currents = torch.randn(shape)
    for x in (spikes, currents):
        with torch.no_grad():
            assert torch.equal(pool(x), F.max_pool2d(x, 2))
    x = spikes.clone().requires_grad_()
    y = spikes.clone().requires_grad_()
    g = torch.randn_like(F.max_pool2d(spikes, 2))
    (pool(x) * g).sum().backward()
    (F.max_pool2d(y, 2) * g).sum().backward()
    assert torch.equal(x.grad, y.grad)
    model = create_model("convnet", 10, 1, 4)
    assert sum(isinstance(m, MaxPool2x2) for m in model.modules()) == 3
