"""Atomic result files and safetensors checkpoints (never pickle).

Every file is written to a temporary sibling (``.NAME.XXXXXXXX.spikeprune.tmp``), flushed to disk
(``fsync``) and moved into place with ``os.replace``, so a killed run (or a machine that loses power)
leaves either the previous complete file or the new complete file, never half of one. A kill between
the write and the rename leaves the temporary file; :mod:`spikeprune.core.rundir` removes it when the next
run starts in that directory.

A checkpoint is one ``.safetensors`` file: tensors (model state, optimizer buffers, RNG state) plus a
JSON document in the safetensors header's metadata under the key ``"spikeprune"`` (epoch, config,
scheduler, history...). One file means one atomic rename, and ``safetensors`` parses no code.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from spikeprune.core.diagnostics import UserError

__all__ = [
    "atomic_path",
    "check_writable_dir",
    "checkpoint_meta",
    "load_checkpoint",
    "read_json",
    "save_checkpoint",
    "write_json",
    "write_text",
]

FORMAT = "spikeprune-checkpoint"
FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


#: whether this thread/task is inside :func:`collective_writes` (a data-parallel run)
_COLLECTIVE: ContextVar[bool] = ContextVar("spikeprune_collective_writes", default=False)


@contextmanager
def collective_writes() -> Iterator[None]:
    """Make the atomic writes inside this block collective when a ``torchrun`` process group is active.

    Entered by the data-parallel entry points only (:func:`~spikeprune.engine.train.fit`, the lottery and
    edge-popup runs, :func:`collective`): a plain ``write_json`` elsewhere -- a user's script, a run-folder
    record -- is an ordinary atomic write of this process, never a hidden barrier."""
    token = _COLLECTIVE.set(True)
    try:
        yield
    finally:
        _COLLECTIVE.reset(token)


def collective(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run ``fn`` inside :func:`collective_writes` (a data-parallel entry point)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with collective_writes():
            return fn(*args, **kwargs)
    return wrapper


@contextmanager
def atomic_path(path: str | Path, *, collective: bool | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    A collective write (``collective=True``, or ``None`` inside :func:`collective_writes`) under a
    ``torchrun`` process group (:mod:`spikeprune.core.distributed`): only rank 0's file replaces
    ``path``, the other ranks' temporary files are discarded, and the ranks meet at a barrier before
    (everyone has read the old state) and after (the new file is in place) the write; call it on every
    rank, in the same order. Otherwise (the default outside a data-parallel run) it is this process's
    own write.
    """
    from spikeprune.core.distributed import barrier, collective_write

    if collective is None:
        collective = _COLLECTIVE.get()
    write_here, synchronise = collective_write() if collective else (True, False)
    if synchronise:
        barrier()  # every rank has finished reading the state before this write
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the ".spikeprune.tmp" suffix marks the file as ours for rundir's stale-file cleanup
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".spikeprune.tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if write_here:
            # mkstemp creates 0600; a result file gets the mode any new file would (0644 under umask 022)
            os.chmod(tmp, 0o666 & ~_umask())
            _fsync(tmp)  # the data is on disk before the name points at it: never a half file
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if synchronise:
        barrier()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # a filesystem without fsync (some FUSE mounts): the rename is still atomic
        pass
    finally:
        os.close(fd)


def file_slug(text: str) -> str:
    """``text`` as a file-name part: every run of characters other than ``A-Za-z0-9.+-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text)


def write_text(path: str | Path, text: str, *, collective: bool | None = None) -> None:
    with atomic_path(path, collective=collective) as tmp:
        tmp.write_text(text)


def csv_text(rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> str:
    """``rows`` as CSV text: header ``fields``, keys outside them ignored, ``None`` as an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """:func:`csv_text` written atomically: the one CSV writer of every result file."""
    write_text(path, csv_text(rows, fields))


def write_json(path: str | Path, data: Any, *, collective: bool | None = None) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n",
               collective=collective)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file with spikeprune's size and depth limits (:func:`spikeprune.core.limits.parse_json`)."""
    from spikeprune.core.limits import MAX_JSON_BYTES, parse_json

    p = Path(path)
    if p.is_file() and p.stat().st_size > MAX_JSON_BYTES:
        raise UserError(f"{p} is larger than the {MAX_JSON_BYTES // 2**20} MiB of JSON spikeprune reads")
    return parse_json(p.read_bytes(), str(p))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and prove it is writable, or raise ValueError naming it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to output directory {p}: {e.strerror or e}") from None
    return p


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and the JSON-serialisable ``meta`` to one safetensors file, atomically."""
    header = {"format": FORMAT, "version": FORMAT_VERSION, **meta}
    metadata = {"spikeprune": json.dumps(header, default=_json_default)}
    # safetensors refuses tensors that share storage (views); a copy is cheap next to training.
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_checkpoint`. Raises ValueError if it is not one."""
    return _read_checkpoint(path, tensors=True)  # type: ignore[return-value]


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The JSON header of a :func:`save_checkpoint` file, checked as :func:`load_checkpoint` checks it,
    without reading the tensors (a command that only needs the recorded config reads a few kB)."""
    return _read_checkpoint(path, tensors=False)[1]


def _read_checkpoint(path: str | Path, tensors: bool) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"checkpoint {p} is a directory; name the .safetensors file inside it")
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist")
    try:
        loaded = load_file(str(p)) if tensors else None
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{p} is not a readable safetensors checkpoint (corrupt or truncated): "
                         f"{str(e).splitlines()[0]}") from None
    from spikeprune.core.limits import check_checkpoint_meta, parse_json

    if "spikeprune" not in metadata:
        raise UserError(f"{p} is a safetensors file but not a spikeprune checkpoint (no 'spikeprune' metadata)")
    meta = check_checkpoint_meta(parse_json(metadata["spikeprune"], f"{p}'s metadata"), str(p))
    if meta.get("format") != FORMAT:
        raise UserError(f"{p} is not a spikeprune checkpoint (format {meta.get('format')!r})")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise UserError(f"{p} was written by a newer spikeprune (checkpoint version {meta['version']})")
    return loaded, meta
