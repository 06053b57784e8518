"""Edge-popup study (issue 4): untrained subnetworks of a random convnet vs the dense TRAINED convnet.

Fashion-MNIST, convnet (width 1.0, T = 4, the foundation's reference architecture), densities
0.1, 0.3, 0.5, 0.7, 0.9 (LTH-SNN Fig. 3's grid), seeds 0, 1, 2, against the dense convnet trained
10 epochs with default hyperparameters (seed 0 by the lead at /work/runs/fmnist_convnet_v1, seeds
1 and 2 here). Every job is one ``spikeprune`` command run with ``--resume``, so re-running this
script continues a killed study without redoing finished work (finished densities are skipped,
an interrupted one resumes at its last epoch).

    python benchmarks/edgepopup/study.py run --queue A     # queues run one after another
    python benchmarks/edgepopup/study.py run --queue B     # (a second, parallel process)
    python benchmarks/edgepopup/summarize.py               # tables + Fig.-3-style plot here

Single-threaded (OMP_NUM_THREADS=1) because the machine's 2 cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUNS = ROOT / "runs" / "edgepopup_study"
SPIKEPRUNE = [sys.executable, "-m", "spikeprune.cli"]
DENSITIES = "0.1,0.3,0.5,0.7,0.9"
SEARCH_EPOCHS = 2  # what the shared 2-core machine affords for 15 searches (RESULTS.md)
LEAD_DENSE = Path("/work/runs/fmnist_convnet_v1")
COMMON = ["--model", "convnet", "--dataset", "fashion_mnist", "--no-progress"]


def dense_dir(seed: int) -> Path:
    return LEAD_DENSE if seed == 0 and (LEAD_DENSE / "metrics.json").exists() else RUNS / f"dense_w1_s{seed}"


def dense_job(seed: int, width: float = 1.0) -> tuple[str, list[str], Path]:
    out = RUNS / f"dense_w{width:g}_s{seed}"
    return (f"dense_w{width:g}_s{seed}", ["train", *COMMON, "--width", str(width), "--seed", str(seed),
                                          "--epochs", "10", "--out", str(out), "--resume"], out / "metrics.json")


def search_job(seed: int, width: float = 1.0, densities: str = DENSITIES, epochs: int = SEARCH_EPOCHS,
               tag: str = "", extra: tuple[str, ...] = ()) -> tuple[str, list[str], Path]:
    name = f"ep_w{width:g}_s{seed}{tag}"
    out = RUNS / name
    # the dense references that exist when the job starts (the study's report uses all of them anyway)
    refs = [a for s in (0, 1, 2) if (dense_dir(s) / "metrics.json").exists()
            for a in ("--reference", str(dense_dir(s)))]
    argv = ["edgepopup", *COMMON, "--width", str(width), "--seed", str(seed), "--epochs", str(epochs),
            "--densities", densities, "--out", str(out), "--resume", *extra]
    return name, argv + refs, out / "results.json"


QUEUES = {  # jobs are built when they start (so a sweep sees the dense references finished before it)
    # A, B, C: the main grid, one seed each, run in parallel (single-threaded processes)
    "A": [lambda: search_job(0)],
    "B": [lambda: search_job(1)],
    "C": [lambda: search_job(2)],
    # the explanation experiment: is the narrow network the limit? the same search (seed 0, density
    # 0.5, 2 epochs) in a convnet of twice the width (4x the weights), against the same dense width-1 line
    "W": [lambda: search_job(0, width=2.0, densities="0.5")],
    # dense baselines of seeds 1 and 2 (the lead trained seed 0)
    "dense": [lambda: dense_job(1), lambda: dense_job(2)],
}


def done(marker: Path) -> bool:
    if not marker.exists():
        return False
    if marker.name == "results.json":
        return bool(json.loads(marker.read_text()).get("complete"))
    return True


def run_queue(name: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for make in QUEUES[name]:
        job, argv, marker = make()
        if done(marker):
            print(f"[{job}] done", flush=True)
            continue
        print(f"[{job}] spikeprune {' '.join(argv)}", flush=True)
        code = subprocess.call(SPIKEPRUNE + argv, env=env, cwd=ROOT)
        if code:
            sys.exit(f"[{job}] failed with exit code {code}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--queue", choices=sorted(QUEUES), required=True)
    args = parser.parse_args()
    run_queue(args.queue)
