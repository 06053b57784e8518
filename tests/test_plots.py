"""Every plot of :mod:`spikeprune.report.plots`, drawn on small hand-built result sets, checked against
the rules of issue 18: intervals within the quantity's range, no interval for a single run (n = 1),
undefined values (None / NaN, or a lower bound clipped to 0 that guarantees nothing) not drawn,
coinciding series not drawn on top of each other, the dense reference drawn where one is given, and axis
ranges that contain all data.

What was drawn is read from the Figure itself: ``plots._save`` (the one place every plot is written) is
wrapped to keep each Figure, and the tests read its artists (Line2D data, the errorbars' LineCollection
segments, scatter offsets, bars, texts and legend labels). A new public plot function without a case
here fails :func:`test_every_public_plot_function_has_a_case`.
"""

from __future__ import annotations

import inspect
import math
import types
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from spikeprune.report import plots  # noqa: E402

PUBLIC = sorted(name for name, f in inspect.getmembers(plots, inspect.isfunction)
                if not name.startswith("_") and f.__module__ == plots.__name__)


@pytest.fixture
def drawn(monkeypatch):
    """``{png name: Figure}`` of every plot written while the test runs (the PNG is still written)."""
    figures: dict[str, object] = {}
    real = plots._save

    def keep(fig, path, dpi=None):
        figures[Path(path).name] = fig
        return real(fig, path, dpi)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


# ---------------------------------------------------------------------------------------------
# Reading a Figure.
# ---------------------------------------------------------------------------------------------


def _axes(fig) -> list:
    return list(fig.axes)


def data_lines(ax) -> list:
    """Lines drawn in data coordinates (ax.plot, errorbar caps); not axhline / axvline."""
    return [ln for ln in ax.lines if ln.get_transform() == ax.transData]


def hlines(ax) -> list[tuple[float, str]]:
    """(y, label) of every axhline (x in axes coordinates, y in data)."""
    return [(float(ln.get_ydata()[0]), ln.get_label()) for ln in ax.lines
            if ln.get_transform() == ax.get_yaxis_transform()]


def vlines(ax) -> list[tuple[float, str]]:
    return [(float(ln.get_xdata()[0]), ln.get_label()) for ln in ax.lines
            if ln.get_transform() == ax.get_xaxis_transform()]


def line(ax, label: str):
    found = [ln for ln in data_lines(ax) if ln.get_label() == label]
    assert len(found) == 1, (label, [ln.get_label() for ln in data_lines(ax)])
    return found[0]


def xy(ln) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(ln.get_xdata(), ln.get_ydata())]


def intervals(ax) -> list[tuple[float, float, float]]:
    """(x, low, high) of every vertical error bar (errorbar's LineCollection)."""
    from matplotlib.collections import LineCollection

    out = []
    for c in ax.collections:
        if isinstance(c, LineCollection):
            for seg in c.get_segments():
                (x0, y0), (x1, y1) = seg[0], seg[-1]
                assert x0 == pytest.approx(x1), "an error bar that is not vertical"
                out.append((float(x0), float(min(y0, y1)), float(max(y0, y1))))
    return out


def scatter_points(ax) -> list[tuple[float, float]]:
    from matplotlib.collections import PathCollection

    return [(float(x), float(y)) for c in ax.collections if isinstance(c, PathCollection)
            for x, y in c.get_offsets()]


def texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts) + "\n" + (
        "\n".join(t.get_text() for t in fig.texts))


