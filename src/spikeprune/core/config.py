"""Hyperparameters, defined once.

Every hyperparameter is a dataclass field with its default, help text and allowed values. The CLI
flags (``--field-name``), the YAML preset keys (``field_name``) and a run's identity (a hash of its
non-default values, as in open_lth) are all derived from these fields, so nothing is spelled twice.
Commands extend :class:`TrainConfig` by inheritance. Adding a field with a default never changes
the identity of existing runs, because only non-default values enter the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from spikeprune.core.diagnostics import UserError

__all__ = ["CommandConfig", "TrainConfig", "hparam", "path_option", "validate_fields", "load_yaml", "run_id", "from_mapping", "to_dict", "NOT_HPARAMS"]

#: fields that describe where/how a run executes, not what it computes (excluded from run identity)
NOT_HPARAMS = frozenset({"data_dir", "progress", "compile", "threads", "device"})


def hparam(default: Any, help: str, choices: tuple | None = None, *, bounds: str | None = None,
           **extra: Any) -> Any:
    """A dataclass field carrying its CLI help text and allowed values.

    ``bounds`` is an interval in the usual notation, e.g. ``"[1, inf)"`` or ``"(0, 1]"``: the field's value
    (when not None) must lie in it, checked by :func:`validate_fields` for flags, YAML and Python alike.
    Other metadata: ``flags`` (extra CLI spellings), ``repeat`` (the flag may be given several times),
    ``excludes`` (names of fields that may not be given together with this one).
    """
    if bounds is not None:
        parse_bounds(bounds)  # a typo in a declaration fails at import, not at a user's run
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds, **extra})


def parse_bounds(text: str) -> tuple[float, bool, float, bool]:
    """``"[0, 1)"`` -> ``(0.0, True, 1.0, False)``: low, low included, high, high included."""
    m = re.fullmatch(r"\s*([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(-?inf|[-+0-9.e]+)\s*([\])])\s*", text)
    if m is None:
        raise ValueError(f"bad bounds {text!r}; write an interval such as '[1, inf)'")
    return float(m[2]), m[1] == "[", float(m[3]), m[4] == "]"


def in_bounds(value: float, bounds: str) -> bool:
    lo, lo_in, hi, hi_in = parse_bounds(bounds)
    return (value > lo or (lo_in and value == lo)) and (value < hi or (hi_in and value == hi))


@dataclass
class TrainConfig:
    """Model, data and optimisation of one training run (LTH-SNN / Kim et al. defaults)."""

    model: str = hparam("convnet", "registered model (mlp, convnet, vgg16, resnet19)")
    dataset: str = hparam("digits", "dataset (digits, fashion_mnist, mnist, cifar10, cifar100, synthetic)")
    width: float = hparam(1.0, "channel width multiplier (> 0)")
    timesteps: int = hparam(4, "simulation timesteps T (>= 1)")
    beta: float = hparam(0.5, "LIF membrane decay beta in (0, 1)")
    u_th: float = hparam(1.0, "LIF firing threshold u_th")
    v_reset: float = hparam(0.0, "LIF reset potential V_reset")
    surrogate: str = hparam("atan", "surrogate gradient", ("atan", "sigmoid", "triangle", "rectangle"))
    surrogate_alpha: float | None = hparam(None, "surrogate sharpness (default: the surrogate's own)")
    detach_reset: bool = hparam(False, "detach the reset path from the gradient")
    tdbn: bool = hparam(False, "threshold-dependent BatchNorm (resnet19)")
    encoding: str = hparam("direct", "input encoding", ("direct", "poisson"))
    epochs: int = hparam(10, "training epochs (>= 1)")
    batch_size: int = hparam(128, "batch size (>= 1)")
    optimizer: str = hparam("sgd", "optimizer", ("sgd", "adam"))
    lr: float = hparam(0.1, "initial learning rate (> 0)")
    momentum: float = hparam(0.9, "SGD momentum in [0, 1)")
    weight_decay: float = hparam(5e-4, "weight decay (>= 0)")
    schedule: str = hparam("cosine", "learning-rate schedule per epoch", ("cosine", "constant"))
    loss: str = hparam("per_timestep", "per_timestep: mean_t CE(out_t); mean_output: CE(mean_t out_t)",
                       ("per_timestep", "mean_output"))
    train_limit: int | None = hparam(None, "use only the first N training samples")
    test_limit: int | None = hparam(None, "use only the first N test samples")
    val_fraction: float = hparam(0.1, "fraction of the training set held out for validation, in [0, 1): every "
                                      "selection (best epoch, criterion, hyperparameter) is made on it, never on test", bounds="[0, 1)")
    val_seed: int = hparam(0, "seed of the validation split (fixed across training seeds by default, so seeds "
                              "are compared on the same held-out samples)", bounds="[0, 4294967295]")
    seed: int = hparam(0, "random seed (model init, data order, Poisson spikes)", bounds="[0, 4294967295]")
    bf16: bool = hparam(False, "bfloat16 autocast for the forward pass (~1.7x on CPU)")
    compile: bool = hparam(False, "torch.compile the model (~1.5x on CPU after ~20 s of compilation)")
    data_dir: str | None = hparam(None, "directory holding the dataset files (default: system paths, then cache)")
    device: str = hparam("auto", "where to train: auto (the GPU when one is visible, else the CPU), cpu, cuda, cuda:N")

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class CommandConfig:
    """Base of the option sets of the commands that are not a training run (evaluate, cost, analyze, ...):
    one dataclass per command builds its flags and YAML keys and validates them (:func:`validate_fields`);
    a subclass adds its cross-field rules in ``check``."""

    def __post_init__(self) -> None:
        for f in fields(self):  # an empty path would silently mean "none" or the current directory
            value = getattr(self, f.name)
            if f.metadata.get("path") and isinstance(value, str) and not value.strip():
                raise UserError(f"{f.name} must name a file or directory; got an empty path")
        validate_fields(self)
        for f in fields(self):
            if f.metadata.get("required") and getattr(self, f.name) is None:
                raise UserError(f"{f.name} is required; got an empty value")
        self.check()

    def check(self) -> None:
        """Rules between fields (override)."""


def path_option(help: str, *, required: bool = False, metavar: str = "FILE") -> Any:
    """A file/directory option (None by default); ``required`` ones must come from a flag or the YAML."""
    return hparam(None, help, required=required, metavar=metavar, path=True)


# ---------------------------------------------------------------------------------------------
# Validation and coercion. Every message names the bad value: the CLI prints it as one line.
# ---------------------------------------------------------------------------------------------


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise ValueError naming it."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], name)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{name} must be a list; got {value!r}")
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return tuple(_coerce(v, inner, name) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise UserError(f"{name} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{name} must be an integer; got {value!r}")
        if isinstance(value, int):
            return value
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be an integer; got {value!r}") from None
        if not as_float.is_integer():
            raise UserError(f"{name} must be an integer; got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{name} must be a number; got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be a number; got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{name} must be a string; got {value!r}")
        return str(value)
    return value


def validate_fields(cfg: Any) -> None:
    """Coerce every field of the dataclass ``cfg`` to its type, then check choices, finiteness and bounds.

    Every number must be finite (NaN and inf are refused everywhere: no hyperparameter means them), and a
    field declared with ``bounds`` must lie in that interval; a tuple field's bounds apply to each entry.
    """
    cls = type(cfg)
    for f in fields(cfg):
        value = _coerce(getattr(cfg, f.name), _field_type(cls, f.name), f.name)
        choices = f.metadata.get("choices")
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if choices is not None and item is not None and item not in choices:
                raise UserError(f"{f.name} must be one of {', '.join(map(str, choices))}; got {item!r}")
            if isinstance(item, float) and not math.isfinite(item):
                raise UserError(f"{f.name} must be a finite number; got {item!r}")
            bounds = f.metadata.get("bounds")
            if bounds is not None and item is not None and not in_bounds(item, bounds):
                raise UserError(f"{f.name} must be in {bounds}; got {item!r}")
        object.__setattr__(cfg, f.name, value)


def validate(cfg: Any) -> None:
    """Coerce and check every field (:func:`validate_fields`), then the cross-field rules of TrainConfig."""
    validate_fields(cfg)
    _check(isinstance(cfg.timesteps, int) and cfg.timesteps >= 1, "timesteps (T) must be >= 1", cfg.timesteps)
    _check(0.0 < cfg.beta < 1.0, "beta must be in (0, 1)", cfg.beta)
    _check(math.isfinite(cfg.u_th) and cfg.u_th > 0, "u_th must be a finite number > 0", cfg.u_th)
    _check(math.isfinite(cfg.v_reset), "v_reset must be finite", cfg.v_reset)
    _check(cfg.surrogate_alpha is None or cfg.surrogate_alpha > 0, "surrogate_alpha must be > 0",
           cfg.surrogate_alpha)
    _check(cfg.width > 0 and math.isfinite(cfg.width), "width must be > 0", cfg.width)
    _check(cfg.epochs >= 1, "epochs must be >= 1", cfg.epochs)
    _check(cfg.batch_size >= 1, "batch_size must be >= 1", cfg.batch_size)
    _check(cfg.lr > 0 and math.isfinite(cfg.lr), "lr must be > 0", cfg.lr)
    _check(0.0 <= cfg.momentum < 1.0, "momentum must be in [0, 1)", cfg.momentum)
    _check(cfg.weight_decay >= 0, "weight_decay must be >= 0", cfg.weight_decay)
    _check(cfg.train_limit is None or cfg.train_limit >= 1, "train_limit must be >= 1", cfg.train_limit)
    _check(0.0 <= cfg.val_fraction < 1.0, "val_fraction must be in [0, 1)", cfg.val_fraction)
    _check(cfg.test_limit is None or cfg.test_limit >= 1, "test_limit must be >= 1", cfg.test_limit)
    _check(cfg.device == "auto" or cfg.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", cfg.device) is not None,
           "device must be auto, cpu, cuda or cuda:N", cfg.device)
    # Names are checked against the live registries so a typo fails before any work starts.
    from spikeprune.engine.data import list_datasets
    from spikeprune.engine.models import list_models

    _check(cfg.model in list_models(), f"unknown model; available: {', '.join(list_models())}", cfg.model)
    _check(cfg.dataset in list_datasets(), f"unknown dataset; available: {', '.join(list_datasets())}",
           cfg.dataset)


def _check(ok: bool, message: str, value: Any) -> None:
    if not ok:
        raise UserError(f"{message}; got {value!r}")


# ---------------------------------------------------------------------------------------------
# Mappings, YAML and identity.
# ---------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    """All fields as JSON-serialisable values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def fields_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of the dataclass ``cls`` (the rest are dropped)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def from_mapping(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build ``cls`` from a mapping; an unknown key raises ValueError naming it and the valid keys."""
    names = {f.name for f in fields(cls)}
    normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(normalised) - names)
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in {source}; valid keys: {', '.join(sorted(names))}")
    return cls(**normalised)


PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"


def list_presets() -> list[str]:
    """Names of the presets shipped inside the package (``spikeprune/configs/*.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of the shipped preset ``name`` (``qpsnn_fashion_mnist`` -> ``.../configs/qpsnn_fashion_mnist.yaml``)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no preset named {name!r}; shipped presets: {', '.join(list_presets())}")
    return path


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML preset (a flat mapping of field names to values).

    ``path`` is a file, or -- when it has no directory part and no ``.yaml``/``.yml`` suffix and no such file
    exists -- the name of a preset shipped with the package (``--config qpsnn_fashion_mnist``), so the
    presets work from an installed wheel, not only from a source checkout."""
    p = Path(path)
    if not p.exists() and p.parent == Path(".") and p.suffix not in (".yaml", ".yml"):
        p = preset_path(str(path))
    try:
        text = p.read_text()
    except OSError as e:
        raise UserError(f"cannot read config {p}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"config {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config {p} must be a mapping of option: value; got {type(data).__name__}")
    return data


def run_id(cfg: Any) -> str:
    """Short hash of the non-default hyperparameters (open_lth): equal configs share an id."""
    defaults = type(cfg)()  # type: ignore[call-arg]
    changed = {
        k: v for k, v in to_dict(cfg).items()
        if k not in NOT_HPARAMS and v != to_dict(defaults).get(k)
    }
    blob = json.dumps({"kind": type(cfg).__name__, **changed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def hyperparameters(cfg: Any) -> dict[str, Any]:
    """The fields that define what a run computes (everything but execution details)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in NOT_HPARAMS}
