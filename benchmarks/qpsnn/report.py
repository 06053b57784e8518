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
from spikeprune.core.io import atomic_path, write_text  # noqa: E402

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
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    # one series per (bits, scale): SVS, QP-SNN order, 3 fine-tuning epochs; at 0 % the full-width
    # fine-tuned cell if it exists, else the QAT-only cell (hollow marker: 3 epochs less training)
    series = [(8, "mean", "C0"), (4, "mean", "C1"), (2, "mean", "C2"), (8, "max", "C0"), (4, "max", "C1"),
              (2, "max", "C2"), (32, "mean", "k")]
    for bits, scale, color in series:
        same = [r for r in rows if r["bits"] == bits and r["scale"] == scale and r["criterion"] == "svs"
                and r["order"] == "quantize-first" and not r["membrane_bits"]]
        pts = sorted((r["sparsity"], r["test_accuracy"], r["pruned_accuracy"]) for r in same
                     if r["ft_epochs"] == (4 if bits == 32 else 3))
        if not any(p[0] == 0 for p in pts):
            zero = next((r for r in same if r["sparsity"] == 0 and r["ft_epochs"] == 0), None)
            if zero:
                ax[0].plot([0], [100 * zero["test_accuracy"]], "o", mfc="none", color=color)
                if pts:
                    pts = [(0.0, zero["test_accuracy"], zero["pruned_accuracy"])] + pts
        if not pts:
            continue
        style = "--" if scale == "max" else "-"
        label = "fp32 weights" if bits == 32 else f"{bits}-bit {'vanilla' if scale == 'max' else 'ReScaW'}"
        ax[0].plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], "o" + style, color=color, label=label,
                   alpha=1.0 if scale == "mean" else 0.7)
    if dense:
        ax[0].axhline(100 * dense["test_accuracy"], color="grey", ls="--", label="dense fp32 (e7)")
        ax[0].axhline(100 * dense["test_accuracy"] - 1, color="grey", ls=":", label="dense - 1 pt")
    ax[0].set(xlabel="channels removed (%)", ylabel="test accuracy (%)",
              title="SVS channel pruning after QAT, fine-tuned\n(solid: ReScaW, dashed: vanilla; hollow: QAT only)")
    ax[0].legend(fontsize=7)
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
    for a in ax:
        a.set_xlim(-3, 75)
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


RESUME = "cd /work/wt/issue6 && OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/qpsnn/study.py >> runs/qpsnn/study.log 2>&1 &"


def machine() -> dict:
    import os
    import platform
    import subprocess
    import time

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "load": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "torch": _torch_version()}


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except ImportError:
        return "?"


def planned_ids() -> list[tuple[str, str]]:
    """(id, tag) of every cell of the study's plan, in run order (None if study.py cannot be imported)."""
    try:
        sys.path.insert(0, str(HERE))
        import study  # noqa: PLC0415

        return [(c["id"], c["tag"]) for c in study.plan()]
    except Exception:  # noqa: BLE001 -- the report must still render without torch
        return []


def acceptance(dense, rows) -> str:
    """The issue's target, checked on every 4-bit cell with 50 % of channels removed."""
    control = next((r for r in rows if r["id"] == "b32-mean-s00-svs-ft4"), None)
    target = [r for r in rows if r["bits"] == 4 and abs(r["sparsity"] - 0.5) < 1e-9]
    if not target:
        return "No 4-bit / 50 % cell has finished yet.\n"
    lines = ["| cell | final acc. | drop vs dense e7 (pts) | drop vs dense trained as long (pts) | size red. "
             "| FLOP red. | speed-up | speed-up / FLOP red. | loses <= 1 pt | >= 25x smaller | speed-up >= 0.8 FLOP red. |",
             "|" + "---|" * 11]
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    for r in sorted(target, key=lambda r: -r["test_accuracy"]):
        drop_c = 100 * (control["test_accuracy"] - r["test_accuracy"]) if control else float("nan")
        lines.append(
            f"| {r['id']} | {r['test_accuracy']:.4f} | {r['accuracy_drop_pts']:.2f} | {drop_c:.2f} | "
            f"{r['size_reduction']:.1f} | {r['flop_reduction']:.2f} | {r['speedup']:.2f} | "
            f"{r['speedup_over_flop_reduction']:.2f} | {yes(r['accuracy_drop_pts'] <= 1)} | "
            f"{yes(r['size_reduction'] >= 25)} | {yes(r['speedup_over_flop_reduction'] >= 0.8)} |")
    return "\n".join(lines) + "\n"


