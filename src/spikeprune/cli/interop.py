"""``spikeprune interop``: prune and analyse a SpikingJelly / snnTorch network without rewriting it.

The network comes from your own code: ``--model my_nets.py:build`` (or ``package.module:build``) names a
function that returns it (an ``nn.Sequential``, or a SpikingJelly multi-step network). Supported neurons:
SpikingJelly LIFNode / ParametricLIFNode / IFNode and snnTorch Leaky(init_hidden=True); docs/interop.md.
The network is checked against the dataset before anything is written: a CIFAR-shaped net (3x32x32) needs
``--dataset cifar10`` or ``--dataset synthetic`` (3x32x32, 10 classes), not the default 8x8 digits.
"""

from __future__ import annotations

import argparse

from spikeprune.core.rundir import holds_run_directory
from spikeprune.cli.args import add_config_arguments, add_run_arguments, config_from_args
from spikeprune.interop.config import InteropConfig


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
    analyse_third_party(cfg, args.out, log=print)  # the command prints its progress and report on stdout
    return 0
