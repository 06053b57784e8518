"""Datasets, checksummed loaders and spike encodings.

Every dataset is held in memory as uint8 tensors (an :class:`ImageDataset`); a :class:`BatchLoader`
turns index batches into float inputs, applying augmentation and the spike encoding on the fly.

* Registry: :func:`list_datasets` / :func:`load_dataset` (``digits``, ``fashion_mnist``, ``mnist``,
  ``cifar10``, ``cifar100``, ``synthetic``).
* Files: every downloadable file is listed once in :data:`FILES` with its URL(s) and md5. Files are
  verified before they are parsed, downloads are written atomically, and CIFAR pickles are read with
  a restricted unpickler, so a user-supplied file can never execute code.
* Encodings (:data:`ENCODINGS`): ``direct`` -> normalised images ``[B, C, H, W]``; ``poisson`` ->
  Bernoulli spike trains ``[T, B, C, H, W]`` with spike probability = pixel intensity.
* Randomness: every draw (shuffle, crop, flip, spikes) comes from a ``torch.Generator`` seeded from
  ``(seed, split, epoch)``, so epoch ``e`` of a resumed run is identical without saved RNG state.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from spikeprune.core.diagnostics import UserError

__all__ = [
    "ENCODINGS",
    "FILES",
    "BatchLoader",
    "ImageDataset",
    "RemoteFile",
    "encode",
    "list_datasets",
    "load_dataset",
    "split_validation",
]

ENCODINGS = ("direct", "poisson")
AUGMENTATIONS = ("none", "crop_flip")
SPLITS = ("train", "test")

# Module-level so tests (and unusual installs) can point them elsewhere.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_ROOT = Path.home() / ".cache" / "spikeprune"


# --------------------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------------------
# eq=False: a generated __eq__ would compare tensors element-wise and raise; identity is what we want.
@dataclass(frozen=True, eq=False)
class ImageDataset:
    """An image classification dataset held in memory.

    Images are uint8 ``[N, C, H, W]``, labels int64 ``[N]``. ``mean``/``std`` are per-channel
    statistics of pixels scaled to [0, 1], used by the ``direct`` encoding. ``augment`` is the
    default train-time augmentation: ``"none"`` or ``"crop_flip"``.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str

    def __post_init__(self) -> None:
        # Fail here, once, rather than with a shape error deep inside a training loop.
        for split in SPLITS:
            images, labels = self.images(split), self.labels(split)
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise UserError(f"{self.name}: {split} images must be uint8 [N, C, H, W], got "
                                 f"{images.dtype} {tuple(images.shape)}")
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise UserError(f"{self.name}: {split} labels must be int64 [{images.shape[0]}], got "
                                 f"{labels.dtype} {tuple(labels.shape)}")
            if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
                raise UserError(f"{self.name}: {split} labels fall outside 0..{self.num_classes - 1}")
        if self.test_images.shape[1:] != self.train_images.shape[1:]:
            raise UserError(f"{self.name}: train and test images differ in shape")
        if not len(self.mean) == len(self.std) == self.in_channels or min(self.std) <= 0:
            raise UserError(f"{self.name}: need one mean and one positive std per channel")
        if self.augment not in AUGMENTATIONS:
            raise UserError(f"{self.name}: unknown augment {self.augment!r}; use one of {AUGMENTATIONS}")

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    def images(self, split: str) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` images of ``split`` ("train" or "test")."""
        return self.train_images if _check_split(split) == "train" else self.test_images

    def labels(self, split: str) -> torch.Tensor:
        """int64 ``[N]`` labels of ``split`` ("train" or "test")."""
        return self.train_labels if _check_split(split) == "train" else self.test_labels

    def __repr__(self) -> str:  # the default would print every tensor
        return (f"ImageDataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"shape={tuple(self.train_images.shape[1:])}, classes={self.num_classes}, "
                f"augment={self.augment!r})")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {SPLITS}")
    return split


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 ``[N, C, H, W]`` images scaled to [0, 1]."""
    x = images.to(torch.float64).div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1, correction=0).clamp_min(1e-6).tolist())


# --------------------------------------------------------------------------------------------------
# File registry, checksums, downloads
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    """A published file: mirror URLs, md5 of the file as published, and, for gzip files, md5 of the
    decompressed content (which survives recompression, e.g. by Debian's packaging)."""

    filename: str
    urls: tuple[str, ...]
    md5: str
    raw_md5: str | None = None


_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _idx_files(bases: tuple[str, ...], md5s: tuple[str, ...], raw: tuple[str | None, ...]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(n, tuple(b + n for b in bases), m, r) for n, m, r in zip(_IDX_NAMES, md5s, raw))


# The single source of truth for what we download and accept. Tests patch entries of this dict.
FILES: dict[str, tuple[RemoteFile, ...]] = {
    "fashion_mnist": _idx_files(
        (_FMNIST_URL,),
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
        ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
         "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965")),
    "mnist": _idx_files(
        _MNIST_URLS,
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
        (None, None, None, None)),
    "cifar10": (RemoteFile("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                           "c58f30108f718f92721af3b95e74349a"),),
    "cifar100": (RemoteFile("cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                            "eb9058c3a382ffc7106e4002c42a8d85"),),
}


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _gunzip(data: bytes, path: Path | str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is EOFError
        raise UserError(f"{path} is not a valid gzip file ({e}); delete it or replace it with a good copy") from e


def _verify(data: bytes, spec: RemoteFile, path: Path | str) -> None:
    """Raise ValueError unless ``data`` (the bytes of file ``path``) is ``spec``'s published file or, for gzip
    files with a known ``raw_md5``, a recompressed copy of the same content."""
    actual = _md5(data)
    if actual == spec.md5:
        return
    if spec.raw_md5 is not None and spec.filename.endswith(".gz"):
        try:
            if _md5(_gunzip(data, path)) == spec.raw_md5:
                return
        except ValueError:
            pass  # report the checksum mismatch below, it is the clearer message
    raise UserError(f"checksum mismatch for {path}: expected md5 {spec.md5}"
                     + (f" (or {spec.raw_md5} decompressed)" if spec.raw_md5 else "")
                     + f", got {actual}; delete the file to re-download it or pass --data-dir with a good copy")


def _fetch(url: str, out: BinaryIO) -> None:
    """Copy ``url`` into ``out``. The one network access of this module (tests monkeypatch it)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def _download(spec: RemoteFile, dest: Path) -> None:
    """Download ``spec`` to ``dest`` atomically: write a temp file next to it, verify, then rename.

    Raises OSError (incl. URLError) when no mirror can be reached, ValueError on a checksum mismatch;
    in both cases nothing is left at ``dest`` or in its directory.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error: OSError | None = None
    for url in spec.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out)
            _verify(tmp.read_bytes(), spec, f"{spec.filename} downloaded from {url}")
            os.replace(tmp, dest)
            return
        except (OSError, http.client.HTTPException) as e:  # unreachable mirror or cut transfer: try the next
            last_error = e if isinstance(e, OSError) else OSError(f"{url}: {e!r}")
        finally:
            tmp.unlink(missing_ok=True)  # no-op after a successful os.replace
    assert last_error is not None
    raise last_error


def _missing_message(name: str, dirs: list[Path], reason: str) -> str:
    urls = ", ".join(dict.fromkeys(u.rsplit("/", 1)[0] + "/" for f in FILES[name] for u in f.urls))
    files = ", ".join(f.filename for f in FILES[name])
    apt = "install it with 'apt-get install dataset-fashion-mnist', " if name == "fashion_mnist" else ""
    return (f"{name} data not found in {', '.join(map(str, dirs))} ({reason}): {apt}"
            f"pass --data-dir DIR containing {files}, or allow the download from {urls}")


def _search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    """Where to look for ``name``'s files, in order; the last entry is the cache (download target)."""
    dirs = [data_dir, data_dir / name] if data_dir is not None else []
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST_DIR)
    cache = (data_dir if data_dir is not None else CACHE_ROOT) / name
    return [d for d in dirs if d != cache] + [cache]


def _fetch_files(name: str, data_dir: Path | None, download: bool) -> list[tuple[Path, bytes]]:
    """Find (or download) every file of ``name`` and return ``(path, verified bytes)`` for each.

    Returning the bytes that were verified (rather than a path to re-open) means what we parse is
    exactly what we checked.
    """
    dirs = _search_dirs(name, data_dir)
    found: list[tuple[Path, bytes]] = []
    for spec in FILES[name]:
        path = next((d / spec.filename for d in dirs if (d / spec.filename).is_file()), None)
        if path is None:
            if not download:
                raise FileNotFoundError(_missing_message(name, dirs, "download disabled"))
            path = dirs[-1] / spec.filename
            try:
                _download(spec, path)
            except OSError as e:
                raise FileNotFoundError(_missing_message(name, dirs, f"download failed: {e}")) from e
        data = path.read_bytes()
        _verify(data, spec, path)
        found.append((path, data))
    return found


# --------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------
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


def _load_idx_dataset(name: str, data_dir: Path | None, download: bool) -> tuple[torch.Tensor, ...]:
    """Return ``(train_images [N,1,H,W], train_labels [N], test_images, test_labels)`` of an MNIST-like set."""
    arrays = []
    for (path, data), ndim in zip(_fetch_files(name, data_dir, download), (3, 1, 3, 1)):
        arrays.append(_parse_idx(_gunzip(data, path), path, ndim))
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


def _load_cifar(name: str, data_dir: Path | None, download: bool) -> tuple[torch.Tensor, ...]:
    """Read CIFAR-10/100 straight from the verified tar.gz bytes (nothing is extracted to disk)."""
    [(path, data)] = _fetch_files(name, data_dir, download)
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


# --------------------------------------------------------------------------------------------------
# Dataset builders and registry
# --------------------------------------------------------------------------------------------------
def _digits() -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    # Fixed random_state: the split is part of the dataset's definition, not of a run.
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target, test_size=0.2, stratify=bunch.target,
                                              random_state=0)
    train = torch.from_numpy(np.ascontiguousarray(x_tr))
    mean, std = _channel_stats(train)
    return ImageDataset("digits", train, torch.from_numpy(y_tr).long(), torch.from_numpy(np.ascontiguousarray(x_te)),
                        torch.from_numpy(y_te).long(), 10, mean, std, "none")


def _synthetic(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, train_size: int = 512,
               test_size: int = 256, seed: int = 0, augment: str = "none") -> ImageDataset:
    """Learnable toy data: each class is a smooth random template; samples are template + noise."""
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size),
                       ("train_size", train_size), ("test_size", test_size)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"synthetic option {key} must be a positive integer, got {value!r}")
    if not isinstance(seed, int):
        raise UserError(f"synthetic option seed must be an integer, got {seed!r}")
    if augment not in AUGMENTATIONS:
        raise UserError(f"synthetic option augment must be one of {AUGMENTATIONS}, got {augment!r}")
    g = torch.Generator().manual_seed(seed)
    # Low-resolution noise upsampled: spatially smooth templates survive crops and suit conv nets.
    coarse = torch.rand(num_classes, in_channels, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False) * 255

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randn(n, in_channels, image_size, image_size, generator=g) * 40
        return (templates[labels] + noise).round().clamp(0, 255).to(torch.uint8), labels

    train_x, train_y = sample(train_size)
    test_x, test_y = sample(test_size)
    mean, std = _channel_stats(train_x)
    return ImageDataset("synthetic", train_x, train_y, test_x, test_y, num_classes, mean, std, augment)


@dataclass(frozen=True)
class _Spec:
    build: Callable[..., ImageDataset]
    options: tuple[str, ...] = ()
    needs_files: bool = False


def _file_dataset(name: str, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                  augment: str, loader: Callable[[str, Path | None, bool], tuple[torch.Tensor, ...]]) -> _Spec:
    def build(data_dir: Path | None, download: bool) -> ImageDataset:
        return ImageDataset(name, *loader(name, data_dir, download), num_classes, mean, std, augment)
    return _Spec(build, needs_files=True)


_REGISTRY: dict[str, _Spec] = {
    "digits": _Spec(_digits),
    "fashion_mnist": _file_dataset("fashion_mnist", 10, (0.2860,), (0.3530,), "none", _load_idx_dataset),
    "mnist": _file_dataset("mnist", 10, (0.1307,), (0.3081,), "none", _load_idx_dataset),
    "cifar10": _file_dataset("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                             "crop_flip", _load_cifar),
    "cifar100": _file_dataset("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                              "crop_flip", _load_cifar),
    "synthetic": _Spec(_synthetic, ("num_classes", "in_channels", "image_size", "train_size", "test_size",
                                    "seed", "augment")),
}
_ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_REGISTRY)


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = True,
                 **options: Any) -> ImageDataset:
    """Load dataset ``name`` into memory.

    File-backed datasets are looked up in ``data_dir`` (directly or in ``data_dir/<name>/``), then
    (fashion_mnist only) in :data:`DEBIAN_FASHION_MNIST_DIR`, then in the cache
    (``data_dir/<name>/`` or ``~/.cache/spikeprune/<name>/``), then downloaded into the cache if
    ``download``. ``options`` are dataset-specific (only ``synthetic`` takes any).

    Raises ValueError (unknown name/option, bad checksum, corrupt file) or FileNotFoundError (data
    missing and not downloadable; the message lists every way to provide it).
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(_REGISTRY)}")
    spec = _REGISTRY[key]
    if unknown := sorted(set(options) - set(spec.options)):
        raise UserError(f"unknown option {unknown[0]!r} for dataset {key!r}; valid options: "
                         f"{', '.join(spec.options) or 'none'}")
    if spec.needs_files:
        return spec.build(Path(data_dir).expanduser() if data_dir is not None else None, download)
    return spec.build(**options)


# --------------------------------------------------------------------------------------------------
# Validation split (issue 14): every selection (best epoch, criterion, hyperparameter) is made on
# samples carved from the *training* set; the test set is only ever reported.
# --------------------------------------------------------------------------------------------------
_SPLIT_CACHE: "weakref.WeakKeyDictionary[ImageDataset, dict]" = weakref.WeakKeyDictionary()


def validation_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) index tensors partitioning ``range(n)``; both sorted ascending.

    ``round(fraction * n)`` indices (at least 1 when ``fraction > 0``, at most ``n - 1``) are drawn
    uniformly without replacement from a generator seeded by sha256 of ``seed`` (stable across
    processes and machines: ``torch.randperm`` on the CPU generator is deterministic for a seed).
    Sorting keeps the training set in its original order, so ``train_limit`` ("the first N") stays
    meaningful.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1); got {fraction!r}")
    k = 0 if fraction == 0 else min(max(1, round(fraction * n)), n - 1)
    if fraction > 0 and k < 1:
        raise UserError(f"cannot carve a validation set from {n} training sample(s)")
    digest = hashlib.sha256(f"spikeprune:validation:{seed}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    perm = torch.randperm(n, generator=g)
    return perm[k:].sort().values, perm[:k].sort().values


def split_validation(dataset: ImageDataset, fraction: float, seed: int = 0
                     ) -> tuple[ImageDataset, ImageDataset | None, dict[str, Any]]:
    """Carve a validation set out of ``dataset``'s training split.

    Returns ``(fit_set, val_set, info)``: ``fit_set`` is ``dataset`` with its train split reduced to
    the samples not held out (test split unchanged); ``val_set`` holds the held-out samples as its
    *test* split (so a ``BatchLoader(val_set, "test", ...)`` reads them un-augmented), or is ``None``
    when ``fraction == 0``; ``info`` = ``{"fraction", "seed", "train_size", "val_size", "test_size"}``
    is what every result records. Normalisation statistics stay those of the whole training split
    (pixel statistics, no labels). Results are cached per dataset object, so repeated calls (every
    lottery round) cost nothing and return the same objects.
    """
    key = (float(fraction), int(seed))
    cache = _SPLIT_CACHE.setdefault(dataset, {})
    if key in cache:
        return cache[key]
    n = int(dataset.train_labels.shape[0])
    train_idx, val_idx = validation_indices(n, fraction, seed)
    info = {"fraction": float(fraction), "seed": int(seed), "train_size": int(train_idx.numel()),
            "val_size": int(val_idx.numel()), "test_size": int(dataset.test_labels.shape[0])}
    if val_idx.numel() == 0:
        result: tuple = (dataset, None, info)
    else:
        common = dict(num_classes=dataset.num_classes, mean=dataset.mean, std=dataset.std, augment=dataset.augment)
        fit_set = ImageDataset(dataset.name, dataset.train_images[train_idx], dataset.train_labels[train_idx],
                               dataset.test_images, dataset.test_labels, **common)
        val_set = ImageDataset(f"{dataset.name}[val]", fit_set.train_images[:0], fit_set.train_labels[:0],
                               dataset.train_images[val_idx], dataset.train_labels[val_idx], **common)
        result = (fit_set, val_set, info)
    cache[key] = result
    return result


# --------------------------------------------------------------------------------------------------
# Encodings and batching
# --------------------------------------------------------------------------------------------------
def encode(images01: torch.Tensor, encoding: str, timesteps: int | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """Encode images in [0, 1] ``[B, C, H, W]`` for an SNN.

    ``direct``: returned unchanged (the network's first layer sees analog values every step).
    ``poisson``: float spikes in {0, 1} of shape ``[T, B, C, H, W]``, each an independent Bernoulli
    draw with probability = pixel value, ``T = timesteps`` (required, >= 1).
    """
    if encoding == "direct":
        return images01
    if encoding != "poisson":
        raise UserError(f"unknown encoding {encoding!r}; use one of {ENCODINGS}")
    if not isinstance(timesteps, int) or timesteps < 1:
        raise UserError(f"poisson encoding needs timesteps >= 1, got {timesteps!r}")
    # rand in [0, 1): p = 0 never fires, p = 1 always does.
    u = torch.rand((timesteps, *images01.shape), generator=generator, dtype=images01.dtype, device=images01.device)
    return (u < images01).to(images01.dtype)


def _epoch_generator(seed: int, split: str, epoch: int) -> torch.Generator:
    # sha256 rather than hash(): str hashes are salted per process, which would break resumption.
    digest = hashlib.sha256(f"spikeprune:{seed}:{split}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after ``pad`` zero pixels each side, then random horizontal flip; vectorised.

    ``images``: uint8 ``[B, C, H, W]`` -> same shape. One gather with per-sample row/column indices
    replaces a per-sample Python loop.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    flip = torch.rand(b, 1, generator=generator) < 0.5
    rows = dy + torch.arange(h)                                  # [B, H]
    cols = dx + torch.arange(w)                                  # [B, W]
    cols = torch.where(flip, cols.flip(1), cols)                 # flipping = reading columns backwards
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class BatchLoader:
    """Iterable of ``(inputs, labels)`` batches over one split of an :class:`ImageDataset`.

    ``inputs`` is float32: ``direct`` -> ``[B, C, H, W]`` normalised as ``(x/255 - mean) / std``;
    ``poisson`` -> ``[T, B, C, H, W]`` spikes in {0, 1} with probability ``x/255`` (not normalised).
    ``labels`` is int64 ``[B]``. ``augment=None`` applies the dataset's default augmentation on the
    train split only; ``True`` forces crop+flip (padding ``max(1, round(H/8))``: 4 px for 32x32);
    ``False`` disables it. ``limit`` keeps only the first ``limit`` samples of the split.

    The randomness of an epoch is a pure function of ``(seed, split, epoch)``: iterating twice
    without :meth:`set_epoch` yields identical batches, and a resumed run reproduces epoch ``e``.

    Data parallelism (``world_size > 1``, see :mod:`spikeprune.core.distributed`): every rank draws the
    global batch exactly as one process would (same order, augmentation and Poisson spikes) and keeps
    its contiguous part ``rank`` of ``world_size``; ``len()`` stays the number of global batches so all
    ranks take the same number of steps. A global batch smaller than ``world_size`` (a tiny last
    batch) is skipped on every rank, so no rank ever sees an empty batch.
    """

    def __init__(self, dataset: ImageDataset, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
                 encoding: str = "direct", timesteps: int | None = None, augment: bool | None = None,
                 drop_last: bool = False, limit: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        if encoding not in ENCODINGS:
            raise UserError(f"unknown encoding {encoding!r}; use one of {ENCODINGS}")
        if encoding == "poisson" and (not isinstance(timesteps, int) or timesteps < 1):
            raise UserError(f"poisson encoding needs timesteps >= 1, got {timesteps!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise UserError(f"limit must be a positive integer or None, got {limit!r}")
        self.dataset, self.split, self.batch_size = dataset, _check_split(split), batch_size
        self.shuffle, self.seed, self.encoding, self.timesteps = shuffle, seed, encoding, timesteps
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise UserError(f"rank must be in [0, world_size); got rank={rank!r}, world_size={world_size!r}")
        self.drop_last, self.epoch = drop_last, 0
        self.rank, self.world_size = rank, world_size
        self.augment = (dataset.augment == "crop_flip" and split == "train") if augment is None else bool(augment)
        self.pad = max(1, round(dataset.image_size[0] / 8))
        self.images, self.labels = dataset.images(split)[:limit], dataset.labels(split)[:limit]
        c = dataset.in_channels
        self._mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, c, 1, 1)
        self._std = torch.tensor(dataset.std, dtype=torch.float32).view(1, c, 1, 1)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle/augmentation/spike randomness the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = _epoch_generator(self.seed, self.split, self.epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        sharded = self.world_size > 1
        random_batch = self.augment or self.encoding != "direct"  # draws from g per sample
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            part = slice(None)
            if sharded:
                if idx.numel() < self.world_size:
                    continue  # every rank skips it: nobody gets an empty batch
                from spikeprune.core.distributed import shard_slice

                part = shard_slice(idx.numel(), self.rank, self.world_size)
                if not random_batch:  # nothing random to draw: take the shard before loading
                    idx, part = idx[part], slice(None)
            images = self.images[idx]
            if self.augment:
                images = _crop_flip(images, self.pad, g)
            x = images.to(torch.float32).div_(255)
            if self.encoding == "direct":
                x = x.sub_(self._mean).div_(self._std)
            else:
                x = encode(x, "poisson", self.timesteps, g)
            if self.encoding == "direct":
                yield x[part], self.labels[idx][part]
            else:  # [T, B, ...]: the batch is dim 1
                yield x[:, part], self.labels[idx][part]
