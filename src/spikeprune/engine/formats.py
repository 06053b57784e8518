"""Parsers of the image datasets' published file formats (IDX, CIFAR's pickled batches), on verified bytes.

They never touch the network or the disk: :mod:`spikeprune.engine.data` finds, downloads and verifies
the files and hands their bytes here, so what is parsed is exactly what was checked. CIFAR pickles are
read with :class:`RestrictedUnpickler`, so a user-supplied file can never execute code.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from spikeprune.core.diagnostics import UserError
from spikeprune.engine.datasets import SPLITS

__all__ = ["RestrictedUnpickler", "gunzip", "parse_cifar", "parse_idx_set"]


# --------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------
def gunzip(data: bytes, path: Path | str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is EOFError
        raise UserError(f"{path} is not a valid gzip file ({e}); delete it or replace it with a good copy") from e


def _parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes with ``ndim`` dimensions (3 images, 1 labels)."""
    expected_magic = 0x0800 | ndim  # 0x08 = unsigned byte; last byte = number of dimensions
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} is truncated ({len(data)} bytes, shorter than an IDX header); "
                         "delete it or replace it with a good copy")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise UserError(f"{path} is not an IDX file of {ndim}-d uint8 data (magic 0x{magic:08x}, expected "
                         f"0x{expected_magic:08x}); delete it or replace it with a good copy")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) != header + math.prod(dims):
        raise UserError(f"{path} is truncated or corrupt ({len(data)} bytes, header {dims} needs "
                         f"{header + math.prod(dims)}); delete it or replace it with a good copy")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def parse_idx_set(name: str, files: list[tuple[Path, bytes]]) -> tuple[torch.Tensor, ...]:
    """``files``: the verified ``(path, gzip bytes)`` of an MNIST-like set's four files, in
    :data:`~spikeprune.engine.data.FILES` order -> ``(train_images [N,1,H,W], train_labels [N], test_images,
    test_labels)``."""
    arrays = []
    for (path, data), ndim in zip(files, (3, 1, 3, 1)):
        arrays.append(_parse_idx(gunzip(data, path), path, ndim))
    train_x, train_y, test_x, test_y = arrays
    for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if len(x) != len(y) or (len(y) and y.max() >= 10):
            raise UserError(f"{name} {split} files do not match ({len(x)} images, {len(y)} labels, "
                             f"max label {y.max() if len(y) else None}); replace them with good copies")
    return (torch.from_numpy(train_x).unsqueeze(1), torch.from_numpy(train_y).long(),
            torch.from_numpy(test_x).unsqueeze(1), torch.from_numpy(test_y).long())


try:  # numpy >= 2 moved the module; old pickles still name numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals a numpy-array pickle needs.

    Unpickling runs whatever callables the pickle names, so a whitelist (resolved from a fixed table,
    never by importing the requested module) turns "arbitrary code" into "plain dicts and arrays".
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UserError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed "
                             "in dataset files; use the official archive") from None


def _load_cifar_batch(blob: bytes, where: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one CIFAR batch -> ``(images uint8 [N, 3, 32, 32], labels int64 [N])``."""
    try:
        batch = RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"{where} is not a valid CIFAR pickle ({e}); use the official archive") from e
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = np.asarray(batch.get(label_key, []) if isinstance(batch, dict) else [], dtype=np.int64)
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],)
            or (len(labels) and not 0 <= labels.min() <= labels.max() < num_classes)):
        raise UserError(f"{where} does not hold CIFAR data (uint8 [N, 3072] under b'data' and "
                         f"{label_key!r}); use the official archive")
    # Rows are channel-major: 1024 red, then 1024 green, then 1024 blue values, each row-major.
    return data.reshape(-1, 3, 32, 32), labels


def parse_cifar(name: str, files: list[tuple[Path, bytes]]) -> tuple[torch.Tensor, ...]:
    """Read CIFAR-10/100 straight from the verified tar.gz bytes (nothing is extracted to disk).

    ``files``: ``[(path, bytes)]`` of the one archive -> ``(train_images uint8 [N,3,32,32], train_labels [N],
    test_images, test_labels)``."""
    [(path, data)] = files
    if name == "cifar10":
        members = {"train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
                   "test": ["cifar-10-batches-py/test_batch"]}
        label_key, num_classes = b"labels", 10
    else:
        members = {"train": ["cifar-100-python/train"], "test": ["cifar-100-python/test"]}
        label_key, num_classes = b"fine_labels", 100
    wanted = {m for ms in members.values() for m in ms}
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:  # one sequential pass over the compressed stream
                if member.name in wanted and member.isfile():
                    blob = tar.extractfile(member).read()  # type: ignore[union-attr]
                    batches[member.name] = _load_cifar_batch(blob, f"{path}:{member.name}", label_key, num_classes)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a valid tar.gz archive ({e}); delete it to re-download it") from e
    if missing := sorted(wanted - batches.keys()):
        raise UserError(f"{path} lacks {', '.join(missing)}; delete it to re-download it")
    out: list[torch.Tensor] = []
    for split in SPLITS:
        parts = [batches[m] for m in members[split]]
        out += [torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts]))]
    return tuple(out)
