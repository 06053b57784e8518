"""``spikeprune interop``: prune and analyse a SpikingJelly / snnTorch network without rewriting it.

The network comes from your own code: ``--model my_nets.py:build`` (or ``package.module:build``) names a
function that returns it (an ``nn.Sequential``, or a SpikingJelly multi-step network). Supported neurons:
SpikingJelly LIFNode / ParametricLIFNode / IFNode and snnTorch Leaky(init_hidden=True); docs/interop.md.
The network is checked against the dataset before anything is written: a CIFAR-shaped net (3x32x32) needs
``--dataset cifar10`` or ``--dataset synthetic`` (3x32x32, 10 classes), not the default 8x8 digits.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from spikeprune.core.config import CommandConfig, hparam, path_option
from spikeprune.core.rundir import holds_run_directory
from spikeprune.cli.args import add_config_arguments, add_run_arguments, config_from_args


@dataclass
class InteropConfig(CommandConfig):
    """What ``spikeprune interop`` reads (flags and ``--config`` YAML keys)."""

    model: str | None = hparam(None, "factory returning the network ('file.py:function' or "
                                     "'package.module:function'; runs your code)", required=True,
                               metavar="FILE.py:FN")
    weights: str | None = path_option("safetensors state_dict of the network to load first")
    timesteps: int = hparam(4, "timesteps of direct encoding", bounds="[1, inf)", metavar="T")
    dataset: str = hparam("digits", "dataset (digits: 1x8x8; synthetic: 3x32x32, 10 classes)")
    data_dir: str | None = path_option("directory holding the dataset files", metavar="DIR")
    epochs: int = hparam(0, "train N epochs (Adam) before pruning", bounds="[0, inf)")
    lr: float = hparam(5e-3, "Adam learning rate for --epochs", bounds="(0, inf)")
    batch_size: int = hparam(64, "batch size", bounds="[1, inf)")
    sparsity: float = hparam(0.8, "fraction of weights removed", bounds="[0, 1)")
    criterion: str = hparam("sf", "pruning criterion")
    calibration_batches: int = hparam(4, "training batches of the calibration pass", bounds="[1, inf)")
    analysis_batches: int = hparam(2, "test batches for the cost report and the flip analysis", bounds="[1, inf)")
    seed: int = hparam(0, "random seed", bounds="[0, 4294967295]")

    def check(self) -> None:
        from spikeprune.tickets.criteria import check_criterion
        from spikeprune.engine.data import parse_dataset

        check_criterion(self.criterion)
        parse_dataset(self.dataset)  # the name (options: nmnist:time_bins=8) is checked before any work


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interop", help="prune + cost report + flip analysis of a SpikingJelly/snnTorch network",
                       description=__doc__)
    add_run_arguments(p, out_default=None, resume=False)
    add_config_arguments(p, InteropConfig, title="settings")
    p.set_defaults(func=run)


@holds_run_directory("interop")
def run(args: argparse.Namespace) -> int:
    from spikeprune.interop.pipeline import analyse_third_party

    cfg = config_from_args(InteropConfig, args)
    analyse_third_party(cfg.model, args.out, timesteps=cfg.timesteps, dataset=cfg.dataset,
                        data_dir=cfg.data_dir, weights=cfg.weights, epochs=cfg.epochs, lr=cfg.lr,
                        batch_size=cfg.batch_size, sparsity=cfg.sparsity, criterion=cfg.criterion,
                        calibration_batches=cfg.calibration_batches, analysis_batches=cfg.analysis_batches,
                        seed=cfg.seed)
    return 0
