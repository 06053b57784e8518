"""Training and evaluation (SPEC §2): SGD/Adam + cosine, per-timestep loss, resumable checkpoints.

Loss (default ``per_timestep``): ``mean_t CE(out_t, y)``; ``mean_output``: ``CE(mean_t out_t, y)``.
Prediction: ``argmax_c sum_t out_t[c]``.

Exact resume. A run directory holds ``checkpoint.safetensors`` (rewritten atomically after every
epoch), ``history.csv`` and, when finished, ``metrics.json``. The data order, augmentation and Poisson
spikes of epoch ``e`` are a pure function of ``(seed, e)`` (see :class:`~spikeprune.engine.data.BatchLoader`),
so restoring model, optimizer, scheduler and the global RNG from the checkpoint of epoch ``e`` makes
the continued run bit-identical to an uninterrupted one on the CPU - with the same thread count and
the same torch: a CPU reduction split over another number of threads sums in another order. Every
checkpoint therefore records ``runtime`` (:func:`runtime_settings`); a resume takes the recorded
thread count unless ``OMP_NUM_THREADS`` asks for another, and says in one line on stderr when the
continuation will not be bit-identical and why.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from spikeprune.core.diagnostics import UserError
from spikeprune.core.limits import check_model_fits, check_training_fits
from spikeprune.core.config import hyperparameters, run_id, to_dict
from spikeprune.engine.config import TrainConfig
from spikeprune.core import distributed
from spikeprune.engine.data import BatchLoader, ImageDataset, load_dataset, split_validation
from spikeprune.core.io import check_writable_dir, collective, load_checkpoint, save_checkpoint, write_csv, write_json
from spikeprune.engine.models import create_model
from spikeprune.engine.neuron import LIF, observe, spiking_layers
from spikeprune.core.rundir import RunResult, check_resumable, log, phase_done, refuse_unless_resume
from spikeprune.core.tensorboard_log import open_scalar_log, require_tensorboard

__all__ = [
    "build_model",
    "evaluate",
    "fit",
    "load_model",
    "make_loaders",
    "make_val_loader",
    "make_optimizer",
    "make_scheduler",
    "save_model",
    "spike_loss",
    "train_epoch",
]

CHECKPOINT = "checkpoint.safetensors"
#: written last by :func:`fit`: its presence means the training run is finished (:func:`is_complete`)
METRICS = "metrics.json"
HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
                  "test_accuracy", "firing_rate", "seconds"]


# ---------------------------------------------------------------------------------------------
# Building blocks.
# ---------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, dataset: ImageDataset) -> nn.Module:
    """The registered model of ``cfg`` sized for ``dataset``; initialised from ``cfg.seed``."""
    options = {"tdbn": True} if cfg.tdbn and cfg.model == "resnet19" else {}
    if cfg.tdbn and cfg.model != "resnet19":
        raise UserError(f"tdbn is an option of resnet19 only; got model {cfg.model!r}")
    def build() -> nn.Module:
        return create_model(cfg.model, dataset.num_classes, dataset.in_channels, cfg.timesteps, cfg.width,
                            image_size=dataset.image_size, neuron=cfg.neuron.lif_kwargs(), **options)

    check_model_fits(build, f"{cfg.model} at width {cfg.width:g} on {dataset.name}")
    torch.manual_seed(cfg.seed)
    return build()


def _loader_common(cfg: TrainConfig) -> dict[str, Any]:
    ctx = distributed.context()
    return dict(seed=cfg.seed, encoding=cfg.encoding, timesteps=cfg.timesteps, rank=ctx.rank,
                world_size=ctx.world_size)


def make_loaders(cfg: TrainConfig, dataset: ImageDataset) -> tuple[BatchLoader, BatchLoader]:
    """(train, test) loaders; the train split is shuffled (and augmented where the dataset says so).

    The train loader reads only the training samples *not* held out for validation
    (``cfg.val_fraction``, ``cfg.val_seed``; :func:`spikeprune.engine.data.split_validation`); see
    :func:`make_val_loader` for the held-out ones. Under ``torchrun`` both are sharded by rank
    (:mod:`spikeprune.core.distributed`).
    """
    common = _loader_common(cfg)
    fit_set, _, _ = split_validation(dataset, cfg.val_fraction, cfg.val_seed)
    train = BatchLoader(fit_set, "train", cfg.batch_size, shuffle=True, limit=cfg.train_limit, **common)
    test = BatchLoader(dataset, "test", max(cfg.batch_size, 256), shuffle=False, limit=cfg.test_limit, **common)
    return train, test


def make_val_loader(cfg: TrainConfig, dataset: ImageDataset) -> BatchLoader | None:
    """The validation loader (un-augmented, unshuffled), or ``None`` when ``cfg.val_fraction == 0``."""
    _, val_set, _ = split_validation(dataset, cfg.val_fraction, cfg.val_seed)
    if val_set is None:
        return None
    return BatchLoader(val_set, "test", max(cfg.batch_size, 256), shuffle=False, **_loader_common(cfg))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay; Kim et al.) or Adam over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing over ``cfg.epochs`` (stepped once per epoch), or constant."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def spike_loss(out: torch.Tensor, target: torch.Tensor, kind: str = "per_timestep") -> torch.Tensor:
    """Loss of per-timestep logits ``out`` ``[T, B, C]`` against labels ``target`` ``[B]``."""
    if kind == "per_timestep":  # mean_t CE(out_t): every timestep is pushed to be right
        return F.cross_entropy(out.flatten(0, 1), target.repeat(out.shape[0]))
    return F.cross_entropy(out.mean(0), target)


def _device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (batches are moved there; the CPU for a parameterless model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _autocast(enabled: bool, device: torch.device | None = None):
    device_type = device.type if device is not None else "cpu"
    return torch.autocast(device_type, dtype=torch.bfloat16) if enabled else nullcontext()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the current CUDA device when one is visible, else the CPU; ``cpu``/``cuda``/``cuda:N``
    as given (a CUDA device that does not exist is a one-line error, not a CUDA traceback)."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} does not exist: torch sees {torch.cuda.device_count()} GPU(s)")
    return device


# ---------------------------------------------------------------------------------------------
# One epoch / one evaluation.
# ---------------------------------------------------------------------------------------------


def train_epoch(
    model: nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    *,
    loss: str = "per_timestep",
    bf16: bool = False,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``; ``after_step`` runs after every optimizer step (e.g. mask enforcement).

    Returns mean loss and accuracy over the samples seen (over all ranks when ``loader`` is sharded).
    """
    model.train()
    forward = forward or model
    device = _device(model)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(total=len(loader), desc=desc, leave=False, disable=not progress, file=sys.stderr)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(bf16, device):
            out = forward(x)
            batch_loss = spike_loss(out.float(), y, loss)
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        if not math.isfinite(batch_loss.item()):
            raise UserError("training diverged (loss is not finite); lower --lr")
        n = y.shape[0]
        total_loss += batch_loss.item() * n
        correct += int((out.detach().sum(0).argmax(-1) == y).sum())
        seen += n
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    bar.close()
    if getattr(loader, "world_size", 1) > 1:  # the other ranks hold the other shards
        total = distributed.all_reduce_sums({"loss": total_loss, "correct": correct, "seen": seen})
        total_loss, correct, seen = total["loss"], int(total["correct"]), int(total["seen"])
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: BatchLoader,
    *,
    loss: str = "per_timestep",
    bf16: bool = False,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Accuracy, loss and firing rates of ``model`` on ``loader`` (eval mode), under the names the run
    files use: ``{split}_accuracy``, ``{split}_loss`` (``test_accuracy``, ``test_loss`` by default; ``fit``'s
    validation pass asks for ``split="val"``), ``firing_rate`` (spikes per neuron per timestep over all
    LIF layers) and ``firing_rates`` (per layer name).

    ``loader`` yields ``(x, y)``: ``x`` ``[T, B, ...]`` (or whatever ``forward`` takes), ``y`` ``[B]`` labels;
    ``forward(x)`` (default ``model``) returns logits ``[T, B, C]``.
    """
    if not (isinstance(split, str) and split.isidentifier()):
        raise UserError(f"split must be a name such as 'test' or 'val' (it prefixes the keys); got {split!r}")
    was_training = model.training
    model.eval()
    forward = forward or model
    names = {id(m): n for n, m in spiking_layers(model).items()}
    spikes = dict.fromkeys(names.values(), 0.0)
    slots = dict.fromkeys(names.values(), 0)

    def count(lif: LIF, u: torch.Tensor, s: torch.Tensor) -> None:
        spikes[names[id(lif)]] += float(s.sum())
        slots[names[id(lif)]] += s.numel()

    total_loss, correct, seen = 0.0, 0, 0
    device = _device(model)
    with observe(model, count):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(bf16, device):
                out = forward(x).float()
            total_loss += spike_loss(out, y, loss).item() * y.shape[0]
            correct += int((out.sum(0).argmax(-1) == y).sum())
            seen += y.shape[0]
    model.train(was_training)
    if getattr(loader, "world_size", 1) > 1:  # sum the counters of every rank's shard
        keys = list(spikes)
        total = distributed.all_reduce_sums({"loss": total_loss, "correct": correct, "seen": seen,
                                             **{f"s/{k}": spikes[k] for k in keys},
                                             **{f"n/{k}": slots[k] for k in keys}})
        total_loss, correct, seen = total["loss"], int(total["correct"]), int(total["seen"])
        spikes = {k: total[f"s/{k}"] for k in keys}
        slots = {k: int(total[f"n/{k}"]) for k in keys}
    rates = {n: spikes[n] / slots[n] for n in spikes if slots[n]}
    return {
        f"{split}_accuracy": correct / max(seen, 1),
        f"{split}_loss": total_loss / max(seen, 1),
        "firing_rate": sum(spikes.values()) / max(sum(slots.values()), 1),
        "firing_rates": rates,
    }


# ---------------------------------------------------------------------------------------------
# State (de)serialisation.
# ---------------------------------------------------------------------------------------------


def _pack_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{idx}/{key}"] = value
            else:
                plain.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": plain}


def _unpack_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["state"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"model/{k}": v for k, v in model.state_dict().items()}


def load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``model/...`` tensors into ``model``; a mismatch raises ValueError naming the first key."""
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise UserError(f"{source} does not fit this model ({what}); it was made for another architecture")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise UserError(f"{source} does not fit this model: {k} has shape {tuple(v.shape)}, "
                             f"the model expects {tuple(expected[k].shape)}")
    model.load_state_dict(state)


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Save a model (weights + its ``spikeprune_config``) so :func:`load_model` can rebuild it."""
    config = getattr(model, "spikeprune_config", None)
    save_checkpoint(path, model_tensors(model), {"kind": "model", "model_config": config, **(meta or {})})


def checkpoint_dataset(checkpoint: str | Path, model_config: dict[str, Any], trained_on: dict[str, Any],
                       dataset: str | None = None, data_dir: str | None = None) -> ImageDataset:
    """The dataset a checkpoint runs on: ``dataset`` (said in one line on stderr when it differs from the
    recorded one), else the one it was trained on (``trained_on`` = its TrainConfig; digits if unknown),
    refused in one line when its images do not fit the model
    (``model_config`` = ``spikeprune_config``: ``in_channels``, ``image_size``)."""
    recorded = trained_on.get("dataset")
    data = load_dataset(dataset or recorded or "digits", data_dir)
    expected = (model_config.get("in_channels"), list(model_config.get("image_size") or []))
    if (data.in_channels, list(data.image_size)) != expected:
        raise UserError(f"{checkpoint} expects {model_config.get('in_channels')}x{model_config.get('image_size')} "
                         f"inputs; {data.name} has {data.in_channels}x{list(data.image_size)}")
    if dataset and recorded and dataset != recorded:  # issue 18: a flag overrides the checkpoint, and says so
        log(f"--dataset {dataset} overrides the checkpoint's {recorded}")  # (after the refusals: those are one line)
    return data


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a registered model from any spikeprune checkpoint; returns ``(model, metadata)``."""
    tensors, meta = load_checkpoint(path)
    config = meta.get("model_config")
    if not isinstance(config, dict) or "name" not in config:
        raise UserError(f"{path} does not describe its model (no model_config); cannot rebuild it")
    if config.get("neuron") == "custom":
        raise UserError(f"{path} was made with a custom neuron; rebuild the model yourself and load "
                         "its state with spikeprune.engine.train.load_model_state")
    def build() -> nn.Module:
        return create_model(config["name"], config["num_classes"], config["in_channels"], config["T"],
                            config["width"], image_size=tuple(config["image_size"]),
                            neuron=config.get("neuron"), **config.get("options", {}))

    check_model_fits(build, f"the model {path} describes")
    model = build()
    load_model_state(model, tensors, str(path))
    return model, meta


