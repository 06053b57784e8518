"""Alternated A/B of the flat per-channel lists vs the per-tap path, one process, batch 256 (RESULTS.md, run 3):
    python benchmarks/event_engine/ab_flat_lists.py runs/ee/imp/round_03/checkpoint.safetensors ..."""
import time, sys, torch
import statistics
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))  # bench.load
from bench import load
from spikeprune.deploy import event_engine as ee
from spikeprune.engine.data import BatchLoader, load_dataset
torch.set_num_threads(1)
ds = load_dataset("fashion_mnist")
x, y = next(iter(BatchLoader(ds, "test", 256, shuffle=False, timesteps=4)))
for path in sys.argv[1:]:
    eng = ee.compile(load(path), threads=1); eng(x)
    convs = [s for s in eng.steps if s.syn is not None and s.syn.kind == "conv"]
    saved = [s.syn.flat for s in convs]
    t = {"flat": [], "tap": []}
    for _ in range(6):
        for mode in ("flat", "tap"):
            for s, f in zip(convs, saved): s.syn.flat = f if mode == "flat" else None
            t0 = time.perf_counter(); eng(x); t[mode].append(time.perf_counter() - t0)
    print(path, {k: round(statistics.median(v) * 1e3) for k, v in t.items()})
