"""``spikeprune quickstart``: the main job on the embedded digits dataset, offline, in minutes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..config import TrainConfig, hparam
from .args import add_config_arguments, add_run_arguments, config_from_args


@dataclass
class QuickstartConfig(TrainConfig):
    """TrainConfig with defaults sized for scikit-learn's 8x8 digits on a laptop CPU."""

    dataset: str = hparam("digits", "dataset")
    epochs: int = hparam(30, "training epochs (>= 1)")
    batch_size: int = hparam(64, "batch size (>= 1)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train on the embedded digits and print a report",
                       description=__doc__)
    add_run_arguments(p, out_default="runs/quickstart", resume=False)
    add_config_arguments(p, QuickstartConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import fit

    cfg = config_from_args(QuickstartConfig, args)
    # A demo: re-running it continues (or just re-reports) the same run instead of refusing.
    result = fit(cfg, args.out, resume=True, progress=args.progress)
    m = result.metrics
    print(f"spikeprune quickstart: {cfg.model} (T={cfg.timesteps}, {m['num_parameters']:,} parameters) "
          f"on {cfg.dataset}")
    print(f"  test accuracy   {m['test_accuracy']:.4f}  (best {m['best_test_accuracy']:.4f})")
    print(f"  firing rate     {m['firing_rate']:.3f} spikes / neuron / timestep")
    print(f"  training time   {m['seconds']:.1f} s over {m['epochs']} epochs")
    print(f"  results         {args.out}/metrics.json, history.csv, checkpoint.safetensors")

    # --- edge-popup (issue 4): the same network, weights left at random init, only a subnetwork learnt ---
    from ..edgepopup import demo

    ep = demo(cfg, f"{args.out}/edgepopup", density=0.5, progress=args.progress)
    print(f"edge-popup: the same {cfg.model}, UNTRAINED random weights, best 50 % of each layer searched")
    print(f"  test accuracy   {ep['test_accuracy']:.4f}  (dense trained above: {m['test_accuracy']:.4f}; "
          f"exported subnetwork: {ep['exported_test_accuracy']:.4f})")
    print(f"  search time     {ep['seconds']:.1f} s over {ep['epochs']} epochs")
    print(f"  results         {args.out}/edgepopup/results.json, density-0.5/subnet.safetensors")
    return 0
