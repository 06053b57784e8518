"""Fashion-MNIST lottery-ticket study: IMP (magnitude), SF-IMP-1, SF-IMP-2 and random pruning, 3 seeds.

Protocol (sized for 2 CPU cores shared by six people; RESULTS.md says why): convnet width 0.5,
T = 4, bf16 autocast, the first 10 000 training images (``train_limit``) and the full 10 000 test
images. Dense training 4 epochs (SGD 0.1, momentum 0.9, wd 5e-4, cosine, batch 128); rewind to
epoch 1; every round retrains 3 epochs from the rewind state with a fresh cosine schedule (Kim et
al.). Each round removes p = 1 - 0.75^2 = 43.75 % of the surviving weights, 7 rounds: the densities
0.75^2k are every other level of Kim et al.'s p = 25 % schedule, including 90.0 % and 98.2 %
sparsity, at half the rounds.

One dense run per seed is shared by all variants (same TrainConfig; each variant's ``dense/`` is a
hard-linked copy). Work order (``plan``): all four variants of the first seed, then IMP on the other
seeds, then the other variants seed by seed, so a partial study holds the most informative complete
curves first. Every phase is resumable: re-running the same command continues where it stopped.

    # one single-threaded worker (or several: --worker i --workers n), then the aggregate:
    OMP_NUM_THREADS=1 python benchmarks/lottery/study.py --root runs/lottery_study --worker 0 --workers 1
    python benchmarks/lottery/study.py --root runs/lottery_study --aggregate

Issue 14 study (b), the variants of ``L2_STUDY`` (every criterion with the l2 layer allocation), paired
against IMP (l2 allocation); files ``l2_study*`` next to this script:

    OMP_NUM_THREADS=1 nohup nice -n 19 python benchmarks/lottery/study.py --root runs/l2_study --l2-study &
    python benchmarks/lottery/study.py --root runs/l2_study --l2-study --aggregate
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from spikeprune.engine.data import load_dataset
from spikeprune.core.io import write_json, write_text
from spikeprune.tickets.lottery import LotteryConfig, collect_rows, run_lottery, train_dense
from spikeprune.report.plots import plot_accuracy_vs_sparsity
from spikeprune.report.tables import format_table, summarize

HERE = Path(__file__).resolve().parent
BASE = dict(model="convnet", dataset="fashion_mnist", width=0.5, timesteps=4, bf16=True, train_limit=10000,
            epochs=4, rewind_epoch=1, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine")
P = 1 - 0.75 ** 2
ROUNDS = 7
VARIANTS = {
    "IMP (magnitude)": dict(variant="imp", prune_fraction=P, rounds=ROUNDS),
    "SF-IMP-1": dict(variant="sf-imp-1", prune_fraction=P, rounds=ROUNDS),
    "SF-IMP-2": dict(variant="sf-imp-2", prune_fraction=P, rounds=ROUNDS),
    "random": dict(variant="imp", criterion="random", prune_fraction=P, rounds=ROUNDS),
}
#: the firing-aware criterion proposed after the first results (RESULTS.md §2), run as an extra variant
#: and the test of RESULTS.md §1's allocation explanation (session 3): magnitude IMP whose global ranking
#: compares layers after l2-normalising each layer's scores (the best allocation on digits, §2c)
EXTRA = {"SF-IMP-1 (sf-rms)": dict(variant="sf-imp-1", criterion="sf-rms", prune_fraction=P, rounds=ROUNDS),
         "IMP (l2 allocation)": dict(variant="imp", normalize="l2", prune_fraction=P, rounds=ROUNDS),
         # issue 14 study (b): does a firing-aware criterion beat magnitude once both use the l2 layer
         # allocation (which moved IMP by +11.7 pt at 98 %)? Compared pairwise with "IMP (l2 allocation)".
         "SF-IMP-1 (l2)": dict(variant="sf-imp-1", normalize="l2", prune_fraction=P, rounds=ROUNDS),
         "SF-IMP-1 (sf-rms, l2)": dict(variant="sf-imp-1", criterion="sf-rms", normalize="l2", prune_fraction=P,
                                       rounds=ROUNDS),
         "SF-IMP-2 (l2)": dict(variant="sf-imp-2", normalize="l2", prune_fraction=P, rounds=ROUNDS)}
#: the variants of issue 14's study (b), the first being the baseline of its paired differences
L2_STUDY = ["IMP (l2 allocation)", "SF-IMP-1 (l2)", "SF-IMP-1 (sf-rms, l2)", "SF-IMP-2 (l2)"]
SLUG = {"IMP (magnitude)": "imp", "SF-IMP-1": "sf-imp-1", "SF-IMP-2": "sf-imp-2", "random": "random",
        "SF-IMP-1 (sf-rms)": "sf-imp-1-rms", "IMP (l2 allocation)": "imp-l2", "SF-IMP-1 (l2)": "sf-imp-1-l2",
        "SF-IMP-1 (sf-rms, l2)": "sf-imp-1-rms-l2", "SF-IMP-2 (l2)": "sf-imp-2-l2"}


def config(name: str, seed: int, rounds: int | None = None) -> LotteryConfig:
    v = dict({**VARIANTS, **EXTRA}[name])
    if rounds is not None:
        v["rounds"] = rounds
    return LotteryConfig(**BASE, **v, seed=seed)


def run_dir(root: Path, name: str, seed: int) -> Path:
    return root / f"seed{seed}" / SLUG[name]


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def plan(seeds: list[int], names: list[str]) -> list[tuple[int, str]]:
    """The order of the (seed, variant) runs, most informative first: every variant of the first seed
    (one complete comparison), then IMP on the other seeds (the acceptance criterion is IMP's mean over
    seeds), then the other variants seed by seed."""
    first, rest = seeds[:1], seeds[1:]
    order = [(s, n) for s in first for n in names]
    order += [(s, n) for s in rest for n in names if n == "IMP (magnitude)"]
    order += [(s, n) for s in rest for n in names if n != "IMP (magnitude)"]
    return order


def work(root: Path, seeds: list[int], worker: int, workers: int, names: list[str] | None = None) -> None:
    dataset = load_dataset("fashion_mnist")
    table = {**VARIANTS, **EXTRA}
    # 1. dense runs: seed s belongs to worker s % workers; a worker needing another's waits for it.
    def ensure_dense(seed: int) -> None:
        first = run_dir(root, "IMP (magnitude)", seed)
        if seeds.index(seed) % workers == worker:
            train_dense(config("IMP (magnitude)", seed), first, resume=True, dataset=dataset, log=log)
        dense = first / "dense"
        while not ((dense / "metrics.json").exists() and (dense / "rewind.safetensors").exists()):
            time.sleep(20)

    # 2. the (seed, variant) runs in plan order, dealt out to the workers in turn; every run resumes.
    for i, (seed, name) in enumerate(plan(seeds, list(names or VARIANTS))):
        if i % workers != worker:
            continue
        ensure_dense(seed)
        out = run_dir(root, name, seed)
        shared = run_dir(root, "IMP (magnitude)", seed) / "dense"
        if not (out / "dense").exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(shared, out / "dense", copy_function=os.link)
        for k in range(1, table[name]["rounds"] + 1):
            tick = time.perf_counter()
            result = run_lottery(config(name, seed, rounds=k), out, resume=True, dataset=dataset, log=None)
            row = result.rows[-1]
            log(f"worker {worker}: {name} seed {seed} round {row['round']}: sparsity {row['sparsity']:.4f} "
                f"acc {row['test_accuracy']:.4f} ({time.perf_counter() - tick:.0f} s)")


def paired(per_seed: dict[str, dict[int, list[dict]]], baseline: str) -> dict[str, list[dict]]:
    """Paired differences against ``baseline``: for every other variant, per seed that both finished and
    per round k, ``test_accuracy(variant, k) - test_accuracy(baseline, k)`` (the same seed's dense network,
    the same sparsity schedule), then mean ± 95 % CI over those seeds (``summarize``; ``n`` = seeds)."""
    base = per_seed.get(baseline, {})
    out = {}
    for name, runs in per_seed.items():
        if name == baseline:
            continue
        pairs = []
        for s, rows in runs.items():
            if s not in base:
                continue
            ref = {r["round"]: r for r in base[s]}
            pairs.append([{**r, "diff": r["test_accuracy"] - ref[r["round"]]["test_accuracy"]}
                          for r in rows if r["round"] in ref and r["round"] > 0])
        pairs = [p for p in pairs if p]
        if pairs:
            out[name] = summarize(pairs, metrics=("diff",), require_all=False)
    return out


def aggregate(root: Path, seeds: list[int], dest: Path, paired_against: str | None = None,
              stem: str = "fmnist_lottery") -> None:
    series, per_seed = {}, {}
    for name in {**VARIANTS, **EXTRA}:
        found = {s: collect_rows(run_dir(root, name, s)) for s in seeds}
        found = {s: rows for s, rows in found.items() if len(rows) > 1}  # at least one finished round
        if not found:
            continue
        runs = list(found.values())
        per_seed[name] = found
        series[name] = summarize(runs, metrics=("test_accuracy", "val_accuracy", "best_val_accuracy", "firing_rate"),
                                 require_all=False)
    if not series:
        raise SystemExit(f"no finished rounds under {root}")
    # every variant of a seed starts from the same dense run, so any series' round 0 is the dense mean
    dense = next(iter(series.values()))[0]["test_accuracy"]
    n_seeds = min(p["n"] for s in series.values() for p in s)
    partial = (any(len(s) < {**VARIANTS, **EXTRA}[n]["rounds"] + 1 for n, s in series.items())
               or n_seeds < len(seeds))
    title = (f"Fashion-MNIST (10k train), convnet w=0.5, T=4: lottery tickets\n(mean ± 95 % CI, "
             + (f"{len(seeds)} seeds)" if not partial else f"PARTIAL: {n_seeds}-{len(seeds)} seeds per point)"))
    plot_accuracy_vs_sparsity(series, dest / f"{stem}.png", title=title, reference=dense,
                              reference_label="dense (mean)")
    write_json(dest / f"{stem}.json", {"protocol": BASE, "variants": {**VARIANTS, **EXTRA}, "seeds": seeds,
                                              "partial": partial, "summary": series,
                                              "per_seed": {n: {str(s): r for s, r in v.items()}
                                                           for n, v in per_seed.items()}})
    # a flat CSV of every (variant, seed, round)
    lines = ["variant,seed,round,sparsity,val_accuracy,test_accuracy,firing_rate,seconds,prune_seconds"]
    for name, runs in per_seed.items():
        for s, rows in runs.items():
            for r in rows:
                val = "" if r.get("val_accuracy") is None else f"{r['val_accuracy']:.4f}"  # runs before issue 14: none
                lines.append(f"{SLUG[name]},{s},{r['round']},{r['sparsity']:.6f},{val},{r['test_accuracy']:.4f},"
                             f"{r['firing_rate']:.5f},{r['seconds']:.1f},"
                             f"{r['prune_seconds']:.2f}")
    write_text(dest / f"{stem}.csv", "\n".join(lines) + "\n")
    # align the table by sparsity level
    levels = sorted({round(p["sparsity"], 4) for s in series.values() for p in s})
    aligned = {name: [next((p for p in s if round(p["sparsity"], 4) == lv), None) for lv in levels]
               for name, s in series.items()}
    # paired with the same seed's dense network: accuracy(round k) - accuracy(dense), per seed, then mean ± CI
    deltas = {name: summarize([[{**r, "delta": r["test_accuracy"] - rows[0]["test_accuracy"]} for r in rows]
                               for rows in per_seed[name].values()], metrics=("delta",), require_all=False)
              for name in series}
    delta_aligned = {name: [next((p for p in s if round(p["sparsity"], 4) == lv), None) for lv in levels]
                     for name, s in deltas.items()}

    def cell(p, metric: str, sign: str = "") -> str:
        if p is None:
            return ""
        value = f"{100 * p[metric]:{sign}.2f}"
        # a confidence interval needs two seeds; n = 1 is a single run
        return (value + f" ± {100 * p[metric + '_ci']:.2f}" if p["n"] > 1 else value) + f" (n={p['n']})"

    table = ["Test accuracy (%), mean ± 95 % CI over seeds (n = seeds with that round finished):", "",
             "| sparsity | " + " | ".join(aligned) + " |", "|---:|" + "---:|" * len(aligned)]
    for i, lv in enumerate(levels):
        table.append(f"| {100 * lv:.1f} % | " + " | ".join(cell(aligned[n][i], "test_accuracy") for n in aligned) + " |")
    table += ["", "Change against the same seed's dense network (percentage points), mean ± 95 % CI:", "",
              "| sparsity | " + " | ".join(aligned) + " |", "|---:|" + "---:|" * len(aligned)]
    for i, lv in enumerate(levels[1:], start=1):
        table.append(f"| {100 * lv:.1f} % | " + " | ".join(cell(delta_aligned[n][i], "delta", "+") for n in aligned)
                     + " |")
    diffs = paired(per_seed, paired_against) if paired_against else {}
    if diffs:
        diff_aligned = {name: [next((p for p in s if round(p["sparsity"], 4) == lv), None) for lv in levels]
                        for name, s in diffs.items()}
        table += ["", f"Paired difference against {paired_against} (percentage points; per seed, the same round "
                  "of the same dense network), mean ± 95 % CI over seeds:", "",
                  "| sparsity | " + " | ".join(diff_aligned) + " |", "|---:|" + "---:|" * len(diff_aligned)]
        for i, lv in enumerate(levels[1:], start=1):
            table.append(f"| {100 * lv:.1f} % | " + " | ".join(cell(diff_aligned[n][i], "diff", "+")
                                                              for n in diff_aligned) + " |")
        write_json(dest / f"{stem}_paired.json", {"baseline": paired_against, "paired": diffs})
    write_text(dest / f"{stem}_table.md", "\n".join(table) + "\n")
    print("\n".join(table))
    print(f"\n{'PARTIAL: ' if partial else ''}finished rounds per variant and seed: "
          + "; ".join(f"{n}: " + ", ".join(f"seed {s} {len(r) - 1}" for s, r in v.items()) for n, v in per_seed.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/lottery_study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--variants", nargs="+", help="only these variants (names of VARIANTS or EXTRA)")
    parser.add_argument("--aggregate", action="store_true", help="only rebuild the table/plot from the run files")
    parser.add_argument("--dest", default=str(HERE), help="where the aggregate goes")
    parser.add_argument("--stem", default="fmnist_lottery", help="file-name stem of the aggregate's files")
    parser.add_argument("--paired-against", help="aggregate: also tabulate every variant's paired difference "
                        "against this one (e.g. 'IMP (l2 allocation)')")
    parser.add_argument("--l2-study", action="store_true", help="issue 14 study (b): the variants of L2_STUDY "
                        "(aggregate: paired against its first, files l2_study.*)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root)
    if args.l2_study:
        args.variants = args.variants or L2_STUDY
        args.paired_against = args.paired_against or L2_STUDY[0]
        args.stem = "l2_study" if args.stem == "fmnist_lottery" else args.stem
    if args.aggregate:
        aggregate(root, args.seeds, Path(args.dest), args.paired_against, args.stem)
    else:
        unknown = set(args.variants or []) - set(VARIANTS) - set(EXTRA)
        if unknown:
            raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {sorted({**VARIANTS, **EXTRA})}")
        work(root, args.seeds, args.worker, args.workers, args.variants)


if __name__ == "__main__":
    main()
