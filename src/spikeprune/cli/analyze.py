"""``spikeprune analyze flips``: which spikes a compression flips, against LTH-SNN's bounds (§3).

Runs a checkpoint (reference) and perturbed copies of it on the same test inputs and writes, per
spiking layer and timestep: the input-feature error eps, flip rates, the share of flips inside the
crisis neighbourhood and the bounds of Lemma 3.3 / 3.4 / Theorem 3.5 (docs/theory.md).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..config import CommandConfig, hparam, path_option
from ..diagnostics import UserError
from ..rundir import holds_run_directory
from .args import add_config_arguments, add_run_arguments, config_from_args


@dataclass
class FlipsConfig(CommandConfig):
    """What ``spikeprune analyze flips`` reads (flags and ``--config`` YAML keys)."""

    checkpoint: str | None = path_option("a spikeprune .safetensors checkpoint", required=True)
    perturb: tuple[str, ...] = hparam(
        (), "prune:<mask file> | prune:<sparsity>[:magnitude|sf|random] | quantize:<bits>[:mean|max|percentile] | "
            "weight-noise:<sigma, relative to each weight tensor's std> | input-noise:<sigma>",
        required=True, repeat=True, metavar="SPEC")
    mode: str = hparam("both", "local: every layer fed the reference spikes (the lemmas' setting); end_to_end: "
                               "errors propagate", ("local", "end_to_end", "both"))
    dataset: str | None = hparam(None, "dataset (default: the one the checkpoint was trained on)")
    data_dir: str | None = path_option("directory holding the dataset files", metavar="DIR")
    samples: int = hparam(512, "test samples analysed", bounds="[1, inf)")
    batch_size: int = hparam(128, "batch size", bounds="[1, inf)")
    p_sup: str = hparam("kde", "estimator of p_sup, the density of u near u_th", ("kde", "gaussian", "empirical"))
    calibration_batches: int = hparam(8, "training batches for the SF criterion's statistics", bounds="[1, inf)")
    seed: int = hparam(0, "seed of noise and random pruning", bounds="[0, 4294967295]")

    def check(self) -> None:
        from ..firing import parse_perturbation

        if not self.perturb:
            raise UserError("perturb needs at least one perturbation")
        for spec in self.perturb:  # a typo fails before any work
            parse_perturbation(spec)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="analyses of a trained SNN (spike flips vs LTH-SNN bounds)",
                       description=__doc__)
    analyses = p.add_subparsers(dest="analysis", metavar="<analysis>", parser_class=type(p))
    analyses.required = True
    f = analyses.add_parser("flips", help="spike flips caused by pruning / quantization / noise vs the bounds",
                            description=__doc__)
    add_run_arguments(f, out_default=None, resume=False)
    add_config_arguments(f, FlipsConfig, title="settings")
    f.set_defaults(func=run_flips)


@holds_run_directory("analyze")
def run_flips(args: argparse.Namespace) -> int:
    from ..compress import load_compressed
    from ..data import BatchLoader
    from ..firing import flip_study, flip_summary, parse_perturbation
    from ..io import check_writable_dir
    from ..train import checkpoint_dataset, load_model

    cfg = config_from_args(FlipsConfig, args)
    perturbations = [parse_perturbation(s) for s in cfg.perturb]
    model, meta = load_model(cfg.checkpoint)
    trained_on = meta.get("config", {})
    config = model.spikeprune_config
    dataset = checkpoint_dataset(cfg.checkpoint, config, trained_on, cfg.dataset, cfg.data_dir)
    encoding = trained_on.get("encoding", "direct")
    test = BatchLoader(dataset, "test", cfg.batch_size, shuffle=False, seed=cfg.seed, encoding=encoding,
                       timesteps=config["T"], limit=cfg.samples)
    calibration = BatchLoader(dataset, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, encoding=encoding,
                              timesteps=config["T"], augment=False)
    if (meta.get("quantization") or {}).get("layers"):
        # A `spikeprune compress` checkpoint: rebuild it with its weight and membrane quantization, as it
        # runs (load_model alone gives the stored weights with float membranes).
        model, meta = load_compressed(cfg.checkpoint, _first_batches(test, 1)[0][0])
    modes = ["local", "end_to_end"] if cfg.mode == "both" else [cfg.mode]
    ck = Path(cfg.checkpoint)
    out = check_writable_dir(args.out)  # only once every input has been read: a refusal leaves nothing
    rows = flip_study(model, perturbations, test, out, modes=modes, p_sup_method=cfg.p_sup, seed=cfg.seed,
                      calibration=_first_batches(calibration, cfg.calibration_batches),
                      record={"checkpoint": str(cfg.checkpoint), "dataset": dataset.name,
                              "samples": test.num_samples},
                      title=f"{ck.parent.name}/{ck.name}")
    summary = flip_summary(rows)
    print(f"{'perturbation':<22} {'mode':<11} {'layer':<16} {'eps':>8} {'flip|premise':>12} {'bound':>9} holds")
    for s in summary:
        cond = "-" if s["max_cond_flip_rate"] is None else f"{s['max_cond_flip_rate']:.2e}"
        print(f"{s['perturbation']:<22} {s['mode']:<11} {s['layer']:<16} {s['eps']:>8.3g} {cond:>12} "
              f"{s['max_bound']:>9.3g} {'yes' if s['holds'] else 'NO'}")
    print(f"results: {out}/flips.csv, flips.json, flips.png")
    return 0


def _first_batches(loader, n: int) -> list:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= n:
            break
    return batches
