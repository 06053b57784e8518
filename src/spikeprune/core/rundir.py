"""Run directories: one writer at a time, no silent overwrite by another kind of run, no stale temp files.

Every command that writes a run directory (``--out``) enters :func:`run_directory` first (the CLI
wraps each command's ``run`` with :func:`holds_run_directory`; a sweep's job does the same for its
sub-directory). It:

1. refuses an empty path (``--out ""`` would mean the current directory);
2. takes an exclusive, non-blocking ``flock`` on ``OUT/.spikeprune.lock`` for the whole run and writes
   pid, host and command into it. A second run on the same directory refuses at once, naming the
   directory and the pid holding it. The kernel drops the lock when the process dies (even by
   SIGKILL), so a killed run never leaves the directory locked. Sub-directories have their own lock
   files, so a sweep's parent holding ``OUT`` and its jobs holding ``OUT/seed-<s>/...`` never collide;
   re-entering a directory this process already holds just counts up (nested calls);
3. removes the temporary files a killed atomic write left (``.NAME.XXXXXXXX.spikeprune.tmp`` of
   :func:`spikeprune.core.io.atomic_path`, the older ``.NAME.XXXXXXXX.tmp`` of a result file and
   ``.write-test.XXXXXXXX`` probes) anywhere below ``OUT``, skipping sub-trees another live process
   holds;
4. records what kind of run writes the directory in ``OUT/.spikeprune-run.json`` and refuses to
   start when the run would overwrite a file another kind of run wrote there (``evaluate`` into a
   training run's folder would replace its ``metrics.json``), unless ``force``.

Under ``torchrun`` every rank calls it, in the same order: rank 0 alone locks, cleans and records,
the others wait for its verdict (``all_gather``) and refuse with the same message when it refused.
The lock lives while the process does; on a network filesystem it needs working ``flock`` (NFSv4,
Lustre with ``flock`` mounted).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fnmatch
import functools
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from spikeprune.core.diagnostics import UserError

__all__ = ["RunDirectoryError", "RunResult", "holds_run_directory", "lock_holder", "phase_done",
           "refuse_unless_resume", "remove_stale_temp_files", "run_directory", "OUTPUTS"]

LOCK_FILE = ".spikeprune.lock"
RECORD_FILE = ".spikeprune-run.json"

#: Temporary files of a write that was killed before its rename (only ours, see io.atomic_path).
_STALE = (re.compile(r"^\..+\.[a-z0-9_]{8}\.spikeprune\.tmp$"),
          re.compile(r"^\..+\.(json|csv|png|safetensors|yaml|md|nir|txt)\.[a-z0-9_]{8}\.tmp$"),
          re.compile(r"^\.write-test\.[a-z0-9_]{8}$"))


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What every run returns: ``fit``, ``train_dense``, ``run_lottery``, ``compress``, the edge-popup
    search, ``lottery_sweep`` / ``edgepopup_sweep`` and ``reproduce``. One type, so a caller never has to
    know which kind of run it started (docs/reference.md, "Results").

    Attributes:
        out: the run folder; every number below is also in its JSON files.
        metrics: the final numbers (what the folder's ``metrics.json`` / ``results.json`` /
            ``summary.json`` / ``report.json`` holds).
        rows: one dict per epoch, round, point or job where the run has several (else empty).
        model: the final network where the run builds one in this process (else ``None``; load it
            from ``out`` with ``load_model`` / ``load_ticket`` / ``load_compressed``).
    """

    out: Path
    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    model: Any = None


def log(message: str) -> None:
    """A progress or status line of a run: to stderr (stdout carries the results a user pipes), flushed
    at once so a ``nohup``/CI log shows it as it happens. The one logger of every command."""
    print(message, file=sys.stderr, flush=True)


def phase_done(where: str | Path, *outputs: str) -> bool:
    """Whether the phase that writes ``outputs`` (file names in the folder ``where``) is finished: the open_lth
    rule "a phase whose outputs all exist is done and is skipped", so a killed run resumes where it stopped.

    The one test of every phase skip (a training run's ``metrics.json``, a lottery's dense phase and rounds,
    an edge-popup density, a compression's pruned model, a study's result file). Each runner names the files
    that mean "finished" once, next to the code that writes them last (``is_complete`` of ``engine.train``,
    ``tickets.lottery``, ``tickets.edgepopup``, ``compression.compress``, ``studies.flips``), and sweeps ask
    those functions. An output is a regular file (a directory of that name does not count); at least one
    must be named. Whether an existing phase matches the present configuration is a separate check
    (:func:`check_resumable`)."""
    if not outputs:
        raise ValueError("phase_done needs at least one output file name")
    where = Path(where)
    return all((where / name).is_file() for name in outputs)


