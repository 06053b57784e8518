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

Session 2 re-plan (protocol R, one reduced-budget queue; see R_LIMIT below and RESULTS.md):

    OMP_NUM_THREADS=1 nohup python benchmarks/edgepopup/study.py run --queue R >> runs/edgepopup_study/queueR.log 2>&1 &

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
    # finished = every requested density has its result.json (a sweep's results.json says "complete" for
    # the densities of ITS command only, and a later job may ask the same folder for more densities)
    from spikeprune.tickets.edgepopup import RESULT_FILE, run_dir_name

    return name, argv + refs, [out / run_dir_name(float(d)) / RESULT_FILE for d in densities.split(",")]


# Protocol R (session 2, reduced budget): the machine gave this study ~0.45 of one core for ~100 min,
# which affords ~1500 width-1 steps in all (measured ~4 s per step at load ~9), i.e. about 3 of the
# 30 full epochs that protocol F above (15 searches x 2 epochs) would need.
# So every search of protocol R sees the first R_LIMIT training images once (1 epoch = 128 steps of
# 128; lr 0.1 throughout: the cosine schedule steps once per epoch, so one epoch never anneals) and is
# evaluated on the FULL 10k test set. All runs of protocol R
# (grid, width 2, other seeds, the dense baseline with the same budget) share that budget, so they
# compare with each other; the 10-epoch dense network stays the acceptance reference.
R_LIMIT = 16384
R_EPOCHS = 1
R_ORDER = "0.5,0.3,0.7,0.9,0.1"  # most informative first (Ramanujan's best is ~0.5): a cut-off keeps them
R_EXTRA = ("--train-limit", str(R_LIMIT))


def r_search(seed: int, densities: str, width: float = 1.0) -> tuple[str, list[str], Path]:
    return search_job(seed, width=width, densities=densities, epochs=R_EPOCHS, tag="_r", extra=R_EXTRA)


def r_ranked() -> list[float]:
    """Densities of the seed-0 protocol-R grid, best test accuracy first (the grid runs before this)."""
    found = []
    for f in (RUNS / "ep_w1_s0_r").glob("density-*/result.json"):
        r = json.loads(f.read_text())
        found.append((r["test_accuracy"], r["density"]))
    if not found:
        sys.exit("protocol R: the seed-0 grid has no finished density yet")
    return [d for _, d in sorted(found, reverse=True)]


def r_dense(seed: int) -> tuple[str, list[str], Path]:
    out = RUNS / f"dense_w1_s{seed}_r"
    return (out.name, ["train", *COMMON, "--width", "1.0", "--seed", str(seed), "--epochs", str(R_EPOCHS),
                       *R_EXTRA, "--out", str(out), "--resume"], out / "metrics.json")


def _csv(ds: list[float]) -> str:
    return ",".join(f"{d:g}" for d in ds)


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
    # protocol R, in order of information per CPU second (a cut-off leaves the most useful prefix).
    # Measured at the start (load ~8-11): one width-1 search 670-1030 s, width 2 890 s (load ~6):
    # 1. densities 0.5 and 0.3 at seed 0; 2. the explanation experiment: width 2 at the better of the
    # two; 3. dense training with the same budget (is the gap the budget or the untrained weights?);
    # 4. densities 0.7 and 0.9 at seed 0; 5. seeds 1, 2 at the best density (the acceptance's mean of
    # 3 seeds); 6. density 0.1 at seed 0 (protocol F measured it at 3 seeds already); 6b. width 2 at
    # density 0.5 for seeds 1, 2; 7. seeds 1, 2 at
    # the second-best density; 8. width 2 there; 9. seeds 1, 2 on the rest of the grid.
    "R": [lambda: r_search(0, "0.5,0.3"),
          lambda: r_search(0, _csv(r_ranked()[:1]), width=2.0),
          lambda: r_dense(0),
          lambda: r_search(0, "0.5,0.3,0.7,0.9"),
          lambda: r_search(1, _csv(r_ranked()[:1])),
          lambda: r_search(2, _csv(r_ranked()[:1])),
          lambda: r_search(0, R_ORDER),
          # the width experiment at 3 seeds (was seed 0 only): width 2, density 0.5 (where seeds 0-2 of
          # width 1 exist; 0.5 and 0.7 tie within the seed spread at width 1)
          lambda: r_search(1, "0.5", width=2.0),
          lambda: r_search(2, "0.5", width=2.0),
          lambda: r_search(1, _csv(r_ranked()[:2])),
          lambda: r_search(2, _csv(r_ranked()[:2])),
          lambda: r_search(0, _csv(r_ranked()[:2]), width=2.0),
          lambda: r_search(1, _csv(r_ranked())),
          lambda: r_search(2, _csv(r_ranked()))],
    # session 3: the explanation experiments of RESULTS.md's reading, same data as protocol R, density 0.5.
    # (a) BN: is the fixed firing regime of non-affine BN the limit? --affine-bn trains BN gain/bias
    #     (the network is then no longer untrained: result.json says so), seeds 0-2, 128 steps.
    # (b) budget: does the untrained subnetwork keep improving with more search steps? seed 0 with 2 and
    #     4 passes over the same 16 384 images (256 / 512 steps; cosine per epoch now anneals).
    "X": [lambda: r_search_x(0, "_r_affine", 1, ("--affine-bn",)),
          lambda: r_search_x(0, "_r_e4", 4),
          lambda: r_search_x(1, "_r_affine", 1, ("--affine-bn",)),
          lambda: r_search_x(2, "_r_affine", 1, ("--affine-bn",)),
          lambda: r_search_x(0, "_r_e2", 2)],
}
QUEUES["RX"] = QUEUES["R"] + QUEUES["X"]


def r_search_x(seed: int, tag: str, epochs: int, extra: tuple[str, ...] = ()) -> tuple[str, list[str], Path]:
    return search_job(seed, densities="0.5", epochs=epochs, tag=tag, extra=R_EXTRA + extra)


def done(markers: Path | list[Path]) -> bool:
    return all(m.exists() for m in ([markers] if isinstance(markers, Path) else markers))


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