def utilisation_table(rows) -> str:
    lines = ["| bits | scale | accuracy after QAT | levels used (of 2^b) | entropy (bits) | effective util. 2^H/2^b |",
             "|---|---|---|---|---|---|"]
    qat = sorted((r for r in rows if r["tag"] == "qat-only"), key=lambda r: (-r["bits"], r["scale"]))
    for r in qat:
        u = r.get("qat_utilisation") or {}
        lines.append(f"| {r['bits']} | {'ReScaW mean' if r['scale'] == 'mean' else 'vanilla max'} | "
                     f"{r['qat_accuracy']:.4f} | {u.get('utilisation', float('nan')):.3f} | "
                     f"{u.get('entropy_bits', float('nan')):.2f} | {u.get('effective_utilisation', float('nan')):.3f} |")
    per_layer = ["", "Per layer, 4 bits, after QAT (effective utilisation; levels used in brackets):", "",
                 "| layer | vanilla (max) | ReScaW (mean) |", "|---|---|---|"]
    by_scale = {r["scale"]: {u["layer"]: u for u in r.get("utilisation_layers") or []}
                for r in qat if r["bits"] == 4}
    if len(by_scale) == 2:
        for layer in by_scale["max"]:
            a, b = by_scale["max"][layer], by_scale["mean"].get(layer, {})
            fmt_u = lambda u: (f"{u['effective_utilisation']:.3f} ({u.get('levels_used', '-')})"  # noqa: E731
                               if u else "")
            per_layer.append(f"| {layer} | {fmt_u(a)} | {fmt_u(b)} |")
        lines += per_layer
    return "\n".join(lines) + "\n"


