"""What tracing a network costs next to one forward pass of the batch it is traced on (issue 12).

Every feature that needs the topology (calibration, SF, cost report, channel pruning, membrane
quantization, NIR) traces once on its first batch. The claim: tracing costs less than one forward
pass of that batch, because the trace runs the model on 3 samples (plus the Python bookkeeping of
the recorded operations). Measured side by side in one process, medians of 5, eval mode, no grad:

    python benchmarks/topology_cost.py [--batch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import spikeprune as sp  # noqa: E402
from spikeprune.topology import trace  # noqa: E402


def _median_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    nets = {
        "convnet (Fashion-MNIST, width 1)": (sp.create_model("convnet", 10, 1, T=4, image_size=(28, 28)),
                                             torch.rand(args.batch, 1, 28, 28)),
        "resnet19 (width 0.25, 32x32)": (sp.create_model("resnet19", 10, 3, T=4, width=0.25, image_size=(32, 32)),
                                         torch.rand(args.batch, 3, 32, 32)),
    }
    try:
        import zoo_nets
        for name in ("sj-spiking_resnet18", "sj-sew_resnet18-ADD", "sj-plif-CIFAR10Net", "snntorch-csnn-bn"):
            nets[name] = (sp.adapt(zoo_nets.build(name), zoo_nets.T), zoo_nets.images(args.batch))
    except Exception as exc:  # SpikingJelly / snnTorch not installed
        print(f"(zoo nets skipped: {exc})")
    print(f"# tracing vs one forward pass, batch {args.batch}, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| network | forward (ms) | trace (ms) | trace / forward |")
    print("|---|---|---|---|")
    for name, (model, x) in nets.items():
        model.eval()
        with torch.no_grad():
            fwd = _median_ms(lambda: model(x))
        tr = _median_ms(lambda: trace(model, x))
        print(f"| {name} | {fwd:.1f} | {tr:.1f} | {tr / fwd:.2f} |")


if __name__ == "__main__":
    main()
