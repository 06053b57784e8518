"""``spikeprune theory``: LTH-SNN's strong-lottery-ticket construction (Appendix C) and its width bound.

``theory slth`` builds the construction on random large networks around a random target SNN and
measures success rate and output equality against Theorem 4.3; ``theory width`` evaluates the width
bound. Decisions and the meaning of every number: docs/theory.md.
"""

from __future__ import annotations

import argparse
import json

from spikeprune.core.rundir import holds_run_directory
from spikeprune.cli.args import add_config_arguments, add_config_file_argument, add_run_arguments, config_from_args
from spikeprune.theory.config import SlthConfig, WidthConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("theory", help="the strong-LTH construction and width bound of LTH-SNN", description=__doc__)
    commands = p.add_subparsers(dest="theory", metavar="<what>", parser_class=type(p))
    commands.required = True

    s = commands.add_parser("slth", help="run the construction and compare with Theorem 4.3", description=__doc__)
    add_run_arguments(s, out_default=None, resume=False)
    add_config_arguments(s, SlthConfig, title="settings")
    s.set_defaults(func=run_slth)

    w = commands.add_parser("width", help="evaluate Theorem 4.3's width bound", description=__doc__)
    add_config_file_argument(w)
    add_config_arguments(w, WidthConfig, title="settings")
    w.set_defaults(func=run_width)


@holds_run_directory("theory")
def run_slth(args: argparse.Namespace) -> int:
    from spikeprune.core.io import check_writable_dir, write_csv, write_json
    from spikeprune.report.plots import plot_slth
    from spikeprune.report.tables import format_slth_bounds, format_slth_table

    cfg = config_from_args(SlthConfig, args)
    result = cfg.experiment()
    out = check_writable_dir(args.out)  # only once the experiment has run: a refusal leaves nothing
    rows = result["rows"]
    write_csv(out / "slth.csv", rows, list(rows[0]))  # every row has the same keys, in order
    write_json(out / "slth.json", result)
    plot_slth(result, out / "slth.png")
    print(format_slth_table(result), end="")  # vacuous bounds as "-", with a legend of the columns
    print(format_slth_bounds(result), end="")  # the constants named; why Theorem 4.3 is undefined, where it is
    print(f"results: {out}/slth.csv, slth.json, slth.png")
    return 0


def run_width(args: argparse.Namespace) -> int:
    from spikeprune.theory.slth import width_bound

    cfg = config_from_args(WidthConfig, args)
    C = 2 * cfg.p_sup / (1 - cfg.beta)
    result = {form: width_bound(cfg.N, cfg.L, cfg.T, cfg.eps, cfg.delta, cfg.u_th, C, form=form)
              for form in ("paper", "proof")}
    result["construction_only"] = width_bound(cfg.N, cfg.L, cfg.T, cfg.eps, cfg.delta, cfg.u_th, 0.0,
                                              form="proof")
    result["C"] = C
    print(json.dumps(result))
    return 0
