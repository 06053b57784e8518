"""``spikeprune cost``: size, FLOPs, SOPs, energy and measured CPU latency of a checkpoint (SPEC §8)."""

from __future__ import annotations

import argparse

from ..rundir import holds_run_directory


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="cost report of a checkpoint (size, SOPs, energy, latency)",
                       description=__doc__)
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a spikeprune .safetensors checkpoint "
                   "(dense, channel-pruned or quantized)")
    p.add_argument("--mask", metavar="FILE", help="an unstructured mask (.safetensors) to apply first")
    p.add_argument("--dataset", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset files")
    p.add_argument("--batches", type=int, default=4, metavar="N", help="test batches for firing rates (default 4)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N")
    p.add_argument("--bits", type=int, metavar="B", help="stored weight bits of layers that are not quantized "
                   "modules (default 32)")
    p.add_argument("--e-mac", type=float, default=4.6, metavar="PJ", help="energy per MAC in pJ (default 4.6)")
    p.add_argument("--e-ac", type=float, default=0.9, metavar="PJ", help="energy per accumulate in pJ (default 0.9)")
    p.add_argument("--latency-repeats", type=int, default=5, metavar="N",
                   help="timed inference runs (0: skip the latency measurement)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads for the latency (default 1)")
    p.add_argument("--out", metavar="DIR", help="also write cost.json there")
    p.add_argument("--force", action="store_true", help="overwrite a cost.json another kind of run wrote in --out")
    p.set_defaults(func=run)


@holds_run_directory("cost")
def run(args: argparse.Namespace) -> int:
    from ..compress import cost_of_checkpoint

    report = cost_of_checkpoint(args.checkpoint, mask=args.mask, dataset=args.dataset, data_dir=args.data_dir,
                      batches=args.batches, batch_size=args.batch_size, bits=args.bits, e_mac_pj=args.e_mac,
                      e_ac_pj=args.e_ac, latency_repeats=args.latency_repeats, threads=args.threads, out=args.out)
    print(report.table())
    return 0
