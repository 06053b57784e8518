"""``spikeprune <command>``: parsing and calling, nothing else.

Each command lives in its own module exposing ``add_parser(subparsers)``; the parser it registers
sets ``func`` (called with the parsed namespace, returns an exit code). Every command module has the
same three parts on purpose -- its config schema (or an import of it), ``add_parser`` (run arguments +
the schema's flags) and ``run`` (parse the config, call the library, print) -- so each command reads top
to bottom in one file; the ``duplicates`` tool lists these shared shapes, and the logic behind them is
in :mod:`spikeprune.cli.args` once. A request spikeprune refuses
(:class:`~spikeprune.core.diagnostics.UserError`), a file or directory the system refuses (``OSError``) and a
size that does not fit in memory become one line on stderr and exit code 2. Anything else is a bug in
spikeprune: a short report (exception type, message, where it was raised) and exit code 1, never
disguised as bad input. ``SPIKEPRUNE_DEBUG=1`` re-raises either kind with its traceback. The command tunes glibc's malloc for big tensors
(:mod:`spikeprune.engine.allocator`; ``SPIKEPRUNE_MALLOC=system`` leaves it alone).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

from spikeprune.core.diagnostics import UserError
from spikeprune.cli.args import OneLineParser

#: command modules, in the order ``--help`` lists them
COMMANDS = ["quickstart", "train", "evaluate", "lottery", "edgepopup", "compress", "cost", "analyze", "theory",
            "interop", "export", "reproduce"]


def build_parser() -> OneLineParser:
    from spikeprune import __version__

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
    from spikeprune.engine.allocator import tune_malloc
    from spikeprune.core.distributed import is_main

    tune_malloc()  # big activations reuse freed memory instead of page-faulting each step (allocator.py)

    if not is_main():  # under torchrun every rank runs the command; rank 0 alone prints its results
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("spikeprune: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # noqa: BLE001 - every exit path below is deliberate
        if os.environ.get("SPIKEPRUNE_DEBUG"):
            raise
        if isinstance(exc, SystemExit):  # argparse inside a command, or sys.exit() in a user's factory
            if exc.code in (None, 0):
                return 0
            if isinstance(exc.code, int):
                return exc.code
            print(f"spikeprune {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        message = user_error_message(exc)
        if message is not None:
            print(f"spikeprune {args.command}: error: {message}", file=sys.stderr)
            return 2
        print(f"spikeprune {args.command}: internal error (a bug in spikeprune, not in your input): "
              f"{type(exc).__name__}: {_one_line(exc)} [at {_where(exc)}]; rerun with SPIKEPRUNE_DEBUG=1 for "
              "the traceback and report it", file=sys.stderr)
        return 1


def user_error_message(exc: BaseException) -> str | None:
    """The one line for an error the user caused or the system imposes, or ``None`` for a bug."""
    if isinstance(exc, UserError):
        return _one_line(exc)
    if isinstance(exc, OSError):  # a path that cannot be read or written, a full disk: not our bug
        return _one_line(exc)
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _OUT_OF_MEMORY.search(str(exc))):
        # The memory estimates (spikeprune.core.limits) catch sizes before allocating; this is the net under them.
        return ("out of memory: the requested sizes do not fit in this machine's memory "
                f"({_one_line(exc)[:160]}); use smaller sizes")
    return None


#: what torch's CPU/CUDA allocators say when an allocation fails
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|CUDA out of memory|DefaultCPUAllocator|not enough memory")


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    frame = None
    while tb is not None:
        frame = tb
        tb = tb.tb_next
    if frame is None:
        return "?"
    return f"{Path(frame.tb_frame.f_code.co_filename).name}:{frame.tb_lineno}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
