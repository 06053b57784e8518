"""Hyperparameters, defined once.

Every hyperparameter is a dataclass field with its default, help text and allowed values. The CLI
flags (``--field-name``), the YAML preset keys (``field_name``) and a run's identity (a hash of its
non-default values, as in open_lth) are all derived from these fields, so nothing is spelled twice.
This module is the machinery (field declaration, coercion, validation, YAML, identity); the
configs themselves live next to what they configure: the training run and the neuron-parameter
bundle in :mod:`spikeprune.engine.config`, each feature's options in its own module. Adding a
field with a default never changes the identity of existing runs, because only non-default values
enter the hash.
"""

from __future__ import annotations

import dataclasses
import functools
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

__all__ = ["CommandConfig", "hparam", "path_option", "validate_fields", "load_yaml", "run_id", "current_names",
           "from_mapping", "to_dict", "to_argv", "NOT_HPARAMS"]

#: fields that describe where/how a run executes, not what it computes (excluded from run identity)
NOT_HPARAMS = frozenset({"data_dir", "progress", "compile", "threads", "device"})


def hparam(default: Any, help: str, choices: tuple | None = None, *, bounds: str | None = None,
           **extra: Any) -> Any:
    """A dataclass field carrying its CLI help text and allowed values.

    ``bounds`` is an interval in the usual notation, e.g. ``"[1, inf)"`` or ``"(0, 1]"``: the field's value
    (when not None) must lie in it, checked by :func:`validate_fields` for flags, YAML and Python alike.
    Other metadata: ``flags`` (extra CLI spellings), ``repeat`` (the flag may be given several times),
    ``excludes`` (names of fields that may not be given together with this one), ``formerly`` (names the
    field had in earlier versions: :func:`current_names` reads them from YAML files and saved configs, and
    the old flag is refused naming the new one).
    """
    if bounds is not None:
        parse_bounds(bounds)  # a typo in a declaration fails at import, not at a user's run
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds, **extra})


def reuse(owner: type, name: str, default: Any = dataclasses.MISSING, *, note: str = "", **changes: Any) -> Any:
    """Field ``name`` of the config class ``owner`` for another config: its help text, choices and bounds
    stay declared once, in ``owner``. ``default`` replaces the owner's default; ``note`` is appended to the
    help text (what the field means differently here, e.g. "0: skip that part"); ``changes`` replace
    metadata entries (e.g. wider ``bounds``)."""
    f = owner.__dataclass_fields__[name]
    meta = {**f.metadata, **changes}
    if note:
        meta["help"] = f"{meta.get('help', '')}; {note}"
    if meta.get("bounds") is not None:
        parse_bounds(meta["bounds"])
    return field(default=f.default if default is dataclasses.MISSING else default, metadata=meta)


def parse_bounds(text: str) -> tuple[float, bool, float, bool]:
    """``"[0, 1)"`` -> ``(0.0, True, 1.0, False)``: low, low included, high, high included."""
    m = re.fullmatch(r"\s*([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(-?inf|[-+0-9.e]+)\s*([\])])\s*", text)
    if m is None:
        raise ValueError(f"bad bounds {text!r}; write an interval such as '[1, inf)'")
    return float(m[2]), m[1] == "[", float(m[3]), m[4] == "]"


def in_bounds(value: float, bounds: str) -> bool:
    lo, lo_in, hi, hi_in = parse_bounds(bounds)
    return (value > lo or (lo_in and value == lo)) and (value < hi or (hi_in and value == hi))


def check_fraction(value: Any, name: str, bounds: str, meaning: str) -> float:
    """``value`` as a float in ``bounds`` (e.g. ``"[0, 1)"``), or one line naming it and what it means.

    The one validator of every sparsity, density and fraction argument of the Python API (the CLI's are
    declared with ``hparam(bounds=...)``): booleans, non-numbers, NaN and inf are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not in_bounds(float(value), bounds):
        raise UserError(f"{name} must be in {bounds} ({meaning}), a float; got {value!r}")
    return float(value)


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


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, once per class (it re-evaluates every annotation: ~0.6 ms a call,
    and every config construction asks for each of its ~30 fields)."""
    return typing.get_type_hints(cls)


def _field_type(cls: type, name: str) -> Any:
    return type_hints(cls)[name]


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


