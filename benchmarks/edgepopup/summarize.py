"""Collect the edge-popup study's finished runs into this folder: results.csv, summary.json, the plots.

    python benchmarks/edgepopup/summarize.py

Reads runs/edgepopup_study/ep_*/density-*/result.json (finished densities only, so it can be run
while the study is still going: ``summary.json`` says what is missing) and the dense trained
references (metrics.json of /work/runs/fmnist_convnet_v1 = seed 0, runs/edgepopup_study/dense_*).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from study import DENSITIES, RUNS, dense_dir  # noqa: E402

from spikeprune.core.io import write_json, write_text  # noqa: E402
from spikeprune.report.plots import plot_subnetwork_accuracy  # noqa: E402

GRID = [float(d) for d in DENSITIES.split(",")]
FIELDS = ["run", "width", "seed", "density", "sparsity", "epochs", "init", "affine_bn", "val_accuracy",
          "test_accuracy", "exported_test_accuracy", "train_accuracy", "firing_rate", "seconds"]


def dense_references() -> dict[int, dict]:
    refs = {}
    for seed in (0, 1, 2):
        f = dense_dir(seed) / "metrics.json"
        if f.exists():
            m = json.loads(f.read_text())
            refs[seed] = {"run": str(dense_dir(seed)), "test_accuracy": m["test_accuracy"],
                          "val_accuracy": m.get("val_accuracy"), "train_accuracy": m["train_accuracy"],
                          "epochs": m["epochs"], "width": m["config"]["width"]}
    return refs


def rows() -> list[dict]:
    out = []
    for f in sorted(RUNS.glob("ep_*/density-*/result.json")):
        r = json.loads(f.read_text())
        run = f.parent.parent.name
        # _r = protocol R; _r_<tag> = an explanation experiment on protocol R's data (queue X); else F
        protocol = "R" if run.endswith("_r") else "X" if "_r_" in run else "F"
        out.append({"run": run, "protocol": protocol,
                    **{k: r.get(k) for k in FIELDS if k != "run"}})
    return out


def partial_epochs() -> list[dict]:
    """Protocol-F searches cut off after their first epoch (history.csv, no result.json): labelled partial."""
    out = []
    for f in sorted(RUNS.glob("ep_w1_s*/density-*/history.csv")):
        if (f.parent / "result.json").exists() or f.parent.parent.name.endswith("_r"):
            continue
        with f.open() as fh:
            hist = list(csv.DictReader(fh))
        if hist:
            last = hist[-1]
            out.append({"run": f.parent.parent.name, "density": float(f.parent.name.split("-", 1)[1]),
                        "epochs_done": int(last["epoch"]), "test_accuracy": float(last["test_accuracy"]),
                        "status": "PARTIAL: cut off after this epoch of 2"})
    return out


def empty_filters() -> list[dict]:
    """Per finished seed-0 width-1 search: fraction of each layer's output units left with NO kept input weight.

    A per-layer density applied to the 288-weight encoding layer (32 filters x 9) leaves 29 weights
    at density 0.1, under one per filter: filters with no input at all are a structural cost of a
    uniform per-layer k (measured: 4 of 32 at density 0.1, seed 0).
    """
    from spikeprune.tickets.masks import Mask

    out = []
    for f in sorted(RUNS.glob("ep_w1_s0*/density-*/mask.safetensors")):
        mask = Mask.load(f)
        row = {"run": f.parent.parent.name, "density": float(f.parent.name.split("-", 1)[1])}
        for name, keep in mask.items():
            row[name] = float((keep.flatten(1).sum(1) == 0).float().mean())
        out.append(row)
    return out


def by_density(rows_: list[dict], dense_mean: float | None) -> list[dict]:
    per_density = []
    for d in GRID:
        sel = [r for r in rows_ if r["density"] == d]
        if not sel:
            continue
        accs = [r["test_accuracy"] for r in sel]
        mean = statistics.fmean(accs)
        per_density.append({
            "density": d, "sparsity": round(1 - d, 6), "seeds": sorted(r["seed"] for r in sel), "n": len(accs),
            "mean": mean, "std": statistics.stdev(accs) if len(accs) > 1 else None, "min": min(accs),
            "max": max(accs), "relative_to_dense": mean / dense_mean if dense_mean else None,
            "exports_match": all(r["exported_test_accuracy"] == r["test_accuracy"] for r in sel),
        })
    return per_density


def dense_same_budget() -> dict | None:
    f = RUNS / "dense_w1_s0_r" / "metrics.json"
    if not f.exists():
        return None
    m = json.loads(f.read_text())
    return {"run": str(f.parent), "test_accuracy": m["test_accuracy"], "train_accuracy": m["train_accuracy"],
            "epochs": m["epochs"], "train_limit": m["config"]["train_limit"], "seconds": m["seconds"]}


def main() -> None:
    data = rows()
    refs = dense_references()
    ref_acc = [r["test_accuracy"] for r in refs.values()]
    dense_mean = statistics.fmean(ref_acc) if ref_acc else None
    buf = [",".join(["protocol", *FIELDS])]
    for r in data:
        buf.append(",".join(str(r[k]) for k in ["protocol", *FIELDS]))
    write_text(HERE / "results.csv", "\n".join(buf) + "\n")

    def main_line(protocol: str) -> list[dict]:  # width 1, default init / BN, any seed
        suffix = "_r" if protocol == "R" else ""
        return [r for r in data if r["protocol"] == protocol and r["width"] == 1.0
                and r["run"].startswith("ep_w1_s") and r["run"].endswith(suffix)
                and r["run"][len("ep_w1_s"):len(r["run"]) - len(suffix)].isdigit()]

    proto = {p: by_density(main_line(p), dense_mean) for p in ("F", "R")}
    # the best density: protocol R's seed-0 grid decides (its densities all have seed 0); the mean over
    # the seeds that exist is reported with n
    best = max(proto["R"], key=lambda q: q["mean"]) if proto["R"] else None
    width2 = [{k: r[k] for k in ("run", "protocol", "density", "width", "seed", "epochs", "test_accuracy",
                                 "train_accuracy", "seconds")}
              | {"relative_to_dense": r["test_accuracy"] / dense_mean if dense_mean else None,
                 "width1_same_density_seed": next((q["test_accuracy"] for q in main_line(r["protocol"])
                                                   if q["density"] == r["density"] and q["seed"] == r["seed"]), None)}
              for r in data if r["width"] == 2.0]
    same_budget = dense_same_budget()
    # queue X (session 3), density 0.5, paired by seed with protocol R's untrained search
    r_half = {r["seed"]: r["test_accuracy"] for r in main_line("R") if r["density"] == 0.5}
    affine = [{"seed": r["seed"], "test_accuracy": r["test_accuracy"], "firing_rate": r["firing_rate"],
               "train_accuracy": r["train_accuracy"], "non_affine_same_seed": r_half.get(r["seed"])}
              for r in data if r["run"].endswith("_r_affine") and r["density"] == 0.5]
    r_rate = {r["seed"]: r["firing_rate"] for r in main_line("R") if r["density"] == 0.5}
    for a in affine:
        a["non_affine_firing_rate"] = r_rate.get(a["seed"])
    budget = sorted(([{"steps": 128 * r["epochs"], "epochs": r["epochs"], "seed": r["seed"],
                       "test_accuracy": r["test_accuracy"], "train_accuracy": r["train_accuracy"]}
                      for r in data if r["density"] == 0.5 and r["seed"] == 0 and r["width"] == 1.0
                      and (r["run"] == "ep_w1_s0_r" or r["run"].startswith("ep_w1_s0_r_e"))]),
                    key=lambda b: b["steps"])
    missing_r = [f"seed {s} density {d}" for s in (0, 1, 2) for d in GRID
                 if not any(r["seed"] == s and r["density"] == d for r in main_line("R"))]
    summary = {
        "dense_trained": {"per_seed": refs, "mean": dense_mean},
        "dense_trained_same_budget_as_protocol_R": same_budget,
        "protocol_F": {"what": "2 full epochs of Fashion-MNIST (938 steps of 128), session 1", "by_density":
                       proto["F"], "cut_off_after_epoch_1": partial_epochs()},
        "protocol_R": {"what": "1 epoch over the first 16384 training images (128 steps of 128), session 2",
                       "by_density": proto["R"]},
        "best_density": best,
        "target": "best density mean >= 0.97 x dense trained mean (10 epochs)",
        "target_met": (best["relative_to_dense"] >= 0.97) if best and dense_mean else None,
        "width2_experiment": width2,
        "affine_bn_experiment": {"what": "density 0.5, protocol R's data and 128 steps, BN gain/bias trained "
                                         "(the network is then not untrained)", "runs": affine,
                                 "mean": statistics.fmean(a["test_accuracy"] for a in affine) if affine else None,
                                 "non_affine_mean": statistics.fmean(a["non_affine_same_seed"] for a in affine)
                                 if affine and all(a["non_affine_same_seed"] for a in affine) else None},
        "search_budget_experiment": {"what": "density 0.5, seed 0, 1/2/4 passes over protocol R's 16384 images "
                                             "(cosine per epoch)", "runs": budget},
        "empty_output_units_seed0": empty_filters(),
        "complete": not missing_r,
        "missing_protocol_R": missing_r,
    }
    write_json(HERE / "summary.json", summary)
    points = [{"sparsity": r["sparsity"], "accuracy": r["test_accuracy"],
               "series": "untrained subnetwork, width 1, 128 steps (R)"} for r in main_line("R")]
    points += [{"sparsity": r["sparsity"], "accuracy": r["test_accuracy"],
                "series": "untrained subnetwork, width 1, 938 steps (F)"} for r in main_line("F")]
    points += [{"sparsity": 1 - w["density"], "accuracy": w["test_accuracy"],
                "series": f"untrained subnetwork, WIDTH 2, {'128' if w['protocol'] == 'R' else '938'} steps "
                          f"({w['protocol']})"} for w in width2]
    points += [{"sparsity": 0.5, "accuracy": a["test_accuracy"], "series": "BN gain/bias TRAINED, 128 steps (X)"}
               for a in affine]
    points += [{"sparsity": 0.5, "accuracy": b["test_accuracy"], "series": "untrained subnetwork, 512 steps (X)"}
               for b in budget if b["steps"] == 512]
    if points:
        reference = {"dense trained 10 epochs, width 1": ref_acc}
        if same_budget:
            reference["dense trained 128 steps (R budget), width 1"] = [same_budget["test_accuracy"]]
        plot_subnetwork_accuracy(
            points, HERE / "fig3_fashion_mnist_convnet.png", reference=reference,
            title="Fashion-MNIST convnet, T=4: edge-popup (untrained) vs dense trained"
                  + ("" if not missing_r else "\n[PARTIAL: seeds/densities missing, see summary.json]"),
            fraction_line=0.97)
    print(json.dumps({k: summary[k] for k in ("best_density", "target_met", "complete")}, indent=1))
    for p, table in proto.items():
        for q in table:
            print(f"protocol {p} density {q['density']:.1f}: {100 * q['mean']:.2f}% (n={q['n']}) "
                  f"= {100 * (q['relative_to_dense'] or 0):.1f}% of dense")
    for w in width2:
        print(f"width 2 ({w['protocol']}) density {w['density']}: {100 * w['test_accuracy']:.2f}% "
              f"(width 1: {w['width1_same_density_seed']})")
    for a in affine:
        print(f"affine BN seed {a['seed']}: {100 * a['test_accuracy']:.2f}% firing {a['firing_rate']:.3f} "
              f"(non-affine: {a['non_affine_same_seed']}, firing {a['non_affine_firing_rate']})")
    for b in budget:
        print(f"search budget {b['steps']} steps: {100 * b['test_accuracy']:.2f}% (train {b['train_accuracy']})")
    if same_budget:
        print(f"dense, same budget as R: {100 * same_budget['test_accuracy']:.2f}%")
    print("\n| protocol | width | density | sparsity | seeds: test accuracy (%) | mean ± std (%) | % of dense (91.96) |")
    print("|---|---|---|---|---|---|---|")
    for p, w in (("R", 1.0), ("R", 2.0), ("F", 1.0)):
        sel = [r for r in data if r["protocol"] == p and r["width"] == w and (w != 1.0 or r in main_line(p))]
        for d in sorted({r["density"] for r in sel}, reverse=True):
            accs = {r["seed"]: 100 * r["test_accuracy"] for r in sel if r["density"] == d}
            mean = statistics.fmean(accs.values())
            std = f" ± {statistics.stdev(accs.values()):.2f}" if len(accs) > 1 else " (n=1)"
            rel = f"{mean / (100 * dense_mean) * 100:.1f}" if dense_mean else "-"
            seeds = ", ".join(f"s{k}: {v:.2f}" for k, v in sorted(accs.items()))
            print(f"| {p} | {w:g} | {d:g} | {1 - d:g} | {seeds} | {mean:.2f}{std} | {rel} |")


if __name__ == "__main__":
    main()
