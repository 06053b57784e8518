"""Tables and plots rebuilt from result files (the end of the data flow: nothing here trains or prunes).

* :func:`read_results` reads a ``results.json`` (a lottery run, or any file shaped like it);
* :func:`summarize` turns several runs of one method (seeds) into per-level mean, standard
  deviation and 95 % confidence interval (Student t, n - 1 degrees of freedom);
* :func:`format_table` prints methods side by side as a Markdown table;
* :func:`plot_subnetwork_accuracy` draws single-shot subnetworks (edge-popup, Fig. 3 of LTH-SNN)
  against a dense trained reference on a linear sparsity axis;
* :func:`plot_accuracy_vs_sparsity` draws every series of a comparison on one figure, accuracy
  against density on a log axis (the lottery-ticket convention: each halving of the weights is one
  step), with error bars when the points carry a ``<metric>_ci``.

A *point* is a mapping with ``sparsity`` or ``density`` (floats in [0, 1]) and the metric
(``test_accuracy`` by default, a fraction in [0, 1]); a *series* is a list of points.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spikeprune.core.diagnostics import UserError
from spikeprune.core.io import atomic_path, read_json

__all__ = ["format_table", "plot_accuracy_vs_sparsity", "plot_subnetwork_accuracy", "read_results", "summarize"]


def read_results(path: str | Path) -> dict[str, Any]:
    """``results.json`` of a run (``path`` may be the file or its directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise UserError(f"no results file at {p}")
    data = read_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("rounds"), list):
        raise UserError(f"{p} is not a results file (no 'rounds' list)")
    return data


def _density(point: Mapping[str, Any]) -> float:
    if "density" in point:
        return float(point["density"])
    if "sparsity" in point:
        return 1.0 - float(point["sparsity"])
    raise UserError(f"a point needs 'density' or 'sparsity'; got keys {sorted(point)}")


def _t_quantile(dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def summarize(runs: Sequence[Sequence[Mapping[str, Any]]], metrics: Sequence[str] = ("test_accuracy",),
              key: str = "round", require_all: bool = True) -> list[dict[str, Any]]:
    """Aggregate runs (e.g. seeds) point by point.

    Args:
        runs: one list of points per run; points are matched by ``key`` (default: the round index).
        metrics: the values to aggregate.
        require_all: keep only ``key`` values present in every run; ``False`` aggregates each value
            over the runs that have it (partial studies; ``n`` says how many).

    Returns:
        one point per ``key`` value, with ``density``/``sparsity`` (mean over runs), and per metric
        ``<m>`` (mean), ``<m>_std`` (sample std), ``<m>_ci`` (half-width of the 95 % confidence
        interval of the mean, t-distribution; 0 for a single run) and ``n``.
    """
    if not runs:
        return []
    by_key = [{p[key]: p for p in run} for run in runs]
    if require_all:
        keys = [k for k in by_key[0] if all(k in other for other in by_key[1:])]
    else:
        keys = sorted({k for run in by_key for k in run})
    out = []
    for k in keys:
        points = [run[k] for run in by_key if k in run]
        n = len(points)
        density = sum(_density(p) for p in points) / n
        row: dict[str, Any] = {key: k, "density": density, "sparsity": 1.0 - density, "n": n}
        for m in metrics:
            values = [float(p[m]) for p in points if p.get(m) is not None]  # None: not measured (val_fraction 0)
            if not values:
                row[m] = row[f"{m}_std"] = row[f"{m}_ci"] = None
                continue
            nm = len(values)
            mean = sum(values) / nm
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (nm - 1)) if nm > 1 else 0.0
            row[m] = mean
            row[f"{m}_std"] = std
            row[f"{m}_ci"] = _t_quantile(nm - 1) * std / math.sqrt(nm) if nm > 1 else 0.0
        out.append(row)
    return out


