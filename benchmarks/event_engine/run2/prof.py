import time, sys, torch, collections
sys.path.insert(0, "/work/runs/snap2/benchmarks/event_engine")
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
    print(path.split('/')[-2], f"event {tot*1e3:.0f} ms dense {dense*1e3:.0f} ms", {k: round(v/3*1e3) for k, v in times.items()}, "python rest", round((tot - sum(times.values())/3)*1e3))