def runtime_settings(device: torch.device, cfg: TrainConfig) -> dict[str, Any]:
    """What, besides the hyperparameters, decides a run's bits: threads, torch, algorithms, device."""
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "mkl": torch.backends.mkl.is_available(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "device": str(device),
        "bf16": bool(cfg.bf16),
        "compile": bool(cfg.compile),
    }


def match_runtime(saved: dict[str, Any] | None, device: torch.device, cfg: TrainConfig, where: str,
                  log: Callable[[str], None] | None = None) -> list[str]:
    """Before resuming: take the recorded thread count (unless ``OMP_NUM_THREADS`` is set to another)
    and return why the continuation will not be bit-identical (empty: it will be, as far as we know).

    ``saved``: the checkpoint's ``runtime`` (None for checkpoints older than this record: nothing is
    checked). Sets ``torch.set_num_threads`` for the rest of the process when it adopts the count.
    """
    if not isinstance(saved, dict):
        return []
    reasons = []
    threads = saved.get("threads")
    if isinstance(threads, int) and threads >= 1 and threads != torch.get_num_threads():
        asked = os.environ.get("OMP_NUM_THREADS")
        if asked:
            reasons.append(f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={asked}), the checkpoint was "
                           f"written with {threads}")
        else:
            torch.set_num_threads(threads)
            if log:
                log(f"resuming {where} with {threads} thread(s), as recorded in its checkpoint")
    now = runtime_settings(device, cfg)
    labels = {"torch": "torch", "deterministic_algorithms": "deterministic algorithms",
              "float32_matmul_precision": "float32 matmul precision", "mkldnn": "oneDNN (mkldnn)", "mkl": "MKL",
              "cudnn_deterministic": "cudnn.deterministic", "device": "device", "compile": "torch.compile"}
    for key, label in labels.items():
        if key in saved and saved[key] != now[key]:
            reasons.append(f"{label} {now[key]} (recorded {saved[key]})")
    return reasons


