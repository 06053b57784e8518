"""Quantization (SPEC §7): the 2^b levels, the STE, utilisation, QAT layers, MINT membranes, state I/O."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import spikeprune as sp
from spikeprune.compression import quant as q
from spikeprune.compression.compress import load_compressed, save_compressed
from spikeprune.engine.config import TrainConfig
from spikeprune.tickets.masks import enforce
from spikeprune.engine.neuron import lif_multistep
from spikeprune.engine.train import fit, load_model


def levels(bits, gamma):
    s = 2**bits - 1
    return torch.tensor([gamma * (2 * k / s - 1) for k in range(s + 1)], dtype=torch.float64)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_weights_take_only_the_2b_levels_and_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    gamma = 0.4
    w = (torch.rand(20000, generator=g, dtype=torch.float64) * 2.4 - 1.2) * gamma  # beyond the clamp too
    w_hat = q.quantize_weight(w, bits, gamma)
    grid = levels(bits, gamma)
    # every value is one of SPEC §7's levels (exactly, up to the float evaluation of the formula)
    nearest = (w_hat[:, None] - grid[None, :]).abs().min(1)
    assert nearest.values.max() < 1e-12
    assert torch.unique(nearest.indices).numel() == 2**bits  # 20000 draws cover every level
    assert torch.equal(q.quantize_weight(w_hat, bits, gamma), w_hat)  # idempotent: exact round trip
    codes = q.weight_codes(w_hat, bits, gamma)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert torch.equal(gamma * ((2.0 / (2**bits - 1)) * codes.double() - 1), w_hat)


def test_one_bit_is_plus_minus_gamma_and_bits_are_validated():
    w = torch.tensor([-2.0, -0.1, 0.1, 3.0])
    assert q.quantize_weight(w, 1, 0.5).tolist() == [-0.5, -0.5, 0.5, 0.5]
    for bad in (0, 17, 2.5, True, "4"):
        with pytest.raises(ValueError, match="bits"):
            q.quantize_weight(w, bad)
        with pytest.raises(ValueError, match="bits"):
            q.QuantSpec(bits=bad)
    with pytest.raises(ValueError, match="scale"):
        q.QuantSpec(bits=4, method="median")


def test_ste_passes_gradients_inside_the_clamp_and_zero_outside():
    gamma = 0.5
    w = torch.tensor([-0.9, -0.5, -0.2, 0.0, 0.31, 0.5, 0.7, 2.0], requires_grad=True)
    upstream = torch.arange(1.0, 9.0)
    (q.quantize_weight(w, 3, gamma) * upstream).sum().backward()
    inside = (w.detach().abs() <= gamma).float()
    assert torch.equal(w.grad, upstream * inside)


def test_rescaw_scales():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert q.weight_scale(w, "mean").item() == pytest.approx(1.25)
    assert q.weight_scale(w, "max").item() == 3.0
    assert q.weight_scale(w, "mean", per_channel=True).flatten().tolist() == [2.0, 0.5]
    # gamma over the surviving weights: exact zeros (pruned) do not drag mean|W| down
    spec = q.QuantSpec(4, "mean")
    assert q._surviving_scale(torch.tensor([0.0, 0.0, 1.0, -3.0]), spec).item() == 2.0


def test_utilisation_of_known_levels_is_exact():
    bits, gamma = 3, 1.0
    s = 7
    codes = torch.tensor([0, 2, 5, 5])  # 3 of 8 levels; histogram 1/4, 1/4, 1/2
    w = gamma * (2 * codes.double() / s - 1)
    u = q.bit_utilisation(w, bits, gamma)
    assert u["levels_used"] == 3 and u["levels"] == 8
    assert u["utilisation"] == 3 / 8
    assert u["entropy_bits"] == pytest.approx(1.5, abs=1e-12)
    assert u["effective_utilisation"] == pytest.approx(2**1.5 / 8, abs=1e-12)
    # pruned (exactly zero) weights are not counted as a level
    u0 = q.bit_utilisation(torch.cat([w, torch.zeros(10, dtype=w.dtype)]), bits, gamma)
    assert u0 == u


def test_rescaw_uses_the_grid_better_than_vanilla_on_bell_shaped_weights():
    w = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4):
        vanilla = q.bit_utilisation(w, bits, q.weight_scale(w, "max"))
        rescaw = q.bit_utilisation(w, bits, q.weight_scale(w, "mean"))
        assert rescaw["entropy_bits"] > vanilla["entropy_bits"] + 0.3
        assert rescaw["effective_utilisation"] > vanilla["effective_utilisation"]


def tiny(name="convnet", seed=0, **kw):
    torch.manual_seed(seed)
    return sp.create_model(name, 10, 1, 2, 0.25, image_size=8, **kw)


def test_quantized_layers_forward_with_the_quantized_weight_and_keep_their_names():
    model = tiny()
    keys = list(model.state_dict())
    q.quantize_model(model, 4, per_channel=True)
    assert list(model.state_dict()) == keys  # checkpoints stay loadable into plain models
    conv = model.features[0].conv
    assert isinstance(conv, q.QuantConv2d) and isinstance(conv, nn.Conv2d)
    x = torch.randn(3, 1, 8, 8)
    expected = F.conv2d(x, q.quantize_weight(conv.weight, 4, method="mean", per_channel=True), None, 1, 1)
    assert torch.equal(conv(x), expected)
    out = model(x)
    out.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0  # STE reaches the latent weight


def test_pruned_weights_stay_zero_under_quantization_and_qat(tmp_path):
    model = tiny()
    mask = sp.prune(model, "magnitude", 0.6)
    q.quantize_model(model, 2)
    for name, layer in q.quantized_layers(model).items():
        w_hat = layer.quantized_weight()
        assert torch.count_nonzero(w_hat[~mask[name + ".weight"]]) == 0
    guard = enforce(model, mask)
    cfg = TrainConfig(dataset="digits", width=0.25, timesteps=2, epochs=1, batch_size=64, train_limit=256,
                      test_limit=128)
    result = fit(cfg, tmp_path / "qat", model=model, after_step=guard.after_step, progress=False, log=None)
    for name, layer in q.quantized_layers(result.model).items():
        keep = mask[name + ".weight"]
        w_hat = layer.quantized_weight().detach()
        assert torch.count_nonzero(w_hat[~keep]) == 0
        grid = levels(2, float(layer.gamma()))
        kept = w_hat[keep].double()
        assert (kept[:, None] - grid[None, :]).abs().min(1).values.max() < 1e-6  # still on the 4 levels


def test_freeze_save_and_reload(tmp_path):
    model = tiny("resnet19")
    q.quantize_model(model, 3, method="percentile", percentile=95.0)
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    before = model(x)
    q.freeze(model)
    assert torch.equal(model(x), before)  # freezing is the identity on the outputs
    save_compressed(tmp_path / "m.safetensors", model)
    again, meta = load_compressed(tmp_path / "m.safetensors")
    assert meta["quantization"]["layers"]["conv1.conv"]["bits"] == 3
    assert torch.equal(again.eval()(x), before)
    plain, _ = load_model(tmp_path / "m.safetensors")  # the stored weights are the quantized ones
    assert torch.equal(plain.eval()(x), before)


def test_quantize_model_bad_layer_name():
    with pytest.raises(ValueError, match="not a conv/linear layer"):
        q.quantize_model(tiny(), 4, layers=["features.9.conv"])


# ---- membrane potential (MINT) --------------------------------------------------------------


def test_quantized_membrane_lies_on_the_grid_and_the_threshold_absorbs_the_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 3, 4, 4, generator=g)
    scale = torch.tensor([0.05, 0.1, 0.3]).view(3, 1, 1)
    bits = 4
    spikes, u = q.lif_multistep_quantized(x, scale, bits, beta=0.5, u_th=0.3)
    ints = u / scale
    assert torch.allclose(ints, ints.round(), atol=1e-5)
    assert ints.min() >= -(2 ** (bits - 1)) - 1e-5 and ints.max() <= 2 ** (bits - 1) - 1 + 1e-5
    # spike  <=>  integer register >= u_th / scale
    assert torch.equal(spikes.bool(), ints.round() >= (0.3 / scale) - 1e-6)


def test_quantized_membrane_with_a_fine_grid_matches_the_float_lif():
    x = torch.randn(5, 64, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref, u_ref = lif_multistep(x, beta=0.5, u_th=1.0)
    spikes, u = q.lif_multistep_quantized(x, torch.tensor(2.0**-10, dtype=torch.float64), 16, beta=0.5)
    assert (u[0] - u_ref[0]).abs().max() <= 2.0**-11 + 1e-15  # one rounding to the nearest grid point
    per_neuron = lambda t: t.movedim(0, -1).reshape(-1, t.shape[0])  # noqa: E731  [neurons, T]
    agree = per_neuron(spikes == ref).all(1)  # a neuron's train differs only if u came within a step of u_th
    near = per_neuron((u_ref - 1.0).abs() <= 2e-3).any(1)
    assert (agree | near).all() and agree.float().mean() > 0.9


def test_quantized_membrane_gradients_flow():
    x = torch.randn(4, 8, 6, requires_grad=True)
    spikes, _ = q.lif_multistep_quantized(x, torch.tensor(0.05), 6)
    spikes.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for bad in (1, 17, 3.0):
        with pytest.raises(ValueError, match="membrane bits"):
            q.lif_multistep_quantized(x, torch.tensor(0.05), bad)


def test_membrane_scale_is_shared_with_the_weights_and_shifted_only_when_needed():
    model = tiny()
    q.quantize_model(model, 4)
    conv, bn = model.features[0].conv, model.features[0].bn
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    sigma = a * float(conv.gamma()) / 15
    for bits in (4, 8, 16):
        step, shift = q.membrane_scale(conv, bn, 1.0, bits)
        qmax = 2 ** (bits - 1) - 1
        assert torch.allclose(step.double(), (sigma * 2.0 ** shift).double(), rtol=1e-6)
        theta = 1.0 / step.double()
        assert (theta <= qmax * (1 + 1e-9)).all()  # the integer threshold fits in the register
        smaller = 1.0 / (step.double() / 2)
        assert ((shift == 0) | (smaller > qmax)).all()  # and the shift is the smallest that does it


@pytest.mark.parametrize("name", ["convnet", "resnet19", "mlp"])
def test_membrane_quantized_models_run_and_survive_deepcopy(name):
    model = tiny(name)
    x = torch.randn(6, 1, 8, 8)
    q.quantize_model(model, 4, membrane_bits=8, example_input=x)
    lifs = [m for m in model.modules() if isinstance(m, sp.LIF)]
    assert lifs and all(isinstance(m, q.QuantizedLIF) for m in lifs)
    model.eval()
    out = model(x)
    twin = copy.deepcopy(model)
    with torch.no_grad():  # the copy's hooks must read the copy's own layers
        for p in twin.parameters():
            p.mul_(1.5)
    assert torch.equal(model(x), out)
    assert not torch.equal(twin(x), out)
    registers = []

    def grab(lif, u, s):  # the membrane in units of the shared scale: 8-bit integers
        registers.append((u / lif.membrane_scale.view(-1, *([1] * (u.dim() - 3)))).flatten())

    with torch.no_grad(), sp.engine.neuron.observe(model, grab):
        model(x)
    ints = torch.cat(registers)
    assert len(registers) == len(lifs)
    assert torch.allclose(ints, ints.round(), atol=1e-3)
    assert ints.min() >= -128 - 1e-3 and ints.max() <= 127 + 1e-3


def test_membrane_quantization_needs_an_example_and_quantized_drivers():
    with pytest.raises(ValueError, match="example_input"):
        q.quantize_model(tiny(), 4, membrane_bits=4)
    model = tiny()
    with pytest.raises(ValueError, match="not quantized"):
        q.quantize_model(model, 4, layers=["classifier"], membrane_bits=4, example_input=torch.randn(2, 1, 8, 8))


def test_reestimate_batchnorm_restores_statistics():
    model = tiny()
    x = [torch.randn(32, 1, 8, 8) for _ in range(3)]
    bn = model.features[0].bn
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
    assert q.reestimate_batchnorm(model, x) == 3
    conv_out = torch.cat([model.features[0].conv(b) for b in x])
    assert torch.allclose(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not math.isclose(float(bn.running_mean[0]), 5.0)


def test_quantize_model_refuses_to_skip_a_subclassed_layer_silently():
    # A subclass of nn.Conv2d that computes something of its own would lose it to the quantized twin's
    # forward; quantizing "every layer" must then fail in one line instead of leaving it float.
    from torch import nn

    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = tiny()
    model.features[0].conv.__class__ = MyConv
    with pytest.raises(ValueError, match=r"cannot quantize 'features.0.conv' \(.*MyConv\): its forward is not "
                                         r"nn.Conv2d's on folded leading dims"):
        q.quantize_model(model, 4)
    others = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    q.quantize_model(model, 4, layers=others)  # naming the plain layers still works
    assert type(model.features[0].conv) is MyConv
    with pytest.raises(ValueError, match="computes more than the plain layer"):
        q.quantize_model(model, 4, layers=["features.0.conv"])


def test_layout_wrapper_subclasses_are_quantized_and_keep_their_class():
    """A subclass whose forward only folds leading dims (SpikingJelly's multi-step layer.Conv2d style) is
    quantized: the twin derives from it (isinstance and attributes kept) and runs [T, B, C, H, W]."""
    from torch import nn

    class FoldingConv(nn.Conv2d):
        step_mode = "m"

        def forward(self, x):  # [T, B, C, H, W] -> fold time into the batch, as SpikingJelly does
            return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    conv = FoldingConv(2, 3, 3, padding=1)
    x = torch.randn(4, 2, 2, 5, 5)
    assert q.is_layout_wrapper(conv)
    wrapper = nn.Sequential(conv)
    q.quantize_model(wrapper, 4)
    assert isinstance(conv, FoldingConv) and isinstance(conv, q.QuantConv2d) and conv.step_mode == "m"
    expected = F.conv2d(x.flatten(0, 1), conv.quantized_weight(), conv.bias, padding=1).unflatten(0, (4, 2))
    assert torch.equal(conv(x), expected)
    assert conv.quantized_weight().unique().numel() <= 16


# ---- QP-SNN's reference quantizer (issue 14) ------------------------------------------------


def _reference_rescaw(w: torch.Tensor, bits: int) -> torch.Tensor:
    """QP-SNN's ReScaW written out by hand, in float64, one output channel at a time:
    gamma_j = mean_i |W_ji|, W_int = round((s/2)(clamp(W/gamma_j, -1, 1) + 1)), W_hat = gamma_j((2/s)W_int - 1)."""
    s = 2**bits - 1
    out = []
    for row in w.double().reshape(w.shape[0], -1).tolist():
        gamma = sum(abs(v) for v in row) / len(row)
        levels_ = []
        for v in row:
            c = max(-1.0, min(1.0, v / gamma))
            w_int = math.floor((s / 2) * (c + 1) + 0.5)  # round half up; exact ties have probability 0
            levels_.append(gamma * ((2.0 / s) * w_int - 1.0))
        out.append(levels_)
    return torch.tensor(out, dtype=torch.float64).reshape(w.shape)


def test_qpsnn_preset_equals_a_hand_computation_of_the_reference_formulas():
    torch.manual_seed(0)
    model = tiny()
    first = model.features[0].conv
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    preset = q.PRESETS["qpsnn"]
    q.quantize_model(model, 4, method=preset["method"], per_channel=preset["per_channel"], gradient=preset["gradient"],
                     first_last=preset["first_last"], example_input=torch.randn(2, 1, 8, 8))
    names = list(originals)
    quantized = q.quantized_layers(model)
    # first and last layers (in execution order) stay in float; every other layer is quantized
    assert names[0] not in quantized and names[-1] not in quantized and set(quantized) == set(names[1:-1])
    assert type(model.get_submodule(names[0])) in (nn.Conv2d, nn.Linear) and first is model.get_submodule(names[0])
    for name, layer in quantized.items():
        # per-output-channel gamma = mean |W_j|
        gamma = layer.gamma().reshape(-1).double()
        expected_gamma = originals[name].double().abs().reshape(originals[name].shape[0], -1).mean(1)
        assert torch.allclose(gamma, expected_gamma, rtol=1e-6, atol=0)
        # forward: the hand-computed levels
        assert torch.allclose(layer.quantized_weight().double(), _reference_rescaw(originals[name], 4), atol=1e-6)
        # backward: straight through everywhere, including the weights clipped at +-gamma
        w = layer.weight
        w.grad = None
        g = torch.randn_like(w)
        (layer.quantized_weight() * g).sum().backward()
        outside = originals[name].abs() > layer.gamma()
        assert outside.any()  # the test must include clipped weights (~40 % of them at gamma = mean|W|)
        assert torch.equal(w.grad, g)


def test_quantizer_gradient_options_and_first_last_precision():
    w = torch.tensor([[-3.0, -0.5, 0.2, 1.0], [0.1, 0.1, 0.1, 4.0]], requires_grad=True)
    # per-channel gamma: row 0 mean|W| = 4.7/4 = 1.175, row 1 = 4.3/4 = 1.075
    gamma = q.weight_scale(w, "mean", per_channel=True)
    assert torch.allclose(gamma.reshape(-1), torch.tensor([1.175, 1.075]))
    q.quantize_weight(w, 2, gamma, gradient="clip").sum().backward()
    assert w.grad.tolist() == [[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]  # zero where |W| > gamma
    w.grad = None
    q.quantize_weight(w, 2, gamma, gradient="ste").sum().backward()
    assert w.grad.tolist() == [[1.0] * 4, [1.0] * 4]
    with pytest.raises(ValueError, match="gradient"):
        q.quantize_weight(w, 2, gamma, gradient="nope")
    # first/last at 8 bits: those two layers get 8 bits, the others b
    model = tiny()
    q.quantize_model(model, 3, first_last="8", example_input=torch.randn(2, 1, 8, 8))
    bits = {n: m.quant.bits for n, m in q.quantized_layers(model).items()}
    order = list(bits)
    assert bits[order[0]] == bits[order[-1]] == 8 and all(bits[n] == 3 for n in order[1:-1])
    # the default is unchanged: per-layer gamma, clipped gradient, every layer at b bits
    model = tiny()
    q.quantize_model(model, 3)
    assert all(m.quant == q.QuantSpec(3) for m in q.quantized_layers(model).values())


def test_qpsnn_preset_survives_save_and_load(tmp_path):
    model = tiny()
    x = torch.randn(2, 1, 8, 8)
    q.quantize_model(model, 4, per_channel=True, gradient="ste", first_last="full", example_input=x)
    model.eval()
    before = model(x)
    q.freeze(model)
    save_compressed(tmp_path / "m.safetensors", model)
    again, meta = load_compressed(tmp_path / "m.safetensors")
    assert all(spec["gradient"] == "ste" for spec in meta["quantization"]["layers"].values())
    assert set(q.quantized_layers(again)) == set(q.quantized_layers(model))
    assert torch.allclose(again.eval()(x), before)


def test_compress_config_preset_sets_the_reference_quantizer():
    from spikeprune.compression.compress import CompressConfig

    cfg = CompressConfig(quant_preset="qpsnn")
    assert (cfg.scale, cfg.per_channel, cfg.quant_gradient, cfg.first_last) == ("mean", True, "ste", "full")
    with pytest.raises(ValueError, match="quant_preset qpsnn sets scale"):
        CompressConfig(quant_preset="qpsnn", scale="max")
    assert CompressConfig().quant_gradient == "clip" and CompressConfig().first_last == "b"
