"""Time spent in each event-engine kernel at batch 256, 1 thread, next to the dense path (RESULTS.md, run 2):
    python benchmarks/event_engine/profile_kernels.py runs/ee/imp/round_03/checkpoint.safetensors ..."""
import time, sys, torch
import collections
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))  # bench.load
from bench import load
from spikeprune.deploy import event_engine as ee
from spikeprune.engine.data import BatchLoader, load_dataset
torch.set_num_threads(1)
ds = load_dataset("fashion_mnist")
x, y = next(iter(BatchLoader(ds, "test", 256, shuffle=False, timesteps=4)))
for path in sys.argv[1:]:
    model = load(path)
    eng = ee.compile(model, threads=1)
    eng(x)
    lib = eng.lib
    times = collections.defaultdict(float)
    class Wrap:
        def __init__(s, lib): s.lib = lib
        def __getattr__(s, name):
            f = getattr(s.lib, name)
            def g(*a):
                t = time.perf_counter(); r = f(*a); times[name] += time.perf_counter() - t; return r
            return g
    eng.lib = Wrap(lib)
    t0 = time.perf_counter()
    for _ in range(3): eng(x)
    tot = (time.perf_counter() - t0) / 3
    eng.lib = lib
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(3): model(x)
        dense = (time.perf_counter() - t0) / 3
    print(path, f"event {tot*1e3:.0f} ms dense {dense*1e3:.0f} ms", {k: round(v/3*1e3) for k, v in times.items()}, "python rest", round((tot - sum(times.values())/3)*1e3))
