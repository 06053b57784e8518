"""Limits checked before work starts: memory estimates, bounded JSON, and the shape of checkpoint metadata.

Everything here turns a request that cannot succeed into one :class:`~spikeprune.core.diagnostics.UserError`
*before* anything is allocated or written, instead of an allocator traceback minutes later:

- :func:`check_memory`: an estimate in bytes against the memory this machine has available;
- :func:`estimate_training_bytes` / :func:`count_parameters`: what training a model needs, measured on a
  one-sample forward pass and on PyTorch's ``meta`` device (which allocates nothing);
- :func:`parse_json`: ``json.loads`` with a size and a nesting-depth limit (CPython's parser recurses, so a
  200 000-deep array would otherwise end in ``RecursionError``);
- :func:`check_checkpoint_meta`: every metadata key spikeprune reads, with its type and range.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Callable

import torch
from torch import nn

from spikeprune.core.diagnostics import UserError

__all__ = ["available_memory", "check_memory", "check_checkpoint_meta", "count_parameters",
           "estimate_training_bytes", "parse_json"]

#: nesting depth of JSON that spikeprune reads (its own files nest < 10 levels)
MAX_JSON_DEPTH = 64
#: size of one JSON document spikeprune reads: checkpoint metadata, results, references
MAX_JSON_BYTES = 64 * 2**20
#: largest image side, channel count and class count a checkpoint may describe
MAX_IMAGE_SIDE = 4096
MAX_CHANNELS = 4096
MAX_CLASSES = 100_000
#: the training activations held per neuron element and timestep for the backward pass: the layer's
#: output, the membrane potential and the spikes (neuron.py saves these), plus the gradient being formed
_TRAIN_FLOATS_PER_ELEMENT = 4


def available_memory() -> int:
    """Bytes this process may still allocate: ``MemAvailable`` of /proc/meminfo, else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux/macOS: no estimate, never refuse
        return 2**62


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


def check_memory(nbytes: float, what: str, advice: str) -> None:
    """Refuse ``what`` in one line when its estimated ``nbytes`` exceed the memory available now."""
    have = available_memory()
    if not math.isfinite(nbytes) or nbytes > have:
        need = "more than can be counted" if not math.isfinite(nbytes) else f"about {_gib(nbytes)}"
        raise UserError(f"{what} needs {need} of memory, but this machine has {_gib(have)} available; {advice}")


def count_parameters(build: Callable[[], nn.Module]) -> int:
    """Parameters + buffers of the module ``build()`` returns, built on the ``meta`` device (no memory)."""
    with torch.device("meta"):
        model = build()
    return sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())


def estimate_training_bytes(model: nn.Module, example: torch.Tensor, timesteps: int, batch_size: int) -> int:
    """Bytes a training step of ``model`` needs at ``batch_size`` and ``timesteps``.

    Measured, not guessed: one forward pass on ``example`` (one sample ``[1, C, H, W]``, run at whatever T
    the model was built with) sums the elements every leaf module outputs; that per-sample, per-timestep
    count times ``timesteps * batch_size`` times the floats kept per element for the backward pass, plus
    the weights with their gradient and two optimizer buffers.
    """
    elements = 0
    seen_t = 1

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal elements
        if isinstance(output, torch.Tensor):
            elements += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(example)
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            seen_t = max(1, int(out.shape[0]))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    per_sample_step = elements / seen_t
    weights = sum(p.numel() for p in model.parameters())
    return int(4 * (per_sample_step * timesteps * batch_size * _TRAIN_FLOATS_PER_ELEMENT + 4 * weights))


# ---------------------------------------------------------------------------------------------
# Bounded JSON.
# ---------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = str.maketrans("", "", "".join(chr(c) for c in range(128) if chr(c) not in "[]{}"))


def json_depth(text: str) -> int:
    """Deepest nesting of ``[]``/``{}`` in JSON ``text`` (brackets inside strings ignored)."""
    brackets = _STRING.sub("", text).translate(_NOT_BRACKET)
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(text: str | bytes, source: str, *, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)``, refusing (one line naming ``source``) a document too large, too deep or invalid."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{source} is not UTF-8 text (not a JSON file)") from None
    if len(text) > max_bytes:
        raise UserError(f"{source} is {_gib(len(text))} of JSON, more than the {_gib(max_bytes)} spikeprune reads")
    depth = json_depth(text)
    if depth > max_depth:
        raise UserError(f"{source} nests JSON {depth} levels deep; spikeprune reads at most {max_depth}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source} is not valid JSON ({e.msg} at line {e.lineno})") from None


# ---------------------------------------------------------------------------------------------
# Checkpoint metadata: every key spikeprune reads, with its type (and range where sizes follow from it).
# ---------------------------------------------------------------------------------------------

_NUMBER = (int, float)


