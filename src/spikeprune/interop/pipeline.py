"""``spikeprune interop``: a SpikingJelly / snnTorch network through spikeprune's pipeline.

adapt (interop.py) -> optionally train a few epochs -> accuracy -> calibrate -> prune (SF by default) ->
accuracy -> cost report -> flip analysis (dense vs pruned) -> result files. Every result file is written
atomically; nothing is written before the model has been adapted (an unsupported neuron fails first).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from spikeprune.core.config import check_fraction, field_default
from spikeprune.core.diagnostics import UserError
from spikeprune.tickets.calibration import calibrate
from spikeprune.compression.cost import cost_report
from spikeprune.tickets.criteria import FIRING_AWARE, check_criterion, sf_fallbacks
from spikeprune.engine.data import BatchLoader, EventDataset, load_dataset
from spikeprune.core.diagnostics import SpikepruneWarning
from spikeprune.theory.flips import flip_analysis, flip_rows_csv, flip_summary
from spikeprune.interop.adapters import adapt, load_factory, neuron_summary, run_user_code
from spikeprune.core.io import check_writable_dir, write_json, write_text
from spikeprune.core.rundir import RunResult, log
from spikeprune.interop.config import InteropConfig
from spikeprune.tickets.pruning import prune
from spikeprune.engine.train import evaluate, train_epoch

__all__ = ["analyse_third_party", "check_fits_dataset"]


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def _state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A network's state dict from a safetensors file (plain ``save_file(net.state_dict())``, or a spikeprune
    checkpoint whose ``model/`` tensors are taken). Safetensors only: nothing is unpickled."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for foreign/corrupt files
        raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    if any(k.startswith("model/") for k in tensors):
        tensors = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    return tensors


#: what torch's conv / linear say when an input's shape does not fit the layer (channels, features, rank)
_SHAPE_MISMATCH = re.compile(r"to have \d+ channels|mat1 and mat2 shapes cannot be multiplied|"
                             r"Expected \d+D \(unbatched\) or \d+D \(batched\) input")


def _from_conv_or_linear(exc: BaseException) -> bool:
    """Did ``exc`` arise inside torch's conv or linear modules (the innermost Python frame)?"""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).name in ("conv.py", "linear.py") \
        and "torch" in Path(frames[-1].filename).parts


def _input_encoding(data, timesteps: int) -> dict:
    """The BatchLoader arguments of ``data``'s input: an event dataset's frames are spikes already
    (``encoding="events"``, ``[T, B, 2, H, W]`` counts); images go in directly (the adapter repeats them over T)."""
    return {"encoding": "events", "timesteps": timesteps} if isinstance(data, EventDataset) else {}


def check_fits_dataset(model: torch.nn.Module, data, dataset: str, timesteps: int = 1) -> None:
    """Run one test sample ``[1, C, H, W]`` through ``model`` (eval mode, no gradient, mode restored) and raise
    a one-line ValueError if the dataset's samples do not fit its first layers or its output has a number of
    classes other than the dataset's. Only torch's own shape complaint from a conv/linear layer becomes that
    ValueError; any other error of the probe propagates unchanged (a bug in the network, or in spikeprune)."""
    x, _ = next(iter(BatchLoader(data, "test", 1, shuffle=False, **_input_encoding(data, timesteps))))
    c, (h, w) = data.in_channels, data.image_size
    hint = "pass the dataset the network was built for (--dataset synthetic gives 3x32x32 images of 10 classes)"
    was_training = model.training
    model.eval()  # no BatchNorm statistics are updated by the probe
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as exc:
        if not (_SHAPE_MISMATCH.search(str(exc)) and _from_conv_or_linear(exc)):
            raise
        first = str(exc).splitlines()[0]
        raise UserError(f"the network does not fit dataset {dataset!r}, whose samples are {c}x{h}x{w}: {first}; "
                         f"{hint}") from None
    finally:
        model.train(was_training)
    if out.shape[-1] != data.num_classes:
        raise UserError(f"the network gives {out.shape[-1]} outputs per sample but dataset {dataset!r} has "
                         f"{data.num_classes} classes; {hint}")