def first_difference(saved: dict[str, Any], now: dict[str, Any], ignore: Iterable[str] = ()) -> str | None:
    """``"k=<saved>, now k=<now>"`` for the first key (sorted) whose value differs, ``None`` if none does.
    Keys in ``ignore`` (execution details such as ``device``, or changes a resume accepts) are skipped."""
    skip = set(ignore)
    for k in sorted(set(saved) | set(now)):
        if k not in skip and saved.get(k) != now.get(k):
            return f"{k}={saved.get(k)!r}, now {k}={now.get(k)!r}"
    return None


def check_resumable(out: str | Path, saved: dict[str, Any], now: dict[str, Any], *, done: str = "run",
                    ignore: Iterable[str] = ()) -> None:
    """Refuse to resume the run in ``out`` with other hyperparameters than it was started with: one line
    naming the first difference. The one identity check of every resumable command (train, lottery,
    edge-popup, compress); ``saved``/``now`` are :func:`~spikeprune.core.config.hyperparameters` dicts
    (execution details excluded), ``done`` the verb of the message (``trained``, ``searched``, ...)."""
    diff = first_difference(saved, now, ignore)
    if diff:
        raise UserError(f"cannot resume {out}: it was {done} with {diff}; use another --out")


def refuse_unless_resume(out: str | Path, what: str, *, holds: bool, resume: bool,
                         saved: dict[str, Any] | None = None, now: dict[str, Any] | None = None, done: str = "run",
                         ignore: Iterable[str] = ()) -> None:
    """The one "a run folder that already holds a run is refused unless resuming" check of every resumable
    command (train, lottery, edge-popup, compress).

    ``holds``: whether ``out`` already holds ``what`` (``"a lottery run"``, ...); then without ``resume`` a
    :class:`UserError`: ``<out> already holds <what>; pass --resume to continue it or choose another --out``.
    Resuming with ``saved`` and ``now`` given (the recorded and the present hyperparameters), the identity
    check :func:`check_resumable` follows (``done``, ``ignore`` as there).
    """
    if not holds:
        return
    if not resume:
        raise UserError(f"{out} already holds {what}; pass --resume to continue it or choose another --out")
    if saved is not None and now is not None:
        check_resumable(out, saved, now, done=done, ignore=ignore)


def link_run(source: str | Path, target: str | Path, names: Iterable[str] | None = None) -> None:
    """Give ``target`` the files of the finished run ``source`` (a shared dense phase, a user's training
    run): hard links, copies where links are impossible (another file system); files ``target`` already
    has are kept. ``names``: only these files (those missing from ``source`` are skipped); default: every
    regular file that is not hidden (locks, records and temp files start with a dot). The one way a run
    adopts another's results; the adopting run still checks that the configurations match."""
    import shutil

    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    files = [source / n for n in names] if names is not None else sorted(source.iterdir())
    for f in files:
        if f.is_file() and not f.name.startswith(".") and not (target / f.name).exists():
            try:
                (target / f.name).hardlink_to(f)
            except OSError:
                shutil.copy2(f, target / f.name)


class RunDirectoryError(UserError):
    """A run directory refused (in use, would overwrite another run, empty path): a user error."""


#: Top-level names each kind of run writes into its directory (fnmatch patterns). Used only to tell
#: whether a run of one kind would overwrite files another kind wrote.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "train": ("checkpoint.safetensors", "history.csv", "metrics.json", "rewind.safetensors"),
    "evaluate": ("metrics.json",),
    "cost": ("cost.json",),
    "compress": ("compress.json", "dense", "qat", "pruned.safetensors", "finetune", "model.safetensors",
                 "cost.json", "metrics.json"),
    "lottery": ("lottery.json", "dense", "_dense", "round_*", "rounds.csv", "results.json",
                "accuracy_vs_sparsity.png", "seed-*", "jobs", "logs", "summary.*"),
    "edgepopup": ("density-*", "seed-*", "results.*", "jobs", "logs", "checkpoint.safetensors", "history.csv",
                  "subnet.safetensors", "mask.safetensors", "result.json"),
    "analyze": ("flips.csv", "flips.json", "flips.png", "flips-*.png"),
    "theory": ("slth.csv", "slth.json", "slth.png"),
    "interop": ("neurons.json", "mask.safetensors", "cost.json", "flips.csv", "flip_summary.json", "metrics.json"),
    "reproduce": ("report.md", "report.json", "runs", "configs", "*.png"),
    "quickstart": ("checkpoint.safetensors", "history.csv", "metrics.json", "rewind.safetensors", "lottery",
                   "lottery.png", "edgepopup"),
}

