"""Tables and plots rebuilt from result files (the end of the data flow: nothing here trains or prunes).

* :func:`read_results` reads a ``results.json`` (a lottery run, or any file shaped like it);
* :func:`summarize` turns several runs of one method (seeds) into per-level mean, standard
  deviation and 95 % confidence interval (Student t, n - 1 degrees of freedom);
* :func:`format_table` prints methods side by side as a Markdown table, with :func:`interval_legend`
  under it (what ``±`` is, over how many runs);
* :func:`format_edgepopup_table` / :func:`format_slth_table` / :func:`format_flip_table`: the console
  tables of an edge-popup ``results.json``, of a ``theory slth`` result (``slth.json``) and of
  ``analyze flips`` (its rows);
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

__all__ = ["FLIP_COLUMNS", "format_edgepopup_table", "format_flip_table", "format_slth_bounds", "format_slth_table",
           "format_table", "flip_verdict", "interval_legend", "interval_phrase", "read_results", "slth_width",
           "summarize"]


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


def _n(point: Mapping[str, Any]) -> int:
    """Runs behind a point: ``n`` of a :func:`summarize` row; a row without ``n`` is one run."""
    return int(point.get("n", 1))


def interval_phrase(runs: int, unit: str = "seeds") -> str:
    """What a plot of ``runs`` aggregated runs shows, for its title: the interval and n, or that there is none."""
    return f"mean ± 95 % CI (Student t) over {runs} {unit}" if runs > 1 else f"one {unit.removesuffix('s')}, so no interval"


def interval_legend(series: Mapping[str, Sequence[Mapping[str, Any]]], metric: str = "test_accuracy",
                    unit: str = "seeds") -> list[str]:
    """The lines printed under a table of :func:`summarize` rows, so that it describes itself: what ``±``
    is (the half-width of the 95 % confidence interval of the mean, Student t with n - 1 degrees of
    freedom), over how many runs (per column when the columns differ), that n = 1 has no interval and
    a warning when n < 3 (with 2 runs the t quantile is 12.7: the interval says almost nothing).

    ``series``: ``{column: [point, ...]}``; ``unit``: what a run is (seeds)."""
    ns = {name: sorted({_n(p) for p in pts if p.get(metric) is not None}) for name, pts in series.items()}
    ns = {name: v for name, v in ns.items() if v}
    if not ns:
        return []
    every = sorted({n for v in ns.values() for n in v})
    if every == [1]:
        return ["each value is one run (n = 1): no confidence interval, so differences between values are "
                "not tested; run more " + unit + " (n >= 3) to compare them"]

    def counts(v: list[int]) -> str:
        return str(v[0]) if len(v) == 1 else f"{v[0]}-{v[-1]}"

    what = "± = half-width of the 95 % confidence interval of the mean (Student t, n - 1 degrees of freedom) over "
    if len(every) == 1:
        lines = [what + f"n = {every[0]} {unit}"]
    else:
        lines = [what + f"n {unit}" + ("; no ± where n = 1" if 1 in every else ""),
                 f"n ({unit}) per column: " + ", ".join(f"{name} {counts(v)}" for name, v in ns.items())
                 + ("; a value with fewer says (n=k)" if any(len(v) > 1 for v in ns.values()) else "")]
    few = [name for name, v in ns.items() if v[0] < 3]
    if few:
        t2 = _t_quantile(1)
        lines.append(f"warning: n < 3 in {', '.join(few)}: an interval from 2 runs (t = {t2:.1f}) or none from 1 "
                     "says little; differences within it are not resolved")
    return lines


def format_table(series: Mapping[str, Sequence[Mapping[str, Any]]], metric: str = "test_accuracy",
                 percent: bool = True) -> str:
    """Markdown table: one row per sparsity level, one column per series (``mean ± ci`` when the point
    aggregates n >= 2 runs), followed by :func:`interval_legend` (what ± is, n, a warning for n < 3).

    Series are aligned by position (round k of every series shares row k), and the sparsity column
    shows the first series' value. A value resting on fewer runs than its column's most says ``(n=k)``.
    """
    names = list(series)
    if not names:
        return ""
    scale = 100.0 if percent else 1.0
    depth = max(len(s) for s in series.values())
    most = {name: max((_n(p) for p in series[name]), default=1) for name in names}
    lines = ["| sparsity | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for i in range(depth):
        first = next(s[i] for s in series.values() if i < len(s))
        cells = []
        for name in names:
            s = series[name]
            if i >= len(s) or s[i].get(metric) is None:  # beyond this series, or not measured
                cells.append("" if i >= len(s) else "–")
                continue
            value = f"{scale * float(s[i][metric]):.2f}"
            if s[i].get(f"{metric}_ci") is not None and _n(s[i]) > 1:
                value += f" ± {scale * float(s[i][f'{metric}_ci']):.2f}"
            if _n(s[i]) < most[name]:
                value += f" (n={_n(s[i])})"
            cells.append(value)
        lines.append(f"| {100 * (1 - _density(first)):.1f} % | " + " | ".join(cells) + " |")
    legend = interval_legend(series, metric)
    # a blank line first: in Markdown a text line right after a table would become one of its rows
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(legend) + "\n" if legend else "")


def flip_verdict(rows: Sequence[Any], unit: str = "timestep") -> tuple[int, str, int, int]:
    """What flip rows (:class:`~spikeprune.theory.flips.FlipRow`, duck-typed) show about Lemma 3.3 / 3.4:
    ``(rank, verdict, informative, perturbed)``. Informative rows have eps > 0 and a bound < 1; a bound
    >= 1 holds for any probability, so "holds" is only said of informative rows (issue 14 / 18). ``rank``
    orders lines: 0 = some informative row, 1 = vacuous (perturbed, but the bound >= 1 everywhere),
    2 = not perturbed (eps = 0). ``unit`` names a row in the verdict (timestep; (layer, timestep))."""
    perturbed = [r for r in rows if r.eps > 0]
    informative = [r for r in perturbed if r.bound < 1]
    if informative:
        bad = sum(1 for r in informative if r.holds is False)
        n = len(informative)
        verdict = (f"VIOLATED at {bad} of {n} informative {unit}s" if bad else
                   f"holds at the {n} informative {unit}{'s' if n > 1 else ''}")
        return 0, verdict, n, len(perturbed)
    if perturbed:
        return 1, "vacuous (bound >= 1)", 0, len(perturbed)
    return 2, "not perturbed (eps = 0)", 0, 0


FLIP_COLUMNS = (
    ("max eps", "largest input-feature error eps over the timesteps (what Lemma 3.3 / 3.4 take as given)"),
    ("max rate", "largest flip rate of the neurons with no earlier flip (the lemmas' premise); - when no neuron "
                 "met it"),
    ("max bound", "largest bound on that rate (Lemma 3.3 at t = 1, 3.4 at t > 1); a bound >= 1 says nothing"),
    ("tightness", "largest measured rate / bound at the informative timesteps (1 = the bound is attained)"),
    ("informative", "timesteps where the bound is < 1, of those with eps > 0"),
    ("verdict", "holds / VIOLATED at the informative timesteps; vacuous where the bound is >= 1 at every "
                "timestep (it holds for any probability, so it is no evidence)"),
)


def format_flip_table(rows: Sequence[Any]) -> str:
    """The console table of ``spikeprune analyze flips``: one line per (perturbation, mode, layer), worst
    timestep, the informative ones (bound < 1 at some timestep with eps > 0) first; the vacuous ones
    (bound >= 1 everywhere) after them, marked so; then the count of informative rows and a legend of the
    columns (:data:`FLIP_COLUMNS`). Issue 14 / 18: a bound >= 1 holds for any probability, so "holds"
    is only claimed where the bound is < 1.

    ``rows``: :class:`~spikeprune.theory.flips.FlipRow` (duck-typed: ``perturbation``, ``mode``, ``layer``,
    ``eps``, ``cond_flip_rate``, ``bound``, ``holds``, ``tightness``)."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for r in rows:
        groups.setdefault((r.perturbation, r.mode, r.layer), []).append(r)
    lines_of: list[tuple[int, list[str]]] = []
    for (pert, mode, layer), rs in groups.items():
        rank, verdict, informative, perturbed = flip_verdict(rs)
        conds = [r.cond_flip_rate for r in rs if r.cond_flip_rate is not None]
        tight = [r.tightness for r in rs if r.eps > 0 and r.bound < 1 and r.tightness is not None]
        lines_of.append((rank, [pert, mode, layer, f"{max(r.eps for r in rs):.3g}",
                                f"{max(conds):.2e}" if conds else "-", f"{max(r.bound for r in rs):.3g}",
                                f"{max(tight):.3g}" if tight else "-", f"{informative}/{perturbed}", verdict]))
    lines_of.sort(key=lambda x: x[0])  # stable: the study's order within each kind
    header = ["perturbation", "mode", "layer", *(name for name, _ in FLIP_COLUMNS)]
    table = [header] + [cells for _, cells in lines_of]
    width = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = {3, 4, 5, 6, 7}

    def fmt(cells: list[str]) -> str:
        return " ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, width))).rstrip()

    _, _, informative, perturbed = flip_verdict(rows)
    held = sum(1 for r in rows if r.eps > 0 and r.bound < 1 and r.holds is not False)
    layers = sum(1 for rank, _ in lines_of if rank == 0)
    lead = (f"informative (layer, timestep) rows, bound < 1: {informative} of {perturbed} with eps > 0 "
            f"(the bound holds in {held}); vacuous, bound >= 1: {perturbed - informative}\n"
            f"{layers} of {len(lines_of)} (perturbation, mode, layer) lines below have an informative timestep; "
            "they come first")
    legend = ["columns (worst timestep of each line):"] + [f"  {name:<12} {text}" for name, text in FLIP_COLUMNS]
    return "\n".join([lead, fmt(header), *(fmt(c) for _, c in lines_of), *legend]) + "\n"


