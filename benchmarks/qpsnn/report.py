"""Tables and plots from the study's result files (works on partial results).

    .venv/bin/python benchmarks/qpsnn/report.py      # -> results.csv, table.md, *.png next to this file
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
from spikeprune.io import atomic_path, write_text  # noqa: E402

COLUMNS = ["id", "tag", "bits", "scale", "sparsity", "criterion", "order", "membrane_bits", "qat_epochs", "ft_epochs",
           "qat_accuracy", "pruned_accuracy", "test_accuracy", "accuracy_drop_pts", "params", "size_bytes",
           "size_reduction", "flop_reduction", "sops", "energy_uj", "energy_reduction", "latency_ms",
           "dense_latency_ms", "speedup", "speedup_over_flop_reduction", "util_levels", "util_effective",
           "util_entropy_bits", "qat_util_effective", "firing_rate"]


def load(results: Path) -> tuple[dict, list[dict]]:
    dense = json.loads((results / "dense.json").read_text()) if (results / "dense.json").exists() else {}
    rows = []
    for p in sorted(results.glob("b*.json")):  # cells are named b<bits>-...
        r = json.loads(p.read_text())
        u, qu = r.get("utilisation") or {}, r.get("qat_utilisation") or {}
        r["util_levels"], r["util_effective"] = u.get("utilisation"), u.get("effective_utilisation")
        r["util_entropy_bits"], r["qat_util_effective"] = u.get("entropy_bits"), qu.get("effective_utilisation")
        r["speedup_over_flop_reduction"] = r["speedup"] / r["flop_reduction"]
        rows.append(r)
    latency = results / "latency.json"
    if latency.exists():  # side-by-side re-measurement of every model in one process overrides the per-cell one
        lat = json.loads(latency.read_text())
        for r in rows:
            if r["id"] in lat.get("speedup", {}):
                r["latency_ms"], r["dense_latency_ms"] = lat["median_ms"][r["id"]], lat["median_ms"]["dense"]
                r["speedup"] = lat["speedup"][r["id"]]
                r["speedup_over_flop_reduction"] = r["speedup"] / r["flop_reduction"]
    return dense, rows


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_csv(rows, path):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: fmt(r.get(k)) for k in COLUMNS})
    write_text(path, buf.getvalue())


def markdown(dense, rows) -> str:
    head = ("| cell | bits | scale | channels removed | criterion | acc. after QAT | acc. after removal | final acc. "
            "| drop (pts) | size (B) | size red. | FLOP red. | SOPs | energy (uJ) | latency (ms) | speed-up "
            "| speed-up / FLOP red. | levels used | eff. util. |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    if dense:
        lines.append(f"| dense fp32 | 32 | - | 0 % | - | - | - | {dense['test_accuracy']:.4f} | 0 | "
                     f"{dense['size_dense_bytes']:.0f} | 1 | 1 | {dense['sops']:.3g} | {dense['energy_uj']:.3g} | "
                     f"| 1 | | | |")
    for r in rows:
        pct = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"| {r['id']}{' (' + r['order'] + ')' if r['order'] != 'quantize-first' else ''} | {r['bits']} | "
            f"{r['scale'] if r['bits'] < 32 else '-'} | {100 * r['sparsity']:.0f} % | {r['criterion']} | "
            f"{pct(r['qat_accuracy'])} | {pct(r['pruned_accuracy'])} | {r['test_accuracy']:.4f} | "
            f"{r['accuracy_drop_pts']:.2f} | {r['size_bytes']:.0f} | {r['size_reduction']:.1f} | "
            f"{r['flop_reduction']:.2f} | {r['sops']:.3g} | {r['energy_uj']:.3g} | {r['latency_ms']:.0f} | "
            f"{r['speedup']:.2f} | {r['speedup_over_flop_reduction']:.2f} | "
            f"{pct(r['util_levels'])} | {pct(r['util_effective'])} |")
    return "\n".join(lines) + "\n"


def savefig(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plots(dense, rows):
    grid = [r for r in rows if r["tag"] in ("grid",) or (r["tag"] == "fp32-prune")]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for bits, color in ((8, "C0"), (4, "C1"), (2, "C2"), (32, "k")):
        pts = sorted((r["sparsity"], r["test_accuracy"], r["pruned_accuracy"]) for r in grid if r["bits"] == bits)
        if pts:
            label = "fp32 weights" if bits == 32 else f"{bits}-bit ReScaW"
            ax[0].plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], "o-", color=color, label=label)
            ax[0].plot([100 * p[0] for p in pts], [100 * p[2] for p in pts], "x:", color=color, alpha=0.6)
    if dense:
        ax[0].axhline(100 * dense["test_accuracy"], color="grey", ls="--", label="dense fp32")
        ax[0].axhline(100 * dense["test_accuracy"] - 1, color="grey", ls=":", label="dense - 1 pt")
    ax[0].set(xlabel="channels removed (%)", ylabel="test accuracy (%)",
              title="SVS channel pruning after QAT (o: fine-tuned, x: before)")
    ax[0].legend(fontsize=8)
    crit = [r for r in rows if r["bits"] == 4 and r["scale"] == "mean" and r["order"] == "quantize-first"
            and not r["membrane_bits"] and r["tag"] in ("grid", "criteria") and r["sparsity"] > 0]
    for i, name in enumerate(("svs", "l1", "sf", "bn", "membrane", "random")):
        pts = sorted((r["sparsity"], r["test_accuracy"], r["pruned_accuracy"]) for r in crit if r["criterion"] == name)
        if pts:
            ax[1].plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], "o-", color=f"C{i}", label=name)
            ax[1].plot([100 * p[0] for p in pts], [100 * p[2] for p in pts], "x:", color=f"C{i}", alpha=0.6)
    ax[1].set(xlabel="channels removed (%)", ylabel="test accuracy (%)",
              title="channel criteria, 4-bit (o: fine-tuned, x: before)")
    ax[1].legend(fontsize=8)
    savefig(fig, HERE / "accuracy.png")

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    bits_list = [8, 4, 2]
    for j, (scale, label) in enumerate((("max", "vanilla max|W|"), ("mean", "ReScaW mean|W|"))):
        same = [r for r in rows if r["scale"] == scale and r["order"] == "quantize-first" and not r["membrane_bits"]
                and r["qat_accuracy"] is not None and r["qat_util_effective"] is not None]
        acc = [next((100 * r["qat_accuracy"] for r in same if r["bits"] == b), float("nan")) for b in bits_list]
        util = [next((100 * r["qat_util_effective"] for r in same if r["bits"] == b), float("nan")) for b in bits_list]
        xs = [i + (j - 0.5) * 0.35 for i in range(3)]
        ax[0].bar(xs, acc, 0.35, label=label)
        ax[1].bar(xs, util, 0.35, label=label)
    for a, yl in ((ax[0], "accuracy after QAT (%)"), (ax[1], "effective bit-width utilisation 2^H / 2^b (%)")):
        a.set_xticks(range(3), [f"{b}-bit" for b in bits_list])
        a.set_ylabel(yl)
        a.legend(fontsize=8)
    ax[1].axhspan(14, 32, color="grey", alpha=0.2, label="QP-SNN vanilla 14-32 %")
    ax[1].legend(fontsize=8)
    if dense:
        ax[0].axhline(100 * dense["test_accuracy"], color="grey", ls="--")
        ax[0].set_ylim(50, 95)
    ax[0].set_title("vanilla vs ReScaW (no channels removed)")
    ax[1].set_title("how much of the grid the weights use")
    savefig(fig, HERE / "rescaw.png")

    four = sorted((r for r in rows if r["tag"] == "grid" and r["bits"] == 4), key=lambda r: r["sparsity"])
    if four:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [100 * r["sparsity"] for r in four]
        ax.plot(xs, [r["flop_reduction"] for r in four], "o-", label="FLOP reduction")
        ax.plot(xs, [r["speedup"] for r in four], "s-", label="measured CPU speed-up")
        ax.plot(xs, [r["energy_reduction"] for r in four], "^-", label="energy reduction (SOP model)")
        ax.plot(xs, [0.8 * r["flop_reduction"] for r in four], ":", color="C0", label="0.8 x FLOP reduction")
        ax.set(xlabel="channels removed (%)", ylabel="x vs dense fp32", title="4-bit ReScaW + SVS: cost")
        ax.legend(fontsize=8)
        savefig(fig, HERE / "cost.png")


def main() -> int:
    global HERE
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results"
    if len(sys.argv) > 2:  # write somewhere else (smoke tests)
        HERE = Path(sys.argv[2])
    dense, rows = load(results)
    write_csv(rows, HERE / "results.csv")
    write_text(HERE / "table.md", markdown(dense, rows))
    plots(dense, rows)
    print(f"{len(rows)} cells -> results.csv, table.md, accuracy.png, rescaw.png, cost.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
