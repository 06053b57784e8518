"""Lottery tickets: IMP with rewinding, SF-IMP-1 and SF-IMP-2 (SPEC §5; LTH-SNN Algorithm 1 and App. F).

IMP with rewinding (Frankle et al. 2020; Kim et al., ECCV 2022, whose code LTH-SNN reuses)::

    train the dense network for R epochs              -> rewind state theta_R
    train it on to ``epochs``                          -> round 0 (dense)
    for k = 1..K:
        prune p of the surviving weights by the criterion, scored on the round k-1 network -> m_k
        reload theta_R, apply m_k, retrain ``epochs - R`` epochs (fresh optimizer, fresh cosine)

* **imp**: magnitude criterion, static masks (pruned weights stay exactly 0, SPEC §3).
* **sf-imp-1**: the same with the SF criterion (LTH-SNN Eq. 12-13 / S.43).
* **sf-imp-2**: SF-IMP-1, except that the layers where SF falls back to magnitude (the encoding
  layer and FC layers) get *dynamic* masks (Dynamic Network Surgery): masked in the forward pass
  only, dense straight-through updates, rewound unmasked; every weight of those layers competes again
  at the next pruning step, so pruned weights can come back. The density schedule is unchanged.

What a round rewinds: the whole ``state_dict`` of the rewind point, i.e. conv/linear weights
(times the mask), biases, BN affine parameters *and* BN running statistics. Kim et al. rewind
weights, biases and BN affine (``named_parameters``) but keep the running statistics of the previous
round; those are re-estimated within the first ~50 steps (momentum 0.1: 0.9^50 < 1 %) and only read
at evaluation, so the choice does not change results, while rewinding everything makes a round a pure
function of (rewind state, mask, seed): required for bit-identical resumption and for sharing one
dense run between variants. Each round gets a fresh optimizer (zero momentum) and a fresh cosine
schedule over its ``epochs - R`` epochs, as in Kim et al.'s ``train_snn_laterewindlth.py``.

Files (open_lth style: a phase whose outputs exist is skipped, so a killed run resumes where it stopped;
:func:`dense_complete`, :func:`mask_written`, :func:`round_complete` and :func:`is_complete` name those outputs,
tested by :func:`spikeprune.core.rundir.phase_done`)::

    out/lottery.json                the run's hyperparameters (checked on --resume)
    out/dense/                      fit() run: checkpoint.safetensors, history.csv, metrics.json,
                                    rewind.safetensors (model state after R epochs)
    out/round_KK/mask.safetensors   written before round KK trains (atomic)
    out/round_KK/...                fit() run of the ticket (checkpoint per epoch, metrics.json when done)
    out/rounds.csv, results.json    one row per round (round 0 = dense), rebuilt after every round
    out/accuracy_vs_sparsity.png
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.core import distributed
from spikeprune.tickets.calibration import calibrate
from spikeprune.core.config import hparam, hyperparameters, run_id, to_dict
from spikeprune.engine.config import TrainConfig
from spikeprune.tickets.criteria import CRITERIA, FIRING_AWARE, check_criterion, sf_layers
from spikeprune.engine.data import BatchLoader, ImageDataset, load_dataset, split_validation
from spikeprune.core.io import check_writable_dir, collective, load_checkpoint, read_json, save_checkpoint, write_csv, write_json
from spikeprune.tickets.masks import Mask, enforce, mask_forward, prunable_weights
from spikeprune.tickets.pruning import prune_step
from spikeprune.tickets.strategies import NORMALIZATIONS, STRATEGIES
from spikeprune.engine.train import CHECKPOINT, METRICS, build_model, fit, load_model_state, model_tensors
from spikeprune.engine.train import is_complete as training_complete
from spikeprune.core.rundir import RunResult, first_difference, link_run, log, phase_done, refuse_unless_resume
from spikeprune.core.tensorboard_log import open_scalar_log, require_tensorboard

__all__ = ["LotteryConfig", "VARIANTS", "collect_rows", "load_ticket", "rewind_saver", "rewound_ticket", "run_lottery", "train_dense", "adopt_dense"]

VARIANTS = ("imp", "sf-imp-1", "sf-imp-2")
REWIND = "rewind.safetensors"
MASK = "mask.safetensors"
#: rebuilt after every round; with the last round's metrics.json it means the whole run is finished
RESULTS = "results.json"
ROUND_FIELDS = ["round", "sparsity", "density", "val_accuracy", "test_accuracy", "best_val_epoch",
                "best_val_accuracy", "test_accuracy_at_best_val", "firing_rate", "seconds", "prune_seconds", "epochs"]
#: the rounds.csv numbers a lottery logs per round with ``tensorboard=True`` (not wall-clock, not counters)
ROUND_SCALARS = ["sparsity", "density", "val_accuracy", "test_accuracy", "best_val_accuracy",
                 "test_accuracy_at_best_val", "firing_rate"]
#: fields that may change when a run is resumed (extending a finished run by more rounds)
RESUMABLE_CHANGES = frozenset({"rounds"})


@dataclass
class LotteryConfig(TrainConfig):
    """TrainConfig + the lottery-ticket search. ``epochs`` is the dense training length N; every round
    retrains ``epochs - rewind_epoch`` epochs from the rewind state (Kim et al.: N = 300, R = 20)."""

    variant: str = hparam("imp", "imp (static masks), sf-imp-1 (IMP with the SF criterion), sf-imp-2 "
                          "(SF-IMP-1 + dynamic masks on the encoding and FC layers)", VARIANTS)
    criterion: str | None = hparam(None, f"pruning criterion: {', '.join(list(CRITERIA)[:-1])} or {list(CRITERIA)[-1]} "
                                   "(default: magnitude for imp, sf for sf-imp-1/2)")
    rounds: int = hparam(5, "pruning rounds K (>= 1); a finished run resumes with a larger K to go on")
    prune_fraction: float = hparam(0.25, "fraction p of the surviving weights removed per round, in (0, 1)")
    rewind_epoch: int = hparam(1, "epoch R whose state every round rewinds to (0 = initialisation; < epochs)")
    scope: str = hparam("global", "rank weights over all layers or within each layer", tuple(STRATEGIES))
    normalize: str = hparam("auto", "how global ranking compares layers scored by different criteria "
                            "(auto: none for one criterion, budget for mixed; docs/lottery.md)", NORMALIZATIONS)
    calibration_batches: int = hparam(8, "training batches of the calibration pass of firing-aware criteria (>= 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.prune_fraction < 1.0:
            raise UserError(f"prune_fraction must be in (0, 1) (a fraction of the surviving weights); "
                             f"got {self.prune_fraction!r}")
        if self.rounds < 1:
            raise UserError(f"rounds must be >= 1; got {self.rounds!r}")
        if not 0 <= self.rewind_epoch < self.epochs:
            raise UserError(f"rewind_epoch must be in [0, epochs) = [0, {self.epochs}); got {self.rewind_epoch!r}")
        if self.calibration_batches < 1:
            raise UserError(f"calibration_batches must be >= 1; got {self.calibration_batches!r}")
        if self.criterion is not None:
            check_criterion(self.criterion)
        if self.variant != "imp" and self.pruning_criterion not in FIRING_AWARE:
            raise UserError(f"variant {self.variant} prunes by a firing-aware criterion "
                             f"({', '.join(sorted(FIRING_AWARE))}); got criterion {self.criterion!r} "
                             "(use --variant imp for magnitude or random pruning)")

    @property
    def pruning_criterion(self) -> str:
        """The criterion actually used (the variant's default when ``criterion`` is unset)."""
        if self.criterion is not None:
            return self.criterion
        return "magnitude" if self.variant == "imp" else "sf"


def train_config(cfg: LotteryConfig) -> TrainConfig:
    """The dense run's config: the TrainConfig part of ``cfg`` (so variants can share one dense run)."""
    return TrainConfig.of(cfg)


def round_config(cfg: LotteryConfig) -> TrainConfig:
    """A round's training config: ``epochs - rewind_epoch`` epochs with a fresh schedule."""
    return replace(train_config(cfg), epochs=cfg.epochs - cfg.rewind_epoch)


def round_dir(out: Path, k: int) -> Path:
    return out / ("dense" if k == 0 else f"round_{k:02d}")


# ---------------------------------------------------------------------------------------------
# Completion: the files that mean "this phase is finished" (core.rundir.phase_done), named once here
# for the phases below and for a sweep's lottery jobs (studies.sweep.Job.done).
# ---------------------------------------------------------------------------------------------


def dense_complete(out: str | Path) -> bool:
    """Round 0 of the lottery run ``out`` is finished: ``dense/`` is a finished training run
    (``metrics.json``) and holds the rewind state (``rewind.safetensors``). Then :func:`train_dense` and
    :func:`run_lottery` skip it (possibly shared with other variants, or adopted from a training run)."""
    where = round_dir(Path(out), 0)
    return training_complete(where) and phase_done(where, REWIND)


def round_complete(out: str | Path, k: int) -> bool:
    """Round ``k`` of the lottery run ``out`` has trained: its folder is a finished training run
    (``round_KK/metrics.json``; round 0: ``dense/metrics.json``)."""
    return training_complete(round_dir(Path(out), k))


def mask_written(out: str | Path, k: int) -> bool:
    """Round ``k``'s mask is written (``round_KK/mask.safetensors``, atomically, before the round trains)."""
    return phase_done(round_dir(Path(out), k), MASK)


def is_complete(out: str | Path, rounds: int) -> bool:
    """The lottery run ``out`` of ``rounds`` rounds is finished: its last round has trained and
    ``results.json`` exists."""
    return round_complete(out, rounds) and phase_done(out, RESULTS)


# ---------------------------------------------------------------------------------------------
# Identity checks.
# ---------------------------------------------------------------------------------------------


def _check_identity(out: Path, cfg: LotteryConfig, resume: bool) -> None:
    path = out / "lottery.json"
    identity = hyperparameters(cfg)
    if path.exists():
        refuse_unless_resume(out, "a lottery run", holds=True, resume=resume,
                             saved=read_json(path).get("hyperparameters", {}), now=identity, ignore=RESUMABLE_CHANGES)
    write_json(path, {"hyperparameters": identity, "run_id": run_id(cfg), "config": to_dict(cfg)})


def _check_dense_matches(where: Path, saved: dict[str, Any], tcfg: TrainConfig) -> None:
    diff = first_difference({k: v for k, v in saved.items() if k in hyperparameters(tcfg)}, hyperparameters(tcfg))
    if diff:
        raise UserError(f"the dense run in {where} does not match this configuration ({diff}); use another --out")


# ---------------------------------------------------------------------------------------------
# Phases.
# ---------------------------------------------------------------------------------------------


def _save_rewind(path: Path, tensors: dict[str, torch.Tensor], epoch: int, tcfg: TrainConfig) -> None:
    save_checkpoint(path, tensors, {"kind": "rewind", "epoch": epoch, "hyperparameters": hyperparameters(tcfg)})


def _dense(cfg: LotteryConfig, out: Path, dataset: ImageDataset, progress: bool, log: Callable | None,
           tensorboard: bool = False) -> None:
    """Round 0: train the dense network, saving the state after ``rewind_epoch`` epochs."""
    where, tcfg, R = round_dir(out, 0), train_config(cfg), cfg.rewind_epoch
    rewind = where / REWIND
    if dense_complete(out):
        _check_dense_matches(where, read_json(where / METRICS).get("config", {}), tcfg)
        return  # phase done (possibly shared with other variants)
    ckpt = where / CHECKPOINT
    model = build_model(tcfg, dataset)
    if not rewind.exists():
        if R == 0:  # the initialisation is a pure function of the config (build_model seeds it)
            _save_rewind(rewind, model_tensors(model), 0, tcfg)
        elif ckpt.exists():
            # Killed between the checkpoint of epoch R and the rewind file: that checkpoint *is* the rewind state.
            tensors, meta = load_checkpoint(ckpt)
            if int(meta.get("epoch", -1)) == R:
                _save_rewind(rewind, {k: v for k, v in tensors.items() if k.startswith("model/")}, R, tcfg)
            elif int(meta.get("epoch", -1)) > R:
                raise UserError(f"{where} trained past the rewind epoch {R} without saving {REWIND}; "
                                 f"delete {where} to restart it")

    def capture(epoch: int, trained: nn.Module) -> None:
        if epoch + 1 == R:
            _save_rewind(rewind, model_tensors(trained), R, tcfg)

    if log:
        log(f"[lottery] round 0 (dense): {tcfg.epochs} epochs, rewind state at epoch {R}")
    fit(tcfg, where, resume=True, dataset=dataset, model=model, on_epoch_end=capture, progress=progress, log=log,
        tensorboard=tensorboard)


def _read_mask(path: Path) -> tuple[Mask, list[str], dict[str, Any]]:
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "mask":
        raise UserError(f"{path} is a spikeprune file but not a mask (kind {meta.get('kind')!r})")
    return Mask(tensors), list(meta.get("dynamic", [])), meta


def _masked_model(cfg: LotteryConfig, dataset: ImageDataset, tensors: dict[str, torch.Tensor], mask: Mask,
                  dynamic: list[str], source: str) -> nn.Module:
    """A model holding ``tensors`` with ``mask``: static layers zeroed, dynamic layers forward-masked."""
    model = build_model(train_config(cfg), dataset)
    load_model_state(model, tensors, source)
    mask.check_fits(model)
    Mask({n: mask[n] for n in mask if n not in dynamic}).apply(model)
    if dynamic:
        mask_forward(model, Mask({n: mask[n] for n in dynamic}))
    return model


def calibration_loader(cfg: TrainConfig, dataset: ImageDataset, k: int) -> BatchLoader:
    """Training batches for the statistics of round ``k`` (no augmentation; deterministic in (seed, k)).

    Drawn from the training samples not held out for validation, so validation stays unseen."""
    dataset = split_validation(dataset, cfg.val_fraction, cfg.val_seed)[0]
    loader = BatchLoader(dataset, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, encoding=cfg.encoding,
                         timesteps=cfg.timesteps, augment=False, limit=cfg.train_limit)
    loader.set_epoch(k)
    return loader


def _prune(cfg: LotteryConfig, out: Path, k: int, dataset: ImageDataset, log: Callable | None) -> None:
    """Score the network trained in round k-1 and write round k's mask (atomically)."""
    prev = round_dir(out, k - 1)
    tensors, _ = load_checkpoint(prev / CHECKPOINT)
    if k == 1:
        prev_mask, prev_dynamic = Mask.ones(build_model(train_config(cfg), dataset)), []
    else:
        prev_mask, prev_dynamic, _ = _read_mask(prev / MASK)
    tick = time.perf_counter()
    trained = _masked_model(cfg, dataset, tensors, prev_mask, prev_dynamic, str(prev / CHECKPOINT))
    criterion = cfg.pruning_criterion
    calib = None
    if criterion in FIRING_AWARE or cfg.variant == "sf-imp-2":
        calib = calibrate(trained, calibration_loader(cfg, dataset, k), cfg.calibration_batches)
    dynamic: list[str] = []
    if cfg.variant == "sf-imp-2":
        # The layers where SF falls back to magnitude (encoding + FC) get dynamic masks (App. F).
        firing = sf_layers(trained, calib)
        dynamic = [n for n in prunable_weights(trained) if n not in firing]
    mask = prune_step(trained, cfg.prune_fraction, criterion=criterion, scope=cfg.scope, mask=prev_mask,
                      calibration=calib, normalize=cfg.normalize, seed=cfg.seed * 1000 + k, dynamic=dynamic)
    seconds = time.perf_counter() - tick
    revived = sum(int((mask[n] & ~prev_mask[n]).sum()) for n in dynamic)
    extra: dict[str, Any] = {}
    if distributed.context().active:
        # Every rank computed the mask from the same model and batches; record that they agree.
        # Whatever happens, every rank trains with rank 0's mask, read back from the file written below.
        sums = distributed.all_gather_objects(distributed.checksum(dict(mask.items())))
        extra = {"rank_checksums": sums, "ranks_agree": len(set(sums)) == 1}
        if log and len(set(sums)) != 1:
            log(f"[lottery] round {k}: WARNING the ranks computed different masks ({sums}); using rank 0's")
    mask.save(round_dir(out, k) / MASK, {"round": k, "dynamic": dynamic, "criterion": criterion,
                                         "variant": cfg.variant, "prune_seconds": seconds, "revived": revived,
                                         **extra})
    if log:
        log(f"[lottery] round {k}: pruned to sparsity {mask.sparsity:.4f} by {criterion} in {seconds:.2f} s"
            + (f" ({revived} weights revived in dynamic layers)" if dynamic else ""))


def rewound_ticket(cfg: LotteryConfig, out: str | Path, k: int, dataset: ImageDataset) -> tuple[nn.Module, Mask, list[str]]:
    """Round ``k``'s starting point: the rewind state with round ``k``'s mask, as the round trains it.

    Static layers hold ``rewind ⊙ mask``; dynamic layers (SF-IMP-2) hold the dense rewind weights and
    compute with ``weight ⊙ mask``. Returns ``(model, mask, dynamic layer names)``.
    """
    out = Path(out)
    mask, dynamic, _ = _read_mask(round_dir(out, k) / MASK)
    rewind, _ = load_checkpoint(round_dir(out, 0) / REWIND)
    return _masked_model(cfg, dataset, rewind, mask, dynamic, str(round_dir(out, 0) / REWIND)), mask, dynamic


def _train_round(cfg: LotteryConfig, out: Path, k: int, dataset: ImageDataset, progress: bool,
                 log: Callable | None, tensorboard: bool = False) -> None:
    where = round_dir(out, k)
    ticket, mask, dynamic = rewound_ticket(cfg, out, k, dataset)
    guard = enforce(ticket, Mask({n: mask[n] for n in mask if n not in dynamic}))
    if log:
        log(f"[lottery] round {k}: training the ticket (density {mask.density:.4f}) for "
            f"{cfg.epochs - cfg.rewind_epoch} epochs from the rewind state (epoch {cfg.rewind_epoch})")
    # fit counts the round's own epochs (1..epochs-R); the prefix says which round and that they follow
    # the rewind state, so "epoch 1/18" is not read as epoch 1 of the dense schedule.
    epochs_log = (lambda m: log(f"[lottery] round {k} (after rewind to epoch {cfg.rewind_epoch}): {m}")) if log else None
    fit(round_config(cfg), where, resume=True, dataset=dataset, model=ticket, after_step=lambda _: guard.after_step(),
        extra_tensors=lambda: {f"mask/{n}": t for n, t in mask.items()}, progress=progress, log=epochs_log,
        tensorboard=tensorboard)
    guard.remove()


# ---------------------------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------------------------


def _row(out: Path, k: int) -> dict[str, Any] | None:
    where = round_dir(out, k)
    if not round_complete(out, k):
        return None
    m = read_json(where / METRICS)
    if k == 0:
        density, layers, prune_seconds = 1.0, None, 0.0
    else:
        mask, _, meta = _read_mask(where / MASK)
        density, prune_seconds = mask.density, float(meta.get("prune_seconds", 0.0))
        layers = {r["name"]: r["density"] for r in mask.report()[:-1]}
    return {"round": k, "sparsity": 1.0 - density, "density": density, "val_accuracy": m.get("val_accuracy"),
            "test_accuracy": m["test_accuracy"], "best_val_epoch": m.get("best_val_epoch"),
            "best_val_accuracy": m.get("best_val_accuracy"), "test_accuracy_at_best_val": m.get("test_accuracy_at_best_val"),
            "validation": m.get("validation"), "firing_rate": m["firing_rate"],
            "seconds": m["seconds"], "prune_seconds": prune_seconds, "epochs": m["epochs"],
            "firing_rates": m.get("firing_rates"), "layer_density": layers}


def collect_rows(out: str | Path) -> list[dict[str, Any]]:
    """Rows of every finished round of a lottery run directory, in order (stops at the first gap)."""
    out, rows, k = Path(out), [], 0
    while (row := _row(out, k)) is not None:
        rows.append(row)
        k += 1
    return rows


def _write_results(out: Path, cfg: LotteryConfig, rows: list[dict[str, Any]]) -> None:
    from spikeprune.report.plots import plot_accuracy_vs_sparsity

    write_csv(out / "rounds.csv", rows, ROUND_FIELDS)
    label = f"{cfg.variant} ({cfg.pruning_criterion})"
    write_json(out / RESULTS, {"label": label, "variant": cfg.variant, "criterion": cfg.pruning_criterion,
                                      "run_id": run_id(cfg), "config": to_dict(cfg), "rounds": rows})
    dense = read_json(round_dir(out, 0) / "metrics.json") if (round_dir(out, 0) / "metrics.json").exists() else {}
    plot_accuracy_vs_sparsity({label: rows}, out / "accuracy_vs_sparsity.png", reference=rows[0]["test_accuracy"],
                              test_size=(dense.get("validation") or {}).get("test_size"),
                              title=f"{cfg.model} on {cfg.dataset}: lottery tickets (T={cfg.timesteps})")


def rewind_saver(out: str | Path, cfg: TrainConfig, epoch: int) -> Callable[[int, nn.Module], None]:
    """An ``on_epoch_end`` for :func:`~spikeprune.engine.train.fit` that writes ``out/rewind.safetensors`` after
    ``epoch`` epochs, so an ordinary training run can later serve as a lottery run's dense phase
    (:func:`adopt_dense`). For ``epoch = 0`` nothing is written: the lottery run rebuilds the
    initialisation from the config (``build_model`` is seeded)."""
    path = Path(out) / REWIND
    tcfg = TrainConfig.of(cfg)

    def save(done: int, model: nn.Module) -> None:
        if done + 1 == epoch:
            _save_rewind(path, model_tensors(model), epoch, tcfg)

    return save


def adopt_dense(run: str | Path, out: str | Path) -> None:
    """Make the finished training run ``run`` the dense phase of the lottery run ``out``: its files are
    hard-linked (copied where links are impossible) into ``out/dense``. ``run`` needs the rewind state
    of :func:`rewind_saver` unless the lottery rewinds to epoch 0. The lottery run still checks that
    the configurations match."""
    run = Path(run)
    for name in ("metrics.json", CHECKPOINT):
        if not (run / name).is_file():
            raise UserError(f"{run} is not a finished training run with a rewind state (no {name})")
    link_run(run, round_dir(Path(out), 0), ("metrics.json", "history.csv", CHECKPOINT, REWIND))


@collective  # data parallel under torchrun: every rank calls it, rank 0 writes the files
def train_dense(cfg: LotteryConfig, out: str | Path, *, resume: bool = False, dataset: ImageDataset | None = None,
                progress: bool = False, log: Callable[[str], None] | None = log) -> RunResult:
    """Only round 0 of :func:`run_lottery`: the dense run and its rewind state, in ``out/dense``.

    Lets several variants share one dense run (copy or hard-link ``dense/`` into their directories).
    Returns a :class:`RunResult` whose ``out`` is ``out/dense`` and ``metrics`` its metrics.json.
    """
    distributed.context()
    out = check_writable_dir(out)
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir)
    _check_identity(out, cfg, resume)
    _dense(cfg, out, dataset, progress, log)
    return RunResult(round_dir(out, 0), read_json(round_dir(out, 0) / "metrics.json"))


