"""Plots rebuilt from result files (the last step of the data flow; nothing here computes a result).

matplotlib runs on the ``Agg`` backend (no display needed) and every PNG is written atomically.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .io import atomic_path

__all__ = ["plot_accuracy_vs_sparsity"]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_accuracy_vs_sparsity(
    points: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    reference: Sequence[float] | Mapping[str, Sequence[float]] = (),
    title: str = "",
    label: str = "subnetwork",
    reference_label: str = "dense trained",
    fraction_line: float | None = None,
) -> None:
    """Accuracy vs sparsity, like LTH-SNN Fig. 3: solid lines = subnetworks, dashed = dense reference.

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
            raise ValueError(f"sparsity must be in [0, 1]; got {s!r}")
        series.setdefault(str(p.get("series", label)), {}).setdefault(s, []).append(100.0 * float(p["accuracy"]))
    refs = reference if isinstance(reference, Mapping) else ({reference_label: reference} if reference else {})

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, by_s) in enumerate(series.items()):
        xs = sorted(by_s)
        stats = [_mean_std(by_s[x]) for x in xs]
        color = colors[i % len(colors)]
        n = max(len(v) for v in by_s.values())
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats] if n > 1 else None, color=color,
                    marker="o", linestyle="-", capsize=3, label=name + (f" (mean of {n})" if n > 1 else ""))
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
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
