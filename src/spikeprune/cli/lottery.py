"""``spikeprune lottery``: IMP with rewinding, SF-IMP-1 or SF-IMP-2 (resumable, one directory per round).

A sweep (``--seeds``, ``--variants`` and/or ``--jobs``) runs every (seed, variant) as an independent
job, at most ``--jobs`` at a time, sharing one dense run per seed, and writes OUT/summary.{json,csv,png}
(mean and 95 % CI over seeds). Under ``torchrun`` one run is data-parallel (docs/scaling.md).
"""

from __future__ import annotations

import argparse

from spikeprune.cli.args import (
    add_config_arguments,
    add_run_arguments,
    add_sweep_arguments,
    add_tensorboard_argument,
    check_tensorboard,
    config_from_args,
    sweep_requested,
)
from spikeprune.core.rundir import holds_run_directory


def add_parser(sub: argparse._SubParsersAction) -> None:
    from spikeprune.tickets.lottery import LotteryConfig

    p = sub.add_parser("lottery", help="find lottery tickets: IMP with rewinding, SF-IMP-1, SF-IMP-2",
                       description=__doc__)
    add_run_arguments(p)
    add_tensorboard_argument(p)
    add_sweep_arguments(p, variants=True)
    add_config_arguments(p, LotteryConfig)
    p.set_defaults(func=run)


@holds_run_directory("lottery")
def run(args: argparse.Namespace) -> int:
    from spikeprune.tickets.lottery import LotteryConfig, run_lottery
    from spikeprune.report.tables import format_table

    check_tensorboard(args)
    cfg = config_from_args(LotteryConfig, args)
    if sweep_requested(args):
        from spikeprune.studies.sweep import lottery_sweep

        summary = lottery_sweep(cfg, args.out, seeds=args.seeds, variants=args.variants, jobs=args.jobs or 1,
                                threads=args.threads).metrics
        print(summary.get("table", ""), end="")
        print(f"results: {args.out}/summary.json, summary.csv, summary.png; runs in {args.out}/seed-*/")
        return 0
    result = run_lottery(cfg, args.out, resume=args.resume, progress=args.progress, tensorboard=args.tensorboard)
    print(format_table({f"{cfg.variant} ({cfg.pruning_criterion})": result.rows}), end="")
    print(f"results: {result.out}/rounds.csv, results.json, accuracy_vs_sparsity.png")
    return 0
