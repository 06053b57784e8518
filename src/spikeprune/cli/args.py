"""Flags derived from config dataclasses, YAML presets, and an argparse that errors in one line.

Precedence: field defaults < ``--config FILE.yaml`` < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, NoReturn

from ..config import from_mapping, load_yaml


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _describe(f: dataclasses.Field) -> str:
    help_text = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if choices:
        help_text += f" [{'|'.join(map(str, choices))}]"
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return help_text if "default" in help_text else f"{help_text} (default: {default})"


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, exclude: set[str] = frozenset()) -> None:
    """One ``--field-name`` flag per field of ``cls``; values are validated by the dataclass itself."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group("hyperparameters")
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=_describe(f))
        else:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=_metavar(f, hints[f.name]),
                               help=_describe(f))


def _metavar(f: dataclasses.Field, tp: Any) -> str:
    if f.metadata.get("choices"):
        return "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    if f.name.endswith("_dir"):
        return "DIR"
    return {int: "N", float: "X", str: "NAME"}.get(args[0], "LIST")


def add_run_arguments(parser: argparse.ArgumentParser, *, out_default: str | None = None, resume: bool = True) -> None:
    """``--config``, ``--out``, ``--resume``, ``--force`` and ``--progress``: where and how a command runs."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML preset of hyperparameters (flags override it)")
    parser.add_argument("--out", metavar="DIR", default=out_default, required=out_default is None,
                        help="run directory for checkpoints and results" +
                        (f" (default: {out_default})" if out_default else ""))
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its last checkpoint")
    parser.add_argument("--force", action="store_true",
                        help="overwrite result files another kind of run wrote in --out")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                        help="show progress bars (default: when stderr is a terminal)")


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from defaults, then ``args.config`` (YAML), then the flags that were given."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(from_mapping(cls, load_yaml(args.config), source=args.config).__dict__)
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return from_mapping(cls, values)


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


def add_sweep_arguments(parser: argparse.ArgumentParser, *, variants: bool = False) -> None:
    """``--seeds``, ``--jobs``, ``--threads`` (and ``--variants``): run a grid as independent jobs."""
    group = parser.add_argument_group("sweep (independent jobs; spikeprune.sweep)")
    group.add_argument("--seeds", type=_list_of(int, "integers"), metavar="S1,S2,...",
                       help="run every seed (each in OUT/seed-<s>/) and summarise mean and 95%% CI")
    if variants:
        group.add_argument("--variants", type=_list_of(str, "names"), metavar="V1,V2,...",
                           help="run several variants (imp,sf-imp-1,sf-imp-2) sharing one dense run per seed")
    group.add_argument("--jobs", type=int, metavar="N",
                       help="run at most N jobs at the same time, each its own process (default 1: in order)")
    group.add_argument("--threads", type=int, default=1, metavar="N",
                       help="OMP_NUM_THREADS of each job process (default 1)")


def sweep_requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) is not None for k in ("seeds", "variants", "jobs"))
