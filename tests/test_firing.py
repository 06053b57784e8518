"""Crisis probability, p_sup, the bounds of LTH-SNN §3, perturbations and the flip analysis (SPEC §6)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import spikeprune as sp
from spikeprune import LIF
from spikeprune.cli import main
from spikeprune.theory.firing import (
    bound_lemma33,
    bound_lemma34,
    bound_theorem35,
    crisis_probability,
    crisis_report,
    density_sup,
    scott_bandwidth,
)
from spikeprune.theory.flips import flip_analysis, flip_summary
from spikeprune.theory.perturb import Perturbation, apply_perturbation, parse_perturbation
from spikeprune.tickets.masks import prunable_weights


def gaussian(mu=0.8, sd=0.5, n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return mu + sd * torch.randn(n, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Crisis probability and p_sup against closed forms and scipy.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.05, 0.2, 1.0])
def test_crisis_probability_of_a_known_gaussian_matches_the_closed_form(eps):
    mu, sd, u_th = 0.8, 0.5, 1.0
    u = gaussian(mu, sd)
    exact = stats.norm.cdf(u_th + eps, mu, sd) - stats.norm.cdf(u_th - eps, mu, sd)
    se = math.sqrt(exact * (1 - exact) / u.numel())
    assert crisis_probability(u, u_th, eps, "empirical") == pytest.approx(exact, abs=5 * se)
    assert crisis_probability(u, u_th, eps, "gaussian") == pytest.approx(exact, abs=5 * se)
    # The KDE smooths by h = sd n^(-1/5) (variance sd^2 + h^2): a small, known bias.
    h = scott_bandwidth(u)
    smoothed = stats.norm.cdf(u_th + eps, mu, math.hypot(sd, h)) - stats.norm.cdf(u_th - eps, mu, math.hypot(sd, h))
    assert crisis_probability(u, u_th, eps, "kde") == pytest.approx(smoothed, abs=5 * se)
    assert crisis_probability(u, u_th, eps, "kde") == pytest.approx(exact, rel=0.02)


@pytest.mark.slow
def test_p_sup_of_a_known_gaussian():
    mu, sd = 0.8, 0.5
    u = gaussian(mu, sd)
    peak = stats.norm.pdf(mu, mu, sd)
    # Neighbourhood containing the mode: sup = the peak; not containing it: the density at the near edge.
    assert density_sup(u, 1.0, 0.3, "gaussian") == pytest.approx(peak, rel=0.01)
    assert density_sup(u, 1.0, 0.1, "gaussian") == pytest.approx(stats.norm.pdf(0.9, mu, sd), rel=0.01)
    assert density_sup(u, 1.0, 0.3, "kde") == pytest.approx(peak, rel=0.02)
    assert density_sup(u, 1.0, 0.1, "kde") == pytest.approx(stats.norm.pdf(0.9, mu, sd), rel=0.02)
    assert density_sup(u, 1.0, 0.1, "empirical") == pytest.approx(stats.norm.pdf(0.9, mu, sd), rel=0.05)
    # Lemma 3.3's inequality on the true distribution: mass <= 2 p_sup eps.
    for eps in (0.01, 0.1, 0.3):
        assert crisis_probability(u, 1.0, eps, "gaussian") <= bound_lemma33(density_sup(u, 1.0, eps, "gaussian"), eps)


def test_kde_agrees_with_scipy_gaussian_kde():
    u = torch.cat([gaussian(0.2, 0.3, 3000, seed=1), gaussian(1.1, 0.1, 1000, seed=2)])
    kde = stats.gaussian_kde(u.numpy())  # Scott's rule, like ours
    assert scott_bandwidth(u) == pytest.approx(float(np.sqrt(kde.covariance[0, 0])), rel=1e-9)
    assert crisis_probability(u, 1.0, 0.15, "kde") == pytest.approx(kde.integrate_box_1d(0.85, 1.15), rel=1e-9)
    grid = np.linspace(0.7, 1.3, 257)
    assert density_sup(u, 1.0, 0.3, "kde", max_samples=None) == pytest.approx(kde(grid).max(), rel=1e-9)


def test_point_mass_is_reported_not_smoothed_away():
    u = torch.cat([gaussian(0.0, 0.5, 9000), torch.full((1000,), 0.95, dtype=torch.float64)])
    report = crisis_report(u, 1.0, 0.1, beta=0.5, width=10)
    assert report["atom_mass"] == pytest.approx(0.1)
    assert report["crisis_empirical"] >= 0.1
    assert density_sup(torch.full((5,), 0.95), 1.0, 0.1, "kde") == math.inf
    assert density_sup(torch.full((5,), 0.5), 1.0, 0.1, "kde") == 0.0
    assert report["bound_theorem35"] == pytest.approx(10 * report["bound_lemma34"])


def test_bounds_match_their_formulas():
    assert bound_lemma33(0.7, 0.05) == pytest.approx(2 * 0.7 * 0.05)
    assert bound_lemma34(0.7, 0.05, 0.75) == pytest.approx(2 * 0.7 * 0.05 / 0.25)
    assert bound_theorem35(0.7, 0.05, 0.75, 128) == pytest.approx(128 * 2 * 0.7 * 0.05 / 0.25)
    assert bound_lemma33(3.0, 0.0) == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda: bound_lemma33(-1.0, 0.1), "p_sup"),
    (lambda: bound_lemma33(1.0, -0.1), "eps"),
    (lambda: bound_lemma34(1.0, 0.1, 1.0), "beta"),
    (lambda: bound_theorem35(1.0, 0.1, 0.5, 0), "width"),
    (lambda: crisis_probability(torch.ones(3), 1.0, 0.1, "histogram"), "estimator"),
    (lambda: crisis_probability(torch.tensor([1.0, float("nan")]), 1.0, 0.1), "NaN"),
    (lambda: crisis_probability(torch.empty(0), 1.0, 0.1), "empty"),
    (lambda: crisis_probability(torch.ones(3), 1.0, -0.1), "eps"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# Perturbations.
# ---------------------------------------------------------------------------------------------


def small_model(T=2, seed=0):
    torch.manual_seed(seed)
    model = sp.create_model("convnet", 10, 1, T, 0.25, image_size=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial BN statistics so the layers fire
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(0.0, 0.5, generator=g)
    return model.eval()


def batches(n=2, b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 1, 8, 8, generator=g) * 1.5, torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]


def test_parse_perturbation():
    assert parse_perturbation("prune:0.8:sf") == Perturbation("prune", sparsity=0.8, criterion="sf")
    assert parse_perturbation("prune:0.5") == Perturbation("prune", sparsity=0.5, criterion="magnitude")
    assert parse_perturbation("prune:runs/m.safetensors").mask == "runs/m.safetensors"
    assert parse_perturbation("quantize:4") == Perturbation("quantize", bits=4, scale="mean")
    assert parse_perturbation("quantize:8:max").label == "quantize-8b-max"
    assert parse_perturbation("weight-noise:0.1").sigma == 0.1
    assert parse_perturbation("input-noise:0.3").label == "input-noise-0.3"
    for bad in ("prune", "prune:1.5", "prune:0.5:l2", "quantize:0", "quantize:4.5", "weight-noise:-1",
                "weight-noise:x", "dropout:0.1", "input-noise:nan", "quantize:4:median"):
        with pytest.raises(ValueError):
            parse_perturbation(bad)


def test_apply_perturbation_changes_only_the_copy(tmp_path):
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q, fn = apply_perturbation(model, "quantize:2")
    assert fn is None
    for name, w in prunable_weights(q).items():
        assert torch.unique(w).numel() <= 4
    # max scale: no weight is clipped, so the error is at most half a level, gamma / s.
    q8, _ = apply_perturbation(model, "quantize:8:max")
    for name, w in prunable_weights(q8).items():
        w0 = prunable_weights(model)[name].detach()
        assert float((w.detach() - w0).abs().max()) <= float(w0.abs().max()) / 255 * 1.0001
    p, _ = apply_perturbation(model, "prune:0.6:magnitude")
    assert sp.Mask.from_model(p).sparsity == pytest.approx(0.6, abs=0.01)
    n, _ = apply_perturbation(model, "weight-noise:0.1", seed=3)
    w0 = prunable_weights(model)["features.0.conv.weight"].detach()
    w1 = prunable_weights(n)["features.0.conv.weight"].detach()
    assert float((w1 - w0).std() / w0.std()) == pytest.approx(0.1, rel=0.35)
    same, fn = apply_perturbation(model, "input-noise:0.5")
    x = torch.zeros(4, 1, 8, 8)
    assert torch.equal(fn(x, 0), fn(x, 0)) and not torch.equal(fn(x, 0), fn(x, 1))
    mask = sp.prune(copy.deepcopy(model), "magnitude", 0.3)
    mask.save(tmp_path / "m.safetensors")
    pm, _ = apply_perturbation(model, f"prune:{tmp_path / 'm.safetensors'}")
    assert sp.Mask.from_model(pm).equal(mask)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_perturbing_a_pruned_model_keeps_its_pruned_weights_at_zero():
    # A lottery ticket / edge-popup export is a model with exact zeros. Quantization has no zero level
    # (2^b levels, SPEC §7), so quantizing naively would bring every pruned weight back.
    ticket = small_model()
    mask = sp.prune(ticket, "magnitude", 0.5)
    q, _ = apply_perturbation(ticket, "quantize:2")
    assert sp.Mask.from_model(q).equal(mask)
    for name, w in prunable_weights(q).items():
        assert torch.unique(w[w != 0]).numel() <= 4
    p, _ = apply_perturbation(ticket, "prune:0.8:magnitude")
    kept = sp.Mask.from_model(p)
    assert kept.sparsity == pytest.approx(0.8, abs=0.01)
    assert all(not bool((kept[n] & ~mask[n]).any()) for n in mask)  # nothing pruned comes back
    with pytest.raises(ValueError, match="already"):
        apply_perturbation(ticket, "prune:0.5:magnitude")  # total sparsity it already has: no change


# ---------------------------------------------------------------------------------------------
# Flip analysis.
# ---------------------------------------------------------------------------------------------


def test_unperturbed_model_has_zero_flips_in_both_modes():
    model = small_model()
    rows = flip_analysis(model, copy.deepcopy(model), batches())
    assert {r.mode for r in rows} == {"local", "end_to_end"}
    assert len(rows) == 2 * 3 * 2  # modes x spiking layers x timesteps
    for r in rows:
        assert r.flip_rate == 0.0 and r.first_flip_rate == 0.0 and r.cond_flip_rate == 0.0
        assert r.eps == 0.0 and r.bound == 0.0 and r.holds
        assert r.radius == 0.0 and r.crisis_empirical == 0.0 and r.bound_refined == 0.0
    assert any(r.firing_rate > 0 for r in rows)  # the model does fire: zero flips is not vacuous


def test_refined_bound_held_out_selects_on_even_batches_and_checks_on_odd_ones():
    # Issue 14: the refinement's error level must not be chosen on the samples that check it. With the
    # subsamples covering every neuron (u_samples_per_batch large), the held-out level is exactly the
    # level a run on the even batches alone picks, and the held-out rate is the odd batches' own rate.
    model = small_model(T=2)
    pruned, _ = apply_perturbation(model, "prune:0.7:magnitude")
    data = batches(4)
    kw = dict(modes=("local",), u_samples_per_batch=10**7, p_sup_method="gaussian")
    rows = flip_analysis(model, pruned, data, **kw)
    even = {(r.layer, r.t): r for r in flip_analysis(model, pruned, data[0::2], **kw)}
    odd = {(r.layer, r.t): r for r in flip_analysis(model, pruned, data[1::2], **kw)}
    assert sum(r.first_flip_rate for r in rows) > 0
    for r in rows:
        key = (r.layer, r.t)
        assert r.eps_refined_heldout == even[key].eps_refined
        assert r.first_flip_rate_heldout == pytest.approx(odd[key].first_flip_rate, abs=0)
        assert r.holds_refined_heldout == (r.first_flip_rate_heldout <= r.bound_refined_heldout)
    summary = flip_summary(rows)
    assert all(s["holds_refined_heldout"] is not None for s in summary)
    # one batch: nothing to hold out, and the row says so instead of inventing a value
    single = flip_analysis(model, pruned, data[:1], **kw)
    assert all(r.bound_refined_heldout is None and r.holds_refined_heldout is None for r in single)
    assert all(s["holds_refined_heldout"] is None for s in flip_summary(single))


@pytest.mark.slow
def test_flip_analysis_invariants_under_pruning():
    model = small_model(T=3)
    pruned, _ = apply_perturbation(model, "prune:0.7:magnitude")
    data = batches(3)
    rows = flip_analysis(model, pruned, data, label="p")
    assert sum(r.flip_rate for r in rows) > 0
    for r in rows:
        # Lemmas 3.3/3.4's deterministic core: a first flip needs |u - u_th| <= eps sum_{n<t} beta^n.
        assert r.first_flips_outside == 0
        if r.first_flip_crisis_share is not None:
            assert r.first_flip_crisis_share == 1.0
        assert r.first_flip_rate <= r.crisis_empirical + 1e-12
        assert r.first_flip_rate <= r.flip_rate + 1e-12
        # The refinement includes the paper's choice (error level = the max): never looser, up to the
        # KDE grid (the sup over a sub-interval is read on a different grid).
        assert r.bound_refined <= r.bound * 1.01 + 1e-12
        assert r.bound_theorem35 == pytest.approx(r.neurons * r.bound_lemma34)
    by = {(r.mode, r.layer, r.t): r for r in rows}
    # The encoding layer sees the same input in both modes.
    for t in (1, 2, 3):
        a, b = by[("local", "features.0.lif", t)], by[("end_to_end", "features.0.lif", t)]
        assert (a.eps, a.flip_rate) == (b.eps, b.flip_rate)
    # Local mode: eps of layer 2 is |BN'(W' s_ref) - BN(W s_ref)| with the reference's spikes, by hand.
    spikes = {}

    def keep(name):
        def hook(m, i, o):
            spikes[name] = o
        return hook

    model.features[0].lif.register_forward_hook(keep("s0"))
    eps_hand = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for x, _ in data:
            model(x)
            s_in = model.features[1](spikes["s0"])  # max-pool of the reference spikes
            ref = model.features[2].bn(model.features[2].conv(s_in.flatten(0, 1)))
            per = pruned.features[2].bn(pruned.features[2].conv(s_in.flatten(0, 1)))
            d = (per - ref).abs().unflatten(0, (3, x.shape[0])).reshape(3, -1).amax(1).double()
            eps_hand = torch.maximum(eps_hand, d)
    for t in (1, 2, 3):
        assert by[("local", "features.2.lif", t)].eps_t == pytest.approx(float(eps_hand[t - 1]), rel=1e-5)
    summary = flip_summary(rows)
    assert len(summary) == 2 * 3 and all(s["first_flips_outside"] == 0 for s in summary)


class OneNeuron(nn.Module):
    """x_t = w * input_t, then one LIF: the smallest model the flip analysis accepts."""

    def __init__(self, w):
        super().__init__()
        self.fc = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.fill_(w)
        self.lif = LIF(beta=0.5, u_th=0.5)

    def forward(self, x):
        return self.lif(self.fc(x))


def test_a_flip_can_lie_outside_eps_but_not_outside_the_lemma34_radius():
    # x = 0.19 vs 0.29 every step (eps = 0.1): u = 0.19, 0.285, 0.3325 vs 0.29, 0.435, 0.5075 -> the
    # perturbed neuron fires at t = 3 where the reference's u is 0.1675 below u_th: farther than eps,
    # within eps (1 + beta + beta^2) = 0.175 (Lemma 3.4's accumulated error). Hence docs/theory.md's
    # radius eps sum beta^n rather than eps for T > 1.
    ref, per = OneNeuron(0.19), OneNeuron(0.29)
    rows = flip_analysis(ref, per, [torch.ones(4, 1, 1)])
    r3 = next(r for r in rows if r.mode == "local" and r.t == 3)
    assert r3.flip_rate == 1.0 and r3.first_flip_rate == 1.0
    assert r3.eps == pytest.approx(0.1, rel=1e-6)
    assert r3.radius == pytest.approx(0.175, rel=1e-4)
    assert r3.first_flips_outside == 0 and r3.first_flip_crisis_share == 1.0
    assert abs(0.3325 - 0.5) > r3.eps
    r1 = next(r for r in rows if r.mode == "local" and r.t == 1)
    assert r1.flip_rate == 0.0
    # u is a point mass here (one input, deterministic): Definition 3.1 fails, p_sup and the bound are inf.
    assert r3.p_sup == math.inf and r3.bound == math.inf and r3.atom_mass == 1.0


class Background(nn.Module):
    """64 neurons x = W input + b, one LIF. An all-zero input (the "background") gives every neuron
    its bias: a point mass of u, as in a direct-encoded conv layer's empty receptive fields."""

    def __init__(self, bias):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(4, 64)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(64, 4, generator=g))
            self.fc.bias.fill_(bias)
        self.lif = LIF(beta=0.5, u_th=1.0)

    def forward(self, x):
        return self.lif(self.fc(x))


