"""Wall time of the strong-LTH construction at N = 32 (docs/theory.md, "N = 32, k in the hundreds of
thousands runs in seconds"), single-threaded.

    OMP_NUM_THREADS=1 python benchmarks/theory/slth_speed.py
"""

from __future__ import annotations

import time

import torch

from spikeprune.theory.slth import construct, minimal_width, random_spikes, random_target, verify


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    target = random_target(32, 3, seed=0)
    spikes = random_spikes(8, 256, 32, seed=0)
    print("N=32, L=3, eps=0.1, T=8, 256 input trains; seconds (1 thread)")
    print(f"{'k':>9} {'construct':>10} {'verify':>8} {'success':>8}")
    for k in (100_000, 300_000, 1_000_000):
        ticket, t_build = timed(lambda: construct(target, k, 0.1, seed=1))
        result, t_verify = timed(lambda: verify(ticket, spikes))
        print(f"{k:>9} {t_build:>10.2f} {t_verify:>8.2f} {str(ticket.success):>8}")
    m, t_min = timed(lambda: minimal_width(target, 0.1, seed=1))
    print(f"minimal_width (scan until every weight has its neuron): k_min={m['k_min']}, {t_min:.2f} s")


if __name__ == "__main__":
    main()
