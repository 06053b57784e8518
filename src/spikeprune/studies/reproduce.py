"""One-command reproduction: run a study (:mod:`spikeprune.studies.protocols`) and write a self-contained report.

    spikeprune reproduce fig5 --scale smoke --out runs/repro_fig5            # runs, then reports
    spikeprune reproduce fig5 --scale cpu --from-results runs/lottery_study --out benchmarks/reports/fig5_cpu

``out`` receives ``report.md`` (the commands, the protocol, the paper's claims next to our numbers,
tables, plots), the PNGs it shows, ``report.json`` (every number of the report) and
``configs/<panel>.yaml`` (the exact settings, loadable with ``--config``). The runs go to
``out/runs/`` unless ``from_results`` names existing run directories, which are then only read.
Everything is resumable: re-running the same command continues the runs where they stopped and
rebuilds the report from whatever has finished (the report says what is missing).

Where the runs of each study live (``root`` = ``out/runs`` or ``from_results``):

* fig5: ``root/<panel>/seed-<s>/<variant>/`` (a lottery run each; :func:`~spikeprune.studies.sweep.lottery_sweep`).
  ``from_results`` may also be a ``benchmarks/lottery/study.py`` root (``seed<s>/<variant>/``); every
  variant found there is reported (e.g. ``random``).
* fig3: ``root/<panel>/seed-<s>/density-<d>/result.json`` and the dense references
  ``root/<panel>/dense-seed-<s>/metrics.json``; any ``density-*/result.json`` below ``root`` and any
  ``dense*/metrics.json`` directly in it count (the edge-popup study's layout), plus ``references``.
* theory: ``root/dense/`` (the analysed network), ``root/flips/<perturbation>/flips.json`` and
  ``root/slth/<setting>.json`` (the layout of ``benchmarks/theory/results``).
* qpsnn: ``root/dense/`` and ``root/<cell>/metrics.json`` (``compress`` runs), or the flat cell files
  ``root/*.json`` of ``benchmarks/qpsnn/study.py``.
"""

from __future__ import annotations

import datetime
import math
import platform
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from spikeprune.core.diagnostics import UserError
from spikeprune.core.config import fields_of
from spikeprune.engine.config import TrainConfig
from spikeprune.core.io import check_writable_dir, file_slug, read_json, write_json, write_text
from spikeprune.studies.protocols import CLAIMS, Protocol, protocol
from spikeprune.core.rundir import log

__all__ = ["reproduce", "write_report"]

Log = Callable[[str], None] | None

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


