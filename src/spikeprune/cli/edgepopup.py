"""``spikeprune edgepopup``: find subnetworks of a random SNN without training any weight (edge-popup).

One search:  spikeprune edgepopup --model convnet --dataset fashion_mnist --density 0.5 --out runs/ep
Densities:   spikeprune edgepopup ... --densities 0.1,0.3,0.5,0.7,0.9 --reference runs/dense --out runs/ep

``density`` = fraction of weights KEPT in every prunable layer (sparsity = 1 - density). Each density
runs in OUT/density-<d>/ (search checkpoint, history.csv, subnet.safetensors = the found subnetwork
as an ordinary model for ``spikeprune evaluate --checkpoint``, mask.safetensors, result.json);
OUT/results.{json,csv,png} compare them (with the dense trained --reference as a dashed line).
A killed search continues with --resume: finished densities are not redone.

Seeds x densities as independent jobs (at most --jobs at a time, each its own process):
             spikeprune edgepopup ... --densities 0.1,0.5,0.9 --seeds 0,1,2 --jobs 2 --out runs/ep
(OUT/seed-<s>/density-<d>/; always resumable, no --resume needed).
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
    from spikeprune.tickets.edgepopup import EdgePopupConfig

    p = sub.add_parser("edgepopup", help="edge-popup: search subnetworks of a random SNN (strong tickets)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    add_tensorboard_argument(p)
    p.add_argument("--reference", action="append", default=[], metavar="RUN",
                   help="a dense TRAINED run of the same architecture (its folder or metrics.json): the "
                        "dashed line of the plot; repeat for several seeds")
    add_sweep_arguments(p)
    add_config_arguments(p, EdgePopupConfig)
    p.set_defaults(func=run)


@holds_run_directory("edgepopup")
def run(args: argparse.Namespace) -> int:
    from spikeprune.report.tables import format_edgepopup_table
    from spikeprune.tickets.edgepopup import EdgePopupConfig, search_densities

    check_tensorboard(args)
    cfg = config_from_args(EdgePopupConfig, args)
    if sweep_requested(args):
        from spikeprune.studies.sweep import edgepopup_sweep

        summary = edgepopup_sweep(cfg, args.out, seeds=args.seeds, reference=args.reference,
                                  jobs=args.jobs or 1, threads=args.threads).metrics
    else:
        summary = search_densities(cfg, args.out, resume=args.resume, reference=args.reference,
                                   progress=args.progress, tensorboard=args.tensorboard).metrics
    print(summary["bn"])
    print(format_edgepopup_table(summary), end="")
    print(f"results: {args.out}/results.json, results.csv, results.png")
    return 0
