"""Tables and console blocks that describe themselves (issue 18): what ± is and over how many runs, no
interval for n = 1 and a warning for n < 3; flip bounds >= 1 marked vacuous and the informative rows
first; the SLTH constants named, vacuous lower bounds not printed as 0, and an undefined Theorem 4.3
width said in words."""

from __future__ import annotations

import types

import pytest

from spikeprune.report.tables import (
    format_flip_table,
    format_slth_bounds,
    format_slth_table,
    format_table,
    interval_legend,
    interval_phrase,
    summarize,
)


def _runs(*pairs):
    return [[{"round": 0, "density": 1.0, "test_accuracy": a}, {"round": 1, "density": 0.5, "test_accuracy": b}]
            for a, b in pairs]


THREE = _runs((0.90, 0.80), (0.92, 0.86), (0.91, 0.83))


def _legend(table: str) -> list[str]:
    body, _, legend = table.partition("\n\n")  # a blank line ends the Markdown table
    assert all(line.startswith("|") for line in body.splitlines())
    return legend.splitlines()


def test_the_table_says_what_the_interval_is_and_over_how_many_seeds():
    table = format_table({"imp": summarize(THREE)})
    assert "| 50.0 % | 83.00 ± 7.45 |" in table
    assert _legend(table) == ["± = half-width of the 95 % confidence interval of the mean (Student t, n - 1 degrees "
                              "of freedom) over n = 3 seeds"]


def test_one_run_has_no_interval_and_says_so():
    rows = THREE[0]
    table = format_table({"imp (magnitude)": rows})  # one lottery run: rows without n
    assert "±" not in table.split("\n\n")[0]
    (line,) = _legend(table)
    assert "one run (n = 1): no confidence interval" in line
    # a CI field on an n = 1 point is not printed either
    table = format_table({"x": [{"density": 1.0, "test_accuracy": 0.9, "test_accuracy_ci": 0.05, "n": 1}]})
    assert "±" not in table.split("\n\n")[0]


def test_columns_with_different_n_say_so_and_n_below_3_warns():
    partial = summarize([THREE[0], THREE[1][:1]], require_all=False)  # the second seed has no round 1 yet
    table = format_table({"imp": summarize(THREE), "sf-imp-1": summarize(THREE[:2]), "sf-imp-2": partial})
    assert "| 50.0 % | 83.00 ± 7.45 | 83.00 ± 38.12 | 80.00 (n=1) |" in table
    legend = _legend(table)
    assert legend[0].startswith("± = half-width of the 95 % confidence interval") and "no ± where n = 1" in legend[0]
    assert legend[1] == "n (seeds) per column: imp 3, sf-imp-1 2, sf-imp-2 1-2; a value with fewer says (n=k)"
    assert legend[2].startswith("warning: n < 3 in sf-imp-1, sf-imp-2:") and "t = 12.7" in legend[2]
    assert not [x for x in interval_legend({"imp": summarize(THREE)}) if x.startswith("warning")]


def test_unmeasured_values_are_a_dash_not_a_number():
    rows = summarize(THREE, metrics=("val_accuracy",))  # no validation split: val_accuracy None everywhere
    table = format_table({"imp": rows}, metric="val_accuracy")
    assert "| 50.0 % | – |" in table and interval_legend({"imp": rows}, "val_accuracy") == []


def test_interval_phrase():
    assert interval_phrase(3) == "mean ± 95 % CI (Student t) over 3 seeds"
    assert interval_phrase(1) == "one seed, so no interval"


def _flip(pert, layer, t, eps, bound, cond, mode="local"):
    holds = None if cond is None else cond <= bound
    return types.SimpleNamespace(perturbation=pert, mode=mode, layer=layer, t=t, eps=eps, bound=bound,
                                 cond_flip_rate=cond, holds=holds,
                                 tightness=None if cond is None or bound <= 0 else cond / bound)


