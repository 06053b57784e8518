"""Flags derived from config dataclasses, YAML presets, and an argparse that errors in one line.

Precedence: field defaults < the command's own preset (``quickstart``: configs/quickstart.yaml) <
what the command's input records (``compress --checkpoint``: the checkpoint's training config) <
``--config FILE.yaml`` < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, NoReturn

from spikeprune.core.config import current_names, from_mapping, load_yaml, preset_path
from spikeprune.core.diagnostics import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _describe(f: dataclasses.Field, preset: dict[str, Any] | None = None) -> str:
    help_text = f.metadata.get("help", "").replace("%", "%%")
    choices = f.metadata.get("choices")
    if choices:
        help_text += f" [{'|'.join(map(str, choices))}]"
    if f.metadata.get("bounds") and f.metadata["bounds"] not in help_text:
        help_text += f", in {f.metadata['bounds']}"
    if f.metadata.get("required"):
        return f"{help_text} (required)"
    default = f.default if f.default is not dataclasses.MISSING else None
    if preset and f.name in preset:
        default = preset[f.name]
    if isinstance(default, tuple):
        default = ",".join(map(str, default)) or "none"
    return help_text if "default" in help_text else f"{help_text} (default: {default})"


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, exclude: set[str] = frozenset(),
                         title: str = "hyperparameters", preset: str | None = None) -> None:
    """One ``--field-name`` flag per field of ``cls``; values are validated by the dataclass itself.

    ``preset``: the name of a shipped preset whose values are this command's defaults (the help shows
    them); pass the same name to :func:`config_from_args`.

    A field is *required* on the command line when its metadata says ``required=True`` (it may then come
    from ``--config`` instead); ``repeat=True`` lets the flag be given several times (a tuple field).
    """
    hints = typing.get_type_hints(cls)
    defaults = _preset(cls, preset)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("flags", ())]
        if hints[f.name] is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=_describe(f, defaults))
        elif f.metadata.get("repeat"):
            group.add_argument(*flags, dest=f.name, action="append", default=argparse.SUPPRESS,
                               metavar=f.metadata.get("metavar") or _metavar(f, hints[f.name]),
                               help=_describe(f, defaults) + "; repeat the flag for several")
        elif f.metadata.get("nargs"):
            group.add_argument(*flags, dest=f.name, nargs=f.metadata["nargs"], default=argparse.SUPPRESS,
                               metavar=f.metadata.get("metavar") or _metavar(f, hints[f.name]), help=_describe(f, defaults))
        else:
            group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS,
                               metavar=f.metadata.get("metavar") or _metavar(f, hints[f.name]), help=_describe(f, defaults))
        for former in f.metadata.get("formerly", ()):
            flag = "--" + former.replace("_", "-")
            if flag not in parser._option_string_actions:  # never shadow another field's flag
                group.add_argument(flag, dest=f"former {former}", nargs="?", default=argparse.SUPPRESS,
                                   action=_Renamed, renamed_to=f, help=argparse.SUPPRESS)


class _Renamed(argparse.Action):
    """The flag of a field's former name (metadata ``formerly``): refused in one line naming the new flag.
    (YAML files and saved configs that use the former name still load: :func:`~spikeprune.core.config.current_names`.)"""

    def __init__(self, *args: Any, renamed_to: dataclasses.Field, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renamed_to = renamed_to

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        f = self.renamed_to
        flag = "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        what = f.metadata.get("help", "") + (f": {'|'.join(map(str, choices))}" if choices else "")
        parser.error(f"{option_string} is now {flag} ({what}); pass {flag} {values or 'NAME'}")


def _metavar(f: dataclasses.Field, tp: Any) -> str:
    if f.metadata.get("choices"):
        return "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    if f.name.endswith("_dir"):
        return "DIR"
    return {int: "N", float: "X", str: "NAME"}.get(args[0], "LIST")


def add_config_file_argument(parser: argparse.ArgumentParser,
                             help: str = "YAML file of these options (flags override it)") -> None:
    """``--config FILE.yaml``: the YAML read by :func:`config_from_args` (every command that has a config)."""
    parser.add_argument("--config", metavar="FILE.yaml", help=help)


def add_force_argument(parser: argparse.ArgumentParser, what: str = "result files") -> None:
    """``--force``: let :func:`spikeprune.core.rundir.run_directory` overwrite another kind of run's ``what``."""
    parser.add_argument("--force", action="store_true", help=f"overwrite {what} another kind of run wrote in --out")


def add_run_arguments(parser: argparse.ArgumentParser, *, out_default: str | None = None, resume: bool = True) -> None:
    """``--config``, ``--out``, ``--resume``, ``--force`` and ``--progress``: where and how a command runs."""
    add_config_file_argument(parser, "YAML preset of hyperparameters (flags override it)")
    parser.add_argument("--out", metavar="DIR", type=out_path, default=out_default, required=out_default is None,
                        help="run directory for checkpoints and results" +
                        (f" (default: {out_default})" if out_default else ""))
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its last checkpoint")
    add_force_argument(parser)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                        help="show progress bars (default: when stderr is a terminal)")


