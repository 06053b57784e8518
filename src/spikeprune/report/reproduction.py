"""The reproduction reports' presentation: the markdown of each study's section, its tables and plots.

:mod:`spikeprune.studies.reproduce` runs a study and reads its result files into plain data (orchestration;
the summaries come from the science modules); the functions here turn that data into the report's markdown
and PNGs and the numbers of ``report.json``, and compute nothing but the comparisons a reader needs (which
variant leads, which reference a series is measured against). Each ``*_section(p, data, out)`` returns
``(markdown blocks, numbers)``; ``p`` is the study's :class:`~spikeprune.studies.protocols.Protocol`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spikeprune.core.io import file_slug
from spikeprune.report.tables import flip_verdict, interval_legend, interval_phrase, slth_width

__all__ = ["SECTIONS", "TITLES", "REF_KEYS", "fig3_section", "fig5_section", "page", "qpsnn_section", "slug",
           "theory_section"]


TITLES = {
    "fig3": "LTH-SNN Fig. 3: untrained subnetworks found by edge-popup",
    "fig5": "LTH-SNN Fig. 5: IMP vs SF-IMP-1 vs SF-IMP-2 (lottery tickets with rewinding)",
    "theory": "LTH-SNN theory: spike flips vs the bounds, and the strong-LTH construction",
    "qpsnn": "QP-SNN: quantized and channel-pruned SNNs",
}


def slug(text: str) -> str:
    """A file-name-safe version of a panel or cell name."""
    return file_slug(text).strip("_")


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _cell(text: Any) -> str:
    """A markdown table cell (a '|' inside would end the cell)."""
    return str(text).replace("|", "\\|")


# ---------------------------------------------------------------------------------------------
# fig5: lottery tickets.
# ---------------------------------------------------------------------------------------------


def _aligned_table(series: dict[str, list[dict[str, Any]]], seeds: int) -> tuple[str, list[float]]:
    levels = sorted({round(pt["sparsity"], 4) for s in series.values() for pt in s})
    lines = ["| sparsity | " + " | ".join(series) + " |", "|---:|" + "---:|" * len(series)]
    for lv in levels:
        cells = []
        for s in series.values():
            pt = next((q for q in s if round(q["sparsity"], 4) == lv), None)
            if pt is None:
                cells.append("")
                continue
            cell = _pct(pt["test_accuracy"])
            if pt.get("n", 1) > 1:
                cell += f" ± {_pct(pt['test_accuracy_ci'])}"
            if pt.get("n", 1) < seeds:
                cell += f" (n={pt.get('n', 1)})"
            cells.append(cell)
        lines.append(f"| {100 * lv:.1f} % | " + " | ".join(cells) + " |")
    legend = interval_legend(series)  # what ± is, over how many seeds, a warning for n < 3
    return "\n".join(lines) + "\n" + ("\n" + "".join(f"{x}\n" for x in legend) if legend else ""), levels


def _fig5_findings(series: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Statements our numbers support, worded like the paper's claims (CI overlap = not resolved)."""
    out = []
    names = [v for v in ("imp", "sf-imp-1", "sf-imp-1@none", "sf-imp-2") if v in series]
    if len(names) < 2:
        return ["fewer than two of IMP / SF-IMP-1 / SF-IMP-2 finished: no comparison yet"]
    common = sorted(set.intersection(*({round(pt["sparsity"], 4) for pt in series[v]} for v in names)))
    if not common:
        return ["the variants share no sparsity level yet"]
    wins = {v: 0 for v in names}
    pruned_levels = [lv for lv in common if lv > 0]
    for lv in pruned_levels:
        pts = {v: next(q for q in series[v] if round(q["sparsity"], 4) == lv) for v in names}
        top_acc = max(pts[v]["test_accuracy"] for v in names)
        for v in names:  # ties count for every variant that reaches the best mean
            wins[v] += pts[v]["test_accuracy"] == top_acc
    if pruned_levels:
        out.append("levels where each variant has the best mean accuracy (ties count for all): " + ", ".join(
            f"{v} {wins[v]}/{len(pruned_levels)}" for v in names))
    top = common[-1]
    pts = {v: next(q for q in series[v] if round(q["sparsity"], 4) == top) for v in names}
    ranked = sorted(names, key=lambda v: -pts[v]["test_accuracy"])
    best, second = ranked[0], ranked[1]
    gap = pts[best]["test_accuracy"] - pts[second]["test_accuracy"]
    ci = pts[best].get("test_accuracy_ci", 0.0) + pts[second].get("test_accuracy_ci", 0.0)
    resolved = pts[best].get("n", 1) > 1 and gap > ci
    out.append(f"at the highest sparsity ({100 * top:.1f} %): " + ", ".join(
        f"{v} {_pct(pts[v]['test_accuracy'])} %" for v in ranked) + f"; {best} leads {second} by "
        f"{100 * gap:.2f} points" + (" (95 % CIs do not overlap)" if resolved else
                                     " (not resolved: the 95 % CIs overlap or there is one seed)"))
    for a, b in (("imp", "sf-imp-1"), ("imp", "sf-imp-2"), ("sf-imp-1", "sf-imp-2"), ("sf-imp-1", "sf-imp-1@none")):
        if a in names and b in names:
            shared = sorted({round(q["sparsity"], 4) for q in series[a]} & {round(q["sparsity"], 4) for q in series[b]})
            if shared and shared[-1] > top:
                pa = next(q for q in series[a] if round(q["sparsity"], 4) == shared[-1])
                pb = next(q for q in series[b] if round(q["sparsity"], 4) == shared[-1])
                out.append(f"{a} vs {b} at the highest sparsity both reached ({100 * shared[-1]:.1f} %): "
                           f"{_pct(pa['test_accuracy'])} vs {_pct(pb['test_accuracy'])} %")
    mean_gap: dict[str, tuple[float, int]] = {}
    if "imp" in names:
        imp_at = {round(q["sparsity"], 4): q["test_accuracy"] for q in series["imp"]}
        for v in names:
            if v == "imp":
                continue
            gaps = [q["test_accuracy"] - imp_at[round(q["sparsity"], 4)] for q in series[v]
                    if q["sparsity"] > 0 and round(q["sparsity"], 4) in imp_at]
            if gaps:
                mean_gap[v] = (statistics.fmean(gaps), len(gaps))
    for v, (g, n) in mean_gap.items():
        out.append(f"{v} minus IMP, averaged over the {n} pruned level(s) both reached: {100 * g:+.2f} points")
    if "sf-imp-1" in names and "sf-imp-1@none" in names:  # the two rankings of SF-IMP-1 (issue 14)
        budget = {round(q["sparsity"], 4): q["test_accuracy"] for q in series["sf-imp-1"]}
        gaps = [q["test_accuracy"] - budget[round(q["sparsity"], 4)] for q in series["sf-imp-1@none"]
                if q["sparsity"] > 0 and round(q["sparsity"], 4) in budget]
        if gaps:
            out.append(f"sf-imp-1@none (literal ranking) minus sf-imp-1 (budget ranking), averaged over the "
                       f"{len(gaps)} pruned level(s) both reached: {100 * statistics.fmean(gaps):+.2f} points")
    return out


