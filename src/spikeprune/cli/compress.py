"""``spikeprune compress``: QP-SNN joint compression (QAT -> channel scores -> removal -> fine-tune)."""

from __future__ import annotations

import argparse
import json

from spikeprune.cli.args import add_config_arguments, add_run_arguments, config_from_args
from spikeprune.core.rundir import holds_run_directory


def add_parser(sub: argparse._SubParsersAction) -> None:
    from spikeprune.compression.compress import CompressConfig

    p = sub.add_parser("compress", help="quantize + channel-prune a model (QP-SNN pipeline, resumable)",
                       description=__doc__)
    add_run_arguments(p)
    add_config_arguments(p, CompressConfig)
    p.set_defaults(func=run)


@holds_run_directory("compress")
def run(args: argparse.Namespace) -> int:
    from spikeprune.compression.compress import CompressConfig, compress, recorded_training

    cfg = config_from_args(CompressConfig, args)
    if cfg.checkpoint is not None:
        # The network, neuron and data of a dense checkpoint are what it records (as `cost` reads them):
        # flags and --config still win; execution details (device, data_dir, ...) are this machine's.
        cfg = config_from_args(CompressConfig, args, base=recorded_training(cfg.checkpoint))
    m = compress(cfg, args.out, resume=args.resume, progress=args.progress).metrics
    print(json.dumps({k: m[k] for k in ("test_accuracy", "dense_test_accuracy", "size_bytes", "size_reduction",
                                        "flop_reduction", "energy_reduction", "speedup", "weight_bits",
                                        "membrane_bits")}, indent=2))
    print(f"results: {args.out}/metrics.json, cost.json, model.safetensors")
    return 0