def test_a_point_mass_near_threshold_breaks_the_smoothed_bound_and_is_flagged():
    # The minimal reproduction of the failure mode docs/theory.md §8 measures on Fashion-MNIST: half of
    # the inputs are background, so half of the potentials sit exactly at the bias 1.003, just above
    # u_th. A bias change of 0.007 (= eps) silences all of them at t = 1: flip rate ~ 0.5, while
    # Lemma 3.3's 2 p_sup eps with a (finite, smoothed) KDE p_sup is a few percent. The row says why:
    # atom_mass ~ 0.5 (Definition 3.1's finite density fails), and every flip still lies within eps.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 256, 4, generator=g) * 2.0
    x[:, ::2] = 0.0  # every other sample is background
    ref, per = Background(1.003), Background(0.996)
    r1 = next(r for r in flip_analysis(ref, per, [x], modes=["local"]) if r.t == 1)
    assert r1.eps == pytest.approx(0.007, rel=1e-4)
    assert r1.flip_rate == pytest.approx(0.5, abs=0.02)
    assert math.isfinite(r1.bound) and r1.bound < 0.1 and r1.holds is False
    assert r1.atom_mass == pytest.approx(0.5, abs=1e-9)
    assert r1.first_flips_outside == 0 and r1.first_flip_crisis_share == 1.0


