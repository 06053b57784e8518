"""Frame-pipeline speed (events/s) on synthetic event streams of realistic rates, and a smoke-size
dense + lottery run on an N-MNIST-format event set (no event dataset can be downloaded here).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/events/bench.py --out benchmarks/events/results.json

Streams: N-MNIST-like (34x34 sensor, ~4k events over 300 ms, three saccades), DVS-Gesture-like
(128x128, 300k and 1M events over 6 s, downsampled to 32x32). Each stream goes through
spikeprune.engine.events.events_to_frames (tonic's Downsample + ToFrame, optionally Denoise) exactly as the loader does.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from event_files import synthetic_nmnist  # noqa: E402
from spikeprune.engine import events  # noqa: E402


def stream(n: int, duration_us: int, sensor: tuple[int, int], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, dtype=dtype)
    ev["t"] = np.sort(rng.integers(0, duration_us, n))
    # Spatially clustered activity (a moving blob), as real recordings are, not uniform noise.
    cx = sensor[0] / 2 + sensor[0] / 4 * np.sin(ev["t"] / duration_us * 2 * np.pi)
    ev["x"] = np.clip(cx + rng.normal(0, sensor[0] / 10, n), 0, sensor[0] - 1).astype(int)
    ev["y"] = np.clip(sensor[1] / 2 + rng.normal(0, sensor[1] / 10, n), 0, sensor[1] - 1).astype(int)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def rate(ev: np.ndarray, sensor, settings, repeats: int) -> dict:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = events.events_to_frames(ev.copy(), sensor, settings)
        best = min(best, time.perf_counter() - t0)
    return {"events": int(len(ev)), "seconds": best, "events_per_s": len(ev) / best,
            "frame_events": int(frames.sum()), "settings": settings.__dict__}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import tonic

    out: dict = {"python": sys.version.split()[0], "tonic": tonic.__version__, "platform": platform.platform(),
                 "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "pipeline": []}
    nm, gs = tonic.datasets.NMNIST.dtype, tonic.datasets.DVSGesture.dtype
    cases = [("nmnist-like 4k/300ms", stream(4000, 300_000, (34, 34), nm), (34, 34), events.FrameSettings(), 20),
             ("nmnist-like 4k/300ms +denoise 10ms", stream(4000, 300_000, (34, 34), nm), (34, 34),
              events.FrameSettings(denoise_us=10_000), 5),
             ("gesture-like 300k/6s", stream(300_000, 6_000_000, (128, 128), gs), (128, 128),
              events.FrameSettings(spatial_factor=0.25), 3),
             ("gesture-like 1M/6s", stream(1_000_000, 6_000_000, (128, 128), gs), (128, 128),
              events.FrameSettings(spatial_factor=0.25), 3),
             ("gesture-like 1M/6s count bins", stream(1_000_000, 6_000_000, (128, 128), gs), (128, 128),
              events.FrameSettings(spatial_factor=0.25, binning="count"), 3),
             ("gesture-like 300k/6s +denoise 10ms", stream(300_000, 6_000_000, (128, 128), gs), (128, 128),
              events.FrameSettings(spatial_factor=0.25, denoise_us=10_000), 1)]
    for name, ev, sensor, settings, repeats in cases:
        r = rate(ev, sensor, settings, repeats)
        r["case"] = name
        print(f"{name}: {r['events_per_s']:.3g} events/s ({r['seconds'] * 1e3:.1f} ms/sample)", flush=True)
        out["pipeline"].append(r)

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "nmnist"
        synthetic_nmnist(d, per_class=20, classes=10, events_per_sample=4000)  # 200 train + 200 test, 4k events
        common = ["--dataset", "nmnist", "--encoding", "events", "--data-dir", str(d), "--model", "convnet",
                  "--width", "0.25", "--timesteps", "4", "--batch-size", "32", "--no-progress"]
        runs = {}
        for label, argv in (("load+cache (first load: 400 .bin files)", None),
                            ("dense train, 3 epochs", ["train", *common, "--epochs", "3", "--out", f"{tmp}/dense"]),
                            ("lottery, 3 epochs x (dense + 2 rounds of 50 %)",
                             ["lottery", *common, "--epochs", "3", "--rounds", "2", "--prune-fraction", "0.5",
                              "--out", f"{tmp}/lot"])):
            t0 = time.perf_counter()
            if argv is None:
                from spikeprune.engine import data
                data.load_dataset("nmnist", d, download=False)
            else:
                subprocess.run([sys.executable, "-m", "spikeprune", *argv], check=True)
            runs[label] = time.perf_counter() - t0
            print(f"{label}: {runs[label]:.1f} s", flush=True)
        m = json.loads(Path(f"{tmp}/dense/metrics.json").read_text())
        lot = Path(f"{tmp}/lot/rounds.csv").read_text()
        out["smoke"] = {"seconds": runs, "dense_test_accuracy": m["test_accuracy"], "lottery_rounds_csv": lot}
        print(lot)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
