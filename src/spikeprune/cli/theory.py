"""``spikeprune theory``: LTH-SNN's strong-lottery-ticket construction (Appendix C) and its width bound.

``theory slth`` builds the construction on random large networks around a random target SNN and
measures success rate and output equality against Theorem 4.3; ``theory width`` evaluates the width
bound. Decisions and the meaning of every number: docs/theory.md.
"""

from __future__ import annotations

import argparse
import json

from .args import add_run_arguments
from ..rundir import holds_run_directory


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--N", "--neurons", dest="N", type=int, required=True, help="target layer width N")
    p.add_argument("--L", "--layers", dest="L", type=int, default=1, help="target spiking layers L (default: 1)")
    p.add_argument("--T", "--timesteps", dest="T", type=int, default=1, help="timesteps T (default: 1)")
    p.add_argument("--eps", type=float, required=True, help="allowed input-feature error eps (> 0)")
    p.add_argument("--delta", type=float, default=0.1, help="failure probability delta of Theorem 4.3 (default: 0.1)")
    p.add_argument("--u-th", type=float, default=0.2, help="threshold, 0 < u_th < 1 (default: 0.2)")
    p.add_argument("--beta", type=float, default=0.5, help="membrane decay (default: 0.5)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("theory", help="the strong-LTH construction and width bound of LTH-SNN", description=__doc__)
    commands = p.add_subparsers(dest="theory", metavar="<what>", parser_class=type(p))
    commands.required = True

    s = commands.add_parser("slth", help="run the construction and compare with Theorem 4.3", description=__doc__)
    _common(s)
    s.add_argument("--k", type=_int_list, metavar="K1,K2,...",
                   help="widths k to evaluate (default: a grid over the construction's transition)")
    s.add_argument("--trials", type=int, default=50, help="random large networks for the success rate (default: 50)")
    s.add_argument("--equality-trials", type=int, default=10,
                   help="of those, how many are built at every k and run on the inputs (default: 10)")
    s.add_argument("--samples", type=int, default=256, help="input spike trains (default: 256)")
    s.add_argument("--rate", type=float, default=0.3, help="input firing rate (default: 0.3)")
    s.add_argument("--v-reset", type=float, default=0.0, help="reset potential, 0 <= v_reset < u_th (default: 0)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--compare-relu", action="store_true",
                   help="also measure the two-neurons-per-weight ReLU construction on the same networks")
    s.add_argument("--max-memory-gb", type=float, metavar="GB",
                   help="largest large network allowed, 2*L*N*k float32 weights (default: physical memory)")
    add_run_arguments(s, out_default=None, resume=False)
    s.set_defaults(func=run_slth)

    w = commands.add_parser("width", help="evaluate Theorem 4.3's width bound", description=__doc__)
    _common(w)
    w.add_argument("--p-sup", type=float, required=True,
                   help="largest density of the target's membrane potentials near u_th (C = 2 p_sup/(1-beta))")
    w.set_defaults(func=run_width)


def _int_list(text: str) -> list[int]:
    try:
        return [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


@holds_run_directory("theory")
def run_slth(args: argparse.Namespace) -> int:
    from ..io import check_writable_dir, write_json, write_text
    from ..slth import plot_slth, slth_experiment

    max_memory = None
    if args.max_memory_gb is not None:
        if not args.max_memory_gb > 0:
            raise ValueError(f"--max-memory-gb must be > 0; got {args.max_memory_gb}")
        max_memory = int(args.max_memory_gb * 2**30)
    out = check_writable_dir(args.out)
    result = slth_experiment(args.N, args.L, args.T, args.eps, ks=args.k, trials=args.trials,
                             equality_trials=args.equality_trials, samples=args.samples, rate=args.rate,
                             beta=args.beta, u_th=args.u_th, v_reset=args.v_reset, delta=args.delta,
                             seed=args.seed, compare_relu=args.compare_relu, max_memory=max_memory)
    rows = result["rows"]
    header = list(rows[0])
    write_text(out / "slth.csv", ",".join(header) + "\n" + "".join(
        ",".join("" if r[h] is None else f"{r[h]}" for h in header) + "\n" for r in rows))
    write_json(out / "slth.json", result)
    plot_slth(result, out / "slth.png")
    b = result["bounds"]
    print(f"{'k':>10} {'success':>8} {'exact':>8} {'bound':>8} {'out=':>8} {'1-delta':>8}")
    for r in rows:
        eq = "-" if r["output_equal_rate"] is None else f"{r['output_equal_rate']:.3f}"
        print(f"{r['k']:>10} {r['success_rate']:>8.3f} {r['success_exact']:>8.3f} {r['success_bound']:>8.3f} "
              f"{eq:>8} {r['theorem_1_minus_delta']:>8.3f}")
    print(json.dumps({k: b[k] for k in ("C", "k_construction", "k_success", "k_proof", "k_paper", "k_equality")}))
    print(f"violations: {result['violations']}")
    print(f"results: {out}/slth.csv, slth.json, slth.png")
    return 0


def run_width(args: argparse.Namespace) -> int:
    from ..slth import width_bound

    if not args.p_sup >= 0:
        raise ValueError(f"--p-sup must be >= 0; got {args.p_sup}")
    C = 2 * args.p_sup / (1 - args.beta) if 0 < args.beta < 1 else None
    if C is None:
        raise ValueError(f"beta must be in (0, 1); got {args.beta}")
    result = {form: width_bound(args.N, args.L, args.T, args.eps, args.delta, args.u_th, C, form=form)
              for form in ("paper", "proof")}
    result["construction_only"] = width_bound(args.N, args.L, args.T, args.eps, args.delta, args.u_th, 0.0,
                                              form="proof")
    result["C"] = C
    print(json.dumps(result))
    return 0
