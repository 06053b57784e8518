"""``spikeprune theory``: LTH-SNN's strong-lottery-ticket construction (Appendix C) and its width bound.

``theory slth`` builds the construction on random large networks around a random target SNN and
measures success rate and output equality against Theorem 4.3; ``theory width`` evaluates the width
bound. Decisions and the meaning of every number: docs/theory.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from spikeprune.core.config import CommandConfig, hparam
from spikeprune.core.diagnostics import UserError
from spikeprune.core.rundir import holds_run_directory
from spikeprune.cli.args import add_config_arguments, add_run_arguments, config_from_args


@dataclass
class TargetConfig(CommandConfig):
    """The target SNN and the tolerances both theory commands share (flags and ``--config`` YAML keys)."""

    N: int | None = hparam(None, "target layer width N", required=True, bounds="[1, inf)", flags=("--neurons",))
    L: int = hparam(1, "target spiking layers L", bounds="[1, inf)", flags=("--layers",))
    T: int = hparam(1, "timesteps T", bounds="[1, inf)", flags=("--timesteps",))
    eps: float | None = hparam(None, "allowed input-feature error eps", required=True, bounds="(0, inf)")
    delta: float = hparam(0.1, "failure probability delta of Theorem 4.3", bounds="(0, 1]")
    u_th: float = hparam(0.2, "threshold, 0 < u_th < 1 (checked with the reason by spikeprune.theory.slth)")
    beta: float = hparam(0.5, "membrane decay", bounds="(0, 1)")


@dataclass
class SlthConfig(TargetConfig):
    """``theory slth``: the construction run on random large networks."""

    k: tuple[int, ...] = hparam((), "widths k to evaluate, each >= N (default: a grid over the construction's "
                                    "transition)", metavar="K1,K2,...")
    trials: int = hparam(50, "random large networks for the success rate", bounds="[1, inf)")
    equality_trials: int = hparam(10, "of those, how many are built at every k and run on the inputs",
                                  bounds="[0, inf)")
    samples: int = hparam(256, "input spike trains", bounds="[1, inf)")
    rate: float = hparam(0.3, "input firing rate", bounds="[0, 1]")
    v_reset: float = hparam(0.0, "reset potential, 0 <= v_reset < u_th", bounds="[0, 1)")
    seed: int = hparam(0, "random seed", bounds="[0, 4294967295]")
    compare_relu: bool = hparam(False, "also measure the two-neurons-per-weight ReLU construction on the same "
                                       "networks")
    max_memory_gb: float | None = hparam(None, "largest large network allowed, 2*L*N*k float32 weights (default: "
                                               "physical memory)", bounds="(0, inf)", metavar="GB")

    def check(self) -> None:
        if self.equality_trials > self.trials:
            raise UserError(f"equality_trials ({self.equality_trials}) are a subset of the trials; they cannot "
                            f"exceed trials ({self.trials})")
        small = [k for k in self.k if k < self.N]
        if small:
            raise UserError(f"every k must be >= N ({self.N}): the construction copies each target neuron; "
                            f"got {small[0]}")


@dataclass
class WidthConfig(TargetConfig):
    """``theory width``: Theorem 4.3's width bound at given constants."""

    p_sup: float | None = hparam(None, "largest density of the target's membrane potentials near u_th "
                                       "(C = 2 p_sup/(1-beta))", required=True, bounds="[0, inf)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("theory", help="the strong-LTH construction and width bound of LTH-SNN", description=__doc__)
    commands = p.add_subparsers(dest="theory", metavar="<what>", parser_class=type(p))
    commands.required = True

    s = commands.add_parser("slth", help="run the construction and compare with Theorem 4.3", description=__doc__)
    add_run_arguments(s, out_default=None, resume=False)
    add_config_arguments(s, SlthConfig, title="settings")
    s.set_defaults(func=run_slth)

    w = commands.add_parser("width", help="evaluate Theorem 4.3's width bound", description=__doc__)
    w.add_argument("--config", metavar="FILE.yaml", help="YAML file of these options (flags override it)")
    add_config_arguments(w, WidthConfig, title="settings")
    w.set_defaults(func=run_width)


@holds_run_directory("theory")
def run_slth(args: argparse.Namespace) -> int:
    from spikeprune.core.io import check_writable_dir, write_csv, write_json
    from spikeprune.report.plots import plot_slth
    from spikeprune.report.tables import format_slth_table
    from spikeprune.theory.slth_experiment import slth_experiment

    cfg = config_from_args(SlthConfig, args)
    max_memory = None if cfg.max_memory_gb is None else int(cfg.max_memory_gb * 2**30)
    result = slth_experiment(cfg.N, cfg.L, cfg.T, cfg.eps, ks=list(cfg.k) or None, trials=cfg.trials,
                             equality_trials=cfg.equality_trials, samples=cfg.samples, rate=cfg.rate,
                             beta=cfg.beta, u_th=cfg.u_th, v_reset=cfg.v_reset, delta=cfg.delta,
                             seed=cfg.seed, compare_relu=cfg.compare_relu, max_memory=max_memory)
    out = check_writable_dir(args.out)  # only once the experiment has run: a refusal leaves nothing
    rows = result["rows"]
    write_csv(out / "slth.csv", rows, list(rows[0]))  # every row has the same keys, in order
    write_json(out / "slth.json", result)
    plot_slth(result, out / "slth.png")
    b = result["bounds"]
    print(format_slth_table(result), end="")
    print(json.dumps({k: b[k] for k in ("C", "k_construction", "k_success", "k_proof", "k_paper", "k_equality")}))
    print(f"violations: {result['violations']}")
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