#: real path -> nesting depth: the directories this process holds (re-entrant)
_HELD: dict[str, int] = {}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _command() -> str:
    """The command line of this process, for the lock and the run record (at most 200 characters)."""
    argv = sys.argv or ["python"]
    words = ["spikeprune", *argv[1:]] if "spikeprune" in argv[0] else argv
    text = " ".join(words)
    return text if len(text) <= 200 else text[:197] + "..."


def lock_holder(out: str | Path) -> dict[str, Any] | None:
    """Who holds ``out``'s lock right now (``{"pid", "host", "command", "started"}``), or None when nobody."""
    import fcntl

    path = Path(out) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # the holder is between truncating and writing its line


def _acquire(out: Path) -> int:
    """Open and lock ``out/.spikeprune.lock``; returns the descriptor. Raises RunDirectoryError if held."""
    import fcntl

    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        who = f"pid {holder.get('pid', '?')}"
        if holder.get("host") and holder.get("host") != socket.gethostname():
            who += f" on {holder['host']}"
        if holder.get("command"):
            who += f", {holder['command']}"
        raise RunDirectoryError(f"{out} is in use by another spikeprune run ({who}); wait for it to finish "
                                "or choose another --out") from None
    except OSError as e:
        os.close(fd)
        raise RunDirectoryError(f"cannot lock run directory {out}: {e.strerror or e}") from None
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                       "started": _now()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (line + "\n").encode(), 0)
    return fd


def _held_elsewhere(directory: Path) -> bool:
    """True when another process (or another descriptor of ours) holds ``directory``'s lock."""
    return (directory / LOCK_FILE).is_file() and lock_holder(directory) is not None


def remove_stale_temp_files(out: str | Path) -> list[Path]:
    """Delete temp files of killed writes below ``out`` (see the module docstring); returns them.

    Sub-directories whose lock another live run holds are left alone: their temp files may be live.
    Symbolic links are not followed.
    """
    removed: list[Path] = []
    root = Path(out)
    for here, dirs, files in os.walk(root):
        base = Path(here)
        dirs[:] = [d for d in dirs if not _held_elsewhere(base / d)]
        for name in files:
            if any(p.match(name) for p in _STALE):
                try:
                    os.unlink(base / name)
                    removed.append(base / name)
                except FileNotFoundError:
                    pass
    return removed


def _infer_kind(out: Path) -> str | None:
    """The kind of a run written before run records existed, from its marker files (None: unknown)."""
    has = lambda name: (out / name).exists()  # noqa: E731
    if has("compress.json"):
        return "compress"
    if has("lottery.json") or has("summary.json"):
        return "lottery"
    if has("report.md") or has("report.json"):
        return "reproduce"
    if has("results.json") or any(out.glob("density-*")):
        return "edgepopup"
    if has("checkpoint.safetensors"):
        return "quickstart" if has("lottery") or has("edgepopup") else "train"
    if has("slth.json"):
        return "theory"
    if has("neurons.json") or has("flip_summary.json"):
        return "interop"
    if has("flips.json"):
        return "analyze"
    if has("metrics.json"):
        try:
            m = json.loads((out / "metrics.json").read_text())
        except (OSError, ValueError):
            return None
        return "evaluate" if isinstance(m, dict) and "checkpoint" in m and "epochs" not in m else None
    return None


