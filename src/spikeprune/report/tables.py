"""Tables and plots rebuilt from result files (the end of the data flow: nothing here trains or prunes).

* :func:`read_results` reads a ``results.json`` (a lottery run, or any file shaped like it);
* :func:`summarize` turns several runs of one method (seeds) into per-level mean, standard
  deviation and 95 % confidence interval (Student t, n - 1 degrees of freedom);
* :func:`format_table` prints methods side by side as a Markdown table;
* :func:`format_edgepopup_table` / :func:`format_slth_table`: the console tables of an edge-popup
  ``results.json`` and of a ``theory slth`` result (``slth.json``);
* the plots of these results are :mod:`spikeprune.report.plots`.

A *point* is a mapping with ``sparsity`` or ``density`` (floats in [0, 1]) and the metric
(``test_accuracy`` by default, a fraction in [0, 1]); a *series* is a list of points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spikeprune.core.diagnostics import UserError
from spikeprune.core.io import read_json

__all__ = ["format_edgepopup_table", "format_slth_table", "format_table", "read_results", "summarize"]


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


def format_edgepopup_table(summary: Mapping[str, Any]) -> str:
    """An edge-popup sweep's ``results.json`` (``summary["rows"]``) as the console table of
    ``spikeprune edgepopup``: density, sparsity, test accuracy, the exported subnetwork's accuracy, and the
    accuracy relative to the dense reference ("-" without one)."""
    lines = [f"{'density':>8} {'sparsity':>8} {'accuracy':>9} {'exported':>9} {'vs dense':>9}"]
    for r in summary["rows"]:
        rel = f"{100 * r['relative_to_dense']:8.1f}%" if r["relative_to_dense"] is not None else f"{'-':>9}"
        lines.append(f"{r['density']:8.3g} {r['sparsity']:8.3g} {r['test_accuracy']:9.4f} "
                     f"{r['exported_test_accuracy']:9.4f} {rel}")
    return "\n".join(lines) + "\n"


def format_slth_table(result: Mapping[str, Any]) -> str:
    """A ``theory slth`` result (``slth.json``) as its console table: per width k the measured success
    rate, the exact and union-bound success probabilities, the output-equality rate ("-" when no
    equality trials ran) and Theorem 4.3's ``1 - delta(k)``."""
    lines = [f"{'k':>10} {'success':>8} {'exact':>8} {'bound':>8} {'out=':>8} {'1-delta':>8}"]
    for r in result["rows"]:
        eq = "-" if r["output_equal_rate"] is None else f"{r['output_equal_rate']:.3f}"
        lines.append(f"{r['k']:>10} {r['success_rate']:>8.3f} {r['success_exact']:>8.3f} {r['success_bound']:>8.3f} "
                     f"{eq:>8} {r['theorem_1_minus_delta']:>8.3f}")
    return "\n".join(lines) + "\n"