# ---------------------------------------------------------------------------------------------
# fit: the resumable training run.
# ---------------------------------------------------------------------------------------------


@collective  # data parallel under torchrun: every rank calls it, rank 0 writes the files
def fit(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    dataset: ImageDataset | None = None,
    model: nn.Module | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    extra_tensors: Callable[[], dict[str, torch.Tensor]] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = log,
    tensorboard: bool = False,
) -> RunResult:
    """Train ``cfg`` into the run directory ``out``, checkpointing every epoch; returns a :class:`RunResult`
    (``metrics`` = metrics.json, ``rows`` = the epochs of history.csv, ``model`` = the trained network).

    Args:
        cfg: hyperparameters.
        out: run directory (created). Holds checkpoint.safetensors, history.csv, metrics.json.
        resume: continue from ``out/checkpoint.safetensors`` if it exists. Without ``resume`` a
            directory that already holds a checkpoint is refused, so nothing is overwritten by accident.
        dataset: a loaded dataset (default: ``load_dataset(cfg.dataset, cfg.data_dir)``).
        model: a model to train instead of ``build_model(cfg)`` (e.g. a masked lottery ticket).
        after_step: called with the model after every optimizer step (mask enforcement).
        on_epoch_end: called with (epoch index, model) after each epoch's checkpoint is written.
        extra_tensors: extra tensors stored in every checkpoint (e.g. masks), keys prefixed ``extra/``.
        progress: show a tqdm bar per epoch.
        log: receives one summary line per epoch (default: stderr); ``None`` silences it.
        tensorboard: also write each epoch's history.csv numbers as TensorBoard scalars into
            ``out/tensorboard/`` (step = epoch; :mod:`spikeprune.core.tensorboard_log`). Needs the
            ``tensorboard`` package (``spikeprune[tensorboard]``): without it, a UserError before any work.

    Under ``torchrun`` the run is data-parallel (DistributedDataParallel; :mod:`spikeprune.core.distributed`):
    batches are sharded by rank, files are written once (rank 0), only rank 0 logs, and
    ``metrics.json`` records ``distributed`` = world size, backend and whether the final model state
    is identical on every rank. In one process nothing changes.
    """
    if tensorboard:
        require_tensorboard()
    ctx = distributed.context()
    if not distributed.is_main():
        progress, log = False, None
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    refuse_unless_resume(out, f"a run ({CHECKPOINT})", holds=ckpt_path.exists(), resume=resume)
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir)
    model = model if model is not None else build_model(cfg, dataset)
    check_training_fits(model, (dataset.in_channels, *dataset.image_size), cfg.timesteps, cfg.batch_size)
    check_writable_dir(out)  # only now: a request refused above leaves no directory behind
    # Under torchrun with nccl every rank owns cuda:<local_rank>; in one process cfg.device decides.
    model.to(ctx.device if ctx.backend == "nccl" else resolve_device(cfg.device))
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    train_loader, test_loader = make_loaders(cfg, dataset)
    val_loader = make_val_loader(cfg, dataset)
    validation = split_validation(dataset, cfg.val_fraction, cfg.val_seed)[2]
    history: list[dict[str, Any]] = []
    # best: the epoch selected on *validation* accuracy (earliest on ties); test is only reported.
    start_epoch, seconds, best = 0, 0.0, {"epoch": None, "val_accuracy": None, "test_accuracy": None}
    identity = hyperparameters(cfg)

    if resume and ckpt_path.exists():
        tensors, meta = load_checkpoint(ckpt_path)
        if meta.get("kind") != "train":
            raise UserError(f"{ckpt_path} is not a training checkpoint (kind {meta.get('kind')!r})")
        check_resumable(out, meta.get("hyperparameters", {}), identity, done="trained")
        load_model_state(model, tensors, str(ckpt_path))
        optimizer.load_state_dict(_unpack_optimizer(tensors, meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng/torch"])
        start_epoch, seconds = int(meta["epoch"]), float(meta["seconds"])
        if "validation" not in meta:
            raise UserError(f"cannot resume {out}: it was trained before the validation split existed "
                             "(on the whole training set); use another --out")
        history, best = list(meta["history"]), dict(meta["best_val"])
        if log and start_epoch < cfg.epochs:
            log(f"resuming {out} at epoch {start_epoch + 1}/{cfg.epochs}")
        if start_epoch < cfg.epochs:
            reasons = match_runtime(meta.get("runtime"), _device(model), cfg, str(out), log)
            if reasons and distributed.is_main():  # a warning, printed even when log is silenced
                print(f"spikeprune: warning: the continuation of {out} will not be bit-identical to an "
                      f"uninterrupted run: {'; '.join(reasons)}", file=sys.stderr, flush=True)

    forward: Callable[[torch.Tensor], torch.Tensor] = distributed.wrap(model, ctx)
    if cfg.compile:
        forward = torch.compile(forward)
    step_hook = (lambda: after_step(model)) if after_step is not None else None
    # None: not asked, finished, or not rank 0. A resume re-logs the checkpoint's history first (and hides what
    # earlier event files hold from epoch 1 on), so the log holds history.csv's epochs, each once.
    scalars = open_scalar_log(out, tensorboard and start_epoch < cfg.epochs, purge_step=1)
    if scalars is not None:
        for done in history:
            scalars.add(done, done["epoch"], HISTORY_FIELDS[1:-1])
    try:
        for epoch in range(start_epoch, cfg.epochs):
            tick = time.perf_counter()
            train_loader.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            tr = train_epoch(model, train_loader, optimizer, loss=cfg.loss, bf16=cfg.bf16, forward=forward,
                             after_step=step_hook, progress=progress, desc=f"epoch {epoch + 1}/{cfg.epochs}")
            scheduler.step()
            distributed.broadcast_state(model)  # DDP lets BatchNorm running statistics drift per rank
            ev = evaluate(model, test_loader, loss=cfg.loss, bf16=cfg.bf16, forward=forward)
            va = (evaluate(model, val_loader, loss=cfg.loss, bf16=cfg.bf16, forward=forward, split="val")
                  if val_loader is not None else {"val_accuracy": None, "val_loss": None})
            seconds += time.perf_counter() - tick
            if va["val_accuracy"] is not None and (best["val_accuracy"] is None
                                                   or va["val_accuracy"] > best["val_accuracy"]):
                best = {"epoch": epoch + 1, "val_accuracy": va["val_accuracy"], "test_accuracy": ev["test_accuracy"]}
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                   "val_loss": va["val_loss"], "val_accuracy": va["val_accuracy"],
                   "test_loss": ev["test_loss"], "test_accuracy": ev["test_accuracy"], "firing_rate": ev["firing_rate"],
                   "firing_rates": ev["firing_rates"], "seconds": seconds}
            history.append(row)
            opt_tensors, opt_meta = _pack_optimizer(optimizer)
            tensors = {**model_tensors(model), **opt_tensors, "rng/torch": torch.get_rng_state()}
            if extra_tensors is not None:
                tensors.update({f"extra/{k}": v for k, v in extra_tensors().items()})
            save_checkpoint(ckpt_path, tensors, {
                "kind": "train", "epoch": epoch + 1, "seconds": seconds, "best_val": best, "validation": validation,
                "config": to_dict(cfg), "hyperparameters": identity, "run_id": run_id(cfg),
                "runtime": runtime_settings(_device(model), cfg),
                "model_config": getattr(model, "spikeprune_config", None),
                "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "history": history,
            })
            write_csv(out / "history.csv", history, HISTORY_FIELDS)
            if log:
                val = f"val {va['val_accuracy']:.4f}  " if va["val_accuracy"] is not None else ""
                log(f"epoch {epoch + 1}/{cfg.epochs}  loss {tr['loss']:.4f}  train {tr['accuracy']:.4f}  "
                    f"{val}test {ev['test_accuracy']:.4f}  rate {ev['firing_rate']:.3f}  {seconds:.0f}s")
            if scalars is not None:  # after the checkpoint: a logged epoch is a saved one
                scalars.add(row, epoch + 1, HISTORY_FIELDS[1:-1])  # lr ... firing_rate (not epoch, seconds)
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
    finally:
        if scalars is not None:
            scalars.close()

    last = history[-1]
    metrics = {
        "test_accuracy": last["test_accuracy"],
        "val_accuracy": last.get("val_accuracy"),
        # Selected on validation only: the epoch with the best validation accuracy and the test
        # accuracy measured at that epoch (reported, never used to choose).
        "best_val_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "test_accuracy_at_best_val": best["test_accuracy"],
        "validation": validation,
        "train_loss": last["train_loss"],
        "train_accuracy": last["train_accuracy"],
        "test_loss": last["test_loss"],
        "epochs": cfg.epochs,
        "seconds": seconds,
        "firing_rate": last["firing_rate"],
        "firing_rates": last["firing_rates"],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "model": cfg.model,
        "dataset": cfg.dataset,
        "timesteps": cfg.timesteps,
        "run_id": run_id(cfg),
        "config": to_dict(cfg),
    }
    if ctx.active:
        sums = distributed.all_gather_objects(distributed.checksum(model))
        metrics["distributed"] = {"world_size": ctx.world_size, "backend": ctx.backend,
                                  "state_checksums": sums, "replicas_identical": len(set(sums)) == 1}
    write_json(out / METRICS, metrics)  # written last: its presence means the run is finished
    return RunResult(out, metrics, history, model)


def is_complete(out: str | Path) -> bool:
    """Whether the training run in ``out`` is finished (its ``metrics.json``, which :func:`fit` writes last,
    exists): the one definition of a finished training run (a sweep's ``train`` job, a lottery round, the
    dense run a variant adopts). :func:`fit` itself never skips: resumed at its last epoch it rewrites
    ``metrics.json`` from the checkpoint."""
    return phase_done(out, METRICS)
