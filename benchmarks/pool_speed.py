"""2x2 max-pool on spike maps: ATen's max_pool2d vs spikeprune's MaxPool2x2 inference path, side by side.

    python benchmarks/pool_speed.py            # 1 thread, tuned malloc (as the spikeprune command runs)

Inputs are [N, C, H, W] spike maps of the convnet's pooled layers at batch 256 x T = 4 (N = 1024).
Checks the outputs are bit-identical, then reports the median of 7 timed calls of each, interleaved.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch.nn import functional as F

from spikeprune.engine.allocator import tune_malloc
from spikeprune.engine.models.layers import MaxPool2x2


def main() -> int:
    tune_malloc()
    torch.set_num_threads(1)
    pool = MaxPool2x2()
    print("| input [N, C, H, W] | max_pool2d (ms) | MaxPool2x2 (ms) | speed-up |\n|---|---:|---:|---:|")
    for shape in [(1024, 32, 28, 28), (1024, 64, 14, 14), (1024, 16, 28, 28)]:
        x = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.9).float()
        times: dict[str, list[float]] = {"aten": [], "ours": []}
        with torch.no_grad():
            if not torch.equal(F.max_pool2d(x, 2), pool(x)):
                raise SystemExit("outputs differ")
            for _ in range(7):
                for name, fn in (("aten", lambda: F.max_pool2d(x, 2)), ("ours", lambda: pool(x))):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        a, o = (1e3 * statistics.median(times[k]) for k in ("aten", "ours"))
        print(f"| {list(shape)} | {a:.1f} | {o:.1f} | {a / o:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