def test_flip_analysis_rejects_mismatched_models():
    with pytest.raises(ValueError, match="spiking layers"):
        flip_analysis(small_model(), OneNeuron(0.1), batches())
    with pytest.raises(ValueError, match="mode"):
        flip_analysis(small_model(), small_model(), batches(), modes=["sideways"])
    with pytest.raises(ValueError, match="no batch"):
        flip_analysis(small_model(), small_model(), [])


# ---------------------------------------------------------------------------------------------
# CLI: spikeprune analyze flips.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    from spikeprune.engine.train import save_model

    model = sp.create_model("convnet", 10, 1, 2, 0.25, image_size=8)
    path = tmp_path / "model.safetensors"
    save_model(path, model, {"config": {"dataset": "digits", "encoding": "direct"}})
    return path


@pytest.mark.slow
def test_cli_analyze_flips(tmp_path, checkpoint, capsys):
    out = tmp_path / "flips"
    code = main(["analyze", "flips", "--checkpoint", str(checkpoint), "--perturb", "quantize:2",
                 "--perturb", "prune:0.5:sf", "--samples", "64", "--batch-size", "32", "--calibration-batches", "2",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "flips.json").read_text())
    assert data["perturbations"] == ["quantize-2b", "prune-0.5-sf"]
    assert len(data["rows"]) == 2 * 2 * 3 * 2  # perturbations x modes x layers x timesteps
    assert (out / "flips.csv").read_text().count("\n") == len(data["rows"]) + 1
    for name in ("flips.png", "flips-quantize-2b.png", "flips-prune-0.5-sf.png"):
        assert (out / name).stat().st_size > 1000
    # issue 18: informative rows counted first; a vacuous bound is marked so, never reported as holding
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("informative (layer, timestep) rows, bound < 1:")
    lines = [line for line in printed if line.startswith(("quantize-2b ", "prune-0.5-sf "))]
    assert len(lines) == 2 * 2 * 3
    kinds = [[("holds" in line or "VIOLATED" in line), "vacuous (bound >= 1)" in line, "not perturbed" in line]
             for line in lines]
    assert all(sum(k) == 1 for k in kinds)  # one verdict per line: a vacuous line never says "holds"
    rank = [k.index(True) for k in kinds]
    assert rank == sorted(rank)  # informative lines first
    assert any(line.startswith("  verdict ") for line in printed)  # the legend of the columns


