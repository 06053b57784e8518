"""``spikeprune <command>``: parsing and calling, nothing else.

Each command lives in its own module exposing ``add_parser(subparsers)``; the parser it registers
sets ``func`` (called with the parsed namespace, returns an exit code). Errors a user can cause
(ValueError, TypeError, OSError) become one line on stderr and exit code 2. Set
``SPIKEPRUNE_DEBUG=1`` to see the traceback instead. The command tunes glibc's malloc for big tensors
(:mod:`spikeprune.allocator`; ``SPIKEPRUNE_MALLOC=system`` leaves it alone).
"""

from __future__ import annotations

import importlib
import os
import sys

from .args import OneLineParser

#: command modules, in the order ``--help`` lists them
COMMANDS = ["quickstart", "train", "evaluate", "lottery", "edgepopup", "compress", "cost", "analyze", "theory",
            "interop", "export", "reproduce"]


def build_parser() -> OneLineParser:
    from .. import __version__

    parser = OneLineParser(
        prog="spikeprune",
        description="Compress spiking neural networks and explain what compression does to their spikes.",
    )
    parser.add_argument("--version", action="version", version=f"spikeprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=OneLineParser)
    for name in COMMANDS:
        importlib.import_module(f".{name.replace('-', '_')}", __name__).add_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..allocator import tune_malloc
    from ..distributed import is_main

    tune_malloc()  # big activations reuse freed memory instead of page-faulting each step (allocator.py)

    if not is_main():  # under torchrun every rank runs the command; rank 0 alone prints its results
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("spikeprune: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, FloatingPointError) as exc:
        if os.environ.get("SPIKEPRUNE_DEBUG"):
            raise
        print(f"spikeprune {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
