"""``spikeprune train``: train one SNN, checkpointing every epoch."""

from __future__ import annotations

import argparse
import json

from spikeprune.engine.config import TrainConfig
from spikeprune.cli.args import (
    add_config_arguments,
    add_run_arguments,
    add_tensorboard_argument,
    check_tensorboard,
    config_from_args,
)
from spikeprune.core.rundir import holds_run_directory


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an SNN (resumable)", description=__doc__)
    add_run_arguments(p)
    add_tensorboard_argument(p)
    add_config_arguments(p, TrainConfig)
    p.set_defaults(func=run)


@holds_run_directory("train")
def run(args: argparse.Namespace) -> int:
    from spikeprune.engine.train import fit

    check_tensorboard(args)
    cfg = config_from_args(TrainConfig, args)
    result = fit(cfg, args.out, resume=args.resume, progress=args.progress, tensorboard=args.tensorboard)
    m = result.metrics
    print(json.dumps({k: m[k] for k in ("test_accuracy", "val_accuracy", "best_val_epoch", "best_val_accuracy", "test_accuracy_at_best_val", "train_loss", "epochs",
                                        "seconds", "firing_rate", "num_parameters")}, indent=2))
    print(f"results: {args.out}/metrics.json")
    return 0
