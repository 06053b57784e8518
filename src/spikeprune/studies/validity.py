"""``spikeprune analyze validity`` as a study: does a criterion's score predict the flips its removal causes?

Orchestration only: the science (removing equal-sized weight sets, measuring the layer-local flip rate,
the Spearman correlation; LTH-SNN Eq. 12's premise) is :mod:`spikeprune.theory.validity`, the plot
:func:`spikeprune.report.plots.plot_validity`.
"""

from __future__ import annotations

from pathlib import Path

from spikeprune.core.io import check_writable_dir, write_csv, write_json
from spikeprune.core.rundir import RunResult
from spikeprune.theory.config import ValidityConfig

__all__ = ["analyze_validity"]


def analyze_validity(cfg: ValidityConfig, out: str | Path) -> RunResult:
    """``spikeprune analyze validity``: load ``cfg.checkpoint``, calibrate the firing-aware criteria on
    ``cfg.calibration_batches`` training batches, measure each criterion's weight sets on ``cfg.samples``
    validation samples (test samples when the checkpoint was trained without a validation split) and
    write ``out/validity.{csv,json,png}``.

    Returns a :class:`RunResult`: ``metrics`` = ``out/validity.json`` without its rows (checkpoint,
    epoch, dataset, ``measured_on``, samples, validation split, groups, seed and the per layer x criterion
    ``summary``: ``spearman``, ``flip_rate_lowest``, ``flip_rate_highest``, ...), ``rows`` = its rows (one
    per layer x criterion x weight set), ``model`` = the network analysed.
    """
    from spikeprune.engine.data import BatchLoader, split_validation
    from spikeprune.engine.train import checkpoint_dataset, load_model
    from spikeprune.report.plots import plot_validity
    from spikeprune.theory.validity import (VALIDITY_FIELDS, criterion_validity, rows_as_dicts, validity_csv_rows,
                                            validity_summary)
    from spikeprune.tickets.calibration import calibrate

    model, meta = load_model(cfg.checkpoint)
    trained_on = meta.get("config", {})
    config = model.spikeprune_config
    dataset = checkpoint_dataset(cfg.checkpoint, config, trained_on, cfg.dataset, cfg.data_dir)
    encoding = trained_on.get("encoding", "direct")
    common = dict(seed=cfg.seed, encoding=encoding, timesteps=config["T"])
    fit_set, val_set, split = split_validation(dataset, trained_on.get("val_fraction", 0.1),
                                               trained_on.get("val_seed", 0))
    if "validation" in meta and val_set is not None:
        measured_on = "validation"
        loader = BatchLoader(val_set, "test", cfg.batch_size, shuffle=False, limit=cfg.samples, **common)
    else:  # trained on the whole training set: its "validation" samples were training samples
        measured_on, fit_set = "test", dataset
        loader = BatchLoader(dataset, "test", cfg.batch_size, shuffle=False, limit=cfg.samples, **common)
    calib = BatchLoader(fit_set, "train", cfg.batch_size, shuffle=True, augment=False, **common)
    calibration = calibrate(model, calib, cfg.calibration_batches)
    out = check_writable_dir(out)  # only once every input has been read: a refusal leaves nothing
    rows = criterion_validity(model, list(cfg.criteria), calibration, list(loader), layers=list(cfg.layers) or None,
                              groups=cfg.groups, seed=cfg.seed)
    summary = validity_summary(rows)
    ck = Path(cfg.checkpoint)
    record = {"checkpoint": str(ck), "epoch": meta.get("epoch"), "dataset": dataset.name, "measured_on": measured_on,
              "samples": loader.num_samples, "validation": split if measured_on == "validation" else None,
              "groups": cfg.groups, "calibration_batches": cfg.calibration_batches, "seed": cfg.seed,
              "summary": summary, "rows": rows_as_dicts(rows)}
    write_json(out / "validity.json", record)
    write_csv(out / "validity.csv", validity_csv_rows(rows), VALIDITY_FIELDS)
    plot_validity(rows, summary, out / "validity.png",
                  title=f"{ck.parent.name}/{ck.name}: flip rate of removed weight sets ({measured_on}, "
                        f"{loader.num_samples} samples)")
    metrics = {k: v for k, v in record.items() if k != "rows"}
    return RunResult(out, metrics, record["rows"], model)