def results_md(dense, rows, out: Path) -> None:
    m = machine()
    done = {r["id"] for r in rows}
    plan = planned_ids()
    pending = [(i, t) for i, t in plan if i not in done]
    lat = HERE / "results" / "latency.json"
    lat = json.loads(lat.read_text()) if lat.exists() else None
    latency_note = (f"{lat['rounds']} interleaved rounds x {lat['repeats']} runs per model, batch {lat['batch']}, "
                    f"{lat['threads']} thread, malloc {lat.get('malloc', 'system')}; median of the per-round medians; "
                    f"{lat.get('when', '')}"
                    if lat else "not measured yet")
    reading = (HERE / "reading.md").read_text() if (HERE / "reading.md").exists() else ""
    status = (f"**PARTIAL: {len(done)} of {len(plan)} planned cells finished** when this report was written; "
              f"the study is still running / resumable. Unfinished cells (run order): "
              + ", ".join(f"`{i}`" for i, _ in pending) + f".\n\nResume (skips finished cells, continues a "
              f"half-trained phase from its last epoch):\n\n    {RESUME}\n\nthen re-run "
              f"`.venv/bin/python benchmarks/qpsnn/report.py`.\n") if pending else f"All {len(plan)} cells finished.\n"
    # later studies that change this one's reading (update.md, kept by hand) come first
    update = (HERE / "update.md").read_text().strip() + "\n\n" if (HERE / "update.md").exists() else ""
    text = f"""# QP-SNN compression study: Fashion-MNIST convnet, T = 4

{update}Generated by `benchmarks/qpsnn/report.py` from `benchmarks/qpsnn/results/*.json` (one file per cell, written
by `benchmarks/qpsnn/study.py`). Machine: {m['cpu']}, {m['cores']} cores shared by 6 agents (load average
when this report was written: {m['load'][0]:.1f} / {m['load'][1]:.1f} / {m['load'][2]:.1f}), torch {m['torch']}, 1 thread per
process. Report written {m['date']}.

{status}
## Commands

    # the study (resumable; ~0.4 of a core): one JSON per finished cell in benchmarks/qpsnn/results/
    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/qpsnn/study.py >> runs/qpsnn/study.log 2>&1 &
    .venv/bin/python benchmarks/qpsnn/study.py --list        # the cells, in run order
    .venv/bin/python benchmarks/qpsnn/report.py              # this file, results.csv, table.md, *.png
    # latency of every finished model re-measured side by side in ONE process (overrides the per-cell numbers)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qpsnn/latency.py --dense runs/qpsnn/dense_e7/checkpoint.safetensors --rounds 4 --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qpsnn/profile_ops.py > benchmarks/qpsnn/results/profile_ops.txt

The same pipeline as a user runs it: `spikeprune compress --config configs/qpsnn_fashion_mnist.yaml
--checkpoint <dense run>/checkpoint.safetensors --out runs/c` then `spikeprune cost --checkpoint runs/c/model.safetensors`.

## Set-up

Dense reference: convnet (width 1.0, channels 32/64/128, 104,426 parameters), T = 4, direct encoding,
seed 0, a frozen copy of the shared Fashion-MNIST run after epoch 7 of 10 (`runs/qpsnn/dense_e7`,
{100 * dense.get('test_accuracy', float('nan')):.2f} % on the 10k test images; the finished 10-epoch run reached 91.96 %).
Every cell starts from it: quantize (ReScaW `mean|W|` or vanilla `max|W|`, per layer, first and last layers
included) + BatchNorm re-estimation -> 1 QAT epoch -> SVS/L1/SF channel scores on 16 training batches of 128
-> physical removal of the lowest-scoring fraction of every channel group + BN re-estimation -> 3 fine-tuning
epochs at the same bit-width (an epoch here = 20,000 training images, SGD lr 0.01, cosine). Float controls
(32 bits) get the same 4 epochs (`b32-mean-s00-svs-ft4` = the dense model trained as long, the fair
reference for the accuracy drop). Accuracies: "after QAT" and "after removal" on the first 2,000 test
images, "final" on all 10,000. Cost (`spikeprune.compression.cost`, SPEC §8) on 4 test batches of 256. Latency: one
test batch of 256, 1 thread, compressed and dense model timed alternately in the same process (2 rounds x
3 runs, min of the medians); speed-up = dense / compressed. Where `results/latency.json` exists
({latency_note}), its single-process re-measurement replaces those numbers for the {len(lat['speedup']) if lat else 0} cells it covers (cells finished later keep their per-cell number). Quantization does not speed up the CPU
model (fake-quantized float weights, no integer kernels); channel removal does.

## Acceptance target: 4-bit weights + 50 % of channels removed

Target: loses <= 1 pt, >= 25x smaller than fp32 dense, measured CPU speed-up >= 0.8 x FLOP reduction.

{acceptance(dense, rows)}
## All finished cells

{markdown(dense, rows)}
Columns: size = bytes at the stored bit-width (weights b bits + one fp32 scale per layer, BN and biases
fp32); FLOP red. = dense conv/linear FLOPs / compressed ones; SOPs = Σ input rate x T x FLOPs x weight
density (encoding layer: MACs); energy = 4.6 pJ x MACs + 0.9 pJ x SOPs; levels used / eff. util. = the
bit-width utilisation of the final model (fraction of the 2^b levels used; 2^entropy / 2^b).

## Bit-width utilisation: vanilla (gamma = max abs W) vs ReScaW (gamma = mean abs W), after QAT, no channels removed

{utilisation_table(rows)}
## Plots

![accuracy](accuracy.png)

![vanilla vs ReScaW](rescaw.png)

![cost](cost.png)

{reading}"""
    write_text(out, text)


def main() -> int:
    global HERE
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results"
    if len(sys.argv) > 2:  # write somewhere else (smoke tests)
        HERE = Path(sys.argv[2])
    dense, rows = load(results)
    write_csv(rows, HERE / "results.csv")
    write_text(HERE / "table.md", markdown(dense, rows))
    plots(dense, rows)
    results_md(dense, rows, HERE / "RESULTS.md")
    print(f"{len(rows)} cells -> results.csv, table.md, RESULTS.md, accuracy.png, rescaw.png, cost.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
