"""Issue 16 benchmark: event engine vs dense path, side by side in ONE process, on trained Fashion-MNIST
convnets (dense, IMP tickets, 4-bit + 50 % channels), batch 1 and batch 256, single-threaded.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice python benchmarks/event_engine/bench.py \\
        --dense RUN/checkpoint.safetensors --imp IMP_RUN --compressed Q_RUN/model.safetensors \\
        [--extra "SF-IMP 90 %=SF_RUN/round_03/checkpoint.safetensors" ...] --out benchmarks/event_engine

Writes results.json (rows, and ``sops_fit``), speedup_vs_density.png (+ .fit.json) and prints one JSON line
per model and the fits. Each timing is the median of ``--repeats`` calls; dense and event calls alternate
so both see the same machine load.

Two fits: the speed-up against "firing rate x weight density" (synaptic events / dense MACs, log-log, the
break-even point; the plot), and the engine's measured time against the cost model's SOPs per sample
(``spikeprune cost``'s SOPs column), least squares ``event_ms = a + b * SOPs`` with R^2 per batch size:
whether the cost model predicts what the engine costs (``a``: the per-call floor, ``b``: ms per SOP).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from spikeprune.deploy import event_engine as ee
from spikeprune.compression.compress import load_compressed
from spikeprune.compression.cost import cost_report
from spikeprune.engine.data import BatchLoader, load_dataset
from spikeprune.core.io import load_checkpoint
from spikeprune.tickets.masks import stored_mask
from spikeprune.engine.train import load_model


def load(path: Path):
    model, meta = load_model(path)
    if (meta.get("quantization") or {}).get("layers"):
        model, meta = load_compressed(path)
    mask = stored_mask(load_checkpoint(path)[0])
    if mask is not None:
        mask.apply(model)
    return model.eval()


def timed(fn, x, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def side_by_side(model, engine, xs, repeats):
    """Median ms of the dense path and of the engine, alternating calls (xs: list of inputs, cycled)."""
    dense, event = [], []
    with torch.no_grad():
        model(xs[0]), engine(xs[0])  # warm-up (synapse lists are built on the first call)
        for r in range(repeats):
            x = xs[r % len(xs)]
            t = time.perf_counter(); model(x); dense.append(time.perf_counter() - t)
            t = time.perf_counter(); engine(x); event.append(time.perf_counter() - t)
    return statistics.median(dense) * 1e3, statistics.median(event) * 1e3


def accuracy(fn, batches):
    correct = seen = 0
    with torch.no_grad():
        for x, y in batches:
            correct += int((fn(x).sum(0).argmax(-1) == y).sum())
            seen += len(y)
    return correct / seen


def labelled(text: str) -> tuple[str, Path]:
    """``LABEL=CKPT`` of ``--extra`` (the label may contain spaces; the last ``=`` separates)."""
    label, sep, path = text.rpartition("=")
    if not sep or not label.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected LABEL=CHECKPOINT, got {text!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such checkpoint file")
    return label.strip(), Path(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense", type=Path, required=True)
    ap.add_argument("--imp", type=Path, help="lottery run directory (round_XX/checkpoint.safetensors)")
    ap.add_argument("--compressed", type=Path, help="the 4-bit + 50 %% channels model of spikeprune compress")
    ap.add_argument("--extra", type=labelled, action="append", default=[], metavar="LABEL=CKPT",
                    help="another checkpoint to measure (a mask it stores is applied); repeatable")
    ap.add_argument("--dataset", default="fashion_mnist", help="test images (the checkpoints' dataset)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats1", type=int, default=60)
    ap.add_argument("--repeats256", type=int, default=7)
    ap.add_argument("--eval-batches", type=int, default=8, help="256-image test batches for accuracy")
    args = ap.parse_args()
    if min(args.repeats1, args.repeats256, args.eval_batches) < 1:
        ap.error("--repeats1, --repeats256 and --eval-batches must be >= 1")
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    models = {"dense": load(args.dense)}
    loader = BatchLoader(data, "test", 256, shuffle=False, encoding="direct", timesteps=int(models["dense"].T))
    batches = []
    for i, b in enumerate(loader):
        if i >= args.eval_batches:
            break
        batches.append(b)
    x256 = batches[0][0]
    singles = [x256[i:i + 1] for i in range(min(32, len(x256)))]

    for rd in sorted(args.imp.glob("round_*")) if args.imp else []:
        if (rd / "checkpoint.safetensors").exists():
            m = load(rd / "checkpoint.safetensors")
            dens = sum(int((p != 0).sum()) for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1)
            tot = sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1)
            models[f"IMP {rd.name} ({100 * (1 - dens / tot):.1f} % sparse)"] = m
    if args.compressed:
        models["4-bit + 50 % channels"] = load(args.compressed)
    for label, path in args.extra:
        if label in models:
            ap.error(f"--extra {label!r}: that label is taken")
        models[label] = load(path)
    dense_ref = models["dense"]

    rows = []
    for name, model in models.items():
        engine = ee.compile(model)
        if engine.dense:  # the benchmark compares the two paths: a network the engine refuses has no row
            raise SystemExit(f"bench.py: {name}: the event engine cannot run it ({engine.reason})")
        check = ee.spike_flips(engine, x256[:64])
        engine.count = True
        with torch.no_grad():
            engine(x256)
        st = engine.stats
        engine.count = False
        rate = sum(st.fired.values()) / sum(st.slots.values())
        event_in = {k: st.fired[k] / st.slots[k] for k in st.fired}
        work = st.synaptic_events / st.dense_ops
        acc_dense = accuracy(model, batches)
        acc_event = accuracy(engine, batches)
        rep = cost_report(model, [batches[0]], num_batches=1)
        tot = rep.totals
        row = {"model": name, "firing_rate": rate, "layer_rates": event_in, "synapse_density": engine.synapse_density(),
               "rate_x_density": work, "synaptic_events_per_sample": st.synaptic_events / len(x256),
               "cost_sops_per_sample": tot["sops"], "cost_dense_ops_per_sample": tot["dense_ops"],
               "flips_64": check["flips"], "spikes_64": check["spikes"], "max_logit_diff": check["max_logit_diff"],
               "acc_dense": acc_dense, "acc_event": acc_event,
               "integer": all(s.syn.integer for s in engine.steps if s.syn is not None)}
        for b, xs, reps in ((1, singles, args.repeats1), (256, [x256], args.repeats256)):
            d, e = side_by_side(model, engine, xs, reps)
            row[f"dense_ms_b{b}"], row[f"event_ms_b{b}"] = d, e
            if name.startswith("4-bit"):  # channel removal changes the dense path: time the uncompressed one too
                ref, e2 = side_by_side(dense_ref, engine, xs, reps)
                row[f"uncompressed_dense_ms_b{b}"], row[f"event2_ms_b{b}"] = ref, e2
            else:
                row[f"uncompressed_dense_ms_b{b}"], row[f"event2_ms_b{b}"] = d, e
        # extra points for the curve: the same network at other input intensities (other firing rates)
        row["curve"] = []
        for gain in (0.5, 2.0):
            xg = x256 * gain
            engine.count = True
            with torch.no_grad():
                engine(xg)
            w = engine.stats.synaptic_events / engine.stats.dense_ops
            ev = engine.stats.synaptic_events / len(xg)
            engine.count = False
            d, e = side_by_side(model, engine, [xg], 3)
            # the cost model's SOPs on the same images, so the curve points enter the SOPs fit too
            sops = cost_report(model, [xg], num_batches=1, measure_sops=False).totals["sops"]
            row["curve"].append({"gain": gain, "rate_x_density": w, "dense_ms": d, "event_ms": e,
                                 "synaptic_events_per_sample": ev, "cost_sops_per_sample": sops})
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("layer_rates", "curve")}), flush=True)

    fits = sops_fits(rows)
    for b, f in fits.items():
        if "error" in f:
            print(f"batch {b}: no SOPs fit ({f['error']}; {f['points']} points)", flush=True)
            continue
        print(f"batch {b}: event ms = {f['a_ms']:.4g} + {f['b_ms_per_sop']:.4g} x SOPs per sample "
              f"(R^2 {f['r2']:.3f}, {f['points']} points)", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
            "cpu": _cpu(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_before": _load(), "dataset": args.dataset}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "sops_fit": fits}, indent=1))
    plot(rows, args.out / "speedup_vs_density.png")


def fit_line(points: list[tuple[float, float]]) -> dict[str, float]:
    """Least squares ``y = a + b x`` over ``(x, y)`` points: ``a``, ``b`` and R^2 (1 - residual / total
    sum of squares; NaN when every y is equal)."""
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if n < 2 or sxx == 0:
        raise ValueError("a line needs at least two points with different x")
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    a = my - b * mx
    ss_res = sum((p[1] - a - b * p[0]) ** 2 for p in points)
    ss_tot = sum((p[1] - my) ** 2 for p in points)
    return {"a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot else float("nan")}


def sops_fits(rows: list[dict]) -> dict[str, dict]:
    """The engine's measured ms per call against the cost model's SOPs per sample, per batch size
    (batch 256: every model plus its two input-gain curve points; batch 1: the models)."""
    fits = {}
    for b in (1, 256):
        pts = [(r["cost_sops_per_sample"], r[f"event_ms_b{b}"]) for r in rows]
        if b == 256:
            pts += [(c["cost_sops_per_sample"], c["event_ms"]) for r in rows for c in r["curve"]]
        try:
            f = fit_line(pts)
        except ValueError as exc:  # one model and no spread of SOPs: say so in the results, do not guess
            fits[str(b)] = {"error": str(exc), "points": len(pts)}
            continue
        fits[str(b)] = {"model": "event_ms = a_ms + b_ms_per_sop * sops_per_sample", "a_ms": f["a"],
                        "b_ms_per_sop": f["b"], "r2": f["r2"], "points": len(pts),
                        "data": [{"sops_per_sample": x, "event_ms": y} for x, y in pts]}
    return fits


def _cpu() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except Exception:
        return "?"


def _load() -> str:
    try:
        return open("/proc/loadavg").read().strip()
    except OSError:
        return "?"


def fit_break_even(points):
    """Least squares log(speed-up) = a + b log(x); returns (a, b, x where speed-up = 1)."""
    xs = [math.log(p[0]) for p in points]
    ys = [math.log(p[1]) for p in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    return a, b, math.exp(-a / b) if b else float("nan")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    fits = {}
    for b, marker in ((1, "o"), (256, "s")):
        pts = [(r["rate_x_density"], r[f"dense_ms_b{b}"] / r[f"event_ms_b{b}"]) for r in rows]
        if b == 256:
            pts += [(c["rate_x_density"], c["dense_ms"] / c["event_ms"]) for r in rows for c in r["curve"]]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"batch {b}")
        a, slope, be = fit_break_even(pts)
        fits[b] = (a, slope, be)
        grid = [min(p[0] for p in pts) * 0.8 * (1.25 ** i) for i in range(40)]
        grid = [g for g in grid if g <= max(p[0] for p in pts) * 2]
        ax.plot(grid, [math.exp(a) * g ** slope for g in grid], "--", lw=1)
        if be == be:
            ax.axvline(be, ls=":", lw=1, color=ax.lines[-1].get_color())
            ax.annotate(f"break-even b{b}: {be:.3f}", (be, 1), rotation=90, fontsize=7, va="bottom")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("synaptic events / dense MACs  (firing rate x weight density)")
    ax.set_ylabel("speed-up over the same network's dense path")
    ax.set_title("event engine, Fashion-MNIST convnet, 1 thread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    json.dump({str(k): {"log_a": v[0], "slope": v[1], "break_even": v[2]} for k, v in fits.items()},
              open(path.with_suffix(".fit.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