def _read_record(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def _check_kind(out: Path, kind: str, force: bool) -> dict[str, Any] | None:
    """Refuse (unless ``force``) when ``kind`` would overwrite files another kind wrote; returns the
    record to write (None: leave it as it is)."""
    record = _read_record(out)
    if record is None:
        owner = _infer_kind(out)
        record = {"kind": owner or kind, "command": None if owner else _command(), "created": _now(),
                  "also": [] if owner in (None, kind) else [kind]}
        if owner in (None, kind):
            return record
    elif record["kind"] == kind:
        return None
    others = {record["kind"], *record.get("also", [])} - {kind}
    ours = OUTPUTS.get(kind, ())
    theirs = [p for k in others for p in OUTPUTS.get(k, ())]
    clash = sorted(e.name for e in out.iterdir() if not e.name.startswith(".")
                   and any(fnmatch.fnmatchcase(e.name, p) for p in ours)
                   and any(fnmatch.fnmatchcase(e.name, p) for p in theirs))
    if clash and not force:
        what = ", ".join(clash[:3]) + (f" and {len(clash) - 3} more" if len(clash) > 3 else "")
        raise RunDirectoryError(f"{out} holds a {record['kind']} run; {kind} would overwrite its {what}: "
                                "pass --force to overwrite or choose another --out")
    if kind not in record.get("also", []):
        return {**record, "also": [*record.get("also", []), kind]}
    return record if not (out / RECORD_FILE).exists() else None  # a legacy run's first record


def _write_record(out: Path, record: dict[str, Any]) -> None:
    """Atomically, by this process alone (only rank 0 gets here; the other ranks wait in _collective's
    all_gather), so never a collective write even inside a data-parallel run."""
    from spikeprune.core.io import write_json

    write_json(out / RECORD_FILE, record, collective=False)


@contextlib.contextmanager
def _single(out: Path, kind: str | None, force: bool) -> Iterator[Path]:
    """The single-process (or rank 0) part: lock, clean, check and record. A run that fails (or is
    refused) before writing any result leaves the directory as it found it."""
    from spikeprune.core.io import check_writable_dir

    created_dir = not out.exists()
    check_writable_dir(out)
    had_lock, had_record = (out / LOCK_FILE).exists(), (out / RECORD_FILE).exists()
    before = {e.name for e in out.iterdir() if not e.name.startswith(".")}
    fd = None
    ok = False
    try:
        fd = _acquire(out)
        remove_stale_temp_files(out)
        if kind is not None:
            record = _check_kind(out, kind, force)
            if record is not None:
                _write_record(out, record)
        yield out
        ok = True
    finally:
        if not ok and fd is not None:
            with contextlib.suppress(OSError):
                if not {e.name for e in out.iterdir() if not e.name.startswith(".")} - before:
                    if not had_record:
                        (out / RECORD_FILE).unlink(missing_ok=True)
                    if not had_lock:
                        (out / LOCK_FILE).unlink(missing_ok=True)
                    if created_dir:
                        out.rmdir()
        elif not ok and created_dir:  # refused before locking (in use cannot happen: it was new)
            with contextlib.suppress(OSError):
                (out / LOCK_FILE).unlink(missing_ok=True)
                out.rmdir()
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # nobody holds it any more
            os.close(fd)  # releases the flock


@contextlib.contextmanager
def run_directory(out: str | Path | None, kind: str | None = None, *, force: bool = False) -> Iterator[Path]:
    """Hold the run directory ``out`` for the duration of the ``with`` block (see the module docstring).

    Args:
        out: the run directory (created if needed). ``""`` is refused.
        kind: what kind of run writes it (a key of :data:`OUTPUTS`, e.g. ``"train"``); ``None`` only locks.
        force: overwrite files another kind of run wrote there.

    Yields the directory as a ``Path``. Raises :class:`RunDirectoryError` (a ValueError) when ``out``
    is empty, in use by another live run, or would be overwritten without ``force``.
    """
    if out is None or str(out).strip() == "":
        raise RunDirectoryError("--out must name a directory; got an empty path")
    from spikeprune.core.distributed import all_gather_objects, context

    path = Path(out)
    key = os.path.realpath(path)
    if key in _HELD:  # nested: this process already holds it (e.g. a command calling another's code)
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    ctx = context()
    if ctx.active:
        with _collective(path, kind, force, ctx.rank == 0, all_gather_objects) as p:
            _HELD[key] = 1
            try:
                yield p
            finally:
                _HELD.pop(key, None)
        return
    with _single(path, kind, force) as p:
        _HELD[key] = 1
        try:
            yield p
        finally:
            _HELD.pop(key, None)


@contextlib.contextmanager
def _collective(path: Path, kind: str | None, force: bool, main: bool,
                gather: Callable[[Any], list[Any]]) -> Iterator[Path]:
    """Rank 0 holds the directory; the other ranks wait for its verdict and share its refusal."""
    if not main:
        verdict = gather(None)[0]
        if verdict is not None:
            raise RunDirectoryError(verdict)
        yield path
        return
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(_single(path, kind, force))
    except (ValueError, OSError) as e:
        gather(str(e))
        raise
    gather(None)
    with stack:
        yield path


def holds_run_directory(kind: str, *, out: str = "out") -> Callable:
    """Decorate a CLI command's ``run(args)`` so it runs inside :func:`run_directory` on ``args.<out>``
    (``args.force`` when the command has ``--force``). A command whose ``--out`` was not given (``None``)
    runs without a lock (e.g. ``cost`` writes nothing then)."""
    def wrap(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            where = getattr(args, out, None)
            if where is None:
                return func(args)
            with run_directory(where, kind, force=bool(getattr(args, "force", False))):
                return func(args)
        return run
    return wrap