@contextmanager
def _spikeprune_warnings(log) -> Iterator[list[dict[str, str]]]:
    """Log spikeprune's own warnings as ``warning: ...`` lines and collect them (for metrics.json)."""
    caught: list[dict[str, str]] = []
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SpikepruneWarning):
            caught.append({"category": category.__name__, "message": str(message)})
            log(f"warning: {message}")
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SpikepruneWarning)  # every occurrence, also repeats across runs
        warnings.showwarning = show
        yield caught


#: the settings of :func:`analyse_third_party` besides the factory, with their defaults (:class:`InteropConfig`'s)
_SETTINGS: dict[str, Any] = {f.name: field_default(f) for f in dataclasses.fields(InteropConfig) if f.name != "model"}


def analyse_third_party(
    factory: str | InteropConfig,
    out: str | Path,
    *,
    timesteps: int = _SETTINGS["timesteps"],
    dataset: str = _SETTINGS["dataset"],
    data_dir: str | None = _SETTINGS["data_dir"],
    weights: str | None = _SETTINGS["weights"],
    epochs: int = _SETTINGS["epochs"],
    lr: float = _SETTINGS["lr"],
    batch_size: int = _SETTINGS["batch_size"],
    sparsity: float = _SETTINGS["sparsity"],
    criterion: str = _SETTINGS["criterion"],
    calibration_batches: int = _SETTINGS["calibration_batches"],
    analysis_batches: int = _SETTINGS["analysis_batches"],
    seed: int = _SETTINGS["seed"],
    log: Callable[[str], None] = log,
) -> RunResult:
    """Adapt the network ``factory`` builds, (train it,) prune it and analyse what pruning did.

    Args:
        factory: ``"package.module:function"`` or ``"file.py:function"`` returning the network; or an
            :class:`~spikeprune.interop.config.InteropConfig` (what ``spikeprune interop`` passes), whose
            ``model`` is the factory and whose fields are the settings (then no other setting may be given).
        log: where progress lines go (default: stderr, :func:`spikeprune.core.rundir.log`).
        weights: a safetensors file of the network's ``state_dict`` (loaded before adapting; a spikeprune
            checkpoint's ``model/`` tensors work too).
        epochs: training epochs with Adam at ``lr`` before pruning (0: use the weights as they are).
        sparsity: fraction of prunable weights removed (global, ``criterion``).
    Writes ``neurons.json``, ``mask.safetensors``, ``cost.json``, ``flips.csv``, ``flip_summary.json`` and
    ``metrics.json`` to ``out``; returns a :class:`~spikeprune.core.rundir.RunResult` (``metrics`` = metrics.json,
    ``rows`` = its per-epoch ``history``, ``model`` = the adapted, pruned network). spikeprune's warnings (:mod:`spikeprune.core.diagnostics`:
    an ``sf`` run that scored hidden layers by magnitude, a layer emptied by global ranking) are logged as
    ``warning: ...`` lines as they occur and listed in ``metrics["warnings"]``; other warnings pass through.
    """
    if isinstance(factory, InteropConfig):
        given = [k for k, v in dict(timesteps=timesteps, dataset=dataset, data_dir=data_dir, weights=weights,
                                    epochs=epochs, lr=lr, batch_size=batch_size, sparsity=sparsity,
                                    criterion=criterion, calibration_batches=calibration_batches,
                                    analysis_batches=analysis_batches, seed=seed).items() if v != _SETTINGS[k]]
        if given:
            raise TypeError(f"analyse_third_party takes its settings from the InteropConfig; got {', '.join(given)} "
                            "as keywords too")
        cfg, factory = factory, factory.model
        timesteps, dataset, data_dir, weights = cfg.timesteps, cfg.dataset, cfg.data_dir, cfg.weights
        epochs, lr, batch_size, sparsity, criterion = cfg.epochs, cfg.lr, cfg.batch_size, cfg.sparsity, cfg.criterion
        calibration_batches, analysis_batches, seed = cfg.calibration_batches, cfg.analysis_batches, cfg.seed
    with _spikeprune_warnings(log) as caught:
        _positive_int(timesteps, "timesteps")
        _positive_int(epochs, "epochs", 0)
        _positive_int(batch_size, "batch size")
        _positive_int(calibration_batches, "calibration batches")
        _positive_int(analysis_batches, "analysis batches")
        check_fraction(sparsity, "sparsity", "[0, 1)", "fraction of weights removed")
        check_criterion(criterion)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise UserError(f"lr must be a number > 0; got {lr!r}")
        torch.manual_seed(seed)
        net = run_user_code(f"the model factory {factory}", load_factory(factory))
        if not isinstance(net, torch.nn.Module):
            raise UserError(f"{factory} returned a {type(net).__name__}, not a torch.nn.Module")
        if weights is not None:
            tensors = _state_dict_file(weights)
            missing, unexpected = net.load_state_dict(tensors, strict=False)
            if missing or unexpected:
                raise UserError(f"{weights} does not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model = adapt(net, timesteps)  # an unsupported neuron fails here, before any file is written
        data = load_dataset(dataset, data_dir)
        check_fits_dataset(model, data, dataset, timesteps)  # so does a network built for other data
        out = check_writable_dir(out)
        encoding = _input_encoding(data, timesteps)
        train = BatchLoader(data, "train", batch_size, shuffle=True, seed=seed, **encoding)
        test = BatchLoader(data, "test", max(batch_size, 128), shuffle=False, **encoding)
        history = []
        if epochs:
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            for epoch in range(epochs):
                train.set_epoch(epoch)
                stats = train_epoch(model, train, optimizer)
                history.append({"epoch": epoch + 1, **stats})
                log(f"epoch {epoch + 1}/{epochs}: loss {stats['loss']:.4f}, train accuracy {stats['accuracy']:.3f}")
        dense = evaluate(model, test)
        reference = copy.deepcopy(model).eval()
        train.set_epoch(0)
        calib = [b for _, b in zip(range(calibration_batches), train)]
        calibration = calibrate(model, calib, calibration_batches) if criterion in FIRING_AWARE else None
        # which layers the firing-aware criterion scored by magnitude instead, and why (recorded, not only warned)
        fallback = {n: why for n, (why, _) in sf_fallbacks(model, calibration).items()} if calibration else {}
        mask = prune(model, criterion, sparsity, calibration=calibration, seed=seed)
        pruned = evaluate(model, test)
        analysis = [b for _, b in zip(range(analysis_batches), test)]
        report = cost_report(model, analysis)
        rows = flip_analysis(reference, model, analysis, p_sup_method="gaussian", label=f"prune-{sparsity:g}-{criterion}")
        metrics = {
            "factory": factory, "timesteps": timesteps, "dataset": dataset, "epochs": epochs, "criterion": criterion,
            "output": model.output, "criterion_fallback": fallback, "warnings": list(caught),
            "sparsity": mask.sparsity, "history": history,
            # (these file keys predate evaluate()'s split-prefixed names; kept so recorded results still read)
            "dense": {"accuracy": dense["test_accuracy"], "firing_rate": dense["firing_rate"]},
            "pruned": {"accuracy": pruned["test_accuracy"], "firing_rate": pruned["firing_rate"]},
            "energy_uj": report.totals["energy_uj"], "sops": report.totals["sops"],
        }
        write_json(out / "neurons.json", neuron_summary(model))
        mask.save(out / "mask.safetensors", {"factory": factory, "criterion": criterion})
        write_json(out / "cost.json", report.to_dict())
        write_text(out / "flips.csv", flip_rows_csv(rows))
        write_json(out / "flip_summary.json", flip_summary(rows))
        write_json(out / "metrics.json", metrics)
        log(report.table())
        log(f"accuracy dense {dense['test_accuracy']:.4f} -> pruned ({mask.sparsity:.1%} removed, {criterion}) "
            f"{pruned['test_accuracy']:.4f}; results in {out}")
        return RunResult(out, metrics, history, model)


