"""Every plot the package draws, on :class:`matplotlib.figure.Figure` objects.

Nothing here imports :mod:`matplotlib.pyplot` or sets a backend, and matplotlib itself is imported only
when a plot is drawn (``import spikeprune`` stays light), so drawing a report inside a notebook or a
GUI session leaves the user's backend as it was (a Figure needs no backend to render a PNG). The
functions take plain result rows (files' contents, or the row objects of the science modules, duck-typed)
and never compute science themselves: summaries are computed by the caller's module and passed in.
Every PNG is written atomically (:func:`~spikeprune.core.io.atomic_path`).
"""

from __future__ import annotations

import math
import re
import statistics
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spikeprune.core.diagnostics import UserError
from spikeprune.core.io import atomic_path
from spikeprune.report.tables import _density

__all__ = ["plot_accuracy_vs_sparsity", "plot_flip_summary", "plot_flips", "plot_qpsnn", "plot_slth",
           "plot_subnetwork_accuracy", "plot_validity"]


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
              dpi: float | None = None, layout: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` without pyplot: a detached Figure (no backend, no global figure registry)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _save(fig: Any, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``fig`` as PNG, atomically: the one place every plot is written (tests capture it here)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **({} if dpi is None else {"dpi": dpi}))
    return path


def _clipped(y: Sequence[float], err: Sequence[float], lo: float = 0.0, hi: float = 100.0) -> list[list[float]]:
    """Asymmetric error bars ``[below, above]`` that stop at the possible range (an accuracy's CI past
    100 % says nothing the reader can use)."""
    return [[min(e, max(v - lo, 0.0)) for v, e in zip(y, err)], [min(e, max(hi - v, 0.0)) for v, e in zip(y, err)]]


def _defined(value: Any) -> bool:
    """A number that was measured: not None (not measured, e.g. no validation split; no neuron met a
    premise) and not NaN. Undefined values are left out of a plot, never drawn as 0 or as a floor."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _intervals(ax: Any, x: Sequence[float], y: Sequence[float], err: Sequence[float], n: Sequence[int],
               color: Any, capsize: float) -> None:
    """Error bars at the points that aggregate n >= 2 runs only (a single run has no interval, not a
    zero-length one), clipped to [0, 100] %."""
    keep = [i for i in range(len(x)) if n[i] >= 2 and err[i] > 0]
    if keep:
        ys = [y[i] for i in keep]
        ax.errorbar([x[i] for i in keep], ys, yerr=_clipped(ys, [err[i] for i in keep]), fmt="none",
                    ecolor=color, capsize=capsize, linewidth=1.0)


def plot_accuracy_vs_sparsity(series: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *,
                              metric: str = "test_accuracy", title: str | None = None,
                              reference: float | None = None, reference_label: str = "dense",
                              ylabel: str | None = None, test_size: int | None = None) -> Path:
    """Every series on one figure: ``metric`` (in %) against density on a log axis, written as PNG.

    Args:
        series: ``{label: [point, ...]}``; a point's ``<metric>_ci`` becomes an error bar, clipped to
            [0, 100] %, and only where the point aggregates n >= 2 runs (``n``; a single run has none).
        path: the PNG to write (atomically).
        reference: a horizontal line (e.g. the dense accuracy), a fraction in [0, 1].
        test_size: images in the test set: one image is 100/test_size %, the resolution of every
            accuracy; the axis never zooms below a few images, so noise of one image is not drawn as a trend.

    Series that coincide are drawn side by side (a small horizontal offset), not on top of each other.
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = _subplots(figsize=(7.5, 4.6), dpi=120)
    densities: set[float] = set()
    markers = "osD^vP*Xh<>"
    # points whose metric was not measured (None, e.g. val_accuracy without a validation split) are left out
    drawn = [(label, sorted((p for p in points if _defined(p.get(metric))), key=_density, reverse=True))
             for label, points in series.items()]
    drawn = [(label, pts) for label, pts in drawn if pts]
    ys: list[float] = []
    for i, (label, pts) in enumerate(drawn):
        # a multiplicative offset on the log axis, +-1.5 % per series around the true density
        dodge = 1.0 + 0.015 * (i - (len(drawn) - 1) / 2) if len(drawn) > 1 else 1.0
        x = [100 * max(_density(p), 1e-6) for p in pts]
        y = [100 * float(p[metric]) for p in pts]
        n = [int(p.get("n", 2)) for p in pts]  # a point with a CI and no n is an aggregate (summarize sets n)
        err = [100 * float(p.get(f"{metric}_ci") or 0.0) for p in pts]
        densities.update(round(v, 6) for v in x)
        (line,) = ax.plot([v * dodge for v in x], y, label=label, marker=markers[i % len(markers)], markersize=4,
                          linewidth=1.4)
        _intervals(ax, [v * dodge for v in x], y, err, n, line.get_color(), 2.5)
        clipped = _clipped(y, [e if k >= 2 else 0.0 for e, k in zip(err, n)])
        ys += [v - b for v, b in zip(y, clipped[0])] + [v + a for v, a in zip(y, clipped[1])]
    if reference is not None:
        ax.axhline(100 * reference, color="0.4", linestyle="--", linewidth=1, label=reference_label)
        ys.append(100 * reference)
    if test_size and ys:
        step = 100.0 / test_size
        lo, hi = min(ys), max(ys)
        if hi - lo < 6 * step:  # differences of a few images: show them at their true scale
            mid = (hi + lo) / 2
            ax.set_ylim(max(0.0, mid - 4 * step), min(100.0, mid + 4 * step))
        ax.text(0.01, 0.01, f"1 test image = {step:.2g} %", transform=ax.transAxes, fontsize=7, color="0.35")
    ax.set_xscale("log")
    ax.invert_xaxis()  # from dense (left) to sparse (right)
    if densities:
        ticks = sorted(densities, reverse=True)
        # at most ~8 labelled ticks, always including the densest and the sparsest level
        step = max(1, math.ceil(len(ticks) / 8))
        shown = sorted(set(ticks[::step]) | {ticks[-1]}, reverse=True)
        ax.xaxis.set_major_locator(FixedLocator(shown))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{d:.3g}%\n({100 - d:.3g}%)" for d in shown], fontsize=8)
    ax.set_xlabel("weights remaining (density, log scale); sparsity in parentheses")
    ax.set_ylabel(ylabel or ("test accuracy (%)" if metric == "test_accuracy" else metric))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_subnetwork_accuracy(
    points: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    reference: Sequence[float] | Mapping[str, Sequence[float]] = (),
    title: str = "",
    label: str = "subnetwork",
    reference_label: str = "dense trained",
    fraction_line: float | None = None,
) -> None:
    """Accuracy vs sparsity on a linear axis, like LTH-SNN Fig. 3 (edge-popup densities): solid lines = subnetworks, dashed = dense reference.

    Args:
        points: rows with ``sparsity`` (fraction removed, in [0, 1]) and ``accuracy`` (in [0, 1]);
            an optional ``series`` key draws one curve per value (default: one curve named ``label``).
            Several rows at one sparsity (seeds) are drawn as their mean with a ±1 std error bar and
            the individual values as faint dots.
        path: the PNG to write (atomically).
        reference: test accuracies of the dense *trained* network (one per seed): a dashed
            horizontal line at their mean with a ±1 std band; a mapping draws one line per key.
        title: figure title.
        label: legend entry of the curve when ``points`` carry no ``series``.
        reference_label: legend entry of the dashed line.
        fraction_line: also draw a dotted line at this fraction of the (first) reference mean,
            e.g. 0.97 for "97 % of the dense trained accuracy".
    """
    series: dict[str, dict[float, list[float]]] = {}
    for p in points:
        s = float(p["sparsity"])
        if not 0.0 <= s <= 1.0:
            raise UserError(f"sparsity must be in [0, 1]; got {s!r}")
        if _defined(p.get("accuracy")):  # a search that measured nothing is left out, not drawn as 0
            series.setdefault(str(p.get("series", label)), {}).setdefault(s, []).append(100.0 * float(p["accuracy"]))
    refs = reference if isinstance(reference, Mapping) else ({reference_label: reference} if reference else {})

    fig, ax = _subplots(figsize=(6.4, 5.6), dpi=120)
    import matplotlib

    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, by_s) in enumerate(series.items()):
        xs = sorted(by_s)
        stats = [_mean_std(by_s[x]) for x in xs]
        color = colors[i % len(colors)]
        n = max(len(v) for v in by_s.values())
        lo = min(len(v) for v in by_s.values())
        seeds = "" if n == 1 else f" (mean ± 1 std of {n})" if lo == n else f" (mean ± 1 std of {lo}-{n} per point)"
        means = [m for m, _ in stats]
        ax.plot(xs, means, color=color, marker="o", linestyle="-", label=name + seeds)
        _intervals(ax, xs, means, [s for _, s in stats], [len(by_s[x]) for x in xs], color, 3)
        for x in xs:
            if len(by_s[x]) > 1:
                ax.plot([x] * len(by_s[x]), by_s[x], ".", color=color, alpha=0.35)
    for j, (name, values) in enumerate(refs.items()):
        if not values:
            continue
        m, s = _mean_std([100.0 * float(v) for v in values])
        color = colors[(len(series) + j) % len(colors)] if len(refs) > 1 else "black"
        ax.axhline(m, color=color, linestyle="--",
                   label=f"{name} ({m:.2f}%" + (f" ± {s:.2f}, n={len(values)})" if len(values) > 1 else ")"))
        if s > 0:
            ax.axhspan(max(0.0, m - s), min(100.0, m + s), color=color, alpha=0.1)
        if fraction_line is not None and j == 0:
            ax.axhline(fraction_line * m, color=color, linestyle=":",
                       label=f"{100 * fraction_line:g} % of {name} ({fraction_line * m:.2f}%)")
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_ylabel("test accuracy (%)")
    # the range of the sparsities drawn (a sweep over 0.5-0.9 would otherwise sit in one corner)
    every = [x for by_s in series.values() for x in by_s]
    if every:
        pad = max(0.03, 0.08 * (max(every) - min(every)))
        ax.set_xlim(max(-0.02, min(every) - pad), min(1.02, max(every) + pad))
    top = ax.secondary_xaxis("top", functions=(lambda x: 1 - x, lambda d: 1 - d))
    top.set_xlabel("density (fraction kept)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    # below the axes: the curves of a Fig.-3 plot sit low and the dense lines high, any inside corner hides one
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def plot_flips(rows: Sequence[Any], path: str | Path, title: str = "", *,
               modes: Sequence[str] = ("local", "end_to_end")) -> None:
    """PNG: per layer (columns) and mode (rows), the measured conditional flip rate, the first-flip
    crisis probability and the bound against the timestep, on a log scale. ``rows``: the
    :class:`~spikeprune.theory.flips.FlipRow` of one perturbation; ``modes``: their order."""
    modes = [m for m in modes if any(r.mode == m for r in rows)]
    layers = list(dict.fromkeys(r.layer for r in rows))
    if not rows:
        raise UserError("no flip rows to plot")
    fig, axes = _subplots(len(modes), len(layers), figsize=(3.2 * len(layers), 2.8 * len(modes)),
                             squeeze=False, sharey=True)
    floor = 1e-7
    for mi, mode in enumerate(modes):
        for li, layer in enumerate(layers):
            ax = axes[mi][li]
            rs = sorted((r for r in rows if r.mode == mode and r.layer == layer), key=lambda r: r.t)
            t = [r.t for r in rs]
            for attr, style, marker, name in (
                    ("bound", "k-", "s", "bound (L3.3 / L3.4)"), ("bound_refined", "C1-.", "d", "refined bound"),
                    ("crisis_empirical", "C2--", "^", "crisis prob. P(|u-u_th|<=r_t)"),
                    ("cond_flip_rate", "C3-", "o", "flip rate | no earlier flip"),
                    ("flip_rate", "C0:", ".", "all flips")):
                # a rate that is undefined at t (no neuron met the premise: None) is not drawn, and the line
                # breaks there rather than bridging it; a measured 0 sits at the floor of the log axis
                runs: list[list[tuple[int, float]]] = [[]]
                for r in rs:
                    if _defined(getattr(r, attr)):
                        runs[-1].append((r.t, max(float(getattr(r, attr)), floor)))
                    elif runs[-1]:
                        runs.append([])
                for j, run in enumerate(x for x in runs if x):  # every style names its colour: pieces match
                    ax.plot([a for a, _ in run], [b for _, b in run], style, marker=marker,
                            label=name if j == 0 else "_nolegend_")
                if not any(runs):  # nothing defined: keep the legend entry, draw nothing
                    ax.plot([], [], style, marker=marker, label=name)
            ax.set_yscale("log")
            ax.set_xticks(t)
            ax.set_title(f"{layer}\n{mode}, eps<={rs[-1].eps:.3g}", fontsize=8)
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            if max(r.bound for r in rs) >= 1.0:  # a bound >= 1 is no statement about a probability
                ax.axhspan(1.0, ax.get_ylim()[1], color="0.9", zorder=0)
                ax.text(0.02, 0.97, "bound >= 1: vacuous", transform=ax.transAxes, fontsize=6, va="top", color="0.3")
            if li == 0:
                ax.set_ylabel("rate (bounds above 1 are vacuous)")
            if mi == len(modes) - 1:
                ax.set_xlabel("timestep t")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save(fig, path, dpi=110)


def plot_flip_summary(summary: Sequence[Mapping[str, Any]], path: str | Path, *,
                      modes: Sequence[str] = ("local", "end_to_end")) -> None:
    """PNG: per mode, for every perturbation, the worst timestep's conditional flip rate (dots) and
    the largest bound (bars) per layer, on a log scale: does the bound hold everywhere, how tight.
    Layers the perturbation did not change (eps = 0, e.g. input noise in local mode) are left out.
    ``summary``: :func:`~spikeprune.theory.flips.flip_summary` of the rows."""
    summary = [s for s in summary if s["eps"] > 0]
    if not summary:
        raise UserError("no flip rows with a non-zero input error to plot")
    modes = [m for m in modes if any(s["mode"] == m for s in summary)]
    perts = list(dict.fromkeys(s["perturbation"] for s in summary))
    layers = list(dict.fromkeys(s["layer"] for s in summary))
    # One colour family per kind of perturbation (prune-magnitude, prune-sf, quantize, quantize-max,
    # noise, ...), darker = stronger, so 16 perturbations stay tellable apart.
    family_of = {pert: re.sub(r"-?[0-9.]+b?(?=-|$)", "", pert) for pert in perts}
    families = list(dict.fromkeys(family_of.values()))
    maps = ["Blues", "Greens", "Reds", "Purples", "Oranges", "Greys", "YlOrBr", "BuGn"]
    members = {f: [q for q in perts if family_of[q] == f] for f in families}

    import matplotlib

    def colour(pert: str):
        f = family_of[pert]
        i, n = members[f].index(pert), len(members[f])
        return matplotlib.colormaps[maps[families.index(f) % len(maps)]](0.45 + 0.5 * (i + 1) / n if n > 1 else 0.8)

    fig, axes = _subplots(1, len(modes), figsize=(1.5 + 2.2 * len(layers) * len(modes), 4.4), squeeze=False,
                             sharey=True)
    floor = 1e-7
    width = 0.8 / max(len(perts), 1)
    for ax, mode in zip(axes[0], modes):
        for pi, pert in enumerate(perts):
            pts = {s["layer"]: s for s in summary if s["mode"] == mode and s["perturbation"] == pert}
            ls = [l for l in layers if l in pts]
            xs = [layers.index(l) + (pi - (len(perts) - 1) / 2) * width for l in ls]
            color = colour(pert)
            # no dot where the rate is undefined (no neuron met the premise at any timestep)
            rate = [(x, max(pts[l]["max_cond_flip_rate"], floor)) for x, l in zip(xs, ls)
                    if _defined(pts[l]["max_cond_flip_rate"])]
            bound = [max(pts[l]["max_bound"], floor) for l in ls]
            ax.scatter([x for x, _ in rate], [r for _, r in rate], color=color, marker="o", s=16, label=pert, zorder=3)
            ax.scatter(xs, bound, color=color, marker="_", s=90, zorder=2)
            of = dict(zip(xs, bound))
            for x, r in rate:
                ax.plot([x, x], [r, of[x]], color=color, lw=0.7, alpha=0.6)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, fontsize=8)
        ax.set_title(f"{mode}: flip rate | no earlier flip (dot) vs bound (bar), worst timestep", fontsize=8)
        ax.grid(True, which="major", axis="y", alpha=0.3)
    axes[0][0].set_ylabel("flip rate; bound (vacuous above the dotted 1)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(perts)), fontsize=7, frameon=False)
    rows_of_legend = -(-len(perts) // 6)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    _save(fig, path, dpi=110)


def plot_slth(result: dict[str, Any], path: str | Path) -> None:
    """PNG: construction success rate vs k (measured, exact, bound; width bounds as lines) and output
    equality vs k against Theorem 4.3's 1 - delta(k)."""
    from matplotlib.ticker import NullFormatter

    cfg, rows, b = result["config"], result["rows"], result["bounds"]
    k = [r["k"] for r in rows]
    fig, (a1, a2) = _subplots(1, 2, figsize=(10, 5.0))

    def curve(ax: Any, key: str, style: str, label: str, *, above: float | None = None, **kw: Any) -> int:
        """Draw ``rows[i][key]`` against k where it is defined (and, for a lower bound clipped at 0, where
        it is > ``above``: a bound of 0 guarantees nothing and is not drawn as a flat 0). Returns the count."""
        pts = [(kk, r[key]) for kk, r in zip(k, rows) if _defined(r.get(key)) and (above is None or r[key] > above)]
        if pts:
            if len(pts) == 1:  # a line through one point is invisible: mark it
                kw = {"marker": ".", **kw}
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=label, **kw)
        return len(pts)

    def note(ax: Any, text: str) -> None:
        """A legend line without a mark (inside the axes a note would cover data)."""
        ax.plot([], [], " ", label=text)

    curve(a1, "success_rate", "C3o-", f"measured ({cfg['trials']} networks)")
    curve(a1, "success_exact", "k--", "exact probability")
    if curve(a1, "success_bound", "C0:", "1 - L N² exp(-(k/N) C_th ε/N)", above=0.0) < len(rows):
        note(a1, "  (union bound not drawn where <= 0: it guarantees nothing)")
    curve(a1, "relu_success_rate", "C2s-", "ReLU, 2 neurons/weight", ms=3)
    for key, style, name in (("k_construction", "C0", "union bound"), ("k_proof", "C1", "Thm 4.3 (proof, N·⌈⌉)"),
                             ("k_paper", "C4", "Thm 4.3 (paper, N²·⌈⌉)")):
        if b.get(key) and b[key] <= 4 * k[-1]:
            a1.axvline(b[key], color=style, lw=1, ls="-.", label=f"k for δ={b['delta']:g}, {name}: {b[key]:.3g}")
    if b.get("k_proof") is None:  # delta <= N C L T eps: no width gives the guarantee (Eq. S.34)
        note(a1, f"Thm 4.3 width undefined: δ={b['delta']:g} <= N C L T ε")
    a1.set_xscale("log")
    a1.set_xlabel("virtual neurons per layer k")
    a1.set_ylabel("P[construction succeeds]")
    a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # below: covers no data
    a1.grid(True, which="both", alpha=0.3)
    curve(a2, "output_equal_rate", "C3o-", "output equal (measured)")  # None: no equality trials ran
    curve(a2, "all_equal_rate", "C1.--", "all layers equal")
    # where delta(k) >= 1 the theorem guarantees nothing: not drawn (a flat 0 would read as "fails surely")
    if curve(a2, "theorem_1_minus_delta", "k--", "Thm 4.3: 1 - δ(k)", above=0.0) < len(rows):
        note(a2, f"Thm 4.3 guarantees nothing (δ(k) >= 1) at k <= "
                 f"{max(kk for kk, r in zip(k, rows) if r['theorem_1_minus_delta'] <= 0):g}: not drawn")
    a2.set_xscale("log")
    a2.set_ylim(-0.03, 1.03)
    a2.set_xlabel("virtual neurons per layer k")
    a2.set_ylabel("P[output equal]")
    a2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # below: covers no data
    a2.grid(True, which="both", alpha=0.3)
    for ax in (a1, a2):
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"SLTH construction: N={cfg['N']}, L={cfg['L']}, T={cfg['T']}, ε={cfg['eps']:g}, "
                 f"u_th={cfg['u_th']:g}, β={cfg['beta']:g}, C={b['C']:.3g}", fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def plot_validity(rows: Sequence[Any], summary: Sequence[Mapping[str, Any]], path: str | Path,
                  title: str = "") -> Path:
    """One panel per layer: measured flip rate against the set's score rank, one line per criterion
    (Spearman rho in the legend). ``rows``: :class:`~spikeprune.theory.validity.ValidityRow`;
    ``summary``: :func:`~spikeprune.theory.validity.validity_summary` of them."""
    rho_of = {(s["layer"], s["criterion"]): s["spearman"] for s in summary}
    layers = list(dict.fromkeys(r.layer for r in rows))
    fig, axes = _subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6), squeeze=False,
                          layout="constrained")
    axes = axes[0]
    for ax, layer in zip(axes, layers):
        for crit in dict.fromkeys(r.criterion for r in rows if r.layer == layer):
            rs = sorted((r for r in rows if (r.layer, r.criterion) == (layer, crit)), key=lambda r: r.group)
            rho = rho_of[(layer, crit)]
            ax.plot([r.group + 1 for r in rs], [r.flip_rate for r in rs], marker="o", ms=3,
                    label=f"{crit} (rho {'n/a' if rho is None else f'{rho:+.2f}'})")
        ax.set_title(layer.removesuffix(".weight"), fontsize=9)
        ax.set_xlabel("removed set, by criterion score (1 = lowest)")
        ax.set_ylabel("layer-local flip rate")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi=120)


def plot_qpsnn(cells: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """QP-SNN study: accuracy against model size (log) per cell, with the dense fp32 line, and each
    cell's effective bit-width utilisation next to QP-SNN's reported 14-32 % for vanilla scaling.
    ``cells``: the study's result rows (``size_bytes``, ``test_accuracy``, ``utilisation_total``, ...)."""
    from matplotlib.ticker import NullFormatter

    fig, axes = _subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for c in cells:
        if c.get("size_bytes") and _defined(c.get("test_accuracy")):
            axes[0].scatter(c["size_bytes"] / 1024, 100 * c["test_accuracy"])
            axes[0].annotate(textwrap.fill(str(c["cell"]), 24), (c["size_bytes"] / 1024, 100 * c["test_accuracy"]),
                             fontsize=6)
    dense_acc = next((c["dense_test_accuracy"] for c in cells if c.get("dense_test_accuracy")), None)
    if dense_acc:
        axes[0].axhline(100 * dense_acc, color="0.4", linestyle="--", label="dense fp32")
        axes[0].legend(fontsize=8)
    axes[0].set_xscale("log")
    axes[0].xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a narrow log range
    axes[0].set_xlabel("model size (KiB, log)")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].grid(alpha=0.3)
    labels = [textwrap.fill(str(c["cell"]), 22) for c in cells]
    eff = [(c.get("utilisation_total") or {}).get("effective_utilisation") for c in cells]
    # a cell whose utilisation was not measured (an fp32 cell has no levels) gets no bar, only "n/a"
    measured = [i for i, e in enumerate(eff) if _defined(e)]
    axes[1].barh(measured, [100 * eff[i] for i in measured],
                 color=["tab:red" if cells[i].get("scale") == "max" else "tab:blue" for i in measured])
    axes[1].set_yticks(range(len(cells)), labels)
    axes[1].set_ylim(-0.6, len(cells) - 0.4)
    for i, e in enumerate(eff):
        if not _defined(e):
            axes[1].text(1, i, "n/a: not recorded for this cell", va="center", fontsize=7, color="0.35")
    axes[1].axvspan(14, 32, color="orange", alpha=0.2, label="QP-SNN: vanilla uses 14-32 %")
    axes[1].set_xlabel("effective bit-width utilisation (%)")
    axes[1].set_title("red: vanilla max|W|, blue: ReScaW mean|W|", fontsize=9)
    axes[1].tick_params(axis="y", labelsize=7)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
