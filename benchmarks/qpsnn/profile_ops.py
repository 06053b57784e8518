"""Where inference time goes, dense vs 50 % of channels removed (why speed-up < FLOP reduction).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qpsnn/profile_ops.py [--sparsity 0.5] [--malloc system]

torch.profiler on one test batch of 256 (1 thread, eval, no gradients), 3 runs each after a warm-up;
self CPU time grouped by operator, for the dense model and for a copy with channels removed (filter L1;
the shapes are what matter here, not which channels go).
"""

import argparse
import copy
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
import spikeprune as sp  # noqa: E402
from spikeprune.engine.data import BatchLoader  # noqa: E402
from spikeprune.engine.train import load_model  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--dense", default=str(HERE.parents[1] / "runs" / "qpsnn" / "dense_e7" / "checkpoint.safetensors"))
p.add_argument("--sparsity", type=float, default=0.5)
p.add_argument("--malloc", choices=["tuned", "system"], default="tuned",
               help="tuned = what the spikeprune command does (spikeprune.engine.allocator.tune_malloc)")
args = p.parse_args()
if args.malloc == "tuned":
    from spikeprune.engine.allocator import tune_malloc

    tune_malloc()
torch.set_num_threads(1)
dense, _ = load_model(args.dense)
pruned = copy.deepcopy(dense)
sp.prune_channels(pruned, args.sparsity, criterion="l1")
x = next(iter(BatchLoader(sp.load_dataset("fashion_mnist"), "test", 256, shuffle=False, seed=0, timesteps=4)))[0]
GROUPS = {"aten::mkldnn_convolution": "conv", "aten::convolution": "conv", "aten::_convolution": "conv",
          "aten::native_batch_norm": "batchnorm", "aten::max_pool2d_with_indices": "maxpool",
          "aten::addmm": "linear", "aten::ge": "LIF", "aten::mul": "LIF", "aten::add": "LIF",
          "aten::addcmul_": "LIF", "aten::copy_": "copy/expand", "aten::clone": "copy/expand"}
table = {}
for name, model in (("dense", dense.eval()), ("pruned", pruned.eval())):
    with torch.no_grad():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(x)
    groups = defaultdict(float)
    for ev in prof.key_averages():
        groups[GROUPS.get(ev.key, "other")] += ev.self_cpu_time_total / 3e3  # ms per run
    table[name] = groups
keys = sorted(set(table["dense"]) | set(table["pruned"]), key=lambda k: -table["dense"].get(k, 0))
print(f"{'op':<14}{'dense ms':>10}{'pruned ms':>11}{'ratio':>8}")
for k in keys:
    d, q = table["dense"].get(k, 0.0), table["pruned"].get(k, 0.0)
    print(f"{k:<14}{d:>10.1f}{q:>11.1f}{(d / q if q else float('nan')):>8.2f}")
td, tq = sum(table["dense"].values()), sum(table["pruned"].values())
print(f"{'total':<14}{td:>10.1f}{tq:>11.1f}{td / tq:>8.2f}")