def _is(value: Any, types: tuple) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _need(ok: bool, source: str, what: str, value: Any) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise UserError(f"{source} has malformed metadata: {what}; got {shown}")


#: top-level keys: allowed types (None allowed where the writer may store null)
_TOP: dict[str, tuple] = {
    "format": (str,), "version": (int,), "kind": (str,), "epoch": (int,), "seconds": _NUMBER,
    "config": (dict,), "hyperparameters": (dict,), "model_config": (dict, type(None)),
    "history": (list,), "optimizer": (dict,), "scheduler": (dict,), "quantization": (dict, type(None)),
    "dynamic": (list,), "channel_history": (list,), "channels": (dict,), "prune_seconds": _NUMBER,
    "best_test_accuracy": _NUMBER,
}


def check_checkpoint_meta(meta: Any, source: str) -> dict[str, Any]:
    """Check the parsed metadata of a checkpoint before any of it is used; returns it unchanged."""
    _need(isinstance(meta, dict), source, "the metadata must be a JSON object", meta)
    for key, types in _TOP.items():
        if key in meta:
            _need(_is(meta[key], types), source, f"{key!r} must be {' or '.join(t.__name__ for t in types)}",
                  meta[key])
    config = meta.get("model_config")
    if isinstance(config, dict) and "kind" in config:  # not a registered model (an edge-popup search)
        _need(isinstance(config["kind"], str), source, "model_config.kind must be a string", config["kind"])
    elif isinstance(config, dict):
        _check_model_config(config, source)
    q = meta.get("quantization")
    if isinstance(q, dict):
        for key in ("layers", "membrane_bits"):
            _need(q.get(key) is None or isinstance(q.get(key), dict), source,
                  f"quantization.{key} must be an object", q.get(key))
    trained = meta.get("config")
    if isinstance(trained, dict):
        for key in ("dataset", "encoding", "model"):
            _need(trained.get(key) is None or isinstance(trained.get(key), str), source,
                  f"config.{key} must be a string", trained.get(key))
        _need(trained.get("timesteps") is None or _is(trained.get("timesteps"), (int,)), source,
              "config.timesteps must be an integer", trained.get("timesteps"))
    if "dynamic" in meta:
        _need(all(isinstance(d, str) for d in meta["dynamic"]), source, "dynamic must list layer names",
              meta["dynamic"])
    return meta


def _check_model_config(c: dict[str, Any], source: str) -> None:
    _need(isinstance(c.get("name"), str), source, "model_config.name must be a model name", c.get("name"))
    for key, hi in (("num_classes", MAX_CLASSES), ("in_channels", MAX_CHANNELS), ("T", 100_000)):
        _need(_is(c.get(key), (int,)) and 1 <= c[key] <= hi, source,
              f"model_config.{key} must be an integer in [1, {hi}]", c.get(key))
    _need(_is(c.get("width"), _NUMBER) and math.isfinite(c["width"]) and 0 < c["width"] <= 64, source,
          "model_config.width must be a number in (0, 64]", c.get("width"))
    size = c.get("image_size")
    _need(isinstance(size, list) and len(size) == 2
          and all(_is(s, (int,)) and 1 <= s <= MAX_IMAGE_SIDE for s in size), source,
          f"model_config.image_size must be [H, W] with sides in [1, {MAX_IMAGE_SIDE}]", size)
    _need(c.get("neuron") is None or isinstance(c.get("neuron"), (str, dict)), source,
          "model_config.neuron must be null, a name or an object", c.get("neuron"))
    _need(isinstance(c.get("options", {}), dict), source, "model_config.options must be an object",
          c.get("options"))


def check_model_fits(build: Callable[[], nn.Module], what: str) -> None:
    """Refuse to build a model whose weights (with gradient and two optimizer buffers) cannot fit."""
    check_memory(16 * count_parameters(build), what, "use a smaller --width or a smaller image")


def check_training_fits(model: nn.Module, sample_shape: tuple[int, ...], timesteps: int, batch_size: int) -> None:
    """Refuse a training run whose activations at ``timesteps`` x ``batch_size`` cannot fit in memory.

    ``sample_shape`` = one input sample ``(C, H, W)``; the probe feeds it time-major ``[1, 1, C, H, W]`` (one
    timestep), so the estimate itself never allocates at the requested T. A model that cannot take that
    probe is not estimated (its own forward will say what it needs).
    """
    try:
        probe = torch.zeros(1, 1, *sample_shape)
        device = next(model.parameters()).device
        need = estimate_training_bytes(model, probe.to(device), timesteps, batch_size)
    except (RuntimeError, ValueError, TypeError, StopIteration):
        return
    check_memory(need, f"training at T={timesteps}, batch {batch_size}",
                 "lower --timesteps or --batch-size")
