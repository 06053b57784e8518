"""``spikeprune analyze flips`` as a study: perturb a model, measure its flips, write the files, draw them.

Orchestration only: the science is :mod:`spikeprune.theory.perturb` and :mod:`spikeprune.theory.flips`,
the plots :mod:`spikeprune.report.plots`. :func:`analyze_flips` is the command itself (a checkpoint and a
:class:`~spikeprune.theory.config.FlipsConfig` in, a :class:`~spikeprune.core.rundir.RunResult` out);
:func:`flip_study` the same on a model already in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from spikeprune.core.io import file_slug, read_json, write_json, write_text
from spikeprune.core.rundir import RunResult, phase_done
from spikeprune.theory.config import FlipsConfig
from spikeprune.theory.flips import MODES, FlipRow, flip_analysis, flip_rows_csv, flip_summary
from spikeprune.theory.perturb import Perturbation, apply_perturbation, parse_perturbation
from spikeprune.tickets.criteria import FIRING_AWARE

__all__ = ["analyze_flips", "flip_study"]

#: the study's result file (summary and rows): :func:`is_complete` tests it
RESULT = "flips.json"


def is_complete(out: str | Path) -> bool:
    """Whether the flip study in ``out`` is done (its ``flips.json`` exists): the ``reproduce theory``
    runner then skips that perturbation."""
    return phase_done(out, RESULT)


def flip_study(
    model: nn.Module,
    perturbations: Iterable[Perturbation | str],
    test: Iterable[Any],
    out: str | Path,
    *,
    calibration: list[Any] | None = None,
    modes: Iterable[str] = MODES,
    p_sup_method: str = "kde",
    seed: int = 0,
    record: dict[str, Any] | None = None,
    title: str = "",
) -> list[FlipRow]:
    """The whole flip analysis of ``spikeprune analyze flips``: perturb, measure, write, plot.

    For every perturbation: :func:`apply_perturbation` (``calibration`` batches feed the SF criterion),
    :func:`flip_analysis` against the unperturbed ``model``, and ``OUT/flips-<label>.png``. Then
    ``OUT/flips.csv``, ``OUT/flips.png`` and last ``OUT/flips.json`` (``record`` — checkpoint, dataset,
    samples … — plus modes, estimator, seed, perturbations, summary and rows), each written atomically.
    Returns the rows of all perturbations.
    """
    out = Path(out)
    modes = list(modes)
    perturbations = [parse_perturbation(p) if isinstance(p, str) else p for p in perturbations]
    from spikeprune.report.plots import plot_flip_summary, plot_flips  # lazily: matplotlib

    rows: list[FlipRow] = []
    for p in perturbations:
        perturbed, input_fn = apply_perturbation(model, p, seed=seed,
                                                 calibration=calibration if p.criterion in FIRING_AWARE else None)
        got = flip_analysis(model, perturbed, test, modes=modes, input_fn=input_fn, p_sup_method=p_sup_method,
                            label=p.label)
        rows += got
        plot_flips(got, out / f"flips-{file_slug(p.label)}.png",
                   f"{title}: {p.label}" if title else p.label, modes=MODES)
    write_text(out / "flips.csv", flip_rows_csv(rows))
    plot_flip_summary(flip_summary(rows), out / "flips.png", modes=MODES)
    # flips.json last: it is the study's completion file (is_complete), so a study killed before it is
    # redone whole instead of being taken as finished without its summary plot
    write_json(out / RESULT, {**(record or {}), "modes": modes, "p_sup_estimator": p_sup_method,
                              "seed": seed, "perturbations": [p.label for p in perturbations],
                              "summary": flip_summary(rows), "rows": [r.as_dict() for r in rows]})
    return rows


def analyze_flips(cfg: FlipsConfig, out: str | Path) -> RunResult:
    """``spikeprune analyze flips``: load ``cfg.checkpoint`` (a compress checkpoint with its quantization,
    as it runs), run :func:`flip_study` on ``cfg.samples`` test samples and write ``out/flips.{csv,json,png}``
    and one ``flips-<label>.png`` per perturbation.

    Returns a :class:`RunResult`: ``metrics`` = ``out/flips.json`` without its rows (checkpoint, dataset,
    samples, modes, estimator, seed, perturbations and the per-layer ``summary``), ``rows`` = its rows (one
    per perturbation x mode x layer x timestep, the keys of flips.csv), ``model`` = the reference network.
    """
    from spikeprune.compression.compress import load_compressed
    from spikeprune.core.io import check_writable_dir
    from spikeprune.engine.data import BatchLoader
    from spikeprune.engine.train import checkpoint_dataset, load_model
    from spikeprune.theory.perturb import parse_perturbation

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
        model, meta = load_compressed(cfg.checkpoint, next(iter(test))[0])
    modes = list(MODES) if cfg.mode == "both" else [cfg.mode]
    ck = Path(cfg.checkpoint)
    out = check_writable_dir(out)  # only once every input has been read: a refusal leaves nothing
    flip_study(model, perturbations, test, out, modes=modes, p_sup_method=cfg.p_sup, seed=cfg.seed,
               calibration=[b for _, b in zip(range(cfg.calibration_batches), calibration)],
               record={"checkpoint": str(cfg.checkpoint), "dataset": dataset.name, "samples": test.num_samples},
               title=f"{ck.parent.name}/{ck.name}")
    metrics = read_json(out / RESULT)  # the file itself: the result and the file cannot disagree
    return RunResult(out, metrics, metrics.pop("rows"), model)