def test_flip_table_leads_with_informative_rows_and_marks_vacuous_bounds():
    rows = [_flip("quantize-2b", "l1", 1, 0.5, 3.0, 0.05), _flip("quantize-2b", "l1", 2, 0.5, 6.0, 0.07),  # vacuous
            _flip("prune-0.5-sf", "l2", 1, 0.01, 0.2, 0.01), _flip("prune-0.5-sf", "l2", 2, 0.02, 1.5, 0.02),
            _flip("prune-0.5-sf", "l3", 1, 0.01, 0.1, 0.3),  # violated
            _flip("noise", "l0", 1, 0.0, 0.0, 0.0)]  # not perturbed
    text = format_flip_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("informative (layer, timestep) rows, bound < 1: 2 of 5 with eps > 0 (the bound holds "
                               "in 1); vacuous, bound >= 1: 3")
    header = lines[2].split()
    assert header[:3] == ["perturbation", "mode", "layer"] and "flip|premise" not in lines[2]
    body = lines[3:7]
    assert body[0].split()[:3] == ["prune-0.5-sf", "local", "l2"] and body[0].endswith("holds at the 1 informative "
                                                                                      "timestep")
    assert body[1].endswith("VIOLATED at 1 of 1 informative timesteps")
    assert body[2].split()[0] == "quantize-2b" and body[2].endswith("vacuous (bound >= 1)")
    assert "holds" not in body[2]  # a bound >= 1 is not reported as holding
    assert body[3].endswith("not perturbed (eps = 0)")
    assert lines[7] == "columns (worst timestep of each line):" and any("tightness" in x for x in lines[8:])


SLTH = {
    "config": {"N": 4, "L": 1, "T": 1, "eps": 0.1, "trials": 4, "equality_trials": 1, "beta": 0.5, "u_th": 0.2,
               "delta": 0.1},
    "rows": [{"k": 4, "success_rate": 0.0, "success_exact": 0.0, "success_bound": 0.0, "output_equal_rate": 0.363,
              "all_equal_rate": 0.3, "theorem_delta": 20.7, "theorem_1_minus_delta": 0.0},
             {"k": 4096, "success_rate": 1.0, "success_exact": 0.99, "success_bound": 0.4, "output_equal_rate": 1.0,
              "all_equal_rate": 1.0, "theorem_delta": 0.2, "theorem_1_minus_delta": 0.8}],
    "bounds": {"delta": 0.1, "C": 12.14, "p_sup": 3.03, "flip_term": 4.86, "target_atom_mass": 0.31,
               "k_paper": None, "k_proof": None, "k_construction": 2032, "k_success": 2168, "k_equality": 512,
               "undefined": "the width bound is undefined: delta=0.1 <= N*C*L*T*eps = 4.856 (the flip probability "
                            "of Theorem 3.5 alone exceeds delta); lower eps or raise delta"},
    "violations": {"virtual_copy_mismatches": 0, "feature_error_over_eps": 0, "unexplained": 0},
}


def test_slth_table_prints_a_vacuous_bound_as_a_dash_not_a_zero():
    lines = format_slth_table(SLTH).splitlines()
    assert lines[0].split() == ["k", "success", "exact", "union", "bd", "out", "equal", "Thm", "4.3"]
    assert lines[1].split() == ["4", "0.000", "0.000", "-", "0.363", "-"]  # both bounds <= 0: guarantee nothing
    assert lines[2].split() == ["4096", "1.000", "0.990", "0.400", "1.000", "0.800"]
    assert any("guarantees nothing" in x for x in lines[3:])


def test_slth_bounds_are_named_and_an_undefined_theorem_says_why():
    text = format_slth_bounds(SLTH)
    assert "{" not in text and "None" not in text and "null" not in text  # no dict / JSON repr
    assert "C = 2 p_sup / (1 - beta)" in text and "flip term N C L T eps" in text
    assert "Theorem 4.3's bound is undefined at this size: delta=0.1 <= N*C*L*T*eps" in text
    assert "k, Theorem 4.3 (proof)" in text and "undefined" in text.split("k, Theorem 4.3 (proof)")[1].split("\n")[0]
    assert "invariant violations of the construction: none" in text
    defined = {**SLTH, "bounds": {**SLTH["bounds"], "k_proof": 300, "k_paper": 1200, "flip_term": 0.01}}
    text = format_slth_bounds(defined)
    assert "undefined" not in text and "1200" in text and "< delta = 0.1" in text
    bad = {**SLTH, "violations": {"unexplained": 2}}
    assert "INVARIANT VIOLATIONS of the construction: 2" in format_slth_bounds(bad)


@pytest.mark.slow
def test_cli_theory_slth_prints_no_dict(tmp_path, capsys):
    from spikeprune.cli import main

    assert main(["theory", "slth", "--N", "4", "--eps", "0.1", "--k", "4,8", "--trials", "2", "--equality-trials", "1",
                 "--samples", "8", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "null" not in out and "undefined at this size" in out
    assert out.splitlines()[1].split()[-1] == "-"  # 1 - delta(4) is vacuous here