def format_edgepopup_table(summary: Mapping[str, Any]) -> str:
    """The ``results.json`` of an edge-popup run over densities (``summary["rows"]``) as the console table of
    ``spikeprune edgepopup``: density, sparsity, test accuracy, the exported subnetwork's accuracy, and the
    accuracy relative to the dense reference ("-" without one)."""
    lines = [f"{'density':>8} {'sparsity':>8} {'accuracy':>9} {'exported':>9} {'vs dense':>9}"]
    for r in summary["rows"]:
        rel = f"{100 * r['relative_to_dense']:8.1f}%" if r["relative_to_dense"] is not None else f"{'-':>9}"
        lines.append(f"{r['density']:8.3g} {r['sparsity']:8.3g} {r['test_accuracy']:9.4f} "
                     f"{r['exported_test_accuracy']:9.4f} {rel}")
    return "\n".join(lines) + "\n"


def _lower_bound(value: float | None) -> str:
    """A probability lower bound clipped at 0 (Eq. S.24, S.34): ``-`` where it is <= 0, since a bound
    of 0 guarantees nothing (it is not a probability of 0)."""
    return "-" if value is None or value <= 0 else f"{value:.3f}"


def format_slth_table(result: Mapping[str, Any]) -> str:
    """A ``theory slth`` result (``slth.json``) as its console table, with a legend: per width k the
    measured success rate, the exact and union-bound success probabilities, the output-equality rate and
    Theorem 4.3's ``1 - delta(k)``. A bound that guarantees nothing at k (``<= 0``: the union bound, or
    ``delta(k) >= 1``) is printed ``-``, not as a 0; so is an output-equality rate when no equality
    trials ran."""
    cfg = result.get("config", {})
    lines = [f"{'k':>10} {'success':>8} {'exact':>8} {'union bd':>8} {'out equal':>9} {'Thm 4.3':>8}"]
    for r in result["rows"]:
        eq = "-" if r["output_equal_rate"] is None else f"{r['output_equal_rate']:.3f}"
        lines.append(f"{r['k']:>10} {r['success_rate']:>8.3f} {r['success_exact']:>8.3f} "
                     f"{_lower_bound(r['success_bound']):>8} {eq:>9} {_lower_bound(r['theorem_1_minus_delta']):>8}")
    trials, eq_trials = cfg.get("trials"), cfg.get("equality_trials")
    lines += ["columns (per width k = virtual neurons per layer of the large network):",
              f"  success    share of the {trials or 'random'} large networks on which the construction succeeded",
              "  exact      the exact probability that it succeeds (computed, Lemma C.3's event)",
              "  union bd   1 - L N^2 exp(-(k/N) C_th eps/N), Eq. S.24's lower bound on it",
              "  out equal  share of the input spike trains on which the constructed network's output equals the "
              "target's" + (f", over {eq_trials} network(s)" if eq_trials else " (- : no equality trials ran)"),
              "  Thm 4.3    1 - delta(k), Theorem 4.3's lower bound on that share (Eq. S.34)",
              "  -          a lower bound that is <= 0 here (Thm 4.3: delta(k) >= 1) guarantees nothing at this k; "
              "it is not a probability of 0"]
    return "\n".join(lines) + "\n"