def _yaml(values: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# fig5: lottery tickets.
# ---------------------------------------------------------------------------------------------


def _fig5_run(p: Protocol, root: Path, out: Path, jobs: int, threads: int, data_dir: str | None, log: Log) -> None:
    from spikeprune.tickets.lottery import LotteryConfig
    from spikeprune.studies.sweep import lottery_sweep

    for name, values in p.panels.items():
        cfg = LotteryConfig(**{**values, **({"data_dir": data_dir} if data_dir else {})})
        lottery_sweep(cfg, root / slug(name), seeds=p.seeds, variants=p.options["variants"], jobs=jobs,
                      threads=threads, log=log)


def _lottery_runs(panel_root: Path) -> dict[str, dict[int, Path]]:
    """``{variant: {seed: run dir}}`` under a sweep (seed-<s>/<v>) or study (seed<s>/<v>) root."""
    found: dict[str, dict[int, Path]] = {}
    for seed_dir in sorted(panel_root.glob("seed*")):
        m = re.fullmatch(r"seed-?(\d+)", seed_dir.name)
        if not m or not seed_dir.is_dir():
            continue
        for run in sorted(seed_dir.iterdir()):
            if run.is_dir() and not run.name.startswith("_") and (run / "dense" / "metrics.json").exists():
                found.setdefault(run.name, {})[int(m.group(1))] = run
    return found


def _panel_root(root: Path, name: str, single: bool) -> Path:
    return root / slug(name) if (root / slug(name)).is_dir() or not single else root


def _fig5_collect(p: Protocol, root: Path) -> dict[str, Any]:
    from spikeprune.tickets.lottery import collect_rows
    from spikeprune.report.tables import summarize

    panels = {}
    for name, values in p.panels.items():
        runs = _lottery_runs(_panel_root(root, name, len(p.panels) == 1))
        series, per_seed = {}, {}
        for variant, by_seed in runs.items():
            rows = {s: collect_rows(d)[: int(values.get("rounds", 10**6)) + 1] for s, d in by_seed.items()}
            rows = {s: r for s, r in rows.items() if r}
            if rows:
                per_seed[variant] = rows
                series[variant] = summarize(list(rows.values()), metrics=("test_accuracy", "firing_rate"),
                                            require_all=False)
        expected = int(values.get("rounds", 0)) + 1
        complete = bool(series) and all(len(s) >= expected and min(pt["n"] for pt in s) >= len(p.seeds)
                                        for v, s in series.items() if v in p.options["variants"]) \
            and all(v in series for v in p.options["variants"])
        panels[name] = {"series": series, "complete": complete,
                        "seeds_found": {v: sorted(r) for v, r in per_seed.items()}}
    return {"panels": panels}


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
                cell += f" (n={pt['n']})"
            cells.append(cell)
        lines.append(f"| {100 * lv:.1f} % | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", levels


def _fig5_findings(series: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Statements our numbers support, worded like the paper's claims (CI overlap = not resolved)."""
    out = []
    names = [v for v in ("imp", "sf-imp-1", "sf-imp-2") if v in series]
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
    for a, b in (("imp", "sf-imp-1"), ("imp", "sf-imp-2"), ("sf-imp-1", "sf-imp-2")):
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
    return out


def _fig5_report(p: Protocol, data: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
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
        plot_accuracy_vs_sparsity(series, out / png, title=f"{name}: lottery tickets (mean ± 95 % CI over "
                                  f"{len(p.seeds)} seed(s))" + ("" if panel["complete"] else " PARTIAL"),
                                  reference=dense, reference_label="dense")
        findings = _fig5_findings(series)
        md.append(f"Test accuracy (%) by sparsity (fraction of weights removed), mean ± 95 % CI over seeds:\n\n{table}")
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


def _fig3_run(p: Protocol, root: Path, out: Path, jobs: int, threads: int, data_dir: str | None, log: Log) -> None:
    from spikeprune.tickets.edgepopup import EdgePopupConfig
    from spikeprune.studies.sweep import edgepopup_sweep, run_jobs, train_jobs

    extra = {"data_dir": data_dir} if data_dir else {}
    for name, values in p.panels.items():
        where = root / slug(name)
        dense_values = values if p.options["dense"] == "preset" else p.options["dense"]
        dense = TrainConfig.of(dense_values, **extra)
        dense_jobs = train_jobs(dense, p.seeds, where)
        status = run_jobs(dense_jobs, where, max_jobs=jobs, threads=threads, log=log)
        if any(s.startswith("failed") for s in status.values()):
            raise UserError(f"dense reference training failed: {status}")
        cfg = EdgePopupConfig(**{**fields_of(EdgePopupConfig, values), **extra})
        edgepopup_sweep(cfg, where, seeds=p.seeds, reference=[j.out for j in dense_jobs], jobs=jobs,
                        threads=threads, log=log)


_REF_KEYS = ("model", "width", "timesteps", "epochs", "train_limit", "lr")


def _training_budget(settings: dict[str, Any]) -> float:
    """Images seen in training, epochs x train_limit (no limit: the whole training set, ranked above any limit)."""
    return float(settings.get("epochs") or 0) * float(settings.get("train_limit") or 1e12)


def _read_references(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Dense trained runs: ``{"path", "test_accuracy", "settings"}`` (settings: the keys that matter
    for matching a reference to a series of searches)."""
    from spikeprune.tickets.edgepopup import read_reference

    refs = []
    for p in paths:
        f = Path(p) / "metrics.json" if Path(p).is_dir() else Path(p)
        acc = read_reference([f])[0]
        config = read_json(f).get("config", {})
        refs.append({"path": str(f.parent), "test_accuracy": acc,
                     "settings": {k: config.get(k) for k in _REF_KEYS}})
    return refs


def _fig3_collect(p: Protocol, root: Path, references: Iterable[str | Path] = ()) -> dict[str, Any]:
    panels = {}
    for name, values in p.panels.items():
        panel_root = _panel_root(root, name, len(p.panels) == 1)
        rows = [read_json(f) for f in sorted(panel_root.rglob("density-*/result.json"))]
        refs = [d for d in sorted(panel_root.glob("dense*")) if (d / "metrics.json").exists()]
        ref_values = _read_references([*refs, *references])
        widths = sorted({r.get("width", 1.0) for r in rows})
        grid = list(values.get("densities", ()))
        main = [r for r in rows if r.get("width") == values.get("width", 1.0)] or rows
        done = {(r["seed"], round(r["density"], 6)) for r in main}
        complete = all((s, round(d, 6)) in done for s in p.seeds for d in grid) and len(ref_values) >= len(p.seeds)
        panels[name] = {"rows": rows, "references": ref_values, "widths": widths, "complete": complete}
    return {"panels": panels}


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


def _fig3_report(p: Protocol, data: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
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
        varying = [k for k in _REF_KEYS if len({repr(x["settings"][k]) for x in refs}) > 1]
        groups: dict[str, list[dict[str, Any]]] = {}
        for x in refs:
            key = "dense trained" + ("" if not varying else ", " + ", ".join(f"{k}={x['settings'][k]}" for k in varying))
            groups.setdefault(key, []).append(x)

        def matching(r: dict[str, Any]) -> str | None:
            # The reference trained with the same settings (same budget) if there is one; otherwise the
            # most-trained one, so a longer search is never credited against a shorter training run.
            hp = r.get("hyperparameters") or {}
            same = [g for g in groups if all(hp.get(k) == groups[g][0]["settings"][k] for k in _REF_KEYS)]
            return same[0] if same else max(groups, key=lambda g: _training_budget(groups[g][0]["settings"]),
                                            default=None)

        png = f"fig3_{slug(name)}.png"
        plot_subnetwork_accuracy([{"sparsity": r["sparsity"], "accuracy": r["test_accuracy"], "series": label(r)}
                                  for r in rows], out / png,
                                 reference={g: [x["test_accuracy"] for x in xs] for g, xs in groups.items()},
                                 title=f"{name}: untrained subnetworks (non-affine BN)"
                                 + ("" if panel["complete"] else " PARTIAL"))
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


def _theory_run(p: Protocol, root: Path, out: Path, jobs: int, threads: int, data_dir: str | None, log: Log) -> None:
    from spikeprune.engine.data import BatchLoader, load_dataset
    from spikeprune.studies.flips import flip_study
    from spikeprune.theory.perturb import parse_perturbation
    from spikeprune.report.plots import plot_slth
    from spikeprune.theory.slth import slth_experiment
    from spikeprune.engine.train import fit, load_model

    cfg = TrainConfig.of(p.panels["flips"], **({"data_dir": data_dir} if data_dir else {}))
    fit(cfg, root / "dense", resume=True, progress=False, log=log)
    model, _ = load_model(root / "dense" / "checkpoint.safetensors")
    dataset = load_dataset(cfg.dataset, cfg.data_dir)
    test = BatchLoader(dataset, "test", 128, shuffle=False, seed=cfg.seed, encoding=cfg.encoding,
                       timesteps=cfg.timesteps, limit=p.options["samples"])
    calib = BatchLoader(dataset, "train", 128, shuffle=True, seed=cfg.seed, encoding=cfg.encoding,
                        timesteps=cfg.timesteps, augment=False)
    calib_batches = [b for _, b in zip(range(8), calib)]
    for spec in p.options["perturbations"]:
        pert = parse_perturbation(spec)
        where = root / "flips" / pert.label
        if (where / "flips.json").exists():
            continue
        if log:
            log(f"reproduce theory: flips under {pert.label}")
        flip_study(model, [pert], test, where, calibration=calib_batches, p_sup_method=p.options["p_sup"],
                   seed=cfg.seed, record={"checkpoint": str(root / "dense" / "checkpoint.safetensors"),
                                          "dataset": dataset.name, "samples": test.num_samples})
    for s in p.options["slth"]:
        name = f"N{s['N']}_L{s['L']}_T{s['T']}_eps{s['eps']:g}"
        if (root / "slth" / f"{name}.json").exists():
            continue
        if log:
            log(f"reproduce theory: SLTH construction {name}")
        result = slth_experiment(s["N"], s["L"], s["T"], s["eps"], trials=s["trials"],
                                 equality_trials=s["equality_trials"], samples=s["samples"], seed=0)
        plot_slth(result, root / "slth" / f"{name}.png")
        write_json(root / "slth" / f"{name}.json", result)


def _theory_collect(p: Protocol, root: Path) -> dict[str, Any]:
    flips = {}
    for f in sorted((root / "flips").glob("*/flips.json")):
        data = read_json(f)
        for label in data.get("perturbations", [f.parent.name]):
            flips[label] = data
    slth = {}
    for f in sorted((root / "slth").glob("*.json")):
        data = read_json(f)
        if isinstance(data, dict) and isinstance(data.get("experiment"), dict):
            # benchmarks/theory/slth_study.py's theorem regime: the experiment at the eps where the
            # width bound is defined, with the bound's k next to it
            exp = data["experiment"]
            if "rows" in exp and "bounds" in exp:
                bounds = {**exp["bounds"], **{k: data[k] for k in ("k_paper", "k_proof") if data.get(k)}}
                data = {**exp, "bounds": bounds}
        if isinstance(data, dict) and "rows" in data and "bounds" in data:
            slth[f.stem] = data
    # theorem-regime settings first: they are the ones where Theorem 4.3 says something
    slth = dict(sorted(slth.items(), key=lambda kv: (not kv[1]["bounds"].get("k_proof"), kv[0])))
    dense = None
    candidates = [root / "dense"] + [Path(d["checkpoint"]).parent for d in flips.values() if d.get("checkpoint")]
    for c in candidates:
        if (c / "metrics.json").exists():
            dense = read_json(c / "metrics.json")
            break
    from spikeprune.theory.perturb import parse_perturbation

    wanted = {parse_perturbation(s).label for s in p.options["perturbations"]}
    complete = wanted <= set(flips) and len(slth) >= len(p.options["slth"])
    return {"flips": flips, "slth": slth, "dense": dense, "complete": complete}


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
    return md, numbers


def _theory_report(p: Protocol, data: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    from spikeprune.report.plots import plot_flip_summary
    from spikeprune.theory.flips import MODES, FlipRow, flip_summary

    md: list[str] = []
    numbers: dict[str, Any] = {"flips": {}, "slth": {}}
    if data["dense"]:
        d = data["dense"]
        md.append(f"Analysed network: {d['model']} on {d['dataset']}, T = {d['timesteps']}, test accuracy "
                  f"{_pct(d['test_accuracy'])} %, firing rate {d['firing_rate']:.3f}.\n")
    md.append("### Spike flips vs Lemma 3.3 / 3.4 (per perturbation, worst layer and timestep)\n")
    if data["flips"]:
        lines = ["| perturbation | mode | layers | max eps | max flip rate | max flip rate given no earlier flip | "
                 "max bound | bound holds | max tightness | first flips outside the crisis band |",
                 "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        rows_all = []
        names = {f.name for f in fields(FlipRow)}
        holds_all, total = 0, 0
        for label, d in data["flips"].items():
            rows_all += [FlipRow(**{k: v for k, v in r.items() if k in names}) for r in d["rows"]]
            for mode in ("local", "end_to_end"):
                s = [x for x in d["summary"] if x["mode"] == mode and x["perturbation"] == label]
                if not s:
                    continue
                cond = [x["max_cond_flip_rate"] for x in s if x["max_cond_flip_rate"] is not None]
                tight = [x["max_tightness"] for x in s if x.get("max_tightness") is not None]
                holds = all(x["holds"] in (True, None) for x in s)
                holds_all += sum(1 for x in s if x["holds"] in (True, None))
                total += len(s)
                outside = sum(int(x.get("first_flips_outside", 0)) for x in s)
                cond_txt = f"{max(cond):.3g}" if cond else "–"
                tight_txt = f"{max(tight):.3g}" if tight else "–"
                lines.append(f"| {label} | {mode} | {len(s)} | {max(x['eps'] for x in s):.3g} | "
                             f"{max(x['max_flip_rate'] for x in s):.3g} | {cond_txt} | "
                             f"{max(x['max_bound'] for x in s):.3g} | {'yes' if holds else 'NO'} | {tight_txt} | "
                             f"{outside} |")
                numbers["flips"][f"{label}/{mode}"] = s
        informative, info_numbers = _informative_flip_rows(rows_all)
        md += informative
        md.append("All perturbations (worst layer and timestep; a bound >= 1 holds trivially):\n")
        md.append("\n".join(lines) + "\n")
        plot_flip_summary(flip_summary(rows_all), out / "theory_flips.png", modes=MODES)
        md.append("![flips](theory_flips.png)\n")
        numbers["bound_holds"] = {"layers": total, "holds": holds_all}
        numbers["informative"] = info_numbers
        md.append(f"What our numbers say:\n\n* of {info_numbers['rows_eps_positive']} (layer, timestep) rows with "
                  f"eps > 0, the Lemma 3.3/3.4 bound is **non-vacuous (< 1) in {info_numbers['lemma_nonvacuous']}** "
                  f"and vacuous (>= 1, holds trivially) in {info_numbers['lemma_vacuous']}; Theorem 3.5 is "
                  f"non-vacuous in {info_numbers['theorem35_nonvacuous']}\n"
                  f"* the bound holds in {holds_all} of {total} (perturbation, mode, layer) cases — a count that "
                  "includes every vacuous row\n")
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
            thm = (f"{b['k_paper']} / {b['k_proof']}" if b.get("k_paper") or b.get("k_proof")
                   else "undefined (δ ≤ N C L T eps)")
            viol = r.get("violations", {})
            ft = b.get("flip_term")
            lines.append(f"| {name} | {b['C']:.3g} | {'–' if ft is None else f'{ft:.3g}'} | {b.get('k_construction')} | "
                         f"{b.get('k_success')} | "
                         f"{b.get('k_equality')} | {thm} | {sum(int(v) for v in viol.values())} |")
            numbers["slth"][name] = {"bounds": b, "violations": viol}
            if shown < 4:
                from spikeprune.report.plots import plot_slth

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


def _qpsnn_run(p: Protocol, root: Path, out: Path, jobs: int, threads: int, data_dir: str | None, log: Log) -> None:
    from spikeprune.compression.compress import CompressConfig, compress
    from spikeprune.engine.train import fit

    extra = {"data_dir": data_dir} if data_dir else {}
    first = next(iter(p.panels.values()))
    dense_values = first if p.options["dense"] == "shared" else p.options["dense"]
    dense = TrainConfig.of(dense_values, **extra)
    fit(dense, root / "dense", resume=True, progress=False, log=log)
    ckpt = str(root / "dense" / "checkpoint.safetensors")
    for name, values in p.panels.items():
        if log:
            log(f"reproduce qpsnn: {name}")
        cfg = CompressConfig(**{**fields_of(CompressConfig, values), **extra, "checkpoint": ckpt})
        compress(cfg, root / slug(name), resume=True, log=log)


def _total_utilisation(u: Any) -> dict[str, Any] | None:
    if isinstance(u, list):
        u = next((r for r in u if r.get("layer") == "total"), None)
    return u if isinstance(u, dict) else None


def _qpsnn_collect(p: Protocol, root: Path) -> dict[str, Any]:
    cells = []
    for name in p.panels:
        f = root / slug(name) / "metrics.json"
        if f.exists():
            m = read_json(f)
            cfg = m.get("config", {})
            cells.append({"cell": name, "bits": cfg.get("bits"), "scale": cfg.get("scale"),
                          "channel_sparsity": cfg.get("channel_sparsity"), **m})
    if not cells:  # benchmarks/qpsnn/study.py: one flat JSON per cell
        for f in sorted(root.glob("*.json")):
            m = read_json(f)
            if isinstance(m, dict) and "test_accuracy" in m and "bits" in m:
                cells.append({"cell": m.get("id", f.stem), "channel_sparsity": m.get("sparsity"),
                              "dense_test_accuracy": m.get("dense_accuracy"), **m})
    for c in cells:
        total = _total_utilisation(c.get("utilisation"))
        qat = _total_utilisation(c.get("qat_utilisation"))
        c["utilisation_total"] = total
        c["qat_utilisation_total"] = qat
    dense = read_json(root / "dense" / "metrics.json") if (root / "dense" / "metrics.json").exists() else None
    complete = all((root / slug(name) / "metrics.json").exists() or _flat_cell_done(values, cells)
                   for name, values in p.panels.items())
    return {"cells": cells, "dense": dense, "complete": complete}


def _flat_cell_done(values: dict[str, Any], cells: list[dict[str, Any]]) -> bool:
    """Whether benchmarks/qpsnn/study.py's flat results hold the protocol cell ``values`` (same bits, scale,
    channel sparsity, criterion, order, fine-tuning epochs; full-precision membranes)."""
    want = {"bits": values.get("bits"), "scale": values.get("scale"), "sparsity": values.get("channel_sparsity"),
            "criterion": values.get("criterion"), "order": values.get("order"),
            "ft_epochs": values.get("finetune_epochs"), "membrane_bits": values.get("membrane_bits")}
    return any(all(c.get(k) == v for k, v in want.items()) for c in cells if "id" in c)


def _cell(text: Any) -> str:
    """A markdown table cell (a '|' inside would end the cell)."""
    return str(text).replace("|", "\\|")


def _qpsnn_report(p: Protocol, data: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
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
    candidates.sort(key=lambda c: (c.get("criterion", "svs") != "svs", c.get("tag") not in (None, "grid"),
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
# Driver.
# ---------------------------------------------------------------------------------------------

RUNNERS = {"fig3": _fig3_run, "fig5": _fig5_run, "theory": _theory_run, "qpsnn": _qpsnn_run}
REPORTERS = {"fig3": _fig3_report, "fig5": _fig5_report, "theory": _theory_report, "qpsnn": _qpsnn_report}


def _collect(study: str, p: Protocol, root: Path, references: Iterable[str | Path]) -> dict[str, Any]:
    if study == "fig3":
        return _fig3_collect(p, root, references)
    return {"fig5": _fig5_collect, "theory": _theory_collect, "qpsnn": _qpsnn_collect}[study](p, root)


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _complete(study: str, data: dict[str, Any]) -> bool:
    if "panels" in data:
        return all(pnl["complete"] for pnl in data["panels"].values())
    return bool(data.get("complete"))


def _equivalent_commands(study: str, p: Protocol, out: Path, root: Path) -> list[str]:
    cmds = []
    for name in p.panels:
        cfg = f"{out}/configs/{slug(name)}.yaml"
        seeds = ",".join(map(str, p.seeds))
        if study == "fig5":
            cmds.append(f"spikeprune lottery --config {cfg} --seeds {seeds} --variants "
                        f"{','.join(p.options['variants'])} --jobs N --out {root}/{slug(name)}")
        elif study == "fig3":
            cmds.append(f"spikeprune train --config {out}/configs/{slug(name)}-dense.yaml --seed S "
                        f"--out {root}/{slug(name)}/dense-seed-S   # for S in {seeds}")
            cmds.append(f"spikeprune edgepopup --config {cfg} --seeds {seeds} --jobs N "
                        + " ".join(f"--reference {root}/{slug(name)}/dense-seed-{s}" for s in p.seeds)
                        + f" --out {root}/{slug(name)}")
        elif study == "qpsnn":
            cmds.append(f"spikeprune compress --config {cfg} --checkpoint {root}/dense/checkpoint.safetensors "
                        f"--out {root}/{slug(name)}")
    if study == "qpsnn":
        cmds.insert(0, f"spikeprune train --config {out}/configs/dense.yaml --out {root}/dense")
    if study == "theory":
        from spikeprune.theory.perturb import parse_perturbation

        cmds.append(f"spikeprune train --config {out}/configs/flips.yaml --out {root}/dense")
        for spec in p.options["perturbations"]:
            cmds.append(f"spikeprune analyze flips --checkpoint {root}/dense/checkpoint.safetensors --perturb {spec} "
                        f"--samples {p.options['samples']} --p-sup {p.options['p_sup']} --out {root}/flips/{parse_perturbation(spec).label}")
        for s in p.options["slth"]:
            cmds.append(f"spikeprune theory slth --N {s['N']} --L {s['L']} --T {s['T']} --eps {s['eps']} "
                        f"--trials {s['trials']} --equality-trials {s['equality_trials']} --samples {s['samples']} "
                        f"--out {root}/slth/N{s['N']}_L{s['L']}_T{s['T']}_eps{s['eps']:g}")
    return cmds


def _write_configs(study: str, p: Protocol, out: Path) -> None:
    for name, values in p.panels.items():
        write_text(out / "configs" / f"{slug(name)}.yaml", _yaml(values))
        if study == "fig3":
            dense = values if p.options["dense"] == "preset" else p.options["dense"]
            write_text(out / "configs" / f"{slug(name)}-dense.yaml", _yaml(fields_of(TrainConfig, dense)))
    if study == "qpsnn":
        first = next(iter(p.panels.values()))
        dense = first if p.options["dense"] == "shared" else p.options["dense"]
        write_text(out / "configs" / "dense.yaml", _yaml(fields_of(TrainConfig, dense)))


def write_report(study: str, scale: str, out: str | Path, root: str | Path, *, command: str,
                 references: Iterable[str | Path] = (), project_root: str | Path | None = None) -> Path:
    """Rebuild ``out/report.md`` (+ PNGs, ``report.json``) of ``study`` at ``scale`` from the runs in ``root``."""
    from spikeprune import __version__

    p = protocol(study, scale, project_root=project_root)
    out, root = check_writable_dir(out), Path(root)
    if not root.is_dir():
        raise UserError(f"no results directory at {root}")
    data = _collect(study, p, root, references)
    body, numbers = REPORTERS[study](p, data, out)
    complete = _complete(study, data)
    _write_configs(study, p, out)
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    md = [f"# {TITLES[study]} — scale `{scale}`\n",
          ("" if complete else "> **PARTIAL**: some runs of the protocol are missing or unfinished; re-run the "
           "command below to continue them (finished work is kept) and rebuild this report (with --from-results: "
           "finish the study, then rebuild).\n"),
          f"spikeprune {__version__}, {now}, {_machine()}, Python {platform.python_version()}.\n",
          "## Reproduce\n", f"```\n{command}\n```\n",
          "The same runs, one command per step (the configs are next to this report):\n",
          "```\n" + "\n".join(_equivalent_commands(study, p, out, root)) + "\n```\n",
          "## Protocol\n", f"{p.notes}. Seeds: {', '.join(map(str, p.seeds))}.\n"]
    for name, values in p.panels.items():
        md.append(f"* **{name}**: " + ", ".join(f"{k}={v}" for k, v in values.items()) + "\n")
    md += ["\n## The paper's claims\n", "".join(f"* {c}\n" for c in CLAIMS[study]),
           "\n## What we measured\n", *body,
           "\n---\nHow to read every number: docs/reports.md. Results directory: " + f"`{root}`.\n"]
    write_json(out / "report.json", {"study": study, "scale": scale, "complete": complete, "command": command,
                                     "results": str(root), "protocol": {"panels": p.panels, "seeds": p.seeds,
                                                                        "notes": p.notes},
                                     "claims": CLAIMS[study], "numbers": numbers})
    write_text(out / "report.md", "\n".join(x for x in md if x))
    return out / "report.md"


def reproduce(study: str, scale: str, out: str | Path, *, from_results: str | Path | None = None, jobs: int = 1,
              threads: int = 1, data_dir: str | None = None, references: Iterable[str | Path] = (),
              command: str | None = None, project_root: str | Path | None = None, log: Log = log) -> Path:
    """Run ``study`` at ``scale`` into ``out/runs`` (skipped with ``from_results``), then write the report.

    Returns the path of ``report.md``. Resumable: finished runs are not repeated.
    """
    p = protocol(study, scale, project_root=project_root)
    if from_results is not None and not Path(from_results).is_dir():
        raise UserError(f"--from-results {from_results} is not a directory")
    out = check_writable_dir(out)
    root = Path(from_results) if from_results is not None else out / "runs"
    if from_results is None:
        RUNNERS[study](p, root, out, jobs, threads, data_dir, log)
    command = command or (f"spikeprune reproduce {study} --scale {scale} --out {out}"
                          + (f" --from-results {from_results}" if from_results is not None else ""))
    path = write_report(study, scale, out, root, command=command, references=references, project_root=project_root)
    if log:
        log(f"reproduce {study}: report {path}")
    return path
