"""Overhead of spikeprune.interop adapters against the packages' own execution, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/interop/bench_adapter.py

For each network (the test suite's CSNNs: conv-BN-neuron x 2 + linear on 8x8 digits-sized input, T = 4,
batch 256, eval mode, no gradients) it times: the package's native execution (SpikingJelly multi-step
on [T, B, ...]; snnTorch's per-step loop), the adapted model, and the adapted model under observation
(recomputing u_t and checking it against the package's spikes, as calibration and flip analysis do).
Median of 30 runs after 5 warm-ups, one thread; ratios are what to read.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import test_interop as ti  # noqa: E402  (the CSNN builders of the tests)

from spikeprune.interop import adapt  # noqa: E402
from spikeprune.engine.neuron import observe  # noqa: E402

T, B, REPEATS, WARMUP = 4, 256, 30, 5


def timed(fn) -> float:
    times = []
    for i in range(WARMUP + REPEATS):
        tick = time.perf_counter()
        fn()
        if i >= WARMUP:
            times.append(time.perf_counter() - tick)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.rand(B, 1, 8, 8) * 3
    print("| network | native ms | adapted ms | adapted + observed ms | adapted / native | observed / native |")
    print("|---|---|---|---|---|---|")
    for label, build, native in [
        ("SpikingJelly LIFNode CSNN, multi-step", lambda: ti.sj_csnn("lif", "m"),
         lambda net: (net(x.unsqueeze(0).repeat(T, 1, 1, 1, 1)), ti.functional.reset_net(net))),
        ("snnTorch Leaky CSNN (init_hidden)", lambda: ti.snn_csnn("subtract"),
         lambda net: (torch.stack([net(x) for _ in range(T)]),
                      [m.reset_mem() for m in net.modules() if isinstance(m, ti.snn.Leaky)])),
    ]:
        net = build()
        ti._randomize_bn(net)
        net.eval()
        with torch.no_grad():
            t_native = timed(lambda: native(net))
            model = adapt(net, T).eval()
            t_adapted = timed(lambda: model(x))

            def observed():
                with observe(model, lambda lif, u, s: None):
                    model(x)

            t_observed = timed(observed)
        print(f"| {label} | {t_native:.2f} | {t_adapted:.2f} | {t_observed:.2f} | {t_adapted / t_native:.2f} | "
              f"{t_observed / t_native:.2f} |")


if __name__ == "__main__":
    main()