def slth_width(result: Mapping[str, Any], key: str) -> str:
    """A width of a ``theory slth`` result (``bounds[key]``: ``k_construction``, ``k_success``,
    ``k_equality``, ``k_proof``, ``k_paper``) as text, and in words where there is none: Theorem 4.3's
    width is ``undefined`` (delta <= N C L T eps), the smallest working width ``not found`` (within the
    search's cap), output equality ``not on the grid`` (or ``no trials`` when none ran); never ``None``."""
    value = result["bounds"].get(key)
    if value is not None:
        return str(int(value)) if float(value).is_integer() else f"{value:g}"  # a width: every digit
    if key in ("k_proof", "k_paper"):
        return "undefined"
    if key == "k_equality":
        return "no trials" if not result.get("config", {}).get("equality_trials", 1) else "not on the grid"
    return "not found"


def format_slth_bounds(result: Mapping[str, Any]) -> str:
    """The constants and widths of a ``theory slth`` result, one per line with what each is (the console
    block under :func:`format_slth_table`), and the construction's invariant violations. Where Theorem
    4.3's width is undefined (``delta <= N C L T eps``) it says so and why."""
    cfg, b = result.get("config", {}), result["bounds"]
    delta = b.get("delta", cfg.get("delta"))
    trials = cfg.get("trials")

    flip = b.get("flip_term")
    rows = [("C = 2 p_sup / (1 - beta)", f"{b['C']:.4g}", f"p_sup = {b.get('p_sup', float('nan')):.4g}: the largest "
             "density of the target's potentials near u_th (Definition 3.1)")]
    if b.get("target_atom_mass"):
        rows.append(("largest point mass near u_th", f"{b['target_atom_mass']:.3g}", "the potentials take discrete "
                     "values (binary inputs), so p_sup is a smoothed stand-in"))
    if flip is not None:
        rows.append(("flip term N C L T eps", f"{flip:.4g}", "Theorem 3.5's flip probability; " + (
            f">= delta = {delta:g}: no width reaches delta" if flip >= delta else f"< delta = {delta:g}")))
    rows += [("k, construction alone", slth_width(result, "k_construction"), "Lemma C.3 over L layers at delta "
              "(flips not counted)"),
             ("k, smallest that worked", slth_width(result, "k_success"), "the (1 - delta)-quantile of the "
              "measured smallest working width" + (f" over {trials} networks" if trials else "")),
             ("k, output equality reached", slth_width(result, "k_equality"), "the first grid width whose "
              "output-equality rate is >= 1 - delta"),
             ("k, Theorem 4.3 (proof)", slth_width(result, "k_proof"), "N ceil(N/(C_th eps) log(N^2 L / "
              "(delta - N C L T eps)))"),
             ("k, Theorem 4.3 (paper)", slth_width(result, "k_paper"), "the same with N^2, as printed in the paper")]
    wide = max(len(a) for a, _, _ in rows), max(len(v) for _, v, _ in rows)
    lines = [f"Theorem 4.3 at N={cfg.get('N')}, L={cfg.get('L')}, T={cfg.get('T')}, eps={cfg.get('eps'):g}, "
             f"delta={delta:g} (beta={cfg.get('beta'):g}, u_th={cfg.get('u_th'):g}):"]
    lines += [f"  {a:<{wide[0]}}  {v:<{wide[1]}}  {text}" for a, v, text in rows]
    if b.get("k_proof") is None and b.get("k_paper") is None:
        reason = (b.get("undefined") or "delta <= N C L T eps").removeprefix("the width bound is undefined: ")
        lines.append(f"Theorem 4.3's bound is undefined at this size: {reason}")
    v = result.get("violations") or {}
    total = sum(int(x) for x in v.values())
    lines.append(("invariant violations of the construction: none (" if not total else
                  f"INVARIANT VIOLATIONS of the construction: {total} (") + ", ".join(
        f"{name.replace('_', ' ')} {int(x)}" for name, x in v.items()) + ")")
    return "\n".join(lines) + "\n"
