"""``spikeprune interop``: prune and analyse a SpikingJelly / snnTorch network without rewriting it.

The network comes from your own code: ``--model my_nets.py:build`` (or ``package.module:build``) names a
function that returns it (an ``nn.Sequential``, or a SpikingJelly multi-step network). Supported neurons:
SpikingJelly LIFNode / ParametricLIFNode / IFNode and snnTorch Leaky(init_hidden=True); docs/interop.md.
The network is checked against the dataset before anything is written: a CIFAR-shaped net (3x32x32) needs
``--dataset cifar10`` or ``--dataset synthetic`` (3x32x32, 10 classes), not the default 8x8 digits.
"""

from __future__ import annotations

import argparse

from ..rundir import holds_run_directory


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interop", help="prune + cost report + flip analysis of a SpikingJelly/snnTorch network",
                       description=__doc__)
    p.add_argument("--model", required=True, metavar="FILE.py:FN", help="factory returning the network "
                   "('file.py:function' or 'package.module:function'; runs your code)")
    p.add_argument("--weights", metavar="FILE", help="safetensors state_dict of the network to load first")
    p.add_argument("--timesteps", type=int, default=4, metavar="T", help="timesteps of direct encoding (default 4)")
    p.add_argument("--dataset", default="digits",
                   help="dataset (default: digits, 1x8x8; synthetic: 3x32x32, 10 classes)")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset files")
    p.add_argument("--epochs", type=int, default=0, metavar="N", help="train N epochs (Adam) before pruning")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate for --epochs (default 5e-3)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--sparsity", type=float, default=0.8, help="fraction of weights removed (default 0.8)")
    p.add_argument("--criterion", default="sf", help="pruning criterion (default: sf)")
    p.add_argument("--calibration-batches", type=int, default=4, metavar="N")
    p.add_argument("--analysis-batches", type=int, default=2, metavar="N",
                   help="test batches for the cost report and the flip analysis (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the result files")
    p.add_argument("--force", action="store_true", help="overwrite result files another kind of run wrote in --out")
    p.set_defaults(func=run)


@holds_run_directory("interop")
def run(args: argparse.Namespace) -> int:
    from ..interop.pipeline import analyse_third_party

    analyse_third_party(args.model, args.out, timesteps=args.timesteps, dataset=args.dataset,
                        data_dir=args.data_dir, weights=args.weights, epochs=args.epochs, lr=args.lr,
                        batch_size=args.batch_size, sparsity=args.sparsity, criterion=args.criterion,
                        calibration_batches=args.calibration_batches, analysis_batches=args.analysis_batches,
                        seed=args.seed)
    return 0
