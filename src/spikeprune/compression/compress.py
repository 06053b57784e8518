"""The joint QP-SNN pipeline (SPEC §7): quantization-aware training -> channel scoring -> channel
removal -> fine-tuning at the same bit-width; and the reverse order, for comparison.

    out/
      compress.json        the run's configuration (a resumed run must match it)
      dense/               only when no --checkpoint is given: the dense model is trained first
      qat/                 QAT run (train.fit checkpoints: resumable epoch by epoch)
      pruned.safetensors   the model right after channel removal, with the removal history
      finetune/            fine-tuning run
      model.safetensors    the compressed model in deployment form (frozen gamma, weights on the grid)
      cost.json            cost report of the compressed model and of the dense reference
      metrics.json         accuracy, size/SOP/energy ratios, measured speed-up, bit-width utilisation

Every phase returns early when its output exists (:func:`~spikeprune.core.rundir.phase_done`: channel
removal once ``pruned.safetensors`` exists, the whole run once :func:`is_complete`), and ``train.fit``
resumes inside a started training phase (``dense/``, ``qat/``, ``finetune/``), so a killed run continues
where it stopped (``--resume``).

Orders (``order``):

* ``quantize-first`` (QP-SNN): QAT for ``qat_epochs`` on the dense model -> score channels *of the
  quantized model* -> remove -> fine-tune ``finetune_epochs`` at the same bit-width.
* ``prune-first``: score channels of the dense float model -> remove -> fine-tune in float for
  ``finetune_epochs`` -> QAT for ``qat_epochs``. Same epochs, phases swapped.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError
from spikeprune.core.config import NOT_HPARAMS, check_fraction, current_names, fields_of, hparam, to_dict
from spikeprune.engine.config import TrainConfig, validate
from spikeprune.compression.cost import E_AC_PJ, E_MAC_PJ, CostReport, cost_report, measure_latencies, measure_latency
from spikeprune.engine.data import BatchLoader, ImageDataset, load_dataset, split_validation
from spikeprune.core.io import check_writable_dir, checkpoint_meta, load_checkpoint, read_json, save_checkpoint, write_json
from spikeprune.compression.quant import (
    FIRST_LAST,
    GRADIENTS,
    PRESETS,
    SCALE_METHODS,
    freeze,
    load_quantization_state,
    quantization_state,
    quantize_model,
    reestimate_batchnorm,
    utilisation_report,
)
from spikeprune.compression.structured import (
    CHANNEL_CRITERIA,
    channel_groups,
    channel_scores,
    remove_channels,
    select_channels,
)
from spikeprune.core.rundir import RunResult, log, phase_done, refuse_unless_resume
from spikeprune.topology import evaluation
from spikeprune.engine.train import (
    build_model,
    checkpoint_dataset,
    evaluate,
    fit,
    load_model,
    make_loaders,
    model_tensors,
)

__all__ = ["CompressConfig", "compress", "cost_of_checkpoint", "load_compressed", "save_compressed"]

ORDERS = ("quantize-first", "prune-first")
#: the run's configuration (written once the dense model is there; a resumed run must match it)
MANIFEST = "compress.json"
#: the channel-removal phase's output: the model right after removal (that phase is skipped once it exists)
PRUNED = "pruned.safetensors"
#: written last by :func:`compress`: with the manifest, its presence means the run is finished
METRICS = "metrics.json"


def is_complete(out: str | Path) -> bool:
    """Whether the compression run in ``out`` is finished (``compress.json`` and ``metrics.json``, which
    :func:`compress` writes last, exist): :func:`compress` then only re-reads ``metrics.json``."""
    return phase_done(out, MANIFEST, METRICS)


@dataclass
class CompressConfig(TrainConfig):
    """TrainConfig (the dense model and its data) plus the compression hyperparameters."""

    checkpoint: str | None = hparam(None, "dense checkpoint to compress (default: train one first with the "
                                          "training flags, into OUT/dense)")
    bits: int = hparam(4, "weight bit-width b in [1, 16] (SPEC §7: 2^b levels)")
    membrane_bits: int | None = hparam(None, "membrane-potential bit-width in [2, 16] (MINT, scale shared "
                                             "with the weights; default: float membrane)")
    scale: str = hparam("mean", "weight scale gamma: mean|W| (ReScaW), max|W| (vanilla) or a percentile", SCALE_METHODS)
    per_channel: bool = hparam(False, "one gamma per output channel instead of per layer")
    percentile: float = hparam(99.0, "percentile of |W| for --scale percentile")
    quant_gradient: str = hparam("clip", "quantizer backward: clip (zero outside [-gamma, gamma], SPEC §7) or ste "
                                         "(straight through everywhere, QP-SNN's reference)", GRADIENTS)
    first_last: str = hparam("b", "first and last layers: b (quantized like the rest), full (float, QP-SNN's "
                                  "reference) or 8 (8 bits)", FIRST_LAST)
    quant_preset: str | None = hparam(None, "a named quantizer: qpsnn (QP-SNN's reference: gamma = mean|W| per "
                                            "output channel, straight-through gradient, first/last layers in "
                                            "float) or spikeprune (the defaults); sets --scale, --per-channel, "
                                            "--quant-gradient, --first-last", tuple(PRESETS))
    channel_sparsity: float = hparam(0.5, "fraction of channels removed, in [0, 1)")
    # `criterion` until issue 17 (lottery's `criterion` is the weight criterion, and "sf" means another score
    # there); YAML files, compress.json manifests and results that say `criterion` still load and resume.
    channel_criterion: str = hparam("svs", "channel criterion", CHANNEL_CRITERIA, formerly=("criterion",))
    scope: str = hparam("layerwise", "channel budget: the same ratio per layer, or one global budget",
                        ("layerwise", "global"))
    order: str = hparam("quantize-first", "QP-SNN order (QAT, prune, fine-tune) or prune-first", ORDERS)
    qat_epochs: int = hparam(1, "quantization-aware training epochs (0: post-training quantization)")
    finetune_epochs: int = hparam(1, "fine-tuning epochs after channel removal")
    finetune_lr: float = hparam(0.01, "initial learning rate of the QAT and fine-tuning phases (cosine)")
    calibration_batches: int = hparam(16, "training batches used to score channels and re-estimate BatchNorm")
    cost_batches: int = hparam(4, "test batches used for firing rates / SOPs in the cost report")
    latency_repeats: int = hparam(5, "timed inference runs per model for the latency measurement")

    def __post_init__(self) -> None:
        validate(self)
        if self.quant_preset is not None:  # a preset names a whole quantizer: its fields are set from it
            preset = PRESETS[self.quant_preset]
            for name, value in (("scale", preset["method"]), ("per_channel", preset["per_channel"]),
                                ("quant_gradient", preset["gradient"]), ("first_last", preset["first_last"])):
                default = type(self).__dataclass_fields__[name].default
                current = getattr(self, name)
                if current != default and current != value:
                    raise UserError(f"quant_preset {self.quant_preset} sets {name}={value!r}; drop {name}={current!r}")
                object.__setattr__(self, name, value)
        _check_int("bits", self.bits, 1, 16)
        if self.membrane_bits is not None:
            _check_int("membrane_bits", self.membrane_bits, 2, 16)
        check_fraction(self.channel_sparsity, "channel_sparsity", "[0, 1)", "fraction of channels removed")
        if not 0.0 < self.percentile <= 100.0:
            raise UserError(f"percentile must be in (0, 100]; got {self.percentile!r}")
        _check_int("qat_epochs", self.qat_epochs, 0, None)
        _check_int("finetune_epochs", self.finetune_epochs, 0, None)
        _check_int("calibration_batches", self.calibration_batches, 1, None)
        _check_int("cost_batches", self.cost_batches, 1, None)
        _check_int("latency_repeats", self.latency_repeats, 1, None)
        if not (self.finetune_lr > 0 and math.isfinite(self.finetune_lr)):
            raise UserError(f"finetune_lr must be > 0; got {self.finetune_lr!r}")


def _check_int(name: str, value: Any, lo: int, hi: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise UserError(f"{name} must be an integer {'in ' if hi is not None else ''}{bound}; got {value!r}")


# ---------------------------------------------------------------------------------------------
# Compressed checkpoints.
# ---------------------------------------------------------------------------------------------


def save_compressed(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Save a (quantized and/or channel-pruned) model: weights, its rebuilt config, and the quantization
    state (``quant/<layer>.gamma`` tensors + ``quantization`` metadata). ``train.load_model`` reads it as
    a plain model (weights are the stored ones); :func:`load_compressed` restores the quantization too."""
    q_tensors, q_meta = quantization_state(model)
    tensors = {**model_tensors(model), **{f"quant/{k}": v for k, v in q_tensors.items()}}
    save_checkpoint(path, tensors, {"kind": "model", "model_config": getattr(model, "spikeprune_config", None),
                                    "quantization": q_meta, **(meta or {})})


