"""``spikeprune evaluate``: accuracy and firing rates of a saved model on a dataset's test split."""

from __future__ import annotations

import argparse
import json

from spikeprune.core.rundir import holds_run_directory
from spikeprune.cli.args import add_config_arguments, add_run_arguments, config_from_args
from spikeprune.deploy.evaluate import EvaluateConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a test set", description=__doc__)
    add_run_arguments(p, out_default=None, resume=False)
    add_config_arguments(p, EvaluateConfig, title="settings")
    p.set_defaults(func=run)


@holds_run_directory("evaluate")
def run(args: argparse.Namespace) -> int:
    from spikeprune.deploy.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(config_from_args(EvaluateConfig, args), args.out).metrics
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "firing_rate")}, indent=2))
    return 0
