"""Masks, enforcement, strategies, the SF criterion and the prune() API (SPEC §3-4)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import spikeprune as sp
from spikeprune import LIF, Mask, calibrate, enforce, prune
from spikeprune.tickets.criteria import compute_scores, sf
from spikeprune.tickets.masks import prunable_weights
from spikeprune.tickets.pruning import prune_step
from spikeprune.tickets.strategies import global_prune, layerwise_prune, select
from spikeprune.engine.neuron import lif_multistep


def small_model(seed=0):
    torch.manual_seed(seed)
    return sp.create_model("convnet", 10, 1, 2, 0.25, image_size=8)


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def test_mask_basics_and_roundtrip(tmp_path):
    model = small_model()
    mask = Mask.ones(model)
    assert mask.density == 1.0 and mask.sparsity == 0.0
    assert list(mask) == list(prunable_weights(model))
    new = prune(model, "magnitude", 0.5)
    assert new.sparsity == pytest.approx(0.5, abs=1 / new.numel)
    assert Mask.from_model(model).equal(new)
    new.save(tmp_path / "m.safetensors")
    loaded = Mask.load(tmp_path / "m.safetensors")
    assert loaded.equal(new)
    rows = new.report()
    assert rows[-1]["name"] == "total" and rows[-1]["kept"] == new.num_kept


def test_mask_that_does_not_fit():
    model = small_model()
    other = sp.create_model("convnet", 10, 1, 2, 0.5, image_size=8)
    with pytest.raises(ValueError, match="shape"):
        Mask.ones(other).apply(model)
    with pytest.raises(ValueError, match="names no prunable weight"):
        Mask({"nope.weight": torch.ones(3, dtype=torch.bool)}).apply(model)


def test_pruned_weights_stay_exactly_zero_through_sgd_momentum_and_weight_decay():
    model = small_model()
    mask = prune(model, "magnitude", 0.7)
    guard = enforce(model, mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-3)
    for x, y in batches(5) * 4:
        loss = nn.functional.cross_entropy(model(x).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.after_step()
    weights = prunable_weights(model)
    for name, keep in mask.items():
        assert torch.count_nonzero(weights[name][~keep]) == 0, name
    assert any(torch.count_nonzero(weights[n][mask[n]]) > 0 for n in mask)  # the rest did train


def test_gradient_hook_alone_keeps_zeros():
    # Even without after_step, zeroed gradients mean momentum and decay never touch pruned weights.
    model = small_model()
    mask = prune(model, "magnitude", 0.5)
    enforce(model, mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for x, y in batches(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).mean(0), y).backward()
        opt.step()
    assert Mask.from_model(model).num_kept <= mask.num_kept


def test_select_exact_count_and_ties():
    flat = torch.tensor([3.0, 1.0, 1.0, 1.0, 2.0, 0.5])
    chosen = select(flat, 3)
    assert chosen.tolist() == [False, True, True, False, False, True]  # 0.5, then the first two 1.0s
    assert select(flat, 0).sum() == 0 and select(flat, 6).all()


@pytest.mark.parametrize("strategy", [global_prune, layerwise_prune])
def test_density_after_k_rounds(strategy):
    model = small_model()
    mask = Mask.ones(model)
    p = 0.25
    for k in range(1, 9):
        scores = {n: w.detach().abs() for n, w in prunable_weights(model).items()}
        mask = strategy(scores, mask, p)
        tolerance = len(mask) * k / mask.numel if strategy is layerwise_prune else k / mask.numel
        assert abs(mask.density - (1 - p) ** k) <= tolerance + 1e-12
        mask.apply(model)


def test_global_magnitude_removes_the_smallest_weights():
    model = small_model()
    weights = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    mask = prune(model, "magnitude", 0.6)
    kept = torch.cat([weights[n][mask[n]].abs() for n in mask])
    gone = torch.cat([weights[n][~mask[n]].abs() for n in mask])
    assert gone.max() <= kept.min()


def test_prune_counts_weights_already_pruned():
    model = small_model()
    first = prune(model, "magnitude", 0.5)
    second = prune(model, "magnitude", 0.8)
    assert second.sparsity == pytest.approx(0.8, abs=1 / second.numel)
    assert bool(all((second[n] <= first[n]).all() for n in first))  # only survivors were removed
    with pytest.raises(ValueError, match="already"):
        prune(model, "magnitude", 0.3)


def test_sf_scores_equal_hand_computation():
    """A conv reading spikes, then BN, then LIF: P = r_i |w| |gamma_j| / sqrt(var_B + eps) N(0 | mu_j - u_th, var_j)."""
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 1, bias=False)
            self.bn = nn.BatchNorm2d(3)
            self.lif = LIF(beta=0.5, u_th=0.7)

        def forward(self, x):  # x: spikes [T, B, 2, H, W]
            y = self.bn(self.conv(x.flatten(0, 1))).unflatten(0, x.shape[:2])
            return self.lif(y)

    model = Tiny()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        model.bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
        model.bn.running_mean.copy_(torch.tensor([0.1, 0.0, -0.2]))
    spikes = (torch.rand(3, 4, 2, 5, 5) < torch.tensor([0.2, 0.6]).view(1, 1, 2, 1, 1)).float()
    calib = calibrate(model, [spikes], num_batches=1)
    scores = sf(model, calib)
    assert scores.kinds["conv.weight"] == "sf"
    # the same quantities computed here independently
    r = spikes.mean(dim=(0, 1, 3, 4))
    with torch.no_grad():
        y = model.bn.eval()(model.conv(spikes.flatten(0, 1))).unflatten(0, (3, 4))
    _, u = lif_multistep(y, beta=0.5, u_th=0.7)
    mu = u.double().mean(dim=(0, 1, 3, 4))
    var = u.double().var(dim=(0, 1, 3, 4), unbiased=False)
    density = torch.exp(-(mu - 0.7) ** 2 / (2 * var)) / torch.sqrt(2 * math.pi * var)
    gain = model.bn.weight.abs() / torch.sqrt(model.bn.running_var + model.bn.eps)
    w = model.conv.weight.detach().abs()
    expected = r.view(1, 2, 1, 1) * w * (gain.double() * density).float().view(3, 1, 1, 1)
    assert torch.allclose(scores["conv.weight"], expected, rtol=1e-5, atol=1e-7)


def test_sf_keeps_magnitude_for_encoding_and_fc_layers():
    model = small_model()
    scores = compute_scores("sf", model, calibrate(model, batches(2)))
    assert scores.kinds["features.0.conv.weight"] == "magnitude"  # analog input: encoding layer
    assert scores.kinds["classifier.weight"] == "magnitude"  # FC without BN + LIF
    assert scores.kinds["features.2.conv.weight"] == "sf"
    assert torch.equal(scores["classifier.weight"], model.classifier.weight.detach().abs())


def test_prune_works_on_an_unregistered_model():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(20, 30, bias=False)
            self.bn1 = nn.BatchNorm1d(30)
            self.lif1 = LIF()
            self.fc2 = nn.Linear(30, 4)

        def forward(self, x):  # x [T, B, 20] spikes
            T, B = x.shape[:2]
            h = self.lif1(self.bn1(self.fc1(x.flatten(0, 1))).view(T, B, -1))
            return self.fc2(h)

    torch.manual_seed(0)
    model = Custom()
    data = [(torch.rand(3, 8, 20) < 0.3).float() for _ in range(2)]
    mask = prune(model, "sf", 0.5, calibration=data)
    assert mask.sparsity == pytest.approx(0.5, abs=1e-3)
    assert set(mask) == {"fc1.weight", "fc2.weight"}


def test_random_criterion_is_seeded():
    a = prune_step(small_model(), 0.5, criterion="random", seed=3)
    b = prune_step(small_model(), 0.5, criterion="random", seed=3)
    c = prune_step(small_model(), 0.5, criterion="random", seed=4)
    assert a.equal(b) and not a.equal(c)


@pytest.mark.parametrize("kwargs,match", [
    (dict(criterion="nope"), "unknown criterion"),
    (dict(sparsity=1), "float"),
    (dict(sparsity=1.0), r"\[0, 1\)"),
    (dict(sparsity=-0.1), r"\[0, 1\)"),
    (dict(scope="nope"), "unknown scope"),
    (dict(criterion="sf"), "calibration"),
    (dict(normalize="nope"), "unknown normalization"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune(small_model(), **{"sparsity": 0.5, **kwargs})


def test_model_without_prunable_layer():
    with pytest.raises(ValueError, match="no prunable layer"):
        prune(nn.Sequential(LIF()), "magnitude", 0.5)


# ---------------------------------------------------------------------------------------------
# Issue 3 additions: exact fast selection, dynamic candidates, budget normalisation, forward-only
# masks, the empirical threshold density and the firing-aware criteria built on it.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", [(3_000_000, 1), (3_000_000, 1_234_567), (3_000_000, 2_999_999)])
def test_kth_smallest_is_exact_on_large_inputs_with_ties_infs_and_negatives(n, k):
    from spikeprune.tickets.strategies import kth_smallest

    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(n, generator=g)
    x[::5] = float("inf")
    x[1::7] = 0.25
    assert kth_smallest(x, k).item() == torch.kthvalue(x, k).values.item()
    y = x.abs()  # the non-negative fast path
    assert kth_smallest(y, k).item() == torch.kthvalue(y, k).values.item()


def test_dynamic_layers_compete_again_and_keep_the_count():
    model = small_model()
    mask = prune(model, "magnitude", 0.5)
    weights = prunable_weights(model)
    # pretend the dense weights of a dynamic layer kept training: its pruned weights are now large
    scores = {n: w.detach().abs().clone() for n, w in weights.items()}
    dyn = "classifier.weight"
    scores[dyn] = torch.where(mask[dyn], scores[dyn], 10.0)  # pruned ones now score highest
    new = global_prune(scores, mask, 0.25, dynamic=[dyn])
    assert new.num_kept == mask.num_kept - round(0.25 * mask.num_kept)
    assert bool((new[dyn] & ~mask[dyn]).any())  # some came back
    for n in new:
        if n != dyn:
            assert bool((new[n] <= mask[n]).all())  # static layers: survivors only
    # the large pruned weights compete inside their layer only: every layer keeps the count that ranking
    # the survivors gives (else the dynamic layer takes the static layers' places; the F-MNIST study's
    # SF-IMP-2 lost both spiking conv layers that way)
    static = global_prune(scores, mask, 0.25)
    assert {n: int(new[n].sum()) for n in new} == {n: int(static[n].sum()) for n in static}
    budget = global_prune(scores, mask, 0.25, normalize="budget", allocation=scores, dynamic=[dyn])
    assert {n: int(budget[n].sum()) for n in budget} == {n: int(static[n].sum()) for n in static}
    assert bool((budget[dyn] & ~mask[dyn]).any())
    lw = layerwise_prune(scores, mask, 0.25, dynamic=[dyn])
    assert bool((lw[dyn] & ~mask[dyn]).any())
    assert int(lw[dyn].sum()) == int(mask[dyn].sum()) - round(0.25 * int(mask[dyn].sum()))
    with pytest.raises(ValueError, match="not in the mask"):
        global_prune(scores, mask, 0.25, dynamic=["nope.weight"])


def test_budget_normalisation_keeps_magnitude_allocation():
    model = small_model()
    weights = prunable_weights(model)
    magnitudes = {n: w.detach().abs() for n, w in weights.items()}
    mask = Mask.ones(model)
    g = torch.Generator().manual_seed(0)
    other = {n: torch.rand(w.shape, generator=g) * (1e-6 if i % 2 else 1e3) for i, (n, w) in enumerate(weights.items())}
    by_magnitude = global_prune(magnitudes, mask, 0.7)
    budget = global_prune(other, mask, 0.7, normalize="budget", allocation=magnitudes)
    for n in mask:  # the same number per layer as global magnitude pruning, chosen by the other scores
        assert int(budget[n].sum()) == int(by_magnitude[n].sum())
        kept, gone = other[n][budget[n]], other[n][~budget[n]]
        if kept.numel() and gone.numel():
            assert gone.max() <= kept.min()
    # with the magnitude criterion itself, budget == plain global magnitude pruning
    assert global_prune(magnitudes, mask, 0.7, normalize="budget", allocation=magnitudes).equal(by_magnitude)
    with pytest.raises(ValueError, match="allocation"):
        global_prune(other, mask, 0.7, normalize="budget")


def test_auto_normalisation_resolves_by_criteria_mix():
    from spikeprune.tickets.strategies import resolve_normalization

    assert resolve_normalization("auto", {"a": "magnitude", "b": "magnitude"}) == "none"
    assert resolve_normalization("auto", {"a": "magnitude", "b": "sf"}) == sf_default_normalization()
    assert resolve_normalization("max", None) == "max"


def sf_default_normalization():
    from spikeprune.tickets.strategies import MIXED_DEFAULT

    return MIXED_DEFAULT


def test_sf_prune_on_untrained_model_does_not_collapse_a_layer():
    # The lead's observation: global SF at 0.8 pruned features.4 to density 0 with "mean" normalisation.
    torch.manual_seed(0)
    model = sp.create_model("convnet", 10, 1, 4, 0.5, image_size=8)
    mask = prune(model, "sf", 0.8, calibration=batches(4))
    assert min(r["density"] for r in mask.report()[:-1]) > 0.0


def test_forward_mask_is_straight_through_and_state_dict_neutral():
    from spikeprune.tickets.masks import mask_forward

    model = small_model()
    keys = list(model.state_dict())
    x, y = batches(1)[0]
    keep = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.5
            for n, w in prunable_weights(model).items() if n in ("features.0.conv.weight", "classifier.weight")}
    reference = sp.create_model("convnet", 10, 1, 2, 0.25, image_size=8)
    reference.load_state_dict(model.state_dict())
    Mask(keep).apply(reference)
    handle = mask_forward(model, Mask(keep))
    assert list(model.state_dict()) == keys  # checkpoints stay interchangeable
    model.eval(), reference.eval()
    assert torch.equal(model(x), reference(x))  # forward = the masked network, bit for bit
    model.train()
    nn.functional.cross_entropy(model(x).mean(0), y).backward()
    g = model.classifier.weight.grad
    assert torch.count_nonzero(g[~keep["classifier.weight"]]) > 0  # dense (straight-through) gradient
    w_before = model.classifier.weight.detach().clone()
    handle.remove()
    assert type(model.classifier) is nn.Linear and torch.equal(model.classifier.weight, w_before)


def test_empirical_threshold_density_and_sf_variants_by_hand():
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 1, bias=False)
            self.bn = nn.BatchNorm2d(3)
            self.lif = LIF(beta=0.5, u_th=0.7)

        def forward(self, x):
            return self.lif(self.bn(self.conv(x.flatten(0, 1))).unflatten(0, x.shape[:2]))

    model = Tiny()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        model.bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    spikes = (torch.rand(3, 8, 2, 5, 5) < torch.tensor([0.3, 0.7]).view(1, 1, 2, 1, 1)).float()
    calib = calibrate(model, [spikes], num_batches=1, crisis_eps=0.1)
    with torch.no_grad():
        y = model.bn.eval()(model.conv(spikes.flatten(0, 1))).unflatten(0, (3, 8))
    _, u = lif_multistep(y, beta=0.5, u_th=0.7)
    near = ((u - 0.7).abs() <= 0.1).float().mean(dim=(0, 1, 3, 4)) / 0.2
    assert torch.allclose(calib.threshold_density["lif"], near)
    r = spikes.mean(dim=(0, 1, 3, 4))
    gain = (model.bn.weight.abs() / torch.sqrt(model.bn.running_var + model.bn.eps)).detach()
    w = model.conv.weight.detach().abs()
    emp = compute_scores("sf-empirical", model, calib)["conv.weight"]
    cur = compute_scores("sf-current", model, calib)["conv.weight"]
    assert torch.allclose(emp, r.view(1, 2, 1, 1) * w * (gain * near).view(3, 1, 1, 1), rtol=1e-5, atol=1e-8)
    assert torch.allclose(cur, r.view(1, 2, 1, 1) * w * gain.view(3, 1, 1, 1), rtol=1e-5, atol=1e-8)
    rms = compute_scores("sf-rms", model, calib)["conv.weight"]
    assert torch.allclose(rms, r.sqrt().view(1, 2, 1, 1) * w * gain.view(3, 1, 1, 1), rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="crisis_eps"):
        calibrate(model, [spikes], crisis_eps=0)
