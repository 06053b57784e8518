"""``spikeprune evaluate`` as a function: a saved checkpoint evaluated as it ran, on a test split.

It lives in ``deploy`` because evaluating a checkpoint "as it ran" needs every layer below: the model
(``engine``), a lottery round's stored mask (``tickets``), a compress checkpoint's quantized membranes
(``compression``) and, with ``engine="event"``, the event-driven engine (:mod:`spikeprune.deploy.event_engine`).
The in-memory evaluation of a model on a loader is :func:`spikeprune.engine.train.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spikeprune.core.config import CommandConfig, hparam, path_option
from spikeprune.core.rundir import RunResult, log
from spikeprune.engine.encoding import ENCODINGS

__all__ = ["EvaluateConfig", "evaluate_checkpoint"]


@dataclass
class EvaluateConfig(CommandConfig):
    """What ``spikeprune evaluate`` reads (flags and ``--config`` YAML keys)."""

    checkpoint: str | None = path_option("a spikeprune .safetensors checkpoint", required=True)
    dataset: str | None = hparam(None, "dataset (default: the one the checkpoint was trained on)")
    data_dir: str | None = path_option("directory holding the dataset files", metavar="DIR")
    batch_size: int = hparam(256, "batch size", bounds="[1, inf)")
    encoding: str | None = hparam(None, "input encoding (default: the checkpoint's)", ENCODINGS)
    seed: int = hparam(0, "seed for Poisson encoding", bounds="[0, 4294967295]")
    mask: str | None = path_option("apply this mask (default: the mask a lottery checkpoint carries)")
    engine: str = hparam("dense", "inference path: dense (PyTorch) or event (spike-driven kernels, "
                         "spikeprune.deploy.event_engine; falls back to dense with one line)", ("dense", "event"))


def evaluate_checkpoint(cfg: EvaluateConfig, out: str | Path) -> RunResult:
    """Evaluate ``cfg.checkpoint`` on the test split and write ``out/metrics.json`` (what ``spikeprune
    evaluate`` does); returns a :class:`RunResult` whose ``metrics`` is that file's content and whose
    ``model`` is the network evaluated (mask applied, quantization as stored).

    ``metrics``: ``engine`` (``dense``, ``event`` or the dense fallback and why), ``test_accuracy``,
    ``test_loss``, ``firing_rate`` (spikes per neuron per timestep), ``firing_rates`` (per layer),
    ``checkpoint``, ``dataset``, ``encoding``, ``mask``. Every input is read before ``out`` is created, so
    a refused request leaves nothing behind.
    """
    from spikeprune.core.io import check_writable_dir, load_checkpoint, write_json
    from spikeprune.engine.data import BatchLoader
    from spikeprune.engine.train import checkpoint_dataset, evaluate, load_model
    from spikeprune.tickets.masks import Mask, stored_mask

    model, meta = load_model(cfg.checkpoint)
    trained_on = meta.get("config", {})
    config = model.spikeprune_config
    dataset = checkpoint_dataset(cfg.checkpoint, config, trained_on, cfg.dataset, cfg.data_dir)
    recorded_encoding = trained_on.get("encoding", "direct")
    encoding = cfg.encoding or recorded_encoding
    loader = BatchLoader(dataset, "test", cfg.batch_size, shuffle=False, seed=cfg.seed, encoding=encoding,
                         timesteps=config["T"])
    if (meta.get("quantization") or {}).get("layers"):
        # A `spikeprune compress` checkpoint: evaluate it as it runs, with its weight and membrane
        # quantization (load_model alone gives the stored weights with float membranes).
        from spikeprune.compression.compress import load_compressed

        model, meta = load_compressed(cfg.checkpoint, next(iter(loader))[0])
    # A lottery round's checkpoint carries its mask; SF-IMP-2's dynamic layers keep dense weights behind
    # it, so the network that round evaluated is weights x mask, not the stored weights alone.
    mask = Mask.load(cfg.mask) if cfg.mask else stored_mask(load_checkpoint(cfg.checkpoint)[0])
    if mask is not None:
        mask.check_fits(model)
        mask.apply(model)
    out = check_writable_dir(out)  # only once every input has been read: a refusal leaves nothing
    if encoding != recorded_encoding:  # issue 18: the flag wins and says so, after the refusals (one line)
        log(f"--encoding {encoding} overrides the checkpoint's {recorded_encoding}")
    if cfg.engine == "event":
        from spikeprune.deploy.event_engine import compile as compile_event, evaluate_event

        model.eval()
        engine = compile_event(model)
        result = evaluate_event(engine, loader)
        used = "dense (fallback: " + engine.reason + ")" if engine.dense else "event"
    else:
        result, used = evaluate(model, loader), "dense"
    metrics = {"engine": used, "test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
               "firing_rate": result["firing_rate"], "firing_rates": result["firing_rates"],
               "checkpoint": str(Path(cfg.checkpoint)), "dataset": dataset.name, "encoding": encoding,
               "mask": cfg.mask or ("stored in the checkpoint" if mask is not None else None)}
    write_json(out / "metrics.json", metrics)
    return RunResult(out, metrics, model=model)