def fig5_section(p: Any, data: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    from spikeprune.report.plots import plot_accuracy_vs_sparsity

    md: list[str] = []
    numbers: dict[str, Any] = {}
    kim = {"CIFAR-10": [93.47, 93.49, 93.22, 92.43], "CIFAR-100": [71.64, 71.38, 70.45, 67.35]}
    for name, panel in data["panels"].items():
        series = panel["series"]
        md.append(f"### {name}\n")
        if not series:
            md.append("_No finished round yet._\n")
            continue
        table, _ = _aligned_table(series, len(p.seeds))
        png = f"fig5_{slug(name)}.png"
        dense = next((s[0]["test_accuracy"] for s in series.values() if s and s[0]["sparsity"] == 0), None)
        plot_accuracy_vs_sparsity(series, out / png, title=f"{name}: lottery tickets ({interval_phrase(len(p.seeds))})"
                                  + ("" if panel["complete"] else " PARTIAL"), reference=dense, reference_label="dense")
        findings = _fig5_findings(series)
        md.append("Test accuracy (%) by sparsity (fraction of weights removed), "
                  f"{'mean over seeds' if len(p.seeds) > 1 else 'one seed'}:\n\n{table}")
        if "sf-imp-1@none" in series:  # issue 14: both readings of SF-IMP-1, each named for what it is
            md.append("SF-IMP-1 twice: `sf-imp-1` ranks globally with this library's default for mixed criteria "
                      "(`budget`: global magnitude sets each layer's count, SF ranks the weights within a layer); "
                      "`sf-imp-1@none` is the literal reading of LTH-SNN Algorithm 1 (raw SF and magnitude scores "
                      "in one global ranking; SF scores are far smaller than |w|, so SF layers are pruned first). "
                      "docs/lottery.md explains both.\n")
        md.append(f"![{name}]({png})\n")
        md.append("What our numbers say:\n\n" + "".join(f"* {f}\n" for f in findings))
        for ds, values in kim.items():
            if name.startswith(ds + ","):
                ours = []
                for sp, ref in zip((0.683, 0.899, 0.957, 0.981), values):
                    pts = series.get("imp", [])
                    near = min(pts, key=lambda q: abs(q["sparsity"] - sp)) if pts else None
                    ours.append(f"| {100 * sp:.1f} % | {ref:.2f} | " + (
                        f"{_pct(near['test_accuracy'])} (at {100 * near['sparsity']:.1f} %)" if near else "–") + " |")
                md.append("\nKim et al.'s IMP vs our IMP at the nearest sparsity:\n\n| sparsity | Kim et al. | ours |\n"
                          "|---:|---:|---:|\n" + "\n".join(ours) + "\n")
        numbers[name] = {"series": series, "findings": findings, "complete": panel["complete"],
                         "seeds_found": panel["seeds_found"]}
    return md, numbers


# ---------------------------------------------------------------------------------------------
# fig3: edge-popup.
# ---------------------------------------------------------------------------------------------


REF_KEYS = ("model", "width", "timesteps", "epochs", "train_limit", "lr")


def _training_budget(settings: dict[str, Any]) -> float:
    """Images seen in training, epochs x train_limit (no limit: the whole training set, ranked above any limit)."""
    return float(settings.get("epochs") or 0) * float(settings.get("train_limit") or 1e12)


def _series_labels(rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """Label runs by the settings that differ between them (a results directory may mix protocols)."""
    ignore = {"density", "densities", "seed", "data_dir", "compile"}

    def settings(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (r.get("hyperparameters") or {}).items() if k not in ignore}

    keys = sorted({k for r in rows for k in settings(r)})
    varying = [k for k in keys if len({repr(settings(r).get(k)) for r in rows}) > 1]

    def label(r: dict[str, Any]) -> str:
        if not varying:
            return "edge-popup"
        return "edge-popup, " + ", ".join(f"{k}={settings(r).get(k)}" for k in varying)

    return label


def fig3_section(p: Any, data: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    from spikeprune.report.plots import plot_subnetwork_accuracy

    md: list[str] = []
    numbers: dict[str, Any] = {}
    for name, panel in data["panels"].items():
        rows, refs = panel["rows"], panel["references"]
        md.append(f"### {name}\n")
        if not rows:
            md.append("_No finished search yet._\n")
            continue
        label = _series_labels(rows)
        # references grouped by the settings that differ between them (one dashed line each); each
        # series is compared with the group that shares most of its settings (width, epochs, data)
        varying = [k for k in REF_KEYS if len({repr(x["settings"][k]) for x in refs}) > 1]
        groups: dict[str, list[dict[str, Any]]] = {}
        for x in refs:
            key = "dense trained" + ("" if not varying else ", " + ", ".join(f"{k}={x['settings'][k]}" for k in varying))
            groups.setdefault(key, []).append(x)

        def matching(r: dict[str, Any]) -> str | None:
            # The reference trained with the same settings (same budget) if there is one; otherwise the
            # most-trained one, so a longer search is never credited against a shorter training run.
            hp = r.get("hyperparameters") or {}
            same = [g for g in groups if all(hp.get(k) == groups[g][0]["settings"][k] for k in REF_KEYS)]
            return same[0] if same else max(groups, key=lambda g: _training_budget(groups[g][0]["settings"]),
                                            default=None)

        png = f"fig3_{slug(name)}.png"
        plot_subnetwork_accuracy([{"sparsity": r["sparsity"], "accuracy": r["test_accuracy"], "series": label(r)}
                                  for r in rows], out / png,
                                 reference={g: [x["test_accuracy"] for x in xs] for g, xs in groups.items()},
                                 title=f"{name}: untrained subnetworks"
                                 + ("" if any((r.get("hyperparameters") or {}).get("affine_bn") for r in rows)
                                    else " (non-affine BN)") + ("" if panel["complete"] else " PARTIAL"))
        ref_of = {label(r): matching(r) for r in rows}
        mean_of = {g: statistics.fmean(x["test_accuracy"] for x in xs) for g, xs in groups.items()}
        by: dict[tuple[str, float], list[dict[str, Any]]] = {}
        for r in rows:
            by.setdefault((label(r), round(r["density"], 6)), []).append(r)
        lines = ["| series | density | sparsity | accuracy (%) | seeds | of dense trained | exported = searched |",
                 "|---|---:|---:|---:|---:|---:|---|"]
        summary = []
        for (lab, d), rs in sorted(by.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
            accs = [r["test_accuracy"] for r in rs]
            m = statistics.fmean(accs)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            ref = mean_of.get(ref_of[lab]) if ref_of[lab] else None
            summary.append({"series": lab, "density": d, "sparsity": 1 - d, "test_accuracy": m, "std": sd,
                            "n": len(accs), "relative_to_dense": m / ref if ref else None,
                            "reference": ref_of[lab]})
            lines.append(f"| {lab} | {d:g} | {1 - d:g} | {_pct(m)}" + (f" ± {_pct(sd)}" if len(accs) > 1 else "")
                         + f" | {len(accs)} | " + (f"{100 * m / ref:.1f} %" if ref else "–") + " | "
                         + ("yes" if all(r.get("export_matches") for r in rs) else "NO") + " |")
        ref_lines = [f"* {g}: {_pct(mean_of[g])} % (" + ", ".join(f"`{x['path']}`" for x in xs) + ")"
                     for g, xs in groups.items()]
        md.append("Dense trained references (each series is compared with the one trained with its own settings, "
                  "or else with the most-trained one):\n\n"
                  + ("\n".join(ref_lines) if ref_lines else "none found") + "\n\n" + "\n".join(lines) + "\n")
        md.append(f"![{name}]({png})\n")
        inits = {(r.get("hyperparameters") or {}).get("init") for r in rows}
        if len(inits) > 1:  # issue 14: both readings of the paper's setup, each named for what it is
            md.append("Two readings of the setup: `init=signed_constant, affine_bn=False` is the paper's text "
                      "(Ramanujan et al.'s signed-constant weights, BatchNorm without trained affine parameters); "
                      "`init=kaiming_normal, affine_bn=True` is the code its Appendix E names (hidden-networks' "
                      "`simple_mnist_example.py`). Both are compared with the same dense references.\n")
        md.append("Two readings of the x-axis: the table gives both the density (fraction of weights kept) and "
                  "the sparsity (fraction removed). hidden-networks' `--sparsity` flag is the fraction *kept*, so if "
                  "Fig. 3's axis is that flag, read its values against our density column.\n")
        best = max(summary, key=lambda s: s["test_accuracy"])
        findings = [f"best untrained subnetwork: density {best['density']:g} (sparsity {best['sparsity']:g}), "
                    f"{_pct(best['test_accuracy'])} %" + (f" = {100 * best['relative_to_dense']:.1f} % of its reference "
                                                          f"({best['reference']})" if best["relative_to_dense"] else "")]
        chance = 1.0 / max(2, int(rows[0].get("num_classes", 10)))
        above = [s for s in summary if s["test_accuracy"] > 2 * chance]
        findings.append(f"{len(above)} of {len(summary)} (series, density) points are above twice chance "
                        f"({_pct(2 * chance, 0)} %)")
        if groups:
            close = [x for x in summary if x["relative_to_dense"] is not None and x["relative_to_dense"] >= 0.9]
            findings.append(f"{len(close)} of {len(summary)} points reach 90 % of their dense trained reference"
                            + (f" ({'; '.join(sorted({x['series'] + ' vs ' + str(x['reference']) for x in close}))})"
                               if close else "") + ": "
                            + ("untrained subnetworks close to the trained network exist here (the paper's claim)"
                               if close else "better than chance, but not close to the trained network at "
                               "this scale (the paper's claim is not reproduced here)"))
        ordered = sorted((s for s in summary if s["series"] == best["series"]), key=lambda s: s["sparsity"])
        if len(ordered) >= 3:
            inner = best["sparsity"] not in (ordered[0]["sparsity"], ordered[-1]["sparsity"])
            findings.append("accuracy peaks at an intermediate sparsity" if inner else
                            f"accuracy peaks at the edge of the grid (sparsity {best['sparsity']:g})")
        md.append("What our numbers say:\n\n" + "".join(f"* {f}\n" for f in findings))
        numbers[name] = {"points": summary, "dense_references": refs, "findings": findings,
                         "complete": panel["complete"]}
    return md, numbers


# ---------------------------------------------------------------------------------------------
# theory: flips and the SLTH construction.
# ---------------------------------------------------------------------------------------------


def _informative_flip_rows(rows: list[Any], top: int = 15) -> tuple[list[str], dict[str, Any]]:
    """The rows where a bound says something: eps > 0 and bound < 1 (Lemma 3.3/3.4), with how tight
    they are (measured conditional flip rate / bound); vacuous rows (bound >= 1) are only counted.
    Issue 14: a bound that is >= 1 holds for every probability, so "holds" there is no evidence."""
    pos = [r for r in rows if r.eps > 0]
    nonvac = [r for r in pos if r.bound < 1]
    thm = [r for r in pos if r.bound_theorem35 < 1]
    tight = sorted((r for r in nonvac if r.tightness is not None), key=lambda r: -r.tightness)
    numbers = {"rows": len(rows), "rows_eps_positive": len(pos), "lemma_nonvacuous": len(nonvac),
               "lemma_vacuous": len(pos) - len(nonvac), "theorem35_nonvacuous": len(thm),
               "nonvacuous_holds": sum(1 for r in nonvac if r.holds in (True, None)),
               "tightness_max": tight[0].tightness if tight else None,
               "tightness_median": tight[len(tight) // 2].tightness if tight else None}
    md = [f"**Informative rows first.** Of {len(pos)} (perturbation, mode, layer, timestep) rows with eps > 0, "
          f"the Lemma 3.3/3.4 bound is below 1 in **{len(nonvac)}** (it holds in {numbers['nonvacuous_holds']} of "
          f"them) and >= 1 — vacuous, true of any probability — in {len(pos) - len(nonvac)}; Theorem 3.5 "
          f"(N neurons) is below 1 in {len(thm)}.\n"]
    if tight:
        md.append(f"Tightness (measured flip rate given no earlier flip / bound) of the non-vacuous rows: max "
                  f"{tight[0].tightness:.3g}, median {numbers['tightness_median']:.3g} (1 = the bound is attained). "
                  f"The {min(top, len(tight))} tightest:\n")
        lines = ["| perturbation | mode | layer | t | eps | flip rate given no earlier flip | bound | tightness | "
                 "refined bound |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in tight[:top]:
            ref = "–" if r.bound_refined is None else f"{r.bound_refined:.3g}"
            lines.append(f"| {r.perturbation} | {r.mode} | {r.layer} | {r.t} | {r.eps:.3g} | {r.cond_flip_rate:.3g} | "
                         f"{r.bound:.3g} | {r.tightness:.3g} | {ref} |")
        md.append("\n".join(lines) + "\n")
    elif pos:
        md.append("_No row with eps > 0 has a bound below 1: at these perturbations the lemmas say nothing._\n")
    # The refined bound picks its error level on the samples it is checked on; the held-out check picks it
    # on the even batches and checks it on the odd ones (theory.flips; None where it was not measured).
    held = [r for r in pos if getattr(r, "holds_refined_heldout", None) is not None]
    held_nonvac = [r for r in held if r.bound_refined_heldout < 1]
    numbers.update({"refined_heldout_rows": len(held), "refined_heldout_nonvacuous": len(held_nonvac),
                    "refined_heldout_nonvacuous_holds": sum(1 for r in held_nonvac if r.holds_refined_heldout)})
    if held:
        md.append(f"**Refined bound on held-out inputs** (level chosen on the even-numbered batches, checked on the "
                  f"odd ones): below 1 in {len(held_nonvac)} of {len(held)} rows with eps > 0, holding in "
                  f"{numbers['refined_heldout_nonvacuous_holds']} of those.\n")
    elif pos:
        md.append("_The refined bound was not checked on held-out inputs in these results: they were recorded "
                  "before the check existed, or each analysis saw a single batch (the check needs two)._\n")
    return md, numbers


def theory_section(p: Any, data: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    from spikeprune.report.plots import plot_flip_summary, plot_slth

    md: list[str] = []
    numbers: dict[str, Any] = {"flips": {}, "slth": {}}
    if data["dense"]:
        d = data["dense"]
        md.append(f"Analysed network: {d['model']} on {d['dataset']}, T = {d['timesteps']}, test accuracy "
                  f"{_pct(d['test_accuracy'])} %, firing rate {d['firing_rate']:.3f}.\n")
    elif data.get("checkpoints"):  # the flips say which network; its run folder (metrics.json) is not there
        md.append("Analysed network: " + ", ".join(f"`{c}`" for c in data["checkpoints"]) + " (its run folder's "
                  "metrics.json is not available, so its accuracy and firing rate are not shown).\n")
    md.append("### Spike flips vs Lemma 3.3 / 3.4 (per perturbation, worst layer and timestep)\n")
    if data["flips"]:
        lines = ["| perturbation | mode | layers | max eps | max flip rate | max flip rate given no earlier flip | "
                 "max bound | informative (layer, t) rows | verdict | max tightness (informative rows) | "
                 "first flips outside the crisis band |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        rows_all = data["flip_rows"]
        holds_all, total = 0, 0
        ranked: list[tuple[int, str]] = []
        for label, d in data["flips"].items():
            for mode in ("local", "end_to_end"):
                s = [x for x in d["summary"] if x["mode"] == mode and x["perturbation"] == label]
                if not s:
                    continue
                rs = [r for r in rows_all if r.perturbation == label and r.mode == mode]
                # issue 18: "holds" only where the bound is < 1 (a bound >= 1 holds for any probability)
                rank, verdict, informative, perturbed = flip_verdict(rs, unit="row")
                cond = [x["max_cond_flip_rate"] for x in s if x["max_cond_flip_rate"] is not None]
                tight = [r.tightness for r in rs if r.eps > 0 and r.bound < 1 and r.tightness is not None]
                holds_all += sum(1 for x in s if x["holds"] in (True, None))
                total += len(s)
                outside = sum(int(x.get("first_flips_outside", 0)) for x in s)
                cond_txt = f"{max(cond):.3g}" if cond else "–"
                tight_txt = f"{max(tight):.3g}" if tight else "–"
                ranked.append((rank, f"| {label} | {mode} | {len(s)} | {max(x['eps'] for x in s):.3g} | "
                                     f"{max(x['max_flip_rate'] for x in s):.3g} | {cond_txt} | "
                                     f"{max(x['max_bound'] for x in s):.3g} | {informative}/{perturbed} | {verdict} | "
                                     f"{tight_txt} | {outside} |"))
                numbers["flips"][f"{label}/{mode}"] = s
        lines += [line for _, line in sorted(ranked, key=lambda x: x[0])]  # informative perturbations first
        informative, info_numbers = _informative_flip_rows(rows_all)
        md += informative
        md.append("All perturbations (worst layer and timestep), those with an informative row first; a bound >= 1 "
                  "holds for any probability, so it is marked vacuous, not \"holds\":\n")
        md.append("\n".join(lines) + "\n")
        plot_flip_summary(data["flip_summary"], out / "theory_flips.png", modes=data["modes"])
        md.append("![flips](theory_flips.png)\n")
        numbers["bound_holds"] = {"layers": total, "holds": holds_all}
        numbers["informative"] = info_numbers
        md.append(f"What our numbers say:\n\n* of {info_numbers['rows_eps_positive']} (layer, timestep) rows with "
                  f"eps > 0, the Lemma 3.3/3.4 bound is **non-vacuous (< 1) in {info_numbers['lemma_nonvacuous']}** "
                  f"and vacuous (>= 1, holds trivially) in {info_numbers['lemma_vacuous']}; Theorem 3.5 is "
                  f"non-vacuous in {info_numbers['theorem35_nonvacuous']}\n"
                  f"* at the {info_numbers['lemma_nonvacuous']} informative rows the bound holds in "
                  f"{info_numbers['nonvacuous_holds']}; the {info_numbers['lemma_vacuous']} vacuous rows are no "
                  f"evidence either way (over all {total} (perturbation, mode, layer) cases, vacuous ones included, "
                  f"it holds in {holds_all})\n")
    else:
        md.append("_No flip analysis finished yet._\n")
    md.append("### Strong-LTH construction (Appendix C, Theorem 4.3)\n")
    if data["slth"]:
        lines = ["| setting | C = 2 p_sup/(1-β) | flip term N C L T eps | k: construction bound | "
                 "k: smallest that works (1-δ quantile) | k: output equality reached | k: Theorem 4.3 (paper / proof) | "
                 "violations |",
                 "|---|---:|---:|---:|---:|---:|---|---|"]
        shown = 0
        for name, r in data["slth"].items():
            b = r["bounds"]
            thm = (f"{slth_width(r, 'k_paper')} / {slth_width(r, 'k_proof')}" if b.get("k_paper") or b.get("k_proof")
                   else "undefined (δ ≤ N C L T eps)")
            viol = r.get("violations", {})
            ft = b.get("flip_term")
            lines.append(f"| {name} | {b['C']:.3g} | {'–' if ft is None else f'{ft:.3g}'} | "
                         f"{slth_width(r, 'k_construction')} | {slth_width(r, 'k_success')} | "
                         f"{slth_width(r, 'k_equality')} | {thm} | {sum(int(v) for v in viol.values())} |")
            numbers["slth"][name] = {"bounds": b, "violations": viol}
            if shown < 4:
                plot_slth(r, out / f"theory_slth_{slug(name)}.png")
                shown += 1
        md.append("\n".join(lines) + "\n")
        for name in list(data["slth"])[:shown]:
            md.append(f"![{name}](theory_slth_{slug(name)}.png)\n")
        bad = sum(sum(int(v) for v in r.get("violations", {}).values()) for r in data["slth"].values())
        defined = [n for n, r in data["slth"].items() if r["bounds"].get("k_paper") or r["bounds"].get("k_proof")]
        vacuous = [n for n, r in data["slth"].items() if (r["bounds"].get("flip_term") or 0) >= 1]
        numbers["slth_informative"] = {"settings": len(data["slth"]), "theorem_defined": len(defined),
                                       "flip_term_vacuous": len(vacuous)}
        md.insert(len(md) - (1 + shown), f"**Informative settings first.** Theorem 4.3's width bound is defined "
                  f"(δ > N C L T eps) in **{len(defined)}** of {len(data['slth'])} settings (listed first); its flip "
                  f"term N C L T eps is >= 1 — vacuous — in {len(vacuous)}.\n")
        md.append(f"What our numbers say:\n\n* {len(data['slth'])} settings, Theorem 4.3 defined in {len(defined)}, "
                  f"flip term vacuous in {len(vacuous)}; invariant violations of the "
                  f"construction (copies, feature error, unexplained flips): {bad}\n")
    else:
        md.append("_No SLTH experiment finished yet._\n")
    return md, numbers


# ---------------------------------------------------------------------------------------------
# qpsnn: compression.
# ---------------------------------------------------------------------------------------------


def qpsnn_section(p: Any, data: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    from spikeprune.report.plots import plot_qpsnn

    md: list[str] = []
    cells = data["cells"]
    if not cells:
        return ["_No compression cell finished yet._\n"], {}
    lines = ["| cell | bits | scale | channels removed | accuracy (%) | dense (%) | drop (points) | size reduction | "
             "op reduction | energy reduction | CPU speed-up | levels used (%) | effective utilisation (%) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        u = c["utilisation_total"] or {}
        drop = (c["dense_test_accuracy"] - c["test_accuracy"]) if c.get("dense_test_accuracy") is not None else None
        lines.append(f"| {_cell(c['cell'])} | {c.get('bits')} | {c.get('scale')} | {c.get('channel_sparsity')} | "
                     f"{_pct(c['test_accuracy'])} | {_pct(c.get('dense_test_accuracy'))} | "
                     + (f"{100 * drop:.2f}" if drop is not None else "–")
                     + f" | {c.get('size_reduction', float('nan')):.1f}x | {c.get('flop_reduction', float('nan')):.2f}x | "
                     f"{c.get('energy_reduction', float('nan')):.2f}x | {c.get('speedup', float('nan')):.2f}x | "
                     f"{_pct(u.get('utilisation'), 0)} | {_pct(u.get('effective_utilisation'), 0)} |")
    md.append("\n".join(lines) + "\n")
    plot_qpsnn(cells, out / "qpsnn.png")
    md.append("![qpsnn](qpsnn.png)\n")
    findings = []
    candidates = [c for c in cells if c.get("bits") == 4 and c.get("scale") == "mean"
                  and (c.get("channel_sparsity") or 0) > 0]
    # QP-SNN's own setting first: SVS channel scores, the protocol's default fine-tuning
    # (benchmarks/qpsnn/study.py's flat cells name the channel criterion `criterion`)
    candidates.sort(key=lambda c: (c.get("channel_criterion", c.get("criterion", "svs")) != "svs",
                                   c.get("tag") not in (None, "grid"),
                                   c.get("order", "quantize-first") != "quantize-first"))
    target = candidates[0] if candidates else None
    if target:
        s = target["channel_sparsity"]
        findings.append(f"4-bit ReScaW with {100 * s:.0f} % of the channels removed (≈ {100 * (1 - s) ** 2:.0f} % of "
                        f"the connections kept): {_pct(target['test_accuracy'])} % vs dense "
                        f"{_pct(target.get('dense_test_accuracy'))} %, {target.get('size_reduction', 0):.1f}x smaller "
                        f"(QP-SNN: 91.19 % vs 93.63 %, 9.6 % of connections, 79.6x smaller)")
    for bits in sorted({c.get("bits") for c in cells if c.get("bits")}):
        for scale in ("max", "mean"):
            cs = sorted((c for c in cells if c.get("bits") == bits and c.get("scale") == scale and c["utilisation_total"]),
                        key=lambda c: (c.get("channel_sparsity") or 0) > 0)  # unpruned cells first
            if cs:
                u = cs[0]["utilisation_total"]
                findings.append(f"{bits}-bit {'vanilla max|W|' if scale == 'max' else 'ReScaW mean|W|'}: "
                                f"{_pct(u['utilisation'], 0)} % of the levels used, effective utilisation "
                                f"{_pct(u['effective_utilisation'], 0)} % ({cs[0]['cell']})")
    md.append("What our numbers say:\n\n" + "".join(f"* {f}\n" for f in findings))
    return md, {"cells": cells, "findings": findings}


# ---------------------------------------------------------------------------------------------
# The page.
# ---------------------------------------------------------------------------------------------


def page(study: str, scale: str, p: Any, *, complete: bool, stamp: str, command: str, commands: list[str],
         claims: list[str], body: list[str], root: Path) -> str:
    """The whole ``report.md``: title, PARTIAL banner, ``stamp`` (version, where and when), the command and
    the equivalent ``commands`` one per step, the protocol, the paper's ``claims``, the study's ``body``."""
    md = [f"# {TITLES[study]} — scale `{scale}`\n",
          ("" if complete else "> **PARTIAL**: some runs of the protocol are missing or unfinished; re-run the "
           "command below to continue them (finished work is kept) and rebuild this report (with --from-results: "
           "finish the study, then rebuild).\n"),
          f"{stamp}\n",
          "## Reproduce\n", f"```\n{command}\n```\n",
          "The same runs, one command per step (the configs are next to this report):\n",
          "```\n" + "\n".join(commands) + "\n```\n",
          # issue 18: no literal `--jobs N` in a command (it would not parse); how many runs at a time is the
          # reader's choice and changes no result
          ("A sweep (a command with `--seeds`) also takes `--jobs` followed by a number: how many of its runs go "
           "at a time (the results do not depend on it).\n" if any(" --seeds " in c for c in commands) else ""),
          "## Protocol\n", f"{p.notes}. Seeds: {', '.join(map(str, p.seeds))}.\n"]
    for name, values in p.panels.items():
        md.append(f"* **{name}**: " + ", ".join(f"{k}={v}" for k, v in values.items()) + "\n")
    md += ["\n## The paper's claims\n", "".join(f"* {c}\n" for c in claims),
           "\n## What we measured\n", *body,
           "\n---\nHow to read every number: docs/reports.md. Results directory: " + f"`{root}`.\n"]
    return "\n".join(x for x in md if x)


SECTIONS = {"fig3": fig3_section, "fig5": fig5_section, "theory": theory_section, "qpsnn": qpsnn_section}
