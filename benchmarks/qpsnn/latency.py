"""Re-measure the inference latency of every finished study model side by side in ONE process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qpsnn/latency.py [--rounds 5] [--repeats 3] [--malloc system]

Each round times every model (dense first) on the same test batch of 256 (eval, no gradients,
1 thread); a model's latency is the median over rounds of its per-round median. Interleaving the
models round by round spreads the machine's load drift over all of them; the speed-up is the ratio
to the dense model's latency from the same rounds. Writes results/latency.json (report.py uses it),
or --out. ``--malloc tuned`` (default) is what the ``spikeprune cost`` command measures with
(spikeprune.engine.allocator.tune_malloc); ``system`` keeps glibc's defaults (session 2's numbers).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
import spikeprune as sp  # noqa: E402
from spikeprune.compression.compress import load_compressed  # noqa: E402
from spikeprune.compression.cost import measure_latency  # noqa: E402
from spikeprune.engine.data import BatchLoader  # noqa: E402
from spikeprune.core.io import read_json, write_json  # noqa: E402
from spikeprune.engine.train import load_model  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--dense", default="/work/runs/fmnist_convnet_v1/checkpoint.safetensors")
p.add_argument("--cells", default=str(ROOT / "runs" / "qpsnn" / "cells"))
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--malloc", choices=["tuned", "system"], default="tuned")
p.add_argument("--out", default=str(HERE / "results" / "latency.json"))
args = p.parse_args()
if args.malloc == "tuned":
    from spikeprune.engine.allocator import tune_malloc

    tune_malloc()
torch.set_num_threads(1)
ds = sp.load_dataset("fashion_mnist")
x = next(iter(BatchLoader(ds, "test", 256, shuffle=False, seed=0, timesteps=4)))[0]
models = {"dense": load_model(args.dense)[0]}
for result in sorted((HERE / "results").glob("b*.json")):
    path = Path(args.cells) / result.stem / "model.safetensors"
    if path.exists():
        models[result.stem] = load_compressed(path, x)[0]
times = {name: [] for name in models}
for r in range(args.rounds):
    for name, model in models.items():
        times[name].append(measure_latency(model, x, repeats=args.repeats, warmup=1)["median_ms"])
    print(f"round {r + 1}/{args.rounds} done", flush=True)
median = {name: statistics.median(t) for name, t in times.items()}
speedup = {name: median["dense"] / m for name, m in median.items() if name != "dense"}
write_json(args.out, {"malloc": args.malloc, "median_ms": median, "speedup": speedup, "all_ms": times,
                                               "batch": int(x.shape[0]), "threads": 1, "rounds": args.rounds,
                                               "repeats": args.repeats,
                                               "when": time.strftime("measured %Y-%m-%d %H:%M %Z") +
                                               f", load average {os.getloadavg()[0]:.1f}"})
for name in median:
    print(f"{name:<36} {median[name]:9.1f} ms  x{median['dense'] / median[name]:.2f}")