@collective  # data parallel under torchrun: every rank calls it, rank 0 writes the files
def run_lottery(cfg: LotteryConfig, out: str | Path, *, resume: bool = False, dataset: ImageDataset | None = None,
                progress: bool = False, log: Callable[[str], None] | None = log, tensorboard: bool = False) -> RunResult:
    """Run (or resume) IMP / SF-IMP-1 / SF-IMP-2 into ``out``; see the module docstring for the files.

    Returns a :class:`RunResult`: ``rows`` = one row per round (round 0 = the dense run; the same as
    ``out/rounds.csv``), ``metrics`` = the last round's row. ``tensorboard=True``: every training run logs its
    epochs into its own ``tensorboard/`` folder (``out/dense/tensorboard``, ``out/round_01/tensorboard``, ...)
    and each finished round's rounds.csv numbers go to ``out/tensorboard`` (tags ``lottery/...``, step =
    round; :mod:`spikeprune.core.tensorboard_log`). Every phase whose outputs exist is skipped, so after a kill the same call continues where the
    run stopped and produces the same masks and accuracies (bit-identical on the CPU). A directory
    holding another variant's finished ``dense/`` (same TrainConfig) reuses it.
    """
    if not isinstance(cfg, LotteryConfig):
        raise TypeError(f"run_lottery needs a LotteryConfig; got {type(cfg).__name__}")
    if tensorboard:
        require_tensorboard()  # before any work
    distributed.context()  # under torchrun: join the process group before touching any file
    if not distributed.is_main():  # under torchrun only rank 0 talks
        progress, log = False, None
    out = check_writable_dir(out)
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir)
    # Fail before any file is written or any epoch is trained: a model without a prunable layer
    # (ValueError "no prunable layer") cannot hold a ticket.
    Mask.ones(build_model(train_config(cfg), dataset))
    _check_identity(out, cfg, resume)
    # Every call logs the rounds finished before it first (a resumed run, a dense run adopted from elsewhere)
    # and hides what earlier event files hold (purge_step 0), then each round as it finishes: once each.
    logged = 0
    scalars = open_scalar_log(out, tensorboard, purge_step=0)  # None: not asked, or not rank 0

    def log_rounds() -> None:
        nonlocal logged
        if scalars is not None:
            rows = collect_rows(out)
            for row in rows[logged:]:
                scalars.add(row, row["round"], ROUND_SCALARS, prefix="lottery/")
            logged = len(rows)

    try:
        _dense(cfg, out, dataset, progress, log, tensorboard)
        log_rounds()
        for k in range(1, cfg.rounds + 1):
            if round_complete(out, k):
                continue
            if not mask_written(out, k):
                _prune(cfg, out, k, dataset, log)
            _train_round(cfg, out, k, dataset, progress, log, tensorboard)
            _write_results(out, cfg, collect_rows(out))
            log_rounds()
    finally:
        if scalars is not None:
            scalars.close()
    rows = collect_rows(out)[: cfg.rounds + 1]
    _write_results(out, cfg, rows)
    return RunResult(out, rows[-1], rows)


def load_ticket(out: str | Path, k: int) -> tuple[nn.Module, dict[str, Any]]:
    """The trained network of round ``k`` of a lottery run, as an ordinary sparse model (mask applied,
    dynamic layers included): what evaluates to that round's ``test_accuracy``. Returns ``(model, meta)``
    like every loader (``load_model``, ``load_compressed``); ``meta`` is the round checkpoint's."""
    from spikeprune.engine.train import load_model

    where = round_dir(Path(out), k)
    model, meta = load_model(where / CHECKPOINT)  # rebuilt from the checkpoint's own model description
    if k > 0:
        mask, _, _ = _read_mask(where / MASK)
        mask.apply(model)
    return model, meta