@pytest.mark.parametrize("argv, match", [
    (["--perturb", "quantize:0"], "bits"),
    (["--perturb", "prune:0.5:l1"], "criterion"),
    (["--perturb", "prune:missing.safetensors"], "missing.safetensors"),
    (["--perturb", "quantize:4", "--samples", "0"], "samples"),
])
def test_cli_analyze_flips_bad_input_is_one_line(tmp_path, checkpoint, capsys, argv, match):
    out = tmp_path / "bad"
    code = main(["analyze", "flips", "--checkpoint", str(checkpoint), "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in err
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


@pytest.mark.slow
def test_cli_analyze_flips_runs_a_compressed_checkpoint_as_compressed(tmp_path, capsys):
    # `spikeprune compress` output: 4-bit weights, 4-bit membranes (QuantizedLIF). The analysis must run
    # the model as it was compressed, not its weights with float membranes.
    from spikeprune.compression.compress import load_compressed, save_compressed
    from spikeprune.engine.data import BatchLoader, load_dataset
    from spikeprune.engine.neuron import observe, spiking_layers
    from spikeprune.compression.quant import QuantizedLIF, quantize_model
    from spikeprune.engine.train import load_model

    model = small_model()
    loader = BatchLoader(load_dataset("digits"), "test", 32, shuffle=False, timesteps=2, limit=64)
    x0 = next(iter(loader))[0]
    quantize_model(model, 4, membrane_bits=4, example_input=x0)
    model(x0)  # sets the frozen-able scales
    path = tmp_path / "compressed.safetensors"
    save_compressed(path, model, {"config": {"dataset": "digits", "encoding": "direct"}})
    out = tmp_path / "flips"
    assert main(["analyze", "flips", "--checkpoint", str(path), "--perturb", "weight-noise:0.2",
                 "--mode", "local", "--samples", "64", "--batch-size", "32", "--out", str(out)]) == 0
    rows = json.loads((out / "flips.json").read_text())["rows"]
    compressed, _ = load_compressed(path, x0)
    plain, _ = load_model(path)
    assert any(isinstance(m, QuantizedLIF) for m in compressed.modules())

    def rate(m):  # reference firing rate of the first spiking layer at t = 1, as the analysis reports it
        first, spikes = next(iter(spiking_layers(m.eval()).values())), []
        with torch.no_grad(), observe(m, lambda lif, u, s: spikes.append(s[0]) if lif is first else None):
            for x, _ in loader:
                m(x)
        return float(torch.cat(spikes).float().mean())

    reported = next(r["firing_rate"] for r in rows if r["layer"] == "features.0.lif" and r["t"] == 1)
    assert reported == pytest.approx(rate(compressed), abs=1e-6)
    assert rate(plain) != pytest.approx(rate(compressed), abs=1e-3)  # the check can tell them apart
    capsys.readouterr()
