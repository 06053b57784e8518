"""``spikeprune analyze flips``: which spikes a compression flips, against LTH-SNN's bounds (§3).

Runs a checkpoint (reference) and perturbed copies of it on the same test inputs and writes, per
spiking layer and timestep: the input-feature error eps, flip rates, the share of flips inside the
crisis neighbourhood and the bounds of Lemma 3.3 / 3.4 / Theorem 3.5 (docs/theory.md).
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from spikeprune.core.rundir import holds_run_directory
from spikeprune.cli.args import add_config_arguments, add_run_arguments, config_from_args
from spikeprune.theory.config import FlipsConfig, ValidityConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="analyses of a trained SNN (spike flips vs LTH-SNN bounds; criterion validity)",
                       description=__doc__)
    analyses = p.add_subparsers(dest="analysis", metavar="<analysis>", parser_class=type(p))
    analyses.required = True
    f = analyses.add_parser("flips", help="spike flips caused by pruning / quantization / noise vs the bounds",
                            description=__doc__)
    add_run_arguments(f, out_default=None, resume=False)
    add_config_arguments(f, FlipsConfig, title="settings")
    f.set_defaults(func=run_flips)

    v = analyses.add_parser("validity", help="does a criterion's score predict the spike flips its removal causes? "
                                             "(LTH-SNN Eq. 12's premise)",
                            description=_VALIDITY_DOC)
    add_run_arguments(v, out_default=None, resume=False)
    add_config_arguments(v, ValidityConfig, title="settings")
    v.set_defaults(func=run_validity)


_VALIDITY_DOC = """``spikeprune analyze validity``: the premise of LTH-SNN Eq. 12, tested directly.

In each layer, the weights are sorted by a criterion's score and cut into equal-sized sets spanning the
range of scores; each set is removed in turn and the layer-local flip rate of the neurons that layer
drives is measured (everything upstream unchanged: the lemmas' setting). Reported per layer and
criterion: the Spearman rank correlation between the set's predicted score and its measured flip rate
(+1: the criterion ranks flips perfectly; 0: no better than random). Files: validity.csv, validity.json,
validity.png.
"""


@holds_run_directory("analyze")
def run_validity(args: argparse.Namespace) -> int:
    from spikeprune.studies.validity import analyze_validity

    result = analyze_validity(config_from_args(ValidityConfig, args), args.out)
    summary, out = result.metrics["summary"], result.out
    print(f"{'layer':<26} {'criterion':<12} {'spearman':>9} {'flips lowest':>13} {'flips highest':>14}")
    for s in summary:
        rho = "n/a" if s["spearman"] is None else f"{s['spearman']:+.3f}"
        print(f"{s['layer']:<26} {s['criterion']:<12} {rho:>9} {s['flip_rate_lowest']:>13.2e} "
              f"{s['flip_rate_highest']:>14.2e}")
    print(f"results: {out}/validity.csv, validity.json, validity.png")
    return 0


@holds_run_directory("analyze")
def run_flips(args: argparse.Namespace) -> int:
    from spikeprune.report.tables import format_flip_table
    from spikeprune.studies.flips import analyze_flips

    result = analyze_flips(config_from_args(FlipsConfig, args), args.out)
    out = result.out
    # informative rows first, vacuous bounds marked, a legend (result.rows: the flips.json row dicts)
    print(format_flip_table([SimpleNamespace(**r) for r in result.rows]), end="")
    print(f"results: {out}/flips.csv, flips.json, flips.png")
    return 0