def legend_labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def check_common_rules(fig, *, interval_range: tuple[float, float] | None = None) -> None:
    """Rules every plot obeys: drawn y values are finite numbers (an undefined value is left out, not
    drawn as NaN), every drawn point and interval lies inside the axis ranges, and every interval inside
    ``interval_range`` (the quantity's possible range, e.g. 0-100 %)."""
    for ax in _axes(fig):
        (x_lo, x_hi), (y_lo, y_hi) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        pts = [p for ln in data_lines(ax) for p in xy(ln)] + scatter_points(ax)
        for x, y in pts:
            assert math.isfinite(x) and math.isfinite(y), f"an undefined value was drawn: {(x, y)}"
            assert x_lo <= x <= x_hi and y_lo <= y <= y_hi, f"{(x, y)} outside the axes {ax.get_xlim(), ax.get_ylim()}"
        for y, label in hlines(ax):  # reference lines (dense accuracy, bound = 1) are on the axes too
            assert y_lo <= y <= y_hi, f"the line {label!r} at {y} is outside the axes {ax.get_ylim()}"
        for x, lo, hi in intervals(ax):
            assert x_lo <= x <= x_hi and y_lo - 1e-9 <= lo and hi <= y_hi + 1e-9, \
                f"interval {(x, lo, hi)} outside the axes {ax.get_xlim(), ax.get_ylim()}"
            if interval_range is not None:
                assert interval_range[0] - 1e-9 <= lo and hi <= interval_range[1] + 1e-9, \
                    f"interval {(lo, hi)} outside the possible range {interval_range}"


# ---------------------------------------------------------------------------------------------
# plot_accuracy_vs_sparsity (lottery, sweep, quickstart, fig5).
# ---------------------------------------------------------------------------------------------


def _pt(sparsity, acc, ci=None, n=None, **extra):
    p = {"sparsity": sparsity, "test_accuracy": acc, **extra}
    if ci is not None:
        p["test_accuracy_ci"] = ci
    if n is not None:
        p["n"] = n
    return p


def case_accuracy_vs_sparsity(tmp_path, drawn):
    aggregated = [_pt(0.0, 0.99, 0.05, 3), _pt(0.5, 0.97, 0.06, 3), _pt(0.75, 0.90, 0.02, 3)]  # CIs past 100 %
    series = {
        "imp": aggregated,
        "copy of imp": [dict(p) for p in aggregated],  # identical: must not hide "imp"
        "one seed": [_pt(0.0, 0.95, 0.04, 1), _pt(0.5, 0.93, 0.04, 1)],  # n = 1: a CI field, but no interval
        "partial": [_pt(0.0, 0.96, 0.01, 2), _pt(0.5, 0.94, 0.0, 1), _pt(0.75, None, None, 0)],  # None: not measured
    }
    plots.plot_accuracy_vs_sparsity(series, tmp_path / "acc.png", reference=0.98, reference_label="dense")
    fig = drawn["acc.png"]
    check_common_rules(fig, interval_range=(0.0, 100.0))
    (ax,) = fig.axes
    xs = {name: [x for x, _ in xy(line(ax, name))] for name in series}
    bars = intervals(ax)
    # intervals: clipped at 100 %, only at points of n >= 2 runs
    assert max(hi for _, _, hi in bars) == pytest.approx(100.0)
    assert not any(x == pytest.approx(v) for x, _, _ in bars for v in xs["one seed"]), "an interval for n = 1"
    at_partial = [b for b in bars if any(b[0] == pytest.approx(v) for v in xs["partial"])]
    assert len(at_partial) == 1 and at_partial[0][0] == pytest.approx(xs["partial"][0])  # the n = 2 point only
    # the unmeasured point is left out (not drawn as 0)
    assert len(xs["partial"]) == 2 and min(y for _, y in xy(line(ax, "partial"))) > 90
    # coinciding series are offset: no two series share an x position
    assert not set(xs["imp"]) & set(xs["copy of imp"])
    assert all(abs(a / b - 1) < 0.05 for a, b in zip(xs["imp"], xs["copy of imp"]))  # and stay near their density
    assert (98.0, "dense") in hlines(ax)


