"""How should global ranking compare layers scored by different criteria? IMP on digits, 3 seeds.

convnet width 0.5, T = 4, 12 epochs (batch 64, SGD 0.1, cosine), rewind to epoch 1, 8 rounds of
p = 0.4 (density 0.6^8 = 1.7 %). Variants: IMP (magnitude, raw global ranking), random, SF-IMP-1
with each normalisation (none, budget, max, l2, mean) and, as controls for the *allocation* effect,
magnitude IMP with max and l2 normalisation, and two criterion ablations at IMP's allocation
(``sf-empirical``, ``sf-current`` and ``sf-rms`` with ``budget``). One dense run per seed is shared (hard links).

    python benchmarks/lottery/normalization_digits.py --root runs/norm_digits
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

from spikeprune.engine.data import load_dataset
from spikeprune.core.io import read_json, write_json, write_text
from spikeprune.tickets.lottery import LotteryConfig, run_lottery
from spikeprune.tickets.masks import Mask
from spikeprune.report.tables import summarize

HERE = Path(__file__).resolve().parent
BASE = dict(width=0.5, epochs=12, rewind_epoch=1, rounds=8, prune_fraction=0.4, batch_size=64)
VARIANTS = {"imp": dict(variant="imp"), "random": dict(variant="imp", criterion="random")}
for _n in ("none", "budget", "max", "l2", "mean"):
    VARIANTS[f"sf-{_n}"] = dict(variant="sf-imp-1", normalize=_n)
VARIANTS["imp-max"] = dict(variant="imp", normalize="max")
VARIANTS["imp-l2"] = dict(variant="imp", normalize="l2")
# criterion ablations at IMP's allocation (budget): the measured threshold density, and no density factor
VARIANTS["sf-empirical-budget"] = dict(variant="sf-imp-1", criterion="sf-empirical", normalize="budget")
VARIANTS["sf-current-budget"] = dict(variant="sf-imp-1", criterion="sf-current", normalize="budget")
VARIANTS["sf-rms-budget"] = dict(variant="sf-imp-1", criterion="sf-rms", normalize="budget")


def table(summary: dict, layers: dict, seed) -> str:
    """The Markdown table: test accuracy (%) mean ± 95 % CI at the last four rounds, and seed ``seed``'s
    per-layer density after the last round."""
    levels = [5, 6, 7, 8]
    lines = ["| variant | " + " | ".join(f"{100 * (1 - 0.6 ** k):.1f} %" for k in levels)
             + f" | layer density at 98.3 % (enc / conv2 / conv3 / fc), seed {seed} |",
             "|---|" + "---:|" * len(levels) + "---|"]
    for name, rows in summary.items():
        cells = [f"{100 * rows[k]['test_accuracy']:.1f} ± {100 * rows[k]['test_accuracy_ci']:.1f}" for k in levels]
        d = layers[name][seed]
        alloc = " / ".join(f"{100 * d[n]:.1f}" for n in ("features.0.conv.weight", "features.2.conv.weight",
                                                          "features.4.conv.weight", "classifier.weight"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {alloc} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/norm_digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table-only", action="store_true",
                        help="rebuild normalization_digits.md from normalization_digits.json (no training)")
    args = parser.parse_args()
    if args.table_only:
        saved = read_json(HERE / "normalization_digits.json")
        seed = str(saved["seeds"][0])  # JSON keys are strings
        text = table(saved["summary"], {n: {seed: v[seed]} for n, v in saved["final_layer_density"].items()}, seed)
        write_text(HERE / "normalization_digits.md", text)
        print(text)
        return
    torch.set_num_threads(1)
    dataset = load_dataset("digits")
    root = Path(args.root)
    runs: dict[str, list] = {}
    layers: dict[str, dict] = {}
    for seed in args.seeds:
        for name, v in VARIANTS.items():
            out = root / f"seed{seed}" / name
            shared = root / f"seed{seed}" / "imp" / "dense"
            if name != "imp" and not (out / "dense").exists():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copytree(shared, out / "dense", copy_function=os.link)
            result = run_lottery(LotteryConfig(seed=seed, **BASE, **v), out, resume=True, dataset=dataset, log=None)
            runs.setdefault(name, []).append(result.rows)
            last = Mask.load(out / f"round_{BASE['rounds']:02d}" / "mask.safetensors")
            layers.setdefault(name, {})[seed] = {r["name"]: r["density"] for r in last.report()[:-1]}
            print(seed, name, " ".join(f"{r['test_accuracy']:.3f}" for r in result.rows), flush=True)
    summary = {name: summarize(rows) for name, rows in runs.items()}
    text = table(summary, layers, args.seeds[0])
    print(text)
    write_text(HERE / "normalization_digits.md", text)
    write_json(HERE / "normalization_digits.json", {"protocol": BASE, "variants": VARIANTS, "seeds": args.seeds,
                                                    "summary": summary, "final_layer_density": layers})


if __name__ == "__main__":
    main()
