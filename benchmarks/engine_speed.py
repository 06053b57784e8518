"""Train-step (or inference) time of one model with different neuron engines, side by side in one process.

    python benchmarks/engine_speed.py                      # convnet, Fashion-MNIST shapes
    python benchmarks/engine_speed.py --inference --batch-size 256   # eval forward under no_grad
    python benchmarks/engine_speed.py --model vgg16 --width 0.25 --image-size 32 --channels 3

    python benchmarks/engine_speed.py --memory   # + training memory per engine (one fresh process each)

Engines (same architecture, same weights, same batch, same optimizer):
  spikeprune        spikeprune.LIF, fp32, the default kernel (the fused one where it builds)
  spikeprune-eager  spikeprune.LIF forced onto the per-timestep PyTorch kernels (SPIKEPRUNE_LIF_KERNEL=eager)
  spikeprune-bf16   the same under bfloat16 autocast (``--bf16``)
  spikeprune-compile  the same through torch.compile (``--compile``)
  autograd-lif      Eq. 2-4 written with plain tensor ops, differentiated by autograd (unfused)
  spikingjelly      SpikingJelly 2.0 ``LIFNode(step_mode="m")`` (its CPU backend), installed --no-deps
  snntorch          snnTorch ``Leaky(reset_mechanism="zero")`` stepped over T
  ann-x-T           ReLU in place of the neuron at batch T*B: what an SNN step cannot beat
  spikeprune-keep-u (--inference only) spikeprune.LIF forced to materialise u, as it did before its
                    inference path (a no-op observer): what the spikes-only path saves

Rounds are interleaved (every engine once per round) so drift in machine load hits all engines alike;
the table reports the median step time and the ratio to spikeprune's default. ``--json`` writes raw
numbers; ``--markdown`` appends a dated section to a results file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from spikeprune import LIF, create_model
from spikeprune.engine.neuron import spiking_layers
from spikeprune.engine.train import spike_loss


class AutogradLIF(nn.Module):
    """Eq. 2-4 step by step with an ATan surrogate spike; autograd records every op (no fusion)."""

    class _Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return (z >= 0).to(z.dtype)

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g / (1 + (math.pi * z) ** 2)  # ATan, alpha = 2

    def forward(self, x):
        h = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            u = h + x[t]
            s = self._Spike.apply(u - 1.0)
            h = 0.5 * u * (1 - s)
            out.append(s)
        return torch.stack(out)


class SpikingJellyLIF(nn.Module):
    """SpikingJelly's multi-step LIFNode with Eq. 2-4 settings; reset each call (it is stateful)."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import neuron, surrogate

        self.node = neuron.LIFNode(tau=2.0, decay_input=False, v_reset=0.0, v_threshold=1.0,
                                   surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m")

    def forward(self, x):
        self.node.reset()
        return self.node(x)


class SnnTorchLIF(nn.Module):
    """snnTorch's Leaky (reset to zero, ATan surrogate) stepped over T with explicit state."""

    def __init__(self):
        super().__init__()
        import snntorch as snn

        self.leaky = snn.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero")

    def forward(self, x):
        mem = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            spk, mem = self.leaky(x[t], mem)
            out.append(spk)
        return torch.stack(out)


ENGINES = {
    "spikeprune": dict(neuron=None),
    "spikeprune-eager": dict(neuron=None, kernel="eager"),
    "spikeprune-bf16": dict(neuron=None, bf16=True),
    "spikeprune-compile": dict(neuron=None, compile=True),
    "autograd-lif": dict(neuron=AutogradLIF),
    "spikingjelly": dict(neuron=SpikingJellyLIF),
    "snntorch": dict(neuron=SnnTorchLIF),
    "ann-x-T": dict(neuron="relu"),
    "spikeprune-keep-u": dict(neuron=None, keep_u=True),
}
TRAIN_ENGINES = [e for e in ENGINES if e != "spikeprune-keep-u"]
INFERENCE_ENGINES = ["spikeprune", "spikeprune-keep-u", "spikingjelly", "snntorch", "ann-x-T"]


def build(args, engine):
    spec = ENGINES[engine]
    torch.manual_seed(0)
    model = create_model(args.model, 10, args.channels, args.timesteps, args.width,
                         image_size=args.image_size, neuron=spec["neuron"])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    forward = torch.compile(model) if spec.get("compile") else model
    bf16 = spec.get("bf16", False)

    if spec.get("keep_u"):
        for lif in spiking_layers(model).values():
            lif.observer = lambda *_: None  # an observer makes LIF.forward keep u (the training path)

    if args.inference:
        model.eval()

        def infer(x, y):
            os.environ["SPIKEPRUNE_LIF_KERNEL"] = spec.get("kernel", "auto")
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return forward(x).float().sum().item()

        return model, infer

    kernel = spec.get("kernel", "auto")

    def step(x, y):
        os.environ["SPIKEPRUNE_LIF_KERNEL"] = kernel  # read at every LIF call: engines alternate freely
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = spike_loss(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return model, step


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def measure_memory(argv, engine: str) -> dict | None:
    """Run one engine's memory measurement in a fresh process (peak RSS is per process)."""
    import subprocess

    skip = {"--memory", "--json", "--markdown", "--engines"}
    clean, it = [], iter(argv)
    for a in it:
        if a in skip:
            if a != "--memory":
                next(it, None)
            continue
        if a.split("=", 1)[0] in skip:
            continue
        clean.append(a)
    out = subprocess.run([sys.executable, __file__, *clean, "--memory-child", engine], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"memory measurement of {engine} failed: {out.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_child(args) -> int:
    """Training memory of one engine, printed as one JSON line.

    ``rss_mb``: peak RSS over 3 train steps minus the RSS after building model, optimizer and batch
    after one batch-1 step (``ru_maxrss`` is the process peak, which is why each engine gets a fresh
    process): the activations and the backward's temporaries. ``saved_mb``: bytes of the
    distinct storages autograd saves for backward in one forward (the activation memory proper).
    """
    import resource

    if args.malloc == "tuned":
        from spikeprune.engine.allocator import tune_malloc

        tune_malloc()
    model, step = build(args, args.memory_child)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, args.channels, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    step(x[:1], y[:1])  # lazily loaded code, gradients and momentum buffers: in the baseline, not the peak
    with open("/proc/self/statm") as f:
        base_kb = int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(x, y)
    for _ in range(2):
        step(x, y)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss_mb": (peak_kb - base_kb) / 1024, "saved_mb": sum(saved.values()) / 2**20}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="convnet")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median over them)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per engine per round")
    p.add_argument("--engines", help=f"comma-separated (default: {','.join(TRAIN_ENGINES)}; with --inference: "
                                      f"{','.join(INFERENCE_ENGINES)})")
    p.add_argument("--inference", action="store_true", help="time an eval forward under no_grad, not a train step")
    p.add_argument("--json", help="write raw results here")
    p.add_argument("--markdown", help="append a dated results section to this file")
    p.add_argument("--malloc", choices=["tuned", "system"], default="tuned",
                   help="tuned (default, what the spikeprune command does: spikeprune.engine.allocator.tune_malloc) "
                        "or glibc's defaults; process-wide, so it applies to every engine alike")
    p.add_argument("--memory", action="store_true",
                   help="also measure training memory: per engine, in a fresh process, the peak RSS of 3 steps "
                        "over the RSS after building model and batch, and the bytes saved for backward")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if args.malloc == "tuned":
        from spikeprune.engine.allocator import tune_malloc

        tune_malloc()

    engines = [e for e in (args.engines or ",".join(INFERENCE_ENGINES if args.inference else TRAIN_ENGINES)).split(",")
               if e]
    available = {}
    for e in engines:
        try:
            available[e] = build(args, e)
        except ImportError as exc:  # an optional oracle package is missing: say so, measure the rest
            print(f"skipping {e}: {exc}", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, args.channels, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    warm = {}
    for name, (_, step) in available.items():  # warm-up (compilation happens here)
        t = time.perf_counter()
        step(x, y)
        step(x, y)
        warm[name] = time.perf_counter() - t
    times: dict[str, list[float]] = {n: [] for n in available}
    for _ in range(args.rounds):
        for name, (_, step) in available.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            times[name].append((time.perf_counter() - t) / args.steps)
    med = {n: statistics.median(v) for n, v in times.items()}
    base = med.get("spikeprune")
    params = sum(q.numel() for q in next(iter(available.values()))[0].parameters())
    header = (f"malloc {args.malloc}; {args.model} width {args.width}, input {args.channels}x{args.image_size}x{args.image_size}, "
              f"batch {args.batch_size}, T = {args.timesteps}, {params:,} parameters; "
              f"median of {args.rounds} interleaved rounds x {args.steps} steps")
    what = "inference forward" if args.inference else "train step"
    lines = [f"| engine | {what} (ms) | vs spikeprune | vs ANN x T |", "|---|---:|---:|---:|"]
    for n in available:
        ratio = f"{med[n] / base:.2f}x" if base else "-"
        vs_ann = f"{med[n] / med['ann-x-T']:.2f}x" if "ann-x-T" in med else "-"
        lines.append(f"| {n} | {1000 * med[n]:.1f} | {ratio} | {vs_ann} |")
    if args.memory:
        mem = {n: measure_memory(argv if argv is not None else sys.argv[1:], n) for n in available}
        lines = [l + (" training memory (MB): peak RSS / saved for backward | vs ANN x T |" if i == 0 else
                      "---:|---:|" if i == 1 else "") for i, l in enumerate(lines)]
        for i, n in enumerate(available, start=2):
            m, a = mem[n], mem.get("ann-x-T")
            ratio = (f"{m['rss_mb'] / a['rss_mb']:.2f}x / {m['saved_mb'] / a['saved_mb']:.2f}x"
                     if a and m else "-")
            lines[i] += (f" {m['rss_mb']:.0f} / {m['saved_mb']:.0f} | {ratio} |" if m else " - | - |")
    table = "\n".join(lines)
    print(header)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "machine": machine(), "median_s": med, "times_s": times,
                       "warmup_s": warm}, f, indent=2)
    if args.markdown:
        stamp = dt.date.today().isoformat()
        cmd = "python benchmarks/engine_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.markdown, "a") as f:
            f.write(f"\n### Engine speed, {what}: {args.model} ({stamp})\n\nMachine: {machine()}.  \n"
                    f"Command: `{cmd.strip()}`  \n{header}.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
