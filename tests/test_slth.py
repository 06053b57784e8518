"""The strong-LTH construction of LTH-SNN Appendix C (SPEC §6): virtual neurons, masks, verification,
the success probability and the width bound."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from scipy import stats

from spikeprune.cli import main
from spikeprune.engine.neuron import lif_multistep
from spikeprune.theory.slth import (
    TargetSNN,
    c_th,
    construct,
    construct_many,
    construction_success_probability,
    materialize,
    minimal_width,
    random_spikes,
    random_target,
    run_equivalent,
    run_target,
    slth_experiment,
    success_bound,
    theorem_delta,
    verify,
    width_bound,
)


# ---------------------------------------------------------------------------------------------
# Step 1 (Lemma C.1): one spiking neuron per weight.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta, u_th", [(0.5, 0.2), (0.9, 0.5), (0.2, 0.95)])
def test_virtual_neuron_with_v_at_least_u_th_copies_its_input_whatever_its_state(beta, u_th):
    g = torch.Generator().manual_seed(0)
    T, B = 16, 4000
    s = (torch.rand(T, B, generator=g) < torch.rand(B, generator=g)).double()  # all kinds of spike trains
    v = u_th + (1 - u_th) * torch.rand(B, generator=g, dtype=torch.float64)
    v[:10] = u_th  # the boundary case v = u_th fires too (Hea(0) = 1)
    r, u = lif_multistep(s * v, beta, u_th, 0.0)
    assert torch.equal(r, s)
    # Whatever its state: prepend a sub-threshold input c in [0, u_th) so that h_0 = beta c, any value
    # the neuron can reach without an input spike, and the copy is still exact.
    c = u_th * torch.rand(1, B, generator=g, dtype=torch.float64) * 0.999
    r, _ = lif_multistep(torch.cat([c, s * v]), beta, u_th, 0.0)
    assert torch.equal(r[0], torch.zeros(B, dtype=torch.float64)) and torch.equal(r[1:], s)


def test_virtual_neuron_below_threshold_does_not_copy():
    # v < u_th: a lone spike right after a reset (h = 0) is lost; with beta > 0 two spikes in a row may fire.
    s = torch.tensor([[1.0], [0.0], [0.0], [1.0]], dtype=torch.float64)
    r, _ = lif_multistep(s * 0.45, 0.5, 0.5, 0.0)
    assert not torch.equal(r, s)


# ---------------------------------------------------------------------------------------------
# The construction reproduces target spikes.
# ---------------------------------------------------------------------------------------------


def margins_ok(trace, u_th, radius):
    """Samples [B] whose target potentials stay farther than ``radius`` from u_th at every layer and t."""
    ok = torch.ones(trace.u[0].shape[1], dtype=torch.bool)
    for u in trace.u:
        ok &= ((u - u_th).abs() > radius).all(dim=2).all(dim=0)
    return ok


@pytest.mark.parametrize("T, N, L, eps, k", [(1, 6, 3, 0.15, 6000), (4, 5, 2, 0.03, 24000)])
def test_construction_reproduces_target_spikes_exactly_outside_the_crisis_neighbourhood(T, N, L, eps, k):
    beta, B = 0.5, 4000
    target = random_target(N, L, beta=beta, seed=0)
    ticket = construct(target, k, eps, seed=2)
    assert ticket.success
    spikes = random_spikes(T, B, N, 0.3, seed=3)
    ref = run_target(target, spikes)
    assert all(float(s.mean()) > 0.05 for s in ref.spikes[1:])  # the target is not silent
    # T = 1: "no target potential within eps of u_th" is exactly the condition. T > 1: errors accumulate
    # in the membrane (Lemma 3.4), so the condition becomes eps / (1 - beta).
    radius = eps if T == 1 else eps / (1 - beta)
    keep = margins_ok(ref, target.u_th, radius)
    assert 100 < int(keep.sum()) < B  # both kinds of samples exist
    result = verify(ticket, spikes[:, keep])
    assert result["output_equal_rate"] == 1.0 and result["all_equal_rate"] == 1.0
    assert all(m == 0 for layer in result["mismatches"] for m in layer)
    # On all samples: the invariants of the proof.
    full = verify(ticket, spikes)
    assert full["virtual_copy_mismatches"] == 0
    assert all(e <= eps for e in full["feature_error"])
    assert full["unexplained"] == [0] * L
    assert full["output_equal_rate"] < 1.0  # some samples did sit in the crisis neighbourhood


def test_dense_masked_large_network_equals_the_compact_ticket():
    target = random_target(5, 2, seed=4)
    ticket = construct(target, 3000, 0.3, seed=5, trial=1)
    spikes = random_spikes(4, 64, 5, seed=6)
    compact = run_equivalent(ticket, spikes)
    s = spikes
    for l in range(target.L):
        V, BV, W, BW = materialize(ticket, l)
        assert V.shape == (3000, 5) and W.shape == (5, 3000)
        assert float(V.abs().max()) <= 1 and float(W.abs().max()) <= 1
        # LTH-SNN's mask constraints: one kept in-weight per kept neuron, in its group's column;
        # at most one kept out-weight per target weight, N^2 in all.
        kp = ticket.kprime
        rows, cols = torch.nonzero(BV, as_tuple=True)
        assert torch.equal(cols, rows // kp) and int(BV.sum(dim=1).max()) == 1
        assert int(BW.sum()) <= 25 and bool((V[BV] >= target.u_th).all())
        r, _ = lif_multistep(s @ (V * BV).T, target.beta, target.u_th, target.v_reset)  # [T, B, k]
        x = r @ (W * BW).T
        assert torch.allclose(x, compact.x[l], atol=1e-12)
        s, _ = lif_multistep(x, target.beta, target.u_th, target.v_reset)
        assert torch.equal(s, compact.spikes[l + 1])
    assert ticket.virtual_neurons <= target.L * 25 and ticket.nonzero_weights <= 2 * target.L * 25


def test_larger_networks_are_nested_and_k_min_is_exact():
    target = random_target(4, 2, seed=7)
    m = minimal_width(target, 0.2, seed=8, trial=3)
    k = m["k_min"]
    assert k is not None and k % 4 == 0
    below, at, above = construct_many(target, [k - 4, k, 2 * k], 0.2, seed=8, trial=3)
    assert not below.success and at.success and above.success
    assert m["virtual_neurons"] <= 32 and m["nonzero_weights"] == m["virtual_neurons"] + 32


# ---------------------------------------------------------------------------------------------
# Probabilities and bounds.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_success_rate_matches_the_exact_probability_and_exceeds_the_union_bound():
    target = random_target(4, 1, seed=9)
    eps = 0.2
    kmins = [minimal_width(target, eps, seed=10, trial=r)["k_min"] for r in range(300)]
    for k in (1200, 1800, 2600):
        exact = construction_success_probability(target, k, eps)
        measured = np.mean([km <= k for km in kmins])
        se = math.sqrt(exact * (1 - exact) / len(kmins)) + 1e-3
        assert abs(measured - exact) < 4 * se, (k, measured, exact)
        assert exact >= success_bound(4, k, eps, target.u_th, 1) - 1e-12


def test_exact_success_probability_against_brute_force_for_one_weight():
    # N = 1, one weight: success <=> some of k neurons has v >= u_th and |w - w^| <= eps.
    target = TargetSNN((torch.tensor([[0.3]], dtype=torch.float64),), 0.5, 0.4, 0.0)
    for k in (1, 5, 40):
        p = c_th(0.4) * 0.1  # P(v >= u_th) P(|w - 0.3| <= 0.1)
        assert construction_success_probability(target, k, 0.1) == pytest.approx(1 - (1 - p) ** k, rel=1e-9)


def test_formulas():
    N, L, T, eps, u_th, C, delta = 4, 2, 3, 0.002, 0.5, 1.5, 0.2
    assert c_th(u_th) == 0.25
    flips = N * C * L * T * eps
    inner = math.ceil(N / (0.25 * eps) * math.log(N * N * L / (delta - flips)))
    assert width_bound(N, L, T, eps, delta, u_th, C) == N * N * inner
    assert width_bound(N, L, T, eps, delta, u_th, C, form="proof") == N * inner
    k = 40_000
    assert theorem_delta(N, L, T, k, eps, u_th, C) == pytest.approx(
        L * N * N * math.exp(-(k / N) * 0.25 * eps / N) + flips)
    assert success_bound(N, k, eps, u_th, L) == pytest.approx(max(0, 1 - L * N * N * math.exp(-(k / N) * 0.25 * eps / N)))
    # The width bound makes delta(k) <= delta (with the proof's form, at k = the bound).
    kb = width_bound(N, L, T, eps, delta, u_th, C, form="proof")
    assert theorem_delta(N, L, T, kb, eps, u_th, C) <= delta + 1e-12


@pytest.mark.parametrize("call, match", [
    (lambda: c_th(1.0), "C_th"),
    (lambda: c_th(1.5), "u_th < 1"),
    (lambda: c_th(0.0), "u_th > 0"),
    (lambda: construct(random_target(4, 1), 400, 0.0), "eps"),
    (lambda: construct(random_target(4, 1), 400, -0.1), "eps"),
    (lambda: random_target(4, 1, u_th=1.0), "C_th"),
    (lambda: random_target(4, 1, v_reset=0.3), "v_reset"),
    (lambda: width_bound(4, 2, 3, 0.1, 0.1, 0.5, 1.5), "undefined"),
    (lambda: width_bound(4, 2, 3, 0.1, 0.0, 0.5, 1.5), "delta"),
    (lambda: construct(random_target(32, 3), 10**12, 0.1), "too large"),
    (lambda: TargetSNN((torch.ones(4, 4, dtype=torch.float64),)), "1/sqrt"),
])
def test_bad_input_is_a_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_memory_guard_answers_at_once():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="too large"):
        slth_experiment(32, 3, 8, 1e-9, trials=1)  # eps so small that k would be astronomic
    with pytest.raises(ValueError, match="too large"):
        construct(random_target(8, 1), 10**6, 0.1, max_memory=1 << 20)
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------------------------------------
# The ReLU comparison and the experiment.
# ---------------------------------------------------------------------------------------------


def test_relu_construction_counts():
    target = random_target(4, 1, seed=11)
    snn = minimal_width(target, 0.2, seed=12, kind="snn")
    relu = minimal_width(target, 0.2, seed=12, kind="relu")
    nonneg = minimal_width(target, 0.2, seed=12, kind="relu-nonneg")
    assert snn["virtual_neurons"] <= 16 and snn["nonzero_weights"] == snn["virtual_neurons"] + 16
    assert 16 < relu["virtual_neurons"] <= 32 and relu["nonzero_weights"] == relu["virtual_neurons"] + 32
    assert nonneg["virtual_neurons"] <= 16 and nonneg["k_min"] <= relu["k_min"]


@pytest.mark.slow
def test_slth_experiment_small():
    result = slth_experiment(4, 2, 3, 0.2, trials=20, equality_trials=3, samples=64, seed=0, compare_relu=True)
    rows = result["rows"]
    assert [r["k"] for r in rows] == sorted(r["k"] for r in rows)
    rates = [r["success_rate"] for r in rows]
    assert rates == sorted(rates) and rates[0] < 0.5 and rates[-1] == 1.0
    assert result["violations"] == {"virtual_copy_mismatches": 0, "feature_error_over_eps": 0, "unexplained": 0}
    assert result["bounds"]["k_paper"] is None and "undefined" in result["bounds"]["undefined"]
    assert result["resources"]["relu"]["virtual_neurons_per_weight"] > 1.5
    assert result["resources"]["snn"]["virtual_neurons_per_weight"] <= 1.0


def test_cli_theory_slth_and_width(tmp_path, capsys):
    out = tmp_path / "slth"
    code = main(["theory", "slth", "--N", "4", "--L", "1", "--T", "2", "--eps", "0.01", "--delta", "0.5",
                 "--trials", "10", "--equality-trials", "2", "--samples", "32", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "slth.json").read_text())
    assert result["bounds"]["k_paper"] == 4 * result["bounds"]["k_proof"]
    assert (out / "slth.png").stat().st_size > 1000 and (out / "slth.csv").exists()
    capsys.readouterr()
    assert main(["theory", "width", "--N", "4", "--L", "2", "--T", "3", "--eps", "0.002", "--delta", "0.2",
                 "--u-th", "0.5", "--p-sup", "0.375"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["paper"] == width_bound(4, 2, 3, 0.002, 0.2, 0.5, 1.5)


@pytest.mark.parametrize("argv, match", [
    (["slth", "--N", "4", "--eps", "0.1", "--u-th", "1.0"], "C_th"),
    (["slth", "--N", "4", "--eps", "0"], "eps"),
    (["slth", "--N", "4", "--eps", "-0.1"], "eps"),
    (["width", "--N", "4", "--eps", "-0.1", "--p-sup", "0.5"], "eps"),
    (["width", "--N", "4", "--eps", "0.001", "--u-th", "1.2", "--p-sup", "0.5"], "u_th < 1"),
    (["slth", "--N", "32", "--L", "3", "--eps", "1e-9"], "too large"),
    (["width", "--N", "4", "--L", "2", "--T", "3", "--eps", "0.1", "--p-sup", "0.5"], "undefined"),
    (["slth", "--N", "8", "--eps", "0.1", "--k", "100000000000"], "too large"),
])
def test_cli_theory_bad_input_is_one_line(tmp_path, capsys, argv, match):
    out = tmp_path / "bad"
    extra = ["--out", str(out)] if argv[0] == "slth" else []
    start = time.perf_counter()
    code = main(["theory", *argv, *extra])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - start < 10
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in err
    assert not (out.exists() and any(p.is_file() for p in out.rglob("*")))
