"""``spikeprune reproduce``: run a whole study and write a self-contained report (markdown + PNGs).

    spikeprune reproduce fig5 --scale smoke --out runs/repro_fig5
    spikeprune reproduce theory --scale cpu --from-results benchmarks/theory/results --out benchmarks/reports/theory_cpu

Studies: fig3 (edge-popup, LTH-SNN Fig. 3), fig5 (IMP vs SF-IMP-1 vs SF-IMP-2, LTH-SNN Fig. 5),
theory (spike flips vs the bounds, strong-LTH construction), qpsnn (quantization + channel pruning).
Scales: smoke (digits, minutes: CI), cpu (the Fashion-MNIST protocols of benchmarks/), paper (the GPU
protocols of configs/). Re-running the same command continues unfinished runs. With --from-results the
report is rebuilt from existing run directories without running anything. docs/reports.md explains
every number.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from spikeprune.core.rundir import holds_run_directory
from spikeprune.cli.args import add_force_argument, out_path, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    from spikeprune.studies.protocols import SCALES, STUDIES

    p = sub.add_parser("reproduce", help="run a paper's study at a scale and write its report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=STUDIES, help="which study")
    p.add_argument("--scale", choices=SCALES, default="smoke", help="smoke (CI), cpu (benchmarks/) or paper (GPU)")
    p.add_argument("--out", required=True, type=out_path, metavar="DIR", help="report directory (runs go to DIR/runs)")
    add_force_argument(p)
    p.add_argument("--from-results", metavar="DIR", help="only rebuild the report from the runs in DIR")
    p.add_argument("--reference", action="append", default=[], metavar="RUN",
                   help="fig3: an extra dense trained run (folder or metrics.json) for the dashed line")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="fig3/fig5: independent runs at a time, each its own process (default 1)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N", help="OMP_NUM_THREADS per job (default 1)")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset files")
    p.set_defaults(func=run)


@holds_run_directory("reproduce")
def run(args: argparse.Namespace) -> int:
    from spikeprune.studies.reproduce import reproduce

    command = "spikeprune " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    result = reproduce(args.study, args.scale, args.out, from_results=args.from_results, jobs=args.jobs,
                     threads=args.threads, data_dir=args.data_dir, references=args.reference, command=command)
    print(f"report: {result.out / 'report.md'}")
    return 0