def case_accuracy_vs_sparsity_resolution(tmp_path, drawn):
    # differences of one or two test images out of 360: the axis shows them at the test set's resolution
    step = 1 / 360
    series = {"a": [_pt(0.0, 0.99), _pt(0.5, 0.99 - step), _pt(0.75, 0.99 - 2 * step)],
              "b": [_pt(0.0, 0.99, 2 * step, 2), _pt(0.5, 0.99, step, 2)]}
    plots.plot_accuracy_vs_sparsity(series, tmp_path / "res.png", reference=0.99, test_size=360)
    fig = drawn["res.png"]
    check_common_rules(fig, interval_range=(0.0, 100.0))
    (ax,) = fig.axes
    lo, hi = ax.get_ylim()
    assert hi - lo >= 6 * 100 * step - 1e-9, "zoomed below a few test images: noise drawn as a trend"
    assert "1 test image = 0.28 %" in texts(fig)


# ---------------------------------------------------------------------------------------------
# plot_subnetwork_accuracy (edge-popup, fig3).
# ---------------------------------------------------------------------------------------------


def case_subnetwork_accuracy(tmp_path, drawn):
    points = [{"sparsity": 0.5, "accuracy": 0.99, "series": "s"}, {"sparsity": 0.5, "accuracy": 0.90, "series": "s"},
              {"sparsity": 0.7, "accuracy": None, "series": "s"},  # not measured
              {"sparsity": 0.9, "accuracy": 0.60, "series": "s"}]  # one seed: no interval
    plots.plot_subnetwork_accuracy(points, tmp_path / "ep.png", reference=[0.995, 0.90], fraction_line=0.97)
    fig = drawn["ep.png"]
    check_common_rules(fig, interval_range=(0.0, 100.0))
    ax = fig.axes[0]
    mean = line(ax, "s (mean ± 1 std of 1-2 per point)")
    assert [x for x, _ in xy(mean)] == [0.5, 0.9]  # 0.7 (None) left out
    bars = intervals(ax)
    assert [b[0] for b in bars] == [0.5] and bars[0][2] <= 100.0  # n = 2 only, clipped
    ref = [y for y, label in hlines(ax) if label.startswith("dense trained")]
    assert ref == [pytest.approx(100 * (0.995 + 0.90) / 2)]
    for patch in ax.patches:  # the reference's ±1 std band stops at 100 %
        ys = [v[1] for v in patch.get_patch_transform().transform(patch.get_path().vertices)] \
            if hasattr(patch, "get_height") else [v[1] for v in patch.get_xy()]
        assert 0.0 <= min(ys) and max(ys) <= 100.0 + 1e-9
    lo, hi = ax.get_xlim()  # the sparsities drawn fill the axis, not a corner of [0, 1]
    assert (0.9 - 0.5) / (hi - lo) > 0.6


# ---------------------------------------------------------------------------------------------
# Flips: per timestep, and the summary.
# ---------------------------------------------------------------------------------------------


def _flip_row(layer, t, bound, cond, mode="local"):
    return types.SimpleNamespace(mode=mode, layer=layer, t=t, eps=0.1, bound=bound, bound_refined=min(bound, 0.3),
                                 crisis_empirical=0.01, cond_flip_rate=cond, flip_rate=0.02)


def case_flips(tmp_path, drawn):
    rows = [_flip_row("l1", 1, 0.2, 0.01), _flip_row("l1", 2, 0.4, None),  # no neuron met the premise at t=2
            _flip_row("l1", 3, 0.5, 0.02),
            _flip_row("l2", 1, 3.0, 0.05), _flip_row("l2", 2, 7.0, 0.06)]  # bounds >= 1: vacuous
    plots.plot_flips(rows, tmp_path / "flips.png", "t")
    fig = drawn["flips.png"]
    check_common_rules(fig)
    l1, l2 = fig.axes
    # t=2 undefined: not drawn, and no line bridges it (t=3 is a separate piece)
    assert [t for t, _ in xy(line(l1, "flip rate | no earlier flip"))] == [1]
    pieces = [[t for t, _ in xy(ln)] for ln in data_lines(l1) if ln.get_color() == line(l1, "flip rate | no earlier "
                                                                                                 "flip").get_color()]
    assert sorted(pieces) == [[1], [3]]
    assert [t for t, _ in xy(line(l2, "flip rate | no earlier flip"))] == [1, 2]
    assert "vacuous" in " ".join(t.get_text() for t in l2.texts)
    assert "vacuous" not in " ".join(t.get_text() for t in l1.texts)  # bounds < 1 are not called vacuous
    assert "vacuous" in l1.get_ylabel()
    assert not any("probability" in label and "bound" in label for label in legend_labels(l1))


