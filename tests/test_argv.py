"""core.config.to_argv is the inverse of the flag builder: parse(render(cfg)) == cfg for every config class.

`spikeprune reproduce` writes the commands of its reports with it, so a command line in a report rebuilds
exactly the config the study ran. Every field of every command's config is varied (one at a time, then
as many together as the class accepts), rendered, parsed by the same code the commands use
(cli.args.add_config_arguments + config_from_args), and compared with the original.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import typing

import pytest

import spikeprune.cli
from spikeprune.cli.args import OneLineParser, add_config_arguments, config_from_args
from spikeprune.core.config import CommandConfig, field_default, hparam, to_argv
from spikeprune.core.diagnostics import UserError
from spikeprune.engine.config import NeuronConfig

# every command module (each imports its config class), so the subclass walk below finds them all
for _m in pkgutil.iter_modules(spikeprune.cli.__path__):  # (not __main__: it runs the CLI)
    if _m.name == "__main__":
        continue
    importlib.import_module(f"spikeprune.cli.{_m.name}")


@dataclasses.dataclass
class EveryForm(CommandConfig):
    """The flag forms no shipped config uses yet (a bool that defaults to True, optional tuples, ...)."""

    on: bool = hparam(True, "a switch that is on by default (rendered --no-on)")
    maybe: tuple[float, ...] | None = hparam(None, "an optional list")
    names: tuple[str, ...] = hparam(("a", "b"), "a list with a default")
    offset: float | None = hparam(-1.0, "a negative default")
    label: str = hparam("x", "free text")


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


CLASSES = sorted({c for c in [NeuronConfig, *_subclasses(NeuronConfig), *_subclasses(CommandConfig)]
                  if dataclasses.is_dataclass(c)}, key=lambda c: c.__name__)

#: values of the fields a class requires (so that one other field can be varied at a time)
REQUIRED = {"checkpoint": "runs/a b/checkpoint.safetensors", "perturb": ("prune:0.5:magnitude",),
            "model": "nets.py:make", "out": "out/net.nir", "N": 4, "eps": 0.1, "p_sup": 0.5}

#: candidate values; a field gets the first one its class accepts that differs from the default
STRINGS = ("mlp", "fashion_mnist", "sf-rms", "cpu", "cuda:1", "dir with space/x", "-leading-dash", "a,b")
INTS = (3, 0, 7, 1, 2, 17)
FLOATS = (0.25, 0.1, 0.75, 1e-05, 2.5, 0.0, -0.5, 99.5, 1.0)


def _candidates(f: dataclasses.Field, tp: typing.Any) -> list[typing.Any]:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")) else tp
    optional = type(None) in typing.get_args(tp)
    choices = f.metadata.get("choices")
    if base is bool:
        out: list[typing.Any] = [not field_default(f)]
    elif typing.get_origin(base) in (tuple, list):
        inner = typing.get_args(base)[0]
        if choices:
            out = [tuple(choices[:2]), tuple(choices[-1:])]
        elif inner is float:
            out = [(0.1, 0.5), (0.25,), (0.9, 0.3, 0.7)]
        elif inner is int:
            out = [(8, 16), (4,)]
        else:
            out = [("prune:0.8:sf", "quantize:4"), ("sf", "magnitude"), ("features.0.weight",)]
        out.append(())
    elif choices:
        out = list(choices)
    elif base is int:
        out = list(INTS)
    elif base is float:
        out = list(FLOATS)
    else:
        out = list(STRINGS)
    if optional:
        out.append(None)
    return [v for v in out if v != field_default(f)]


def _parse(cls: type, argv: list[str]) -> typing.Any:
    parser = OneLineParser(prog="t")
    add_config_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))


def _build(cls: type, values: dict[str, typing.Any]) -> typing.Any | None:
    try:
        return cls(**values)
    except (UserError, ValueError, TypeError):
        return None


def _base(cls: type) -> dict[str, typing.Any]:
    return {f.name: REQUIRED[f.name] for f in dataclasses.fields(cls) if f.metadata.get("required")}


def _variants(cls: type) -> tuple[list[typing.Any], set[str]]:
    """Instances that each differ from the base in one field (the first accepted candidate of every field,
    plus every other accepted candidate of it), then one that changes every field the class lets change
    together; and the names of the fields no accepted instance changed."""
    hints = typing.get_type_hints(cls)
    base = _base(cls)
    instances, chosen, unvaried = [], {}, set()
    for f in dataclasses.fields(cls):
        accepted = [v for v in _candidates(f, hints[f.name]) if _build(cls, {**base, f.name: v}) is not None]
        if not accepted and f.name not in base and len(f.metadata.get("choices") or "ab") > 1:
            unvaried.add(f.name)  # (a field with one allowed value has nothing to vary)
        instances += [_build(cls, {**base, f.name: v}) for v in accepted]
        if accepted:
            chosen[f.name] = accepted[0]
    together = dict(base)
    for name, value in chosen.items():
        if _build(cls, {**together, name: value}) is not None:
            together[name] = value
    instances.append(cls(**together))
    return instances, unvaried


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_config_round_trips_through_its_flags(cls):
    instances, unvaried = _variants(cls)
    assert not unvaried, f"{cls.__name__}: no valid non-default value found for {sorted(unvaried)}"
    assert len(instances) > len(dataclasses.fields(cls)) // 2
    for cfg in instances:
        try:
            argv = to_argv(cfg)
        except ValueError:  # a value the flags cannot express must be refused, never mis-rendered
            assert any(v == () or (isinstance(v, tuple) and any("," in str(x) for x in v))
                       for v in dataclasses.asdict(cfg).values()), cfg
            continue
        assert _parse(cls, argv) == cfg, (argv, cfg)
    together = instances[-1]
    changed = [f.name for f in dataclasses.fields(cls) if getattr(together, f.name) != field_default(f)]
    assert len(changed) >= min(3, len(dataclasses.fields(cls))), changed


def test_to_argv_forms():
    from spikeprune.tickets.edgepopup import EdgePopupConfig
    from spikeprune.theory.config import FlipsConfig, ValidityConfig

    assert to_argv(EdgePopupConfig()) == []  # defaults are not written
    assert to_argv(EdgePopupConfig(densities=(0.1, 0.5), bf16=True, v_reset=-0.5, detach_reset=False)) == \
        ["--v-reset=-0.5", "--bf16", "--densities", "0.1,0.5"]
    flips = FlipsConfig(checkpoint="c.safetensors", perturb=("prune:0.5:sf", "quantize:4"), p_sup="kde")
    assert to_argv(flips) == ["--checkpoint", "c.safetensors", "--perturb", "prune:0.5:sf", "--perturb", "quantize:4"]
    assert to_argv(ValidityConfig(checkpoint="c", criteria=("sf", "random"))) == \
        ["--checkpoint", "c", "--criteria", "sf", "random"]
    assert to_argv(EveryForm(on=False, maybe=(-0.5, 2.0), names=(), offset=None, label="-y")) == \
        ["--no-on", "--maybe=-0.5,2.0", "--names=", "--offset", "none", "--label=-y"]
    with pytest.raises(ValueError):  # an empty nargs list has no spelling: refused, not dropped
        to_argv(ValidityConfig(checkpoint="c", criteria=()))
    assert math.isclose(float(to_argv(EdgePopupConfig(lr=1 / 3))[1]), 1 / 3, rel_tol=0, abs_tol=0)


def test_to_argv_over_a_config_file(tmp_path):
    # defaults < --config YAML < flags: only what differs from the file is written, and it still round-trips
    from spikeprune.compression.compress import CompressConfig

    preset = {"model": "convnet", "dataset": "fashion_mnist", "bits": 2, "channel_sparsity": 0.3, "epochs": 3}
    (tmp_path / "c.yaml").write_text("\n".join(f"{k}: {v}" for k, v in preset.items()) + "\n")
    cfg = CompressConfig(**{**preset, "bits": 4, "checkpoint": "d/checkpoint.safetensors"})
    argv = to_argv(cfg, base=preset)
    assert argv == ["--checkpoint", "d/checkpoint.safetensors", "--bits", "4"]  # bits 4 is the default: the file set 2
    parser = OneLineParser(prog="t")
    parser.add_argument("--config")
    add_config_arguments(parser, CompressConfig)
    assert config_from_args(CompressConfig, parser.parse_args(["--config", str(tmp_path / "c.yaml"), *argv])) == cfg


def test_to_argv_over_a_commands_own_preset():
    # quickstart's defaults are its shipped preset (configs/quickstart.yaml): rendered over that preset, a
    # config parses back through the command's own parser
    from spikeprune.cli.quickstart import PRESET, QuickstartConfig
    from spikeprune.core.config import load_yaml, preset_path

    preset = load_yaml(preset_path(PRESET))
    cfg = QuickstartConfig(**{**preset, "rounds": 0, "epochs": 10, "seed": 2})  # epochs 10: the field default
    argv = to_argv(cfg, base=preset)
    assert argv == ["--epochs", "10", "--seed", "2", "--rounds", "0"]
    parser = OneLineParser(prog="t")
    add_config_arguments(parser, QuickstartConfig, preset=PRESET)
    assert config_from_args(QuickstartConfig, parser.parse_args(argv), preset=PRESET) == cfg
