"""Study (b) of docs/theory.md: spike flips of a trained Fashion-MNIST convnet vs LTH-SNN's bounds.

    OMP_NUM_THREADS=1 python benchmarks/theory/flips_study.py run [CHECKPOINT]   # resumable
    python benchmarks/theory/flips_study.py report

`run` executes, for every perturbation below, exactly

    spikeprune analyze flips --checkpoint CHECKPOINT --perturb <spec> --samples 512 --batch-size 128 \\
        --out benchmarks/theory/results/flips/<label>

(skipping perturbations whose flips.json exists) and `report` rebuilds flips_summary.csv and
flips_summary.png from those files (and redraws each flips-<label>.png from its flips.json).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "flips"
CHECKPOINT = "/work/runs/fmnist_convnet_v1/checkpoint.safetensors"
PERTURBATIONS = [
    "prune:0.5:magnitude", "prune:0.8:magnitude", "prune:0.95:magnitude",
    "prune:0.5:sf", "prune:0.8:sf", "prune:0.95:sf",
    "quantize:8", "quantize:4", "quantize:2",
    "quantize:8:max", "quantize:4:max", "quantize:2:max",
    "weight-noise:0.01", "weight-noise:0.05", "weight-noise:0.2",
    "input-noise:0.1",
]


def run(checkpoint: str) -> None:
    from spikeprune.cli import main
    from spikeprune.theory.perturb import parse_perturbation

    torch.set_num_threads(1)
    for spec in PERTURBATIONS:
        out = RESULTS / parse_perturbation(spec).label
        if (out / "flips.json").exists():
            continue
        argv = ["analyze", "flips", "--checkpoint", checkpoint, "--perturb", spec, "--samples", "512",
                "--batch-size", "128", "--out", str(out)]
        print("spikeprune " + " ".join(argv), flush=True)
        if main(argv) != 0:
            sys.exit(f"failed: {spec}")


def report() -> None:
    from spikeprune.report.plots import plot_flip_summary, plot_flips
    from spikeprune.theory.flips import MODES, FlipRow, flip_summary
    from spikeprune.theory.perturb import parse_perturbation

    rows, summary = [], []
    for spec in PERTURBATIONS:
        path = RESULTS / parse_perturbation(spec).label / "flips.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        summary += data["summary"]
        names = {f for f in FlipRow.__dataclass_fields__ if f != "extra"}
        these = [FlipRow(**{k: v for k, v in r.items() if k in names}) for r in data["rows"]]
        rows += these
        # Redraw the per-perturbation figure from its JSON (same function `analyze flips` uses).
        label = parse_perturbation(spec).label
        ck = Path(data["checkpoint"])
        plot_flips(these, path.parent / f"flips-{label}.png", f"{ck.parent.name}/{ck.name}: {label}", modes=MODES)
    if not rows:
        sys.exit("no results yet: run first")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(summary[0]), lineterminator="\n")
    w.writeheader()
    for s in summary:
        w.writerow({k: ("" if v is None else (f"{v:.4g}" if isinstance(v, float) else v)) for k, v in s.items()})
    from spikeprune.core.io import write_text

    write_text(HERE / "flips_summary.csv", buf.getvalue())
    plot_flip_summary(flip_summary(rows), HERE / "flips_summary.png", modes=MODES)
    print(f"{len(summary)} (perturbation, mode, layer) lines -> {HERE / 'flips_summary.csv'}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "report"):
        sys.exit("usage: flips_study.py run [CHECKPOINT] | report")
    run(sys.argv[2] if len(sys.argv) > 2 else CHECKPOINT) if sys.argv[1] == "run" else report()
