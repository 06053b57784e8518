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

from spikeprune.io import write_json, write_text  # noqa: E402
from spikeprune.report import plot_subnetwork_accuracy  # noqa: E402

GRID = [float(d) for d in DENSITIES.split(",")]
FIELDS = ["run", "width", "seed", "density", "sparsity", "epochs", "init", "affine_bn", "test_accuracy",
          "best_test_accuracy", "exported_test_accuracy", "train_accuracy", "firing_rate", "seconds"]


def dense_references() -> dict[int, dict]:
    refs = {}
    for seed in (0, 1, 2):
        f = dense_dir(seed) / "metrics.json"
        if f.exists():
            m = json.loads(f.read_text())
            refs[seed] = {"run": str(dense_dir(seed)), "test_accuracy": m["test_accuracy"],
                          "best_test_accuracy": m["best_test_accuracy"], "train_accuracy": m["train_accuracy"],
                          "epochs": m["epochs"], "width": m["config"]["width"]}
    return refs


def rows() -> list[dict]:
    out = []
    for f in sorted(RUNS.glob("ep_*/density-*/result.json")):
        r = json.loads(f.read_text())
        out.append({"run": f.parent.parent.name, **{k: r.get(k) for k in FIELDS if k != "run"}})
    return out


def empty_filters() -> list[dict]:
    """Per density (seed 0): fraction of each layer's output units left with NO kept input weight.

    A per-layer density applied to the 288-weight encoding layer (32 filters x 9) leaves ~29 weights
    at density 0.1: most filters then see nothing at all (a structural limit of uniform per-layer k).
    """
    from spikeprune.masks import Mask

    out = []
    for f in sorted(RUNS.glob("ep_w1_s0/density-*/mask.safetensors")):
        mask = Mask.load(f)
        row = {"density": float(f.parent.name.split("-", 1)[1])}
        for name, keep in mask.items():
            row[name] = float((keep.flatten(1).sum(1) == 0).float().mean())
        out.append(row)
    return out


def main() -> None:
    data = rows()
    refs = dense_references()
    ref_acc = [r["test_accuracy"] for r in refs.values()]
    dense_mean = statistics.fmean(ref_acc) if ref_acc else None
    buf = [",".join(FIELDS)]
    for r in data:
        buf.append(",".join(str(r[k]) for k in FIELDS))
    write_text(HERE / "results.csv", "\n".join(buf) + "\n")

    main_rows = [r for r in data if r["run"].startswith("ep_w1_s") and r["run"][len("ep_w1_s"):].isdigit()]
    per_density = []
    for d in GRID:
        accs = [r["test_accuracy"] for r in main_rows if r["density"] == d]
        seeds = sorted(r["seed"] for r in main_rows if r["density"] == d)
        if not accs:
            continue
        mean = statistics.fmean(accs)
        per_density.append({
            "density": d, "sparsity": round(1 - d, 6), "seeds": seeds, "n": len(accs), "mean": mean,
            "std": statistics.stdev(accs) if len(accs) > 1 else None, "min": min(accs), "max": max(accs),
            "relative_to_dense": mean / dense_mean if dense_mean else None,
            "exports_match": all(r["exported_test_accuracy"] == r["test_accuracy"] for r in main_rows
                                 if r["density"] == d),
        })
    best = max(per_density, key=lambda p: p["mean"]) if per_density else None
    others = sorted({r["run"] for r in data} - {r["run"] for r in main_rows})
    experiments = {run: [{k: r[k] for k in ("density", "width", "seed", "epochs", "affine_bn", "test_accuracy",
                                             "train_accuracy")} | {"relative_to_dense": r["test_accuracy"] / dense_mean
                                                                   if dense_mean else None}
                         for r in data if r["run"] == run] for run in others}
    missing = [f"seed {s} density {d}" for s in (0, 1, 2) for d in GRID
               if not any(r["seed"] == s and r["density"] == d for r in main_rows)]
    summary = {
        "dense_trained": {"per_seed": refs, "mean": dense_mean},
        "edgepopup_convnet_w1": per_density,
        "best_density": best,
        "target": "best density mean >= 0.97 x dense trained mean",
        "target_met": (best["relative_to_dense"] >= 0.97) if best and dense_mean else None,
        "experiments": experiments,
        "empty_output_units_seed0": empty_filters(),
        "complete": not missing,
        "missing": missing,
    }
    write_json(HERE / "summary.json", summary)
    if main_rows:
        series = {"ep_w2_s0": "untrained subnetwork, width 2 (seed 0)"}
        plot_subnetwork_accuracy(
            [{"sparsity": r["sparsity"], "accuracy": r["test_accuracy"], "series": "untrained subnetwork, width 1"}
             for r in main_rows]
            + [{"sparsity": r["sparsity"], "accuracy": r["test_accuracy"], "series": series[r["run"]]}
               for r in data if r["run"] in series],
            HERE / "fig3_fashion_mnist_convnet.png", reference=ref_acc,
            title="Fashion-MNIST convnet (width 1, T=4): untrained subnetworks (edge-popup, "
                  f"{main_rows[0]['epochs']} epochs)\nvs the dense network trained 10 epochs"
                  + ("" if not missing else "  [PARTIAL]"),
            reference_label="dense trained, width 1", fraction_line=0.97)
    print(json.dumps({k: summary[k] for k in ("best_density", "target_met", "complete")}, indent=1))
    for p in per_density:
        print(f"density {p['density']:.1f}: {100 * p['mean']:.2f}% (n={p['n']}) "
              f"= {100 * (p['relative_to_dense'] or 0):.1f}% of dense")


if __name__ == "__main__":
    main()