def case_flip_summary(tmp_path, drawn):
    summary = [{"mode": "local", "layer": "l1", "perturbation": "prune-0.5-magnitude", "eps": 0.1,
                "max_cond_flip_rate": 0.01, "max_bound": 0.5},
               {"mode": "local", "layer": "l2", "perturbation": "prune-0.5-magnitude", "eps": 0.1,
                "max_cond_flip_rate": None, "max_bound": 4.0},  # undefined rate; vacuous bound
               {"mode": "local", "layer": "l1", "perturbation": "noise-0.1", "eps": 0.0,  # unchanged: left out
                "max_cond_flip_rate": 0.0, "max_bound": 0.0}]
    plots.plot_flip_summary(summary, tmp_path / "summary.png")
    fig = drawn["summary.png"]
    check_common_rules(fig)
    (ax,) = fig.axes
    pts = scatter_points(ax)
    dots = [p for p in pts if p[1] != pytest.approx(0.5) and p[1] != pytest.approx(4.0)]
    assert dots == [(pytest.approx(0.0), pytest.approx(0.01))]  # l2's undefined rate has no dot
    assert sorted(y for _, y in pts if (_, y) not in dots) == [0.5, 4.0]
    assert legend_labels(ax) == ["prune-0.5-magnitude"]  # the eps = 0 perturbation is not drawn
    assert "vacuous" in ax.get_ylabel()


# ---------------------------------------------------------------------------------------------
# SLTH, validity, QP-SNN.
# ---------------------------------------------------------------------------------------------


def _slth(equality: bool, k_proof):
    rows = [{"k": k, "success_rate": s, "success_exact": s, "success_bound": b,
             "output_equal_rate": e if equality else None, "all_equal_rate": e * 0.9 if equality else None,
             "theorem_delta": 1 - d, "theorem_1_minus_delta": max(0.0, d)}
            for k, s, b, e, d in ((4, 0.0, 0.0, 0.3, -0.5), (16, 0.5, 0.0, 0.6, 0.0), (64, 1.0, 0.7, 1.0, 0.8))]
    return {"config": {"trials": 3, "N": 2, "L": 1, "T": 2, "eps": 0.1, "u_th": 0.2, "beta": 0.5},
            "rows": rows, "bounds": {"delta": 0.1, "C": 1.0, "k_construction": 32, "k_proof": k_proof,
                                     "k_paper": None if k_proof is None else 4 * k_proof}}


def case_slth(tmp_path, drawn):
    plots.plot_slth(_slth(True, None), tmp_path / "slth.png")
    fig = drawn["slth.png"]
    check_common_rules(fig)
    a1, a2 = fig.axes
    assert [k for k, _ in xy(line(a2, "Thm 4.3: 1 - δ(k)"))] == [64]  # δ(k) >= 1 at k = 4, 16: not drawn
    assert [k for k, _ in xy(line(a1, "1 - L N² exp(-(k/N) C_th ε/N)"))] == [64]  # the union bound <= 0: not drawn
    assert [x for x, _ in vlines(a1)] == [32]  # k_proof / k_paper undefined: no line
    notes = " ".join(legend_labels(a1) + legend_labels(a2))
    assert "width undefined" in notes and "union bound not drawn" in notes and "guarantees nothing (δ(k) >= 1) at k <= 16" in notes
    # without equality trials: no output-equality curve at all, not zeros
    plots.plot_slth(_slth(False, 16), tmp_path / "slth2.png")
    fig = drawn["slth2.png"]
    check_common_rules(fig)
    a1, a2 = fig.axes
    assert [ln.get_label() for ln in data_lines(a2) if len(ln.get_xdata())] == ["Thm 4.3: 1 - δ(k)"]
    assert line(a2, "Thm 4.3: 1 - δ(k)").get_marker() not in (None, "None", "")  # one point: marked, not invisible
    assert sorted(x for x, _ in vlines(a1)) == [16, 32, 64]
    assert "undefined" not in " ".join(legend_labels(a1))