def add_tensorboard_argument(parser: argparse.ArgumentParser) -> None:
    """``--tensorboard``: also log the run's scalars for TensorBoard, into ``<out>/tensorboard/``
    (:mod:`spikeprune.core.tensorboard_log`; a folder inside the run, so ``tensorboard --logdir`` on any
    parent finds every run and a resume appends to its own log)."""
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files into <out>/tensorboard/ (per epoch the numbers of "
                             "history.csv; per round those of rounds.csv); needs pip install 'spikeprune[tensorboard]'")


def check_tensorboard(args: argparse.Namespace) -> None:
    """Refuse ``--tensorboard`` in one line before any work: without the package, or with a sweep (its jobs run
    as separate processes from their configs, which do not carry the flag)."""
    if not getattr(args, "tensorboard", False):
        return
    from spikeprune.core.tensorboard_log import require_tensorboard

    if sweep_requested(args):
        raise UserError("--tensorboard logs one run; it is not passed to the jobs of a sweep (--seeds, --variants, "
                        "--jobs): run the jobs one by one with --tensorboard, or leave it out")
    require_tensorboard()


def out_path(text: str) -> str:
    """``--out``: a non-empty path (an empty one would silently mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("--out must name a directory; got an empty path")
    return text


def _preset(cls: type, name: str | None) -> dict[str, Any]:
    """The shipped preset ``name`` as a mapping checked against ``cls`` ({} for None)."""
    if name is None:
        return {}
    path = preset_path(name)
    values = current_names(cls, load_yaml(path), source=str(path))
    from_mapping(cls, values, source=str(path))  # a broken shipped preset fails at the first --help
    return values


def config_from_args(cls: type, args: argparse.Namespace, preset: str | None = None,
                     base: dict[str, Any] | None = None) -> Any:
    """Build ``cls`` from defaults, then the shipped ``preset`` (if any), then ``base`` (values a command
    reads from its input, e.g. the training config recorded in a checkpoint), then ``args.config``
    (YAML), then the flags that were given.

    Checks, before anything runs: the YAML's keys are fields of ``cls``; a field declared ``required`` was
    given (by a flag or the YAML); no two fields that exclude each other (metadata ``excludes``) were both
    given; then the dataclass validates every value.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    defaults = {**_preset(cls, preset), **current_names(cls, base or {})}
    # a field's former name in the YAML (CompressConfig's `criterion`) is read as the field
    from_yaml = current_names(cls, load_yaml(args.config), source=args.config) if getattr(args, "config", None) else {}
    flags = {k: v for k, v in vars(args).items() if k in names}
    given = {**from_yaml, **flags}
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("required") and f.name not in given:
            raise UserError(f"{flag} is required (on the command line or in --config)")
        for other in f.metadata.get("excludes", ()):
            if f.name in given and other in given:
                raise UserError(f"give either {flag} or --{other.replace('_', '-')}, not both")
    if from_yaml:
        # Unknown keys and bad values, naming the file. A required field the YAML leaves to a flag
        # (`cost --checkpoint X --config c.yaml`) is taken from the flag here, or the YAML alone would
        # be refused for lacking it.
        required = {f.name for f in dataclasses.fields(cls) if f.metadata.get("required")}
        from_mapping(cls, {**defaults, **{k: v for k, v in flags.items() if k in required}, **from_yaml},
                     source=args.config)
    return from_mapping(cls, {**defaults, **given})


def _list_of(kind: type, what: str):
    def parse(text: str) -> list:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return values
    return parse


def positive_int(text: str) -> int:
    """An integer >= 1 (``--jobs 0`` would otherwise silently mean 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_sweep_arguments(parser: argparse.ArgumentParser, *, variants: bool = False) -> None:
    """``--seeds``, ``--jobs``, ``--threads`` (and ``--variants``): run a grid as independent jobs."""
    group = parser.add_argument_group("sweep (independent jobs; spikeprune.studies.sweep)")
    group.add_argument("--seeds", type=_list_of(int, "integers"), metavar="S1,S2,...",
                       help="run every seed (each in OUT/seed-<s>/) and summarise mean and 95%% CI")
    if variants:
        group.add_argument("--variants", type=_list_of(str, "names"), metavar="V1,V2,...",
                           help="run several variants (imp,sf-imp-1,sf-imp-2) sharing one dense run per seed; "
                           "VARIANT@NORMALIZE overrides --normalize for one of them (sf-imp-1@none: SF-IMP-1's "
                           "literal global ranking)")
    group.add_argument("--jobs", type=positive_int, metavar="N",
                       help="run at most N jobs at the same time, each its own process (default 1: in order)")
    group.add_argument("--threads", type=positive_int, default=1, metavar="N",
                       help="OMP_NUM_THREADS of each job process (default 1)")


def sweep_requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) is not None for k in ("seeds", "variants", "jobs"))
