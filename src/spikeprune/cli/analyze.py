"""``spikeprune analyze flips``: which spikes a compression flips, against LTH-SNN's bounds (§3).

Runs a checkpoint (reference) and perturbed copies of it on the same test inputs and writes, per
spiking layer and timestep: the input-feature error eps, flip rates, the share of flips inside the
crisis neighbourhood and the bounds of Lemma 3.3 / 3.4 / Theorem 3.5 (docs/theory.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

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

    from spikeprune.tickets.calibration import calibrate
    from spikeprune.engine.data import BatchLoader, split_validation
    from spikeprune.core.io import check_writable_dir, write_json, write_text
    from spikeprune.engine.train import checkpoint_dataset, load_model
    from spikeprune.report.plots import plot_validity
    from spikeprune.theory.validity import criterion_validity, rows_as_dicts, validity_summary

    cfg = config_from_args(ValidityConfig, args)
    args = argparse.Namespace(**{**vars(args), **vars(cfg), "criteria": list(cfg.criteria),
                                 "layers": list(cfg.layers) or None})
    model, meta = load_model(args.checkpoint)
    trained_on = meta.get("config", {})
    config = model.spikeprune_config
    dataset = checkpoint_dataset(args.checkpoint, config, trained_on, args.dataset, args.data_dir)
    encoding = trained_on.get("encoding", "direct")
    common = dict(seed=args.seed, encoding=encoding, timesteps=config["T"])
    fit_set, val_set, split = split_validation(dataset, trained_on.get("val_fraction", 0.1),
                                               trained_on.get("val_seed", 0))
    if "validation" in meta and val_set is not None:
        measured_on = "validation"
        loader = BatchLoader(val_set, "test", args.batch_size, shuffle=False, limit=args.samples, **common)
    else:  # trained on the whole training set: its "validation" samples were training samples
        measured_on, fit_set = "test", dataset
        loader = BatchLoader(dataset, "test", args.batch_size, shuffle=False, limit=args.samples, **common)
    calib = BatchLoader(fit_set, "train", args.batch_size, shuffle=True, augment=False, **common)
    calibration = calibrate(model, calib, args.calibration_batches)
    out = check_writable_dir(args.out)  # only once every input has been read: a refusal leaves nothing
    rows = criterion_validity(model, args.criteria, calibration, list(loader), layers=args.layers,
                              groups=args.groups, seed=args.seed)
    summary = validity_summary(rows)
    ck = Path(args.checkpoint)
    record = {"checkpoint": str(ck), "epoch": meta.get("epoch"), "dataset": dataset.name, "measured_on": measured_on,
              "samples": loader.num_samples, "validation": split if measured_on == "validation" else None,
              "groups": args.groups, "calibration_batches": args.calibration_batches, "seed": args.seed,
              "summary": summary, "rows": rows_as_dicts(rows)}
    write_json(out / "validity.json", record)
    lines = ["layer,neuron,criterion,group,weights,score_sum,score_mean,flip_rate,slots"]
    lines += [f"{r.layer},{r.neuron},{r.criterion},{r.group},{r.weights},{r.score_sum:.6g},{r.score_mean:.6g},"
              f"{r.flip_rate:.6g},{r.slots}" for r in rows]
    write_text(out / "validity.csv", "\n".join(lines) + "\n")
    plot_validity(rows, validity_summary(rows), out / "validity.png", title=f"{ck.parent.name}/{ck.name}: flip rate of removed weight sets "
                                                   f"({measured_on}, {loader.num_samples} samples)")
    print(f"{'layer':<26} {'criterion':<12} {'spearman':>9} {'flips lowest':>13} {'flips highest':>14}")
    for s in summary:
        rho = "n/a" if s["spearman"] is None else f"{s['spearman']:+.3f}"
        print(f"{s['layer']:<26} {s['criterion']:<12} {rho:>9} {s['flip_rate_lowest']:>13.2e} "
              f"{s['flip_rate_highest']:>14.2e}")
    print(f"results: {out}/validity.csv, validity.json, validity.png")
    return 0


@holds_run_directory("analyze")
def run_flips(args: argparse.Namespace) -> int:
    from spikeprune.compression.compress import load_compressed
    from spikeprune.engine.data import BatchLoader
    from spikeprune.studies.flips import flip_study
    from spikeprune.report.tables import format_flip_table
    from spikeprune.theory.perturb import parse_perturbation
    from spikeprune.core.io import check_writable_dir
    from spikeprune.engine.train import checkpoint_dataset, load_model

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
    print(format_flip_table(rows), end="")  # informative rows first, vacuous bounds marked, a legend
    print(f"results: {out}/flips.csv, flips.json, flips.png")
    return 0


def _first_batches(loader, n: int) -> list:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= n:
            break
    return batches