def load_compressed(path: str | Path, example_input: torch.Tensor | None = None, *,
                    frozen: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_compressed` (or any spikeprune checkpoint), quantization included.

    ``example_input`` (one batch) is needed only when the membrane potential is quantized. With
    ``frozen=False`` gamma follows the weights again (to continue training).
    """
    model, meta = load_model(path)
    q_meta = meta.get("quantization") or {}
    if q_meta.get("layers"):
        if q_meta.get("membrane_bits") and example_input is None:
            raise UserError(f"{path} quantizes membrane potentials; loading it needs an example input batch")
        tensors, _ = load_checkpoint(path)
        q_tensors = {k[len("quant/"):]: v for k, v in tensors.items() if k.startswith("quant/")}
        load_quantization_state(model, q_tensors, q_meta, example_input=example_input, frozen=frozen)
    return model, meta


# ---------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------


def _dense_model(cfg: CompressConfig, out: Path, dataset: ImageDataset, resume: bool, progress: bool,
                 log: Callable[[str], None] | None) -> tuple[nn.Module, str]:
    if cfg.checkpoint is None:
        result = fit(TrainConfig.of(cfg), out / "dense", resume=resume or (out / "dense").exists(),
                     dataset=dataset, progress=progress, log=log)
        return result.model, str(out / "dense" / "checkpoint.safetensors")
    model, meta = load_model(cfg.checkpoint)
    config = model.spikeprune_config
    if config["name"] != cfg.model:
        raise UserError(f"checkpoint {cfg.checkpoint} holds a {config['name']} model, not the {cfg.model} "
                         f"this run compresses (pass --model {config['name']})")
    if meta.get("quantization", {}).get("layers") or "channel_history" in meta:
        raise UserError(f"checkpoint {cfg.checkpoint} is already compressed; start from a dense checkpoint")
    if config["width"] != cfg.width or config["T"] != cfg.timesteps:
        # The compressed model inherits the checkpoint's network; a flag asking for another one is a mistake.
        raise UserError(f"checkpoint {cfg.checkpoint} has width {config['width']} and T {config['T']}, but width "
                         f"{cfg.width} and T {cfg.timesteps} were asked for; leave out --width / --timesteps "
                         f"(the checkpoint's are used) or give a checkpoint trained with them")
    if (config["in_channels"], list(config["image_size"]), config["num_classes"]) != \
            (dataset.in_channels, list(dataset.image_size), dataset.num_classes):
        raise UserError(f"checkpoint {cfg.checkpoint} expects {config['in_channels']}x{config['image_size']} "
                         f"inputs and {config['num_classes']} classes; {dataset.name} does not match")
    return model, cfg.checkpoint


def _quantize(model: nn.Module, cfg: CompressConfig, calib: list[Any]) -> nn.Module:
    quantize_model(model, cfg.bits, method=cfg.scale, per_channel=cfg.per_channel,
                   percentile=cfg.percentile, membrane_bits=cfg.membrane_bits, example_input=calib[0][0],
                   gradient=cfg.quant_gradient, first_last=cfg.first_last)
    reestimate_batchnorm(model, calib)  # the clipped/rounded weights change what every BN sees
    return model


def _calibration(cfg: CompressConfig, dataset: ImageDataset) -> list[Any]:
    # Calibration reads only the training samples not held out for validation (issue 14).
    fit_set = split_validation(dataset, cfg.val_fraction, cfg.val_seed)[0]
    loader = BatchLoader(fit_set, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, encoding=cfg.encoding,
                         timesteps=cfg.timesteps, augment=False)
    return [b for _, b in zip(range(cfg.calibration_batches), loader)]


def _check_budget(model: nn.Module, cfg: CompressConfig) -> None:
    """Raise the strategy's ValueError now (e.g. a ratio that removes every channel of a small layer)."""
    groups = channel_groups(model)
    select_channels({g.name: torch.zeros(g.size) for g in groups}, cfg.channel_sparsity, scope=cfg.scope)


def _prune(model: nn.Module, cfg: CompressConfig, batches: list[Any]) -> tuple[dict[str, list[int]], dict]:
    example = batches[0][0]  # the traced input: channel groups come from one forward pass
    groups = channel_groups(model, example)
    scores = channel_scores(cfg.channel_criterion, model, batches, num_batches=cfg.calibration_batches, groups=groups,
                            seed=cfg.seed)
    keep = select_channels(scores, cfg.channel_sparsity, scope=cfg.scope)
    before = {g.name: g.size for g in groups}
    history = remove_channels(model, keep, example=example)
    if cfg.channel_sparsity > 0:
        reestimate_batchnorm(model, batches)  # removed inputs shift every downstream BN's statistics
    summary = {name: {"before": before[name], "after": len(kept)} for name, kept in history.items()}
    return history, summary


def _phase(cfg: CompressConfig, out: Path, name: str, epochs: int, model: nn.Module, dataset: ImageDataset,
           progress: bool, log: Callable[[str], None] | None) -> nn.Module:
    if epochs < 1:
        return model
    run = out / name
    result = fit(TrainConfig.of(cfg, epochs=epochs, lr=cfg.finetune_lr), run, resume=run.exists(), dataset=dataset,
                 model=model, progress=progress, log=log)
    return result.model


def recorded_training(checkpoint: str | Path) -> dict[str, Any]:
    """The TrainConfig fields a checkpoint records (model, width, timesteps, neuron, dataset, ...), without
    the execution details (device, data_dir, threads: :data:`~spikeprune.core.config.NOT_HPARAMS`)."""
    meta = checkpoint_meta(checkpoint)  # the header only: the pipeline reads the tensors once, later
    recorded = fields_of(TrainConfig, meta.get("config") or {})
    return {k: v for k, v in recorded.items() if k not in NOT_HPARAMS}


def compress(cfg: CompressConfig, out: str | Path, *, resume: bool = False, dataset: ImageDataset | None = None,
             progress: bool = False, log: Callable[[str], None] | None = log) -> RunResult:
    """Run the joint pipeline of ``cfg`` into ``out``; returns a :class:`RunResult`: ``metrics`` =
    ``out/metrics.json``, ``model`` = the compressed network (``None`` when the run had already finished:
    :func:`load_compressed` ``(out / "model.safetensors")`` rebuilds it)."""
    if cfg.checkpoint is not None:
        checkpoint_meta(cfg.checkpoint)  # a missing, truncated or foreign checkpoint is refused before OUT is created
    out = check_writable_dir(out)
    manifest = out / MANIFEST
    if manifest.exists():
        # execution details (device, threads, data_dir, ...) may change on resume, as for a training run
        # a manifest of an earlier version names fields by their former names (`criterion`)
        saved = current_names(CompressConfig, read_json(manifest), source=str(manifest))
        refuse_unless_resume(out, "a compression run", holds=True, resume=resume, saved=saved,
                             now=to_dict(cfg), ignore=NOT_HPARAMS)
        if is_complete(out):
            return RunResult(out, read_json(out / METRICS))
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir)
    if cfg.checkpoint is None:  # fail before training if the channel budget cannot be met
        _check_budget(build_model(TrainConfig.of(cfg), dataset), cfg)
    dense, dense_path = _dense_model(cfg, out, dataset, resume, progress, log)
    _check_budget(dense, cfg)
    write_json(manifest, to_dict(cfg))
    calib = _calibration(cfg, dataset)
    example = calib[0][0]
    pruned_path = out / PRUNED
    reference = copy.deepcopy(dense)
    model = dense

    if cfg.order == "quantize-first":
        if not phase_done(out, PRUNED):
            model = _phase(cfg, out, "qat", cfg.qat_epochs, _quantize(model, cfg, calib), dataset, progress, log)
            qat_utilisation = utilisation_report(model)
            history, summary = _prune(model, cfg, calib)
            save_compressed(pruned_path, model, {"channel_history": [history], "channels": summary,
                                                 "qat_utilisation": qat_utilisation, "config": to_dict(cfg)})
        model, pmeta = load_compressed(pruned_path, example, frozen=False)
        model = _phase(cfg, out, "finetune", cfg.finetune_epochs, model, dataset, progress, log)
    else:
        if not phase_done(out, PRUNED):
            history, summary = _prune(model, cfg, calib)
            save_compressed(pruned_path, model, {"channel_history": [history], "channels": summary,
                                                 "config": to_dict(cfg)})
        model, pmeta = load_compressed(pruned_path, example, frozen=False)
        model = _phase(cfg, out, "finetune", cfg.finetune_epochs, model, dataset, progress, log)
        # qat_epochs = 0: post-training quantization (with BatchNorm re-estimation only)
        model = _phase(cfg, out, "qat", cfg.qat_epochs, _quantize(model, cfg, calib), dataset, progress, log)

    utilisation = utilisation_report(model)
    freeze(model)
    save_compressed(out / "model.safetensors", model, {
        "channel_history": pmeta.get("channel_history", []), "channels": pmeta.get("channels", {}),
        "config": to_dict(cfg), "dense_checkpoint": dense_path})
    return RunResult(out, _report(cfg, out, reference, model, dataset, utilisation, pmeta, log), model=model)


def _report(cfg: CompressConfig, out: Path, reference: nn.Module, model: nn.Module, dataset: ImageDataset,
            utilisation: list[dict[str, Any]], pmeta: dict[str, Any], log: Callable[[str], None] | None) -> dict:
    _, test = make_loaders(TrainConfig.of(cfg), dataset)
    batches = [b for _, b in zip(range(cfg.cost_batches), test)]
    dense_eval, comp_eval = evaluate(reference, test), evaluate(model, test)
    dense_cost, comp_cost = cost_report(reference, batches), cost_report(model, batches)
    x = batches[0][0]
    # Side by side, alternating, so machine load affects both alike; speed-up = ratio of medians.
    dense_lat, comp_lat = [], []
    for _ in range(2):
        dense_lat.append(measure_latency(reference, x, repeats=cfg.latency_repeats))
        comp_lat.append(measure_latency(model, x, repeats=cfg.latency_repeats))
    dense_ms = min(d["median_ms"] for d in dense_lat)
    comp_ms = min(d["median_ms"] for d in comp_lat)
    dense_cost.latency, comp_cost.latency = dense_lat[-1], comp_lat[-1]
    dt, ct = dense_cost.totals, comp_cost.totals
    metrics = {
        "test_accuracy": comp_eval["test_accuracy"], "dense_test_accuracy": dense_eval["test_accuracy"],
        "accuracy_drop": dense_eval["test_accuracy"] - comp_eval["test_accuracy"],
        "firing_rate": comp_eval["firing_rate"], "dense_firing_rate": dense_eval["firing_rate"],
        "size_bytes": ct["size_dense_bytes"], "dense_size_bytes": dt["size_dense_bytes"],
        "size_reduction": dt["size_dense_bytes"] / ct["size_dense_bytes"],
        "params": ct["params"], "dense_params": dt["params"],
        "dense_ops": ct["dense_ops"], "flop_reduction": dt["dense_ops"] / ct["dense_ops"],
        "sops": ct["sops"], "dense_sops": dt["sops"], "energy_uj": ct["energy_uj"], "dense_energy_uj": dt["energy_uj"],
        "energy_reduction": dt["energy_pj"] / max(ct["energy_pj"], 1e-30),
        "latency_ms": comp_ms, "dense_latency_ms": dense_ms, "speedup": dense_ms / comp_ms,
        "speedup_over_flop_reduction": (dense_ms / comp_ms) / (dt["dense_ops"] / ct["dense_ops"]),
        "latency_batch": int(x.shape[0]), "threads": torch.get_num_threads(),
        "weight_bits": cfg.bits, "membrane_bits": cfg.membrane_bits,
        "channels": pmeta.get("channels", {}), "utilisation": utilisation,
        "qat_utilisation": pmeta.get("qat_utilisation"),
        "config": to_dict(cfg),
    }
    write_json(out / "cost.json", {"compressed": comp_cost.to_dict(), "dense": dense_cost.to_dict()})
    write_json(out / METRICS, metrics)  # written last: its presence means the run is finished
    if log:
        log(f"compressed: accuracy {metrics['test_accuracy']:.4f} (dense {metrics['dense_test_accuracy']:.4f}), "
            f"{metrics['size_reduction']:.1f}x smaller, {metrics['flop_reduction']:.2f}x fewer ops, "
            f"{metrics['speedup']:.2f}x faster")
    return metrics


def cost_of_checkpoint(
    checkpoint: str | Path,
    *,
    mask: str | Path | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    batches: int = 4,
    batch_size: int = 256,
    bits: int | None = None,
    e_mac_pj: float = E_MAC_PJ,
    e_ac_pj: float = E_AC_PJ,
    latency_repeats: int = 5,
    threads: int | None = 1,
    out: str | Path | None = None,
    event_engine: Callable[[nn.Module], Any] | None = None,
) -> CostReport:
    """Cost report of a saved model (dense, masked, channel-pruned and/or quantized) on its test data.

    The model is rebuilt with its quantization (:func:`load_compressed`); ``mask`` (a saved
    :class:`~spikeprune.Mask`) is applied first. Latency: ``latency_repeats`` timed runs of one test
    batch with ``threads`` intra-op threads (0 repeats: skipped). ``event_engine``: a compiler of the
    event-driven engine (``spikeprune.deploy.event_engine.compile``, which ``spikeprune cost`` passes; this
    layer may not import ``deploy``): the engine is then timed alternately with the dense path on the same
    batch and its synaptic events counted on the batches of the report (:func:`~spikeprune.compression.cost.measure_latencies`;
    ``latency.event`` in the report, or ``latency.event_fallback`` where it cannot run the network).
    Writes ``out/cost.json`` if ``out``.
    """
    from spikeprune.tickets.masks import Mask, stored_mask

    _check_int("batches", batches, 1, None)
    _check_int("batch_size", batch_size, 1, None)
    _check_int("latency_repeats", latency_repeats, 0, None)
    if threads is not None:
        _check_int("threads", threads, 1, None)
    tensors, meta = load_checkpoint(checkpoint)
    config = meta.get("model_config") or {}
    if config.get("kind") == "edgepopup-search":  # scores, not a model: its export is what runs
        raise UserError(f"{checkpoint} is an edge-popup search checkpoint (weights + scores); pass the exported "
                         "subnetwork (subnet.safetensors in the same folder) to the cost report")
    if "name" not in config:
        raise UserError(f"{checkpoint} does not describe its model (no model_config); cannot rebuild it")
    trained = meta.get("config") or {}
    data = checkpoint_dataset(checkpoint, config, trained, dataset, data_dir)
    loader = BatchLoader(data, "test", batch_size, shuffle=False, seed=int(trained.get("seed", 0)),
                         encoding=trained.get("encoding", "direct"), timesteps=int(config.get("T", 4)))
    sample = [b for _, b in zip(range(batches), loader)]
    model, meta = load_compressed(checkpoint, sample[0][0])
    # A training checkpoint may carry its mask (``fit(extra_tensors=...)`` under ``mask/``: lottery
    # rounds). Apply it: SF-IMP-2 keeps the dense weights of its dynamic layers behind a forward-only
    # mask, so the stored weights alone would count those layers as dense.
    stored = stored_mask(tensors)
    mask_used = str(mask) if mask is not None else ("stored in the checkpoint" if stored is not None else None)
    chosen = Mask.load(mask) if mask is not None else stored
    if chosen is not None:
        chosen.apply(model)
    del tensors
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        report = cost_report(model, sample, num_batches=None, bits=bits, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj)
        if latency_repeats:
            engine = None
            if event_engine is not None:
                with evaluation(model):  # the engine folds eval-mode BatchNorm and drops eval-mode dropout
                    engine = event_engine(model)
            report.latency = measure_latencies(model, sample[0][0], repeats=latency_repeats, event_engine=engine,
                                               count_on=sample)
    finally:
        torch.set_num_threads(previous)
    report.extra = {"checkpoint": str(checkpoint), "dataset": data.name, "mask": mask_used}
    if out is not None:  # created only now: a refused request leaves no directory behind
        write_json(check_writable_dir(out) / "cost.json", report.to_dict())
    return report