def format_table(series: Mapping[str, Sequence[Mapping[str, Any]]], metric: str = "test_accuracy",
                 percent: bool = True) -> str:
    """Markdown table: one row per sparsity level, one column per series (``mean ± ci`` when known).

    Series are aligned by position (round k of every series shares row k), and the sparsity column
    shows the first series' value.
    """
    names = list(series)
    if not names:
        return ""
    scale = 100.0 if percent else 1.0
    depth = max(len(s) for s in series.values())
    lines = ["| sparsity | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for i in range(depth):
        first = next(s[i] for s in series.values() if i < len(s))
        cells = []
        for name in names:
            s = series[name]
            if i >= len(s):
                cells.append("")
                continue
            value = f"{scale * float(s[i][metric]):.2f}"
            if f"{metric}_ci" in s[i] and s[i].get("n", 1) > 1:
                value += f" ± {scale * float(s[i][f'{metric}_ci']):.2f}"
            cells.append(value)
        lines.append(f"| {100 * (1 - _density(first)):.1f} % | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_sparsity(series: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *,
                              metric: str = "test_accuracy", title: str | None = None,
                              reference: float | None = None, reference_label: str = "dense",
                              ylabel: str | None = None) -> Path:
    """Every series on one figure: ``metric`` (in %) against density on a log axis, written as PNG.

    Args:
        series: ``{label: [point, ...]}``; a point's ``<metric>_ci`` becomes an error bar.
        path: the PNG to write (atomically).
        reference: a horizontal line (e.g. the dense accuracy), a fraction in [0, 1].
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=120)
    densities: set[float] = set()
    markers = "osD^vP*Xh<>"
    for i, (label, points) in enumerate(series.items()):
        pts = sorted(points, key=_density, reverse=True)
        if not pts:
            continue
        x = [100 * max(_density(p), 1e-6) for p in pts]
        y = [100 * float(p[metric]) for p in pts]
        err = [100 * float(p.get(f"{metric}_ci", 0.0)) for p in pts]
        densities.update(round(v, 6) for v in x)
        ax.errorbar(x, y, yerr=err if any(err) else None, label=label, marker=markers[i % len(markers)],
                    markersize=4, linewidth=1.4, capsize=2.5)
    if reference is not None:
        ax.axhline(100 * reference, color="0.4", linestyle="--", linewidth=1, label=reference_label)
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
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[float, list[float]]] = {}
    for p in points:
        s = float(p["sparsity"])
        if not 0.0 <= s <= 1.0:
            raise UserError(f"sparsity must be in [0, 1]; got {s!r}")
        series.setdefault(str(p.get("series", label)), {}).setdefault(s, []).append(100.0 * float(p["accuracy"]))
    refs = reference if isinstance(reference, Mapping) else ({reference_label: reference} if reference else {})

    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, by_s) in enumerate(series.items()):
        xs = sorted(by_s)
        stats = [_mean_std(by_s[x]) for x in xs]
        color = colors[i % len(colors)]
        n = max(len(v) for v in by_s.values())
        lo = min(len(v) for v in by_s.values())
        seeds = "" if n == 1 else f" (mean of {n})" if lo == n else f" (mean of {lo}-{n} per point)"
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats] if n > 1 else None, color=color,
                    marker="o", linestyle="-", capsize=3, label=name + seeds)
        if n > 1:
            for x in xs:
                ax.plot([x] * len(by_s[x]), by_s[x], ".", color=color, alpha=0.35)
    for j, (name, values) in enumerate(refs.items()):
        if not values:
            continue
        m, s = _mean_std([100.0 * float(v) for v in values])
        color = colors[(len(series) + j) % len(colors)] if len(refs) > 1 else "black"
        ax.axhline(m, color=color, linestyle="--",
                   label=f"{name} ({m:.2f}%" + (f" ± {s:.2f}, n={len(values)})" if len(values) > 1 else ")"))
        if s > 0:
            ax.axhspan(m - s, m + s, color=color, alpha=0.1)
        if fraction_line is not None and j == 0:
            ax.axhline(fraction_line * m, color=color, linestyle=":",
                       label=f"{100 * fraction_line:g} % of {name} ({fraction_line * m:.2f}%)")
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(-0.02, 1.02)
    top = ax.secondary_xaxis("top", functions=(lambda x: 1 - x, lambda d: 1 - d))
    top.set_xlabel("density (fraction kept)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    # below the axes: the curves of a Fig.-3 plot sit low and the dense lines high, any inside corner hides one
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
