"""``spikeprune analyze flips`` as a study: perturb a model, measure its flips, write the files, draw them.

Orchestration only: the science is :mod:`spikeprune.theory.perturb` and :mod:`spikeprune.theory.flips`,
the plots :mod:`spikeprune.report.plots`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from spikeprune.core.io import file_slug, write_json, write_text
from spikeprune.theory.flips import MODES, FlipRow, flip_analysis, flip_rows_csv, flip_summary
from spikeprune.theory.perturb import Perturbation, apply_perturbation, parse_perturbation
from spikeprune.tickets.criteria import FIRING_AWARE

__all__ = ["flip_study"]

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
    ``OUT/flips.csv``, ``OUT/flips.json`` (``record`` — checkpoint, dataset, samples … — plus modes,
    estimator, seed, perturbations, summary and rows) and ``OUT/flips.png``, each written atomically.
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
    write_json(out / "flips.json", {**(record or {}), "modes": modes, "p_sup_estimator": p_sup_method,
                                    "seed": seed, "perturbations": [p.label for p in perturbations],
                                    "summary": flip_summary(rows), "rows": [r.as_dict() for r in rows]})
    plot_flip_summary(flip_summary(rows), out / "flips.png", modes=MODES)
    return rows