def case_validity(tmp_path, drawn):
    rows = [types.SimpleNamespace(layer="l1.weight", criterion=c, group=g, flip_rate=0.1 * g)
            for c in ("sf", "magnitude") for g in range(3)]
    summary = [{"layer": "l1.weight", "criterion": "sf", "spearman": 1.0},
               {"layer": "l1.weight", "criterion": "magnitude", "spearman": None}]
    plots.plot_validity(rows, summary, tmp_path / "validity.png")
    fig = drawn["validity.png"]
    check_common_rules(fig)
    (ax,) = fig.axes
    assert legend_labels(ax) == ["sf (rho +1.00)", "magnitude (rho n/a)"]


def case_qpsnn(tmp_path, drawn):
    cells = [{"cell": "b4-mean-s50", "size_bytes": 4096, "test_accuracy": 0.88, "dense_test_accuracy": 0.91,
              "scale": "mean", "utilisation_total": {"effective_utilisation": 0.5}},
             {"cell": "fp32", "size_bytes": 65536, "test_accuracy": 0.91, "dense_test_accuracy": 0.91,
              "scale": None, "utilisation_total": None},  # no levels: utilisation undefined
             {"cell": "b2-max", "size_bytes": 2048, "test_accuracy": None, "dense_test_accuracy": 0.91,
              "scale": "max", "utilisation_total": {"effective_utilisation": 0.2}}]
    plots.plot_qpsnn(cells, tmp_path / "qpsnn.png")
    fig = drawn["qpsnn.png"]
    check_common_rules(fig)
    acc, util = fig.axes
    assert [y for y, _ in hlines(acc)] == [pytest.approx(91.0)]
    assert sorted(x for x, _ in scatter_points(acc)) == [4.0, 64.0]  # no accuracy: no point
    bars = [p for c in util.containers for p in c]  # barh's rectangles (not the 14-32 % span)
    assert sorted((round(p.get_y() + p.get_height() / 2), p.get_width()) for p in bars) == \
        [(0, pytest.approx(50.0)), (2, pytest.approx(20.0))]  # row 1 (fp32, not measured) has no bar, not a 0
    assert all(0.0 < p.get_width() <= 100.0 for p in bars)
    assert "n/a" in texts(fig)


CASES = {
    "plot_accuracy_vs_sparsity": [case_accuracy_vs_sparsity, case_accuracy_vs_sparsity_resolution],
    "plot_subnetwork_accuracy": [case_subnetwork_accuracy],
    "plot_flips": [case_flips],
    "plot_flip_summary": [case_flip_summary],
    "plot_slth": [case_slth],
    "plot_validity": [case_validity],
    "plot_qpsnn": [case_qpsnn],
}


def test_every_public_plot_function_has_a_case():
    assert PUBLIC == sorted(plots.__all__), "plots.__all__ and the module's public functions differ"
    assert sorted(CASES) == PUBLIC, f"plot functions without a rule test: {sorted(set(PUBLIC) - set(CASES))}"


@pytest.mark.parametrize("case", [c for cs in CASES.values() for c in cs], ids=lambda c: c.__name__)
def test_plot_obeys_the_rules(case, tmp_path, drawn):
    case(tmp_path, drawn)
    assert drawn, "the plot wrote no figure"
    for name in drawn:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
