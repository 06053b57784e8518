"""``spikeprune lottery``: IMP with rewinding, SF-IMP-1 or SF-IMP-2 (resumable, one directory per round)."""

from __future__ import annotations

import argparse

from .args import add_config_arguments, add_run_arguments, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..lottery import LotteryConfig

    p = sub.add_parser("lottery", help="find lottery tickets: IMP with rewinding, SF-IMP-1, SF-IMP-2",
                       description=__doc__)
    add_run_arguments(p)
    add_config_arguments(p, LotteryConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..lottery import LotteryConfig, run_lottery
    from ..report import format_table

    cfg = config_from_args(LotteryConfig, args)
    result = run_lottery(cfg, args.out, resume=args.resume, progress=args.progress)
    print(format_table({f"{cfg.variant} ({cfg.pruning_criterion})": result.rows}), end="")
    print(f"results: {result.out}/rounds.csv, results.json, accuracy_vs_sparsity.png")
    return 0
