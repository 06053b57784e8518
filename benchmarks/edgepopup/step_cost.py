"""Cost of one edge-popup step vs one ordinary training step, side by side in one process.

    OMP_NUM_THREADS=1 python benchmarks/edgepopup/step_cost.py [--width 1.0] [--rounds 12]

Same convnet (Fashion-MNIST shapes: batch 128 of 1x28x28, T = 4), same batch, SGD momentum 0.9. The
dense model trains its weights; the edge-popup copy trains only scores (top-k mask per layer per
step). Rounds interleave the two so machine-load drift hits both alike; medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spikeprune import create_model
from spikeprune.tickets.edgepopup import to_edgepopup
from spikeprune.engine.train import spike_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--density", type=float, default=0.5)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    dense = create_model("convnet", 10, 1, 4, args.width, image_size=28)
    search = to_edgepopup(dense, args.density)
    runs = {"dense training": (dense, torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9)),
            "edge-popup": (search, torch.optim.SGD([q for q in search.parameters() if q.requires_grad], lr=0.1,
                                                   momentum=0.9))}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds + 1):
        for name, (model, opt) in runs.items():
            t = time.perf_counter()
            opt.zero_grad()
            spike_loss(model(x), y).backward()
            opt.step()
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["dense training"])
    for name, t in times.items():
        print(f"{name:15s} {statistics.median(t):.3f} s/step  ratio {statistics.median(t) / base:.3f}")


if __name__ == "__main__":
    main()
