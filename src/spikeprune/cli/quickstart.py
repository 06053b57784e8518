"""``spikeprune quickstart``: the main job on the embedded digits dataset, offline, in minutes.

Trains a dense SNN, then finds lottery tickets from it with IMP (magnitude) and SF-IMP-1 (the
firing-aware criterion of LTH-SNN Eq. 12-13): a few rounds each, rewinding to an early epoch of the
dense run. Prints a table and writes a plot of accuracy against sparsity. Last, an edge-popup
search finds a 50 %-dense subnetwork inside the same network left at its random initialisation
(a strong ticket, LTH-SNN §5) and exports it as an ordinary masked model.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from spikeprune.core.diagnostics import UserError
from spikeprune.core.config import hparam, reuse
from spikeprune.engine.config import TrainConfig
from spikeprune.tickets.lottery import LotteryConfig
from spikeprune.cli.args import (
    add_config_arguments,
    add_run_arguments,
    add_tensorboard_argument,
    check_tensorboard,
    config_from_args,
)
from spikeprune.core.rundir import holds_run_directory, log


#: The quickstart's sizes for scikit-learn's 8x8 digits on a laptop CPU live in one place, the shipped
#: preset configs/quickstart.yaml (also the defaults ``--help`` shows); the fields below only say what
#: the command reads.
PRESET = "quickstart"


@dataclass
class QuickstartConfig(TrainConfig):
    """TrainConfig + the lottery schedule (declared by LotteryConfig) + the edge-popup part."""

    rounds: int = reuse(LotteryConfig, "rounds", note="here 0 skips the lottery part", bounds="[0, inf)")
    prune_fraction: float = reuse(LotteryConfig, "prune_fraction", bounds="(0, 1)")
    # The dense run's length is the quickstart's own knob, so the rewind point follows it unless given
    # (Frankle et al.'s late rewinding: a small fraction of training; 20 epochs -> epoch 2).
    rewind_epoch: int | None = reuse(LotteryConfig, "rewind_epoch", None, note="default: epochs // 10",
                                     bounds="[0, inf)")
    edgepopup_epochs: int = hparam(30, "epochs of the edge-popup search (0: skip that part); a mask over frozen "
                                       "random weights learns less per step than training, so it gets more",
                                   bounds="[0, inf)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train on the embedded digits, find lottery tickets, print a report",
                       description=__doc__)
    add_run_arguments(p, out_default="runs/quickstart", resume=False)
    add_tensorboard_argument(p)
    add_config_arguments(p, QuickstartConfig, preset=PRESET)
    p.set_defaults(func=run)


@holds_run_directory("quickstart")
def run(args: argparse.Namespace) -> int:
    from spikeprune.tickets.lottery import rewind_saver
    from spikeprune.engine.train import fit

    check_tensorboard(args)
    cfg = config_from_args(QuickstartConfig, args, preset=PRESET)
    rewind_epoch = cfg.epochs // 10 if cfg.rewind_epoch is None else cfg.rewind_epoch
    lottery = _lottery_configs(cfg, rewind_epoch) if cfg.rounds > 0 else {}  # validate before training
    if cfg.edgepopup_epochs < 0:
        raise UserError(f"edgepopup_epochs must be >= 0 (0 skips the edge-popup part); got {cfg.edgepopup_epochs}")
    # A demo: re-running it continues (or just re-reports) the same run instead of refusing. The dense run
    # is identified by its TrainConfig alone, so changing only the lottery flags re-uses it.
    dense = TrainConfig.of(cfg)
    result = fit(dense, args.out, resume=True, progress=args.progress,
                 on_epoch_end=rewind_saver(args.out, cfg, rewind_epoch), tensorboard=args.tensorboard)
    m = result.metrics
    print(f"spikeprune quickstart: {cfg.model} (T={cfg.timesteps}, {m['num_parameters']:,} parameters) "
          f"on {cfg.dataset}")
    print(f"  test accuracy   {m['test_accuracy']:.4f}  (validation {m['val_accuracy']:.4f} on "
          f"{m['validation']['val_size']} held-out training digits)")
    print(f"  firing rate     {m['firing_rate']:.3f} spikes / neuron / timestep")
    # CPU kernels sum in an order that depends on the thread count, so the last digits of every accuracy
    # below are those of this thread count (bit-identical on re-runs with the same one): say which.
    print(f"  training time   {m['seconds']:.1f} s over {m['epochs']} epochs on {torch.get_num_threads()} CPU "
          "thread(s) (another thread count sums in another order: last digits differ)")
    print(f"  results         {args.out}/metrics.json, history.csv, checkpoint.safetensors")

    if lottery:
        _lottery_part(args, cfg, lottery, rewind_epoch, test_size=m["validation"]["test_size"])

    # --- edge-popup (issue 4): the same network, weights left at random init, only a subnetwork learnt ---
    if cfg.edgepopup_epochs < 1:
        return 0
    from spikeprune.tickets.edgepopup import demo

    log(f"edge-popup: searching the best 50 % of each layer of the untrained {cfg.model} "
        f"({cfg.edgepopup_epochs} epochs)")
    ep = demo(cfg, f"{args.out}/edgepopup", density=0.5, epochs=cfg.edgepopup_epochs, progress=args.progress,
              tensorboard=args.tensorboard)
    print(f"\nedge-popup: the same {cfg.model}, UNTRAINED random weights, best 50 % of each layer searched")
    print(f"  test accuracy   {ep['test_accuracy']:.4f}  (dense trained above: {m['test_accuracy']:.4f}; "
          f"exported subnetwork: {ep['exported_test_accuracy']:.4f})")
    print(f"  search time     {ep['seconds']:.1f} s over {ep['epochs']} epochs")
    print(f"  results         {args.out}/edgepopup/results.json, density-0.5/subnet.safetensors")
    return 0


def _lottery_configs(cfg: QuickstartConfig, rewind_epoch: int) -> dict:
    base = dataclasses.asdict(TrainConfig.of(cfg))
    common = dict(rounds=cfg.rounds, prune_fraction=cfg.prune_fraction, rewind_epoch=rewind_epoch)
    return {"IMP (magnitude)": LotteryConfig(**base, **common, variant="imp"),
            "SF-IMP-1 (sf)": LotteryConfig(**base, **common, variant="sf-imp-1")}


def _round_lines(label: str) -> Callable[[str], None]:
    """A run's log reduced to its per-round lines (stderr): without a terminal (nohup, CI, a notebook)
    the lottery part would otherwise say nothing for a minute; the epochs of each round stay quiet."""
    return lambda message: (log(f"{label}: {message}") if message.startswith("[lottery]") and "): epoch " not in message
                            else None)


def _lottery_part(args: argparse.Namespace, cfg: QuickstartConfig, configs: dict, rewind_epoch: int, *,
                  test_size: int) -> None:
    from spikeprune.engine.data import load_dataset
    from spikeprune.tickets.lottery import adopt_dense, run_lottery
    from spikeprune.report.plots import plot_accuracy_vs_sparsity
    from spikeprune.report.tables import format_table

    out = Path(args.out)
    dataset = load_dataset(cfg.dataset, cfg.data_dir)
    series = {}
    for label, lcfg in configs.items():
        where = out / "lottery" / lcfg.variant
        adopt_dense(out, where)  # every criterion starts from the dense run above
        series[label] = run_lottery(lcfg, where, resume=True, dataset=dataset, progress=args.progress,
                                    log=_round_lines(label), tensorboard=args.tensorboard).rows
    plot = plot_accuracy_vs_sparsity(series, out / "lottery.png", reference=series["IMP (magnitude)"][0]["test_accuracy"],
                                     test_size=test_size,
                                     title=f"{cfg.model} on {cfg.dataset}: lottery tickets "
                                           f"(p = {cfg.prune_fraction}, rewind to epoch {rewind_epoch})")
    print(f"\nlottery tickets: prune {cfg.prune_fraction:.0%} of the surviving weights per round, rewind to epoch "
          f"{rewind_epoch}, retrain {cfg.epochs - rewind_epoch} epochs (test accuracy, %)")
    print(format_table(series), end="")
    seconds = sum(r["seconds"] + r["prune_seconds"] for rows in series.values() for r in rows[1:])
    print(f"  search time     {seconds:.1f} s;  results {out}/lottery/<variant>/rounds.csv, plot {plot}")
