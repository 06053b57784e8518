"""Edge-popup runs: learn the scores of a random SNN into a run folder, at one density or at several.

Ramanujan et al., "What's hidden in a randomly weighted neural network?" (CVPR 2020), applied to SNNs as
in LTH-SNN §5 / Appendix E (the strong lottery ticket, SPEC §5). The method itself -- the score-carrying
layers, the straight-through top-k mask, the frozen-weight inits, :func:`to_edgepopup` and
:func:`export_subnetwork` -- is :mod:`spikeprune.tickets.subnet` (its public names are importable from here
too). This module is the orchestration:

* :class:`EdgePopupConfig`: TrainConfig plus the edge-popup knobs (flags and YAML keys of ``spikeprune edgepopup``);
* :func:`search`: one density into a run folder (scores learnt by :func:`~spikeprune.engine.train.fit`,
  resumable per epoch; the exported subnetwork, its mask and ``result.json``);
* :func:`search_densities`: one search per density (``density-<d>/``), ``results.{json,csv,png}`` after each,
  resumable (the multi-seed job sweeps are :mod:`spikeprune.studies.sweep`'s ``edgepopup_sweep``);
* :func:`demo`: the quickstart's edge-popup step.

Files are written through :mod:`spikeprune.core.io`, the plot is :func:`~spikeprune.report.plots.plot_subnetwork_accuracy`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spikeprune.core.config import hparam, hyperparameters, to_dict
from spikeprune.core.diagnostics import UserError
from spikeprune.core.io import check_writable_dir, collective, read_json, write_csv, write_json
from spikeprune.core.rundir import RunResult, check_resumable, log, phase_done, refuse_unless_resume
from spikeprune.core.tensorboard_log import require_tensorboard
from spikeprune.engine.config import TrainConfig
from spikeprune.engine.data import ImageDataset, load_dataset
from spikeprune.engine.train import build_model, evaluate, fit, make_loaders, save_model
from spikeprune.tickets.masks import prunable_weights
from spikeprune.tickets import subnet
# The science, re-exported (its __all__ is part of this one): `from spikeprune.tickets.edgepopup import
# to_edgepopup` keeps working.
from spikeprune.tickets.subnet import *  # noqa: F401,F403
from spikeprune.tickets.subnet import INITS, check_density, export_subnetwork, num_kept, scored_layers, to_edgepopup

__all__ = [*subnet.__all__, "EdgePopupConfig", "demo", "read_reference", "run_dir_name", "search",
           "search_densities", "write_results"]

SUBNET_CHECKPOINT = "subnet.safetensors"
MASK_FILE = "mask.safetensors"
RESULT_FILE = "result.json"


def is_complete(out: str | Path) -> bool:
    """Whether the search of one density in ``out`` is finished: its ``result.json`` exists (:func:`search`
    writes it last). A sweep skips that density (:func:`sweep`; a sweep's ``edgepopup`` job)."""
    return phase_done(out, RESULT_FILE)


# ---------------------------------------------------------------------------------------------
# Runs: one search, one search per density.
# ---------------------------------------------------------------------------------------------


@dataclass
class EdgePopupConfig(TrainConfig):
    """TrainConfig plus the edge-popup knobs. The optimiser settings apply to the *scores*."""

    density: float = hparam(0.5, "fraction of weights KEPT in every prunable layer, in (0, 1] "
                                 "(sparsity = 1 - density)")
    densities: tuple[float, ...] = hparam((), "several densities: one search per density, e.g. 0.1,0.3,0.5,0.7,0.9 "
                                              "(then leave --density unset)", excludes=("density",))
    init: str = hparam("signed_constant", "frozen random weights", INITS)
    affine_bn: bool = hparam(False, "also TRAIN BatchNorm gamma/beta (results then say the network is not "
                                    "untrained); default: non-affine BN")
    scale_fan: bool = hparam(False, "draw weights with fan_in * density (Ramanujan's --scale-fan)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_density(self.density)
        for d in self.densities:
            check_density(d, "each of densities")
        if len(set(self.densities)) != len(self.densities):
            raise UserError(f"densities has a repeated value; got {self.densities!r}")
        if self.densities and self.density != type(self).__dataclass_fields__["density"].default:
            raise UserError(f"give either density (one search) or densities (one search per density), not both; got "
                             f"density={self.density!r} and densities={self.densities!r}")


def _bn_statement(affine_bn: bool) -> str:
    if affine_bn:
        return ("AFFINE BN: BatchNorm gamma/beta were TRAINED together with the scores; this subnetwork "
                "is NOT an untrained network (only the conv/linear weights are untrained)")
    return "non-affine BN: no weight, gain or bias was trained; only the scores (which weights exist) were learnt"


def run_dir_name(density: float) -> str:
    """Folder of one density inside the output folder of :func:`search_densities`, e.g. ``density-0.3``."""
    return f"density-{density:.6g}"


# search() has engine.train.fit's calling convention (cfg, out, resume, dataset, progress, log) on
# purpose: it IS fit on a converted model and hands those arguments straight on, and studies.sweep runs
# an edge-popup job and a training job the same way. (`duplicates` pairs the two signatures.)
@collective  # data parallel under torchrun: every rank calls it, rank 0 writes the files
def search(
    cfg: EdgePopupConfig,
    out: str | Path,
    *,
    resume: bool = False,
    dataset: ImageDataset | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = log,
    tensorboard: bool = False,
) -> RunResult:
    """Edge-popup at ``cfg.density`` into the run folder ``out``; returns a :class:`RunResult` whose
    ``metrics`` is the result row (``out/result.json``) and ``model`` the exported subnetwork.

    Builds ``cfg.model`` for ``dataset``, converts it with :func:`to_edgepopup` (seed ``cfg.seed``),
    learns the scores with :func:`~spikeprune.engine.train.fit` (SGD/cosine of ``cfg``; resumable per
    epoch), exports the subnetwork and evaluates the export. ``out`` then holds the search
    checkpoint and history (from ``fit``), ``subnet.safetensors`` (the ordinary model: ``spikeprune
    evaluate --checkpoint`` takes it), ``mask.safetensors`` and ``result.json``. ``tensorboard=True``: the
    search's epochs are also logged into ``out/tensorboard/`` (as :func:`~spikeprune.engine.train.fit` does).
    """
    if cfg.densities:
        raise UserError("search() runs one density; use search_densities() for densities")
    if tensorboard:
        require_tensorboard()  # before any work
    from spikeprune.core.distributed import context, is_main

    context()
    if not is_main():
        progress, log = False, None
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir)
    model = to_edgepopup(build_model(cfg, dataset), cfg.density, init=cfg.init, affine_bn=cfg.affine_bn,
                         scale_fan=cfg.scale_fan, seed=cfg.seed)
    if cfg.affine_bn and log:
        log(f"edgepopup: WARNING {_bn_statement(True)}")
    trained = fit(cfg, out, resume=resume, dataset=dataset, model=model, progress=progress, log=log,
                  tensorboard=tensorboard)
    plain, mask = export_subnetwork(trained.model)
    _, test_loader = make_loaders(cfg, dataset)
    exported = evaluate(plain, test_loader, loss=cfg.loss, bf16=cfg.bf16)
    m = trained.metrics
    out = Path(out)
    row: dict[str, Any] = {
        "density": cfg.density,
        "sparsity": 1.0 - cfg.density,
        "measured_density": mask.density,
        "seed": cfg.seed,
        "val_accuracy": m["val_accuracy"],
        "test_accuracy": m["test_accuracy"],
        "best_val_epoch": m["best_val_epoch"],
        "best_val_accuracy": m["best_val_accuracy"],
        "test_accuracy_at_best_val": m["test_accuracy_at_best_val"],
        "validation": m["validation"],
        "exported_test_accuracy": exported["test_accuracy"],
        "export_matches": exported["test_accuracy"] == m["test_accuracy"],
        "test_loss": m["test_loss"],
        "train_accuracy": m["train_accuracy"],
        "firing_rate": exported["firing_rate"],
        "epochs": cfg.epochs,
        "seconds": m["seconds"],
        "model": cfg.model,
        "width": cfg.width,
        "dataset": cfg.dataset,
        "timesteps": cfg.timesteps,
        "init": cfg.init,
        "scale_fan": cfg.scale_fan,
        "affine_bn": cfg.affine_bn,
        "weights_trained": False,
        "bn_trained": cfg.affine_bn,
        "bn": _bn_statement(cfg.affine_bn),
        "trained_parameters": sum(p.numel() for n, p in trained.model.named_parameters()
                                  if p.requires_grad and not n.endswith("scores")),  # BN gamma/beta (affine_bn)
        "score_parameters": sum(layer.scores.numel() for layer in scored_layers(trained.model).values()),
        "layers": mask.report(),
        "checkpoint": str(out / SUBNET_CHECKPOINT),
        "mask": str(out / MASK_FILE),
        "hyperparameters": hyperparameters(cfg),
    }
    meta = {"edgepopup": {k: row[k] for k in ("density", "sparsity", "seed", "init", "scale_fan", "affine_bn",
                                              "bn", "test_accuracy")},
            "config": to_dict(cfg)}
    save_model(out / SUBNET_CHECKPOINT, plain, meta)
    mask.save(out / MASK_FILE, meta)
    write_json(out / RESULT_FILE, row)  # written last: its presence means this density is finished
    if log:
        log(f"edgepopup: density {cfg.density:g} (sparsity {1 - cfg.density:g}): test accuracy "
            f"{m['test_accuracy']:.4f}, exported subnetwork {exported['test_accuracy']:.4f}")
    return RunResult(out, row, model=plain)


CSV_FIELDS = ["density", "sparsity", "seed", "val_accuracy", "test_accuracy", "best_val_epoch", "best_val_accuracy",
              "test_accuracy_at_best_val", "exported_test_accuracy",
              "relative_to_dense", "firing_rate", "epochs", "seconds", "model", "width", "dataset", "timesteps",
              "init", "scale_fan", "affine_bn", "weights_trained"]


def read_reference(paths: Iterable[str | Path], like: Any = None) -> list[float]:
    """Test accuracies of dense *trained* reference runs: each path is a ``metrics.json`` or a run folder.

    ``like`` (a config with ``model``, ``dataset``, ``width``, ``timesteps``): a reference whose recorded
    config differs in any of these is refused, since "vs dense" would then compare different networks.
    """
    values = []
    for p in paths:
        p = Path(p)
        f = p / "metrics.json" if p.is_dir() else p
        if not f.is_file():
            raise UserError(f"reference {p} is neither a metrics.json nor a run folder holding one")
        data = read_json(f)
        acc = data.get("test_accuracy") if isinstance(data, dict) else None
        if not isinstance(acc, (int, float)) or isinstance(acc, bool):
            raise UserError(f"reference {f} has no test_accuracy")
        recorded = data.get("config")
        if like is not None and isinstance(recorded, dict):
            for key in ("model", "dataset", "width", "timesteps"):
                if key in recorded and recorded[key] != getattr(like, key):
                    raise UserError(f"reference {f} is a {key}={recorded[key]!r} run; this search has "
                                    f"{key}={getattr(like, key)!r}, so 'vs dense' would compare different networks")
        values.append(float(acc))
    return values


def write_results(out: str | Path, rows: Sequence[dict[str, Any]], *, cfg: EdgePopupConfig,
                  reference: Sequence[float] = (), complete: bool = True, plot: bool = True) -> dict[str, Any]:
    """``results.json``, ``results.csv`` and ``results.png`` (accuracy vs sparsity, dense line) in ``out``."""
    out = Path(out)
    ref = sum(reference) / len(reference) if reference else None
    rows = [{**r, "relative_to_dense": (r["test_accuracy"] / ref) if ref else None} for r in rows]
    # The best density is chosen on validation accuracy (issue 14); its test accuracy is only reported.
    best = max(rows, key=lambda r: r.get("val_accuracy") or 0.0) if rows else None
    summary = {
        "method": "edge-popup (Ramanujan et al. 2020; LTH-SNN §5): weights frozen at random init",
        "complete": complete,
        "bn": _bn_statement(cfg.affine_bn),
        "affine_bn": cfg.affine_bn,
        "dense_reference": {"test_accuracies": list(reference), "mean": ref} if reference else None,
        "best": {k: best.get(k) for k in ("density", "sparsity", "val_accuracy", "test_accuracy", "relative_to_dense")}
                if best else None, "best_selected_on": "val_accuracy",
        "rows": rows,
        "config": to_dict(cfg),
    }
    write_json(out / "results.json", summary)
    write_csv(out / "results.csv", rows, CSV_FIELDS)
    if plot and rows:
        from spikeprune.report.plots import plot_subnetwork_accuracy

        title = f"edge-popup: {cfg.model} (width {cfg.width:g}) on {cfg.dataset}, T={cfg.timesteps}"
        if cfg.affine_bn:
            title += "\n(AFFINE BN TRAINED)"
        plot_subnetwork_accuracy(
            [{"sparsity": r["sparsity"], "accuracy": r["test_accuracy"], "seed": r["seed"]} for r in rows],
            out / "results.png", reference=reference, title=title,
            label="untrained subnetwork (edge-popup)", reference_label="dense trained")
    return summary


@collective  # data parallel under torchrun: every rank calls it, rank 0 writes the files
def search_densities(
    cfg: EdgePopupConfig,
    out: str | Path,
    *,
    resume: bool = False,
    reference: Iterable[str | Path] = (),
    dataset: ImageDataset | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = log,
    tensorboard: bool = False,
) -> RunResult:
    """One :func:`search` per density (``cfg.densities``, or just ``cfg.density``), each in
    ``out/density-<d>/``; writes ``out/results.{json,csv,png}`` after every density.

    Resumable: with ``resume=True`` a finished density (its ``result.json`` exists) is read, not
    redone, and an interrupted one continues from its last epoch. Without ``resume`` an ``out``
    that already holds such a search is refused. Everything a user can get wrong (densities, model,
    dataset, reference files) is checked before the first file is written. ``tensorboard=True``: each
    density's search logs its epochs into ``out/density-<d>/tensorboard/``.
    """
    from spikeprune.core.distributed import context, is_main

    if tensorboard:
        require_tensorboard()  # before any work
    context()  # under torchrun: join the process group before touching any file
    if not is_main():  # under torchrun only rank 0 talks
        progress, log = False, None
    densities = list(cfg.densities) or [cfg.density]
    names = [run_dir_name(d) for d in densities]
    if len(set(names)) != len(names):
        raise UserError(f"densities {densities} are too close to tell apart")
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir)
    probe = build_model(cfg, dataset)
    for name, w in prunable_weights(probe).items():  # every density keeps >= 1 weight of every layer
        for d in densities:
            num_kept(w.numel(), d, name)
    ref = read_reference(reference, like=cfg)
    out = Path(out)
    refuse_unless_resume(out, "an edge-popup search", resume=resume,
                         holds=(out / "results.json").exists() or any((out / n).exists() for n in names))
    from spikeprune.core.distributed import barrier

    barrier()  # under torchrun: every rank has looked before any rank creates a folder
    out = check_writable_dir(out)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for i, (d, name) in enumerate(zip(densities, names)):
        cfg_d = replace(cfg, density=d, densities=())
        run = out / name
        if is_complete(run):
            row = read_json(run / RESULT_FILE)
            check_resumable(run, row.get("hyperparameters") or {}, hyperparameters(cfg_d), done="searched")
            if log:
                log(f"edgepopup: density {d:g} already done ({row['test_accuracy']:.4f}); skipped")
        else:
            if log:
                log(f"edgepopup: density {d:g} ({i + 1}/{len(densities)}) -> {run}")
            row = search(cfg_d, run, resume=True, dataset=dataset, progress=progress, log=log,
                         tensorboard=tensorboard).metrics
        rows.append(row)
        summary = write_results(out, rows, cfg=cfg, reference=ref, complete=len(rows) == len(densities))
    return RunResult(out, summary, summary["rows"])


def demo(base: TrainConfig, out: str | Path, *, density: float = 0.5, epochs: int | None = None,
         progress: bool = False, log: Callable[[str], None] | None = None, tensorboard: bool = False) -> dict[str, Any]:
    """Edge-popup on the network and data of ``base`` (quickstart: the same convnet on digits, untrained).

    Searches ``base``'s model/dataset/hyperparameters at ``density`` into ``out`` (resuming, or just
    re-reporting, an earlier demo there). Returns the result row plus ``wall_seconds``.
    """
    # only TrainConfig's fields carry over: ``base`` may be a command config with extra knobs
    cfg = EdgePopupConfig(**{**to_dict(TrainConfig.of(base)), "density": density, "epochs": epochs or base.epochs})
    t0 = time.perf_counter()
    summary = search_densities(cfg, out, resume=True, progress=progress, log=log, tensorboard=tensorboard).metrics
    return {**summary["rows"][0], "wall_seconds": time.perf_counter() - t0}