def current_names(cls: type, values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """``values`` (keys spelled ``a_b`` or ``a-b``) with every former name of a field of ``cls`` (its
    metadata ``formerly``, e.g. CompressConfig's ``criterion`` for ``channel_criterion``) replaced by the
    field's name, as a new dict (the order of the keys is kept; ``values`` is not changed). The one reading of renamed keys: YAML files and
    the configs earlier versions saved (``compress.json``, a result's ``config``) still load and resume.
    Both names given at once raise a UserError naming ``source``."""
    former = {old: f.name for f in fields(cls) for old in f.metadata.get("formerly", ())}
    normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
    if not former.keys() & normalised.keys():
        return normalised
    renamed: dict[str, Any] = {}
    for k, v in normalised.items():
        new = former.get(k, k)
        if new in renamed or (new != k and new in normalised):
            raise UserError(f"{source} gives both {new} and {k} (the former name of {new}); keep {new}")
        renamed[new] = v
    return renamed


def from_mapping(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build ``cls`` from a mapping; an unknown key raises ValueError naming it and the valid keys. A field's
    former name (:func:`current_names`) is read as the field."""
    names = {f.name for f in fields(cls)}
    normalised = current_names(cls, values, source)
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
    except UnicodeDecodeError:  # a binary file given as --config (a checkpoint, an archive)
        raise UserError(f"config {p} is not a UTF-8 text file; --config takes a YAML file") from None
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


# ---------------------------------------------------------------------------------------------
# Command lines. The inverse of the flag builder (spikeprune.cli.args.add_config_arguments), kept
# here so that any layer (studies/reproduce writes the commands of a report) can render a config.
# ---------------------------------------------------------------------------------------------


def field_default(f: dataclasses.Field) -> Any:
    """The default of the dataclass field ``f`` (``MISSING`` when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _flag_value(value: Any, tp: Any, name: str) -> str:
    """One value as the text the flag parser (:func:`_coerce`) turns back into ``value`` (``tp``: its type)."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)  # the shortest text that parses back to the same float
    text = str(value)
    if type(None) in typing.get_args(tp) and text.lower() in ("none", "null", ""):
        raise ValueError(f"{name}={value!r} cannot be written as a flag: the parser reads it as None")
    return text


def to_argv(cfg: Any, base: dict[str, Any] | None = None) -> list[str]:
    """The flags of ``cfg``'s command that rebuild it: ``--field-name value`` for every field whose value
    differs from its default, in field order (the inverse of ``add_config_arguments`` +
    ``config_from_args``: parsing the result gives back ``cfg``). ``base``: the values of a ``--config``
    YAML file the command also names (flags override it), so only the fields that differ from it are written.

    Booleans are ``--x`` / ``--no-x``; a tuple is ``--x a,b`` (the comma form), ``--x a --x b`` for a
    ``repeat`` field and ``--x a b`` for an ``nargs`` field; None is ``none``; a value that starts with
    ``-`` is attached (``--x=-1``) so that it is not read as a flag. A value the parser would not give back
    (an empty ``nargs`` list, a list entry with a comma, ...) raises ValueError rather than writing a
    command that means something else.
    """
    hints = type_hints(type(cfg))
    given = current_names(type(cfg), base or {})  # YAML keys may be spelled either way, or by a former name
    argv: list[str] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        tp = hints[f.name]
        if value == (_coerce(given[f.name], tp, f.name) if f.name in given else field_default(f)):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
            continue
        if not isinstance(value, tuple):
            text = _flag_value(value, tp, f.name)
            argv += [f"{flag}={text}"] if text.startswith("-") or not text else [flag, text]
            continue
        sequence = tp if typing.get_origin(tp) in (tuple, list) else \
            next(a for a in typing.get_args(tp) if a is not type(None))  # tuple[X, ...] | None
        items = [_flag_value(v, (typing.get_args(sequence) or (str,))[0], f.name) for v in value]
        if any("," in i or not i.strip() or i != i.strip() or " " in i for i in items) and not f.metadata.get("repeat"):
            raise ValueError(f"{f.name}: an entry of {value!r} cannot be written in the comma form")
        if f.metadata.get("repeat"):
            if not items:
                raise ValueError(f"{f.name}=() cannot be written as {flag} flags")
            for i in items:
                argv += [f"{flag}={i}"] if i.startswith("-") else [flag, i]
        elif f.metadata.get("nargs"):
            if not items or any(i.startswith("-") for i in items):
                raise ValueError(f"{f.name}={value!r} cannot be written as {flag} values")
            argv += [flag, *items]
        else:
            if not items and type(None) in typing.get_args(tp):
                raise ValueError(f"{f.name}=() cannot be written as a flag: the parser reads '' as None")
            text = ",".join(items)
            argv += [f"{flag}={text}"] if text.startswith("-") or not text else [flag, text]
    return argv
