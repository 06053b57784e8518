"""Pruning speed and calibration cost (issue 3, "Must show").

1. One pruning step (scores -> strategy -> new mask) over SNN-VGG-16 at width 1.0 (~15 M prunable
   weights): magnitude / random / SF criteria, global (none and budget normalisation) and layerwise,
   with dynamic layers (SF-IMP-2) too. The SF calibration pass is timed separately (it is the
   statistics pass of item 2, not part of the ranking).
2. The SF statistics pass (``calibrate``, default 8 batches of 128) against one training epoch of the
   Fashion-MNIST convnet (T = 4, batch 128, 60k images), measured in the same process.

    OMP_NUM_THREADS=1 python benchmarks/lottery/bench_pruning.py [--threads 1] [--epoch-batches 469]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from spikeprune import create_model
from spikeprune.tickets.calibration import calibrate
from spikeprune.engine.config import TrainConfig
from spikeprune.engine.data import load_dataset
from spikeprune.core.io import write_json
from spikeprune.tickets.masks import Mask
from spikeprune.tickets.pruning import prune_step
from spikeprune.engine.train import build_model, make_loaders, make_optimizer, train_epoch

HERE = Path(__file__).resolve().parent


#: CPU seconds of this process for each best_of call (same order), alongside the wall-clock minimum:
#: on a shared machine the wall clock counts time spent waiting for a core, CPU time does not.
CPU: list[float] = []


def best_of(fn, repeats: int = 3) -> float:
    """Minimum wall-clock seconds over ``repeats`` calls; the minimum CPU seconds goes to ``CPU``."""
    times, cpu = [], []
    for _ in range(repeats):
        tick, cpu_tick = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - tick)
        cpu.append(time.process_time() - cpu_tick)
    CPU.append(min(cpu))
    return min(times)


def legacy_global_step(model, mask: Mask, fraction: float) -> Mask:
    """The foundation's global magnitude step (before issue 3), kept here only as the speed baseline:
    scores, ``torch.cat`` of ``torch.where(mask, s, inf)`` and ``torch.kthvalue`` over all weights."""
    from spikeprune.tickets.masks import prunable_weights

    scores = {n: w.detach().abs().float() for n, w in prunable_weights(model).items()}
    inf = torch.tensor(float("inf"))
    flat = torch.cat([torch.where(mask[n], scores[n], inf).flatten() for n in mask])
    k = round(fraction * mask.num_kept)
    threshold = torch.kthvalue(flat, k).values
    chosen = flat < threshold
    short = k - int(chosen.sum())
    if short > 0:
        chosen[torch.nonzero(flat == threshold).flatten()[:short]] = True
    new, offset = {}, 0
    for n in mask:
        size = mask[n].numel()
        new[n] = mask[n] & ~chosen[offset:offset + size].view_as(mask[n])
        offset += size
    return Mask(new)


def pruning_speed() -> dict:
    torch.manual_seed(0)
    model = create_model("vgg16", 10, 3, 1, 1.0, image_size=32)
    mask = Mask.ones(model)
    # a mask of round 3 (42 % kept) so the survivors are a strict subset, as in a real IMP round
    mask = prune_step(model, 0.578, criterion="random", mask=mask, seed=1)
    mask.apply(model)
    tick = time.perf_counter()
    calib = calibrate(model, [torch.randn(4, 3, 32, 32)], num_batches=1)
    calibration_seconds = time.perf_counter() - tick
    dynamic = ["features.0.conv.weight", "classifier.weight"]
    cases = {
        "magnitude, global": dict(criterion="magnitude"),
        "random, global": dict(criterion="random"),
        "magnitude, layerwise": dict(criterion="magnitude", scope="layerwise"),
        "sf, global, budget (default)": dict(criterion="sf", calibration=calib),
        "sf, global, none": dict(criterion="sf", calibration=calib, normalize="none"),
        "sf, global, max": dict(criterion="sf", calibration=calib, normalize="max"),
        "sf, global, budget, dynamic enc+FC (SF-IMP-2)": dict(criterion="sf", calibration=calib, dynamic=dynamic),
    }
    results = {}
    # side by side, interleaved: the foundation's step vs this one (same mask, same answer)
    legacy, current, legacy_cpu, current_cpu = [], [], [], []
    for _ in range(3):
        tick, cpu_tick = time.perf_counter(), time.process_time()
        old = legacy_global_step(model, mask, 0.25)
        legacy.append(time.perf_counter() - tick)
        legacy_cpu.append(time.process_time() - cpu_tick)
        tick, cpu_tick = time.perf_counter(), time.process_time()
        new = prune_step(model, 0.25, mask=mask)
        current.append(time.perf_counter() - tick)
        current_cpu.append(time.process_time() - cpu_tick)
    assert old.equal(new), "the fast step must select exactly the same weights"
    x = torch.rand(15_000_000)
    reference = best_of(lambda: x.clone())
    results["foundation step (cat + kthvalue), magnitude global"] = {"seconds": min(legacy), "cpu_seconds": min(legacy_cpu)}
    results["this step, magnitude global (same mask)"] = {"seconds": min(current), "cpu_seconds": min(current_cpu)}
    print(f"  foundation magnitude/global step {min(legacy):.3f} s ({min(legacy_cpu):.3f} s CPU), this one "
          f"{min(current):.3f} s ({min(current_cpu):.3f} s CPU) -> {min(legacy) / min(current):.1f}x (masks identical); "
          f"machine reference: copying 15 M floats {reference:.3f} s", flush=True)
    for label, kw in cases.items():
        seconds = best_of(lambda: prune_step(model, 0.25, mask=mask, **kw))
        new = prune_step(model, 0.25, mask=mask, **kw)
        results[label] = {"seconds": seconds, "cpu_seconds": CPU[-1], "kept_before": mask.num_kept,
                          "kept_after": new.num_kept}
        print(f"  {label:48s} {seconds:6.3f} s wall, {CPU[-1]:6.3f} s CPU  ({mask.num_kept:,} -> {new.num_kept:,} kept)",
              flush=True)
    return {"model": "vgg16 width 1.0 (CIFAR-10 shape)", "prunable_weights": mask.numel,
            "reference_copy_15M_floats_seconds": reference,
            "calibration_seconds_1x4_images_T1": calibration_seconds, "steps": results}


def calibration_cost(width: float, epoch_batches: int | None) -> dict:
    dataset = load_dataset("fashion_mnist")
    cfg = TrainConfig(dataset="fashion_mnist", width=width, timesteps=4, batch_size=128,
                      train_limit=None if epoch_batches is None else 128 * epoch_batches)
    model = build_model(cfg, dataset)
    train, _ = make_loaders(cfg, dataset)
    optimizer = make_optimizer(model, cfg)
    calib_loader = make_loaders(TrainConfig(dataset="fashion_mnist", width=width, batch_size=128), dataset)[0]
    calibrate(model, calib_loader, 1)  # warm-up
    calib_seconds = best_of(lambda: calibrate(model, calib_loader, 8), repeats=3)
    tick, cpu_tick = time.perf_counter(), time.process_time()
    train_epoch(model, train, optimizer)
    epoch_seconds, epoch_cpu = time.perf_counter() - tick, time.process_time() - cpu_tick
    full_epoch, full_epoch_cpu = (s * (469 / len(train)) for s in (epoch_seconds, epoch_cpu))
    calib_seconds_after = best_of(lambda: calibrate(model, calib_loader, 8), repeats=3)
    calib, calib_cpu = min(calib_seconds, calib_seconds_after), min(CPU[-2:])
    return {"width": width, "calibration_batches": 8, "calibration_seconds": calib, "calibration_cpu_seconds": calib_cpu,
            "epoch_batches_timed": len(train), "epoch_seconds_timed": epoch_seconds,
            "epoch_seconds_469_batches": full_epoch, "epoch_cpu_seconds_469_batches": full_epoch_cpu,
            "ratio": calib / full_epoch, "ratio_cpu": calib_cpu / full_epoch_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epoch-batches", type=int, default=469, help="batches of the timed epoch (469 = all)")
    parser.add_argument("--out", default=str(HERE / "bench_pruning.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print("one pruning step (best of 3):", flush=True)
    speed = pruning_speed()
    print("SF statistics pass vs one training epoch:", flush=True)
    cost = []
    for width in (0.5, 1.0):
        c = calibration_cost(width, None if args.epoch_batches >= 469 else args.epoch_batches)
        cost.append(c)
        print(f"  width {width}: calibrate(8 x 128) {c['calibration_seconds']:.2f} s, epoch "
              f"{c['epoch_seconds_469_batches']:.1f} s -> {100 * c['ratio']:.2f} % of an epoch "
              f"(CPU time: {c['calibration_cpu_seconds']:.2f} s / {c['epoch_cpu_seconds_469_batches']:.1f} s -> "
              f"{100 * c['ratio_cpu']:.2f} %)", flush=True)
    write_json(args.out, {"machine": platform.processor() or platform.machine(), "threads": args.threads,
                          "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
                          "torch": torch.__version__, "pruning_speed": speed, "calibration_cost": cost})
    print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
