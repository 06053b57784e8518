"""Where datasets come from: the dataset registry, the published files, checksums and downloads.

* Registry: :func:`list_datasets` / :func:`load_dataset` (``digits``, ``fashion_mnist``, ``mnist``,
  ``cifar10``, ``cifar100``, ``synthetic``, and the event datasets ``nmnist``, ``dvsgesture``,
  ``cifar10dvs`` of :mod:`spikeprune.engine.events`).
* Files: every downloadable file is listed once in :data:`FILES` with its URL(s) and md5. Files are
  verified before they are parsed (:mod:`spikeprune.engine.formats`) or extracted, downloads are written
  atomically, and CIFAR pickles are read with a restricted unpickler, so a user-supplied file can never
  execute code.

The in-memory datasets and the validation split are :mod:`spikeprune.engine.datasets`, the encodings
and the batch loader :mod:`spikeprune.engine.encoding`; their public names are importable from here too
(``from spikeprune.engine.data import BatchLoader, ImageDataset, load_dataset`` as before the split).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from spikeprune.core.diagnostics import UserError
from spikeprune.engine import events
from spikeprune.engine.datasets import (AUGMENTATIONS, SPLITS, EventDataset, ImageDataset, channel_stats,
                                        split_validation, validation_indices)
from spikeprune.engine.encoding import ENCODINGS, BatchLoader, encode, frames_to_input
from spikeprune.engine.formats import RestrictedUnpickler, gunzip, parse_cifar, parse_idx_set

__all__ = [
    "AUGMENTATIONS",
    "ENCODINGS",
    "FILES",
    "SPLITS",
    "BatchLoader",
    "EventDataset",
    "ImageDataset",
    "RemoteFile",
    "RestrictedUnpickler",
    "encode",
    "frames_to_input",
    "is_event_dataset",
    "list_datasets",
    "load_dataset",
    "parse_dataset",
    "split_validation",
    "validation_indices",
]

# Module-level so tests (and unusual installs) can point them elsewhere.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_ROOT = Path.home() / ".cache" / "spikeprune"


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
_NMNIST_URL = "https://data.mendeley.com/public-files/datasets/468j46mzdv/files/"
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
    # Event datasets (spikeprune.engine.events): the archives, URLs and md5s of tonic 1.7
    # (tonic.datasets.NMNIST / DVSGesture / CIFAR10DVS class attributes).
    "nmnist": (RemoteFile("train.zip", (_NMNIST_URL + "39c25547-014b-4137-a934-9d29fa53c7a0/file_downloaded",),
                          "20959b8e626244a1b502305a9e6e2031"),
               RemoteFile("test.zip", (_NMNIST_URL + "05a4d654-7e03-4c15-bdfa-9bb2bcbea494/file_downloaded",),
                          "69ca8762b2fe404d9b9bad1103e97832")),
    "dvsgesture": (RemoteFile("ibmGestureTrain.tar.gz", ("https://figshare.com/ndownloader/files/38022171",),
                              "3a8f0d4120a166bac7591f77409cb105"),
                   RemoteFile("ibmGestureTest.tar.gz", ("https://figshare.com/ndownloader/files/38020584",),
                              "56070e45dadaa85fff82e0fbfbc06de5")),
    "cifar10dvs": (RemoteFile("CIFAR10DVS.zip", ("https://figshare.com/ndownloader/files/38023437",),
                              "ce3a4a0682dc0943703bd8f749a7701c"),),
}


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _verify(data: bytes, spec: RemoteFile, path: Path | str) -> None:
    """Raise ValueError unless ``data`` (the bytes of file ``path``) is ``spec``'s published file or, for gzip
    files with a known ``raw_md5``, a recompressed copy of the same content."""
    actual = _md5(data)
    if actual == spec.md5:
        return
    if spec.raw_md5 is not None and spec.filename.endswith(".gz"):
        try:
            if _md5(gunzip(data, path)) == spec.raw_md5:
                return
        except ValueError:
            pass  # report the checksum mismatch below, it is the clearer message
    raise _mismatch(spec, path, actual)


def _mismatch(spec: RemoteFile, path: Path | str, actual: str) -> UserError:
    return UserError(f"checksum mismatch for {path}: expected md5 {spec.md5}"
                     + (f" (or {spec.raw_md5} decompressed)" if spec.raw_md5 else "")
                     + f", got {actual}; delete the file to re-download it or pass --data-dir with a good copy")


def _verify_file(path: Path, spec: RemoteFile, where: Path | str) -> None:
    """:func:`_verify` on a file, streaming its md5 (event archives are GBs; only a gzip file that may be
    a recompressed copy is read whole, to check its decompressed content)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    if h.hexdigest() == spec.md5:
        return
    if spec.raw_md5 is not None:
        _verify(path.read_bytes(), spec, where)
        return
    raise _mismatch(spec, where, h.hexdigest())


def _fetch(url: str, out: BinaryIO) -> None:
    """Copy ``url`` into ``out``. The one network access of this module (tests monkeypatch it)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def _download(spec: RemoteFile, dest: Path) -> None:
    """Download ``spec`` to ``dest`` atomically: write a temp file next to it, verify, then rename.

    Raises OSError (incl. URLError) when no mirror can be reached, ValueError on a checksum mismatch;
    in both cases nothing is left at ``dest`` or in its directory, and a directory this call created
    is removed again when it stays empty (a failed first download leaves no empty cache folder behind).
    """
    created = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download_into(spec, dest)
    except BaseException:
        if created and not any(dest.parent.iterdir()):
            dest.parent.rmdir()
        raise


def _download_into(spec: RemoteFile, dest: Path) -> None:
    last_error: OSError | None = None
    for url in spec.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out)
            _verify_file(tmp, spec, f"{spec.filename} downloaded from {url}")
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
        path = _find_or_download(name, spec, dirs, dirs, download)
        data = path.read_bytes()
        _verify(data, spec, path)
        found.append((path, data))
    return found


def _find_or_download(name: str, spec: RemoteFile, where: list[Path], dirs: list[Path], download: bool) -> Path:
    """The first ``where / spec.filename`` that exists, else ``spec`` downloaded into the cache ``dirs[-1]``
    (a download is verified before it gets its name). ``dirs`` are named in the not-found message."""
    path = next((d / spec.filename for d in where if (d / spec.filename).is_file()), None)
    if path is not None:
        return path
    if not download:
        raise FileNotFoundError(_missing_message(name, dirs, "download disabled"))
    path = dirs[-1] / spec.filename
    try:
        _download(spec, path)
    except OSError as e:
        raise FileNotFoundError(_missing_message(name, dirs, f"download failed: {e}")) from e
    return path


def _extract(archive: Path, dest: Path) -> None:
    """Extract a zip / tar(.gz) into ``dest``, refusing members that would land outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                root = dest.resolve()
                for member in z.namelist():
                    if not (dest / member).resolve().is_relative_to(root):
                        raise UserError(f"{archive} holds a member outside the archive ({member!r}); refusing it")
                z.extractall(dest)
        else:
            with tarfile.open(archive, "r:*") as t:
                t.extractall(dest, filter="data")  # "data": no absolute paths, links out of dest, or devices
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{archive} is not a valid archive ({e}); delete it to re-download it") from e


def _fetch_event_files(name: str, data_dir: Path | None, download: bool) -> tuple[Path, list[str]]:
    """The folder holding event dataset ``name``'s extracted recordings, and what identifies them (the
    archives' md5s when they came from verified archives, ``"extracted:<folder>"`` for a folder the
    user provided). Archives (GBs) are found or downloaded like every file, verified by a streaming md5,
    then extracted into the cache."""
    dirs = _search_dirs(name, data_dir)
    roots = events.roots(name, dirs)
    for root in roots:
        if events.is_extracted(name, root):
            return root, ["extracted:" + str(root.resolve())]
    cache = dirs[-1]
    for spec in FILES[name]:
        path = _find_or_download(name, spec, roots, dirs, download)
        _verify_file(path, spec, path)
        _extract(path, cache)
    for archive in events.nested_archives(name, cache):
        _extract(archive, cache)
    if not events.is_extracted(name, cache):
        raise UserError(f"{name}: the archives in {cache} do not hold tonic's folders; delete them to re-download them")
    return cache, [s.md5 for s in FILES[name]]


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
    mean, std = channel_stats(train)
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
    mean, std = channel_stats(train_x)
    return ImageDataset("synthetic", train_x, train_y, test_x, test_y, num_classes, mean, std, augment)


@dataclass(frozen=True)
class _Spec:
    build: Callable[..., ImageDataset]
    options: tuple[str, ...] = ()
    needs_files: bool = False


def _file_dataset(name: str, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                  augment: str, parse: Callable[[str, list[tuple[Path, bytes]]], tuple[torch.Tensor, ...]]) -> _Spec:
    def build(data_dir: Path | None, download: bool) -> ImageDataset:
        return ImageDataset(name, *parse(name, _fetch_files(name, data_dir, download)), num_classes, mean, std, augment)
    return _Spec(build, needs_files=True)


def _event_dataset(name: str) -> _Spec:
    def build(data_dir: Path | None, download: bool, **options: Any) -> EventDataset:
        settings = events.settings_for(name, **options)  # bad options fail before any file is looked for
        root, sources = _fetch_event_files(name, data_dir, download)
        return events.load_frames(name, root, sources, _search_dirs(name, data_dir)[-1], settings)
    return _Spec(build, events.OPTIONS, needs_files=True)


_REGISTRY: dict[str, _Spec] = {
    "digits": _Spec(_digits),
    "fashion_mnist": _file_dataset("fashion_mnist", 10, (0.2860,), (0.3530,), "none", parse_idx_set),
    "mnist": _file_dataset("mnist", 10, (0.1307,), (0.3081,), "none", parse_idx_set),
    "cifar10": _file_dataset("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                             "crop_flip", parse_cifar),
    "cifar100": _file_dataset("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                              "crop_flip", parse_cifar),
    "synthetic": _Spec(_synthetic, ("num_classes", "in_channels", "image_size", "train_size", "test_size",
                                    "seed", "augment")),
    **{name: _event_dataset(name) for name in events.EVENT_DATASETS},
}
_ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist", "cifar-10": "cifar10", "cifar-100": "cifar100",
            "n-mnist": "nmnist", "dvs128gesture": "dvsgesture", "dvs-gesture": "dvsgesture", "cifar10-dvs": "cifar10dvs"}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_REGISTRY)


def parse_dataset(text: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` -> ``(registry name, options)``.

    The second form carries a dataset's options in its name, so they travel wherever the name does
    (``--dataset nmnist:time_bins=8,binning=count``, a preset, the config a checkpoint records, hence
    ``evaluate`` and ``cost`` rebuild the same frames). Values are read as int, then float, else text; the
    dataset checks them (:class:`~spikeprune.engine.events.FrameSettings`, ``synthetic``'s sizes).
    """
    if not isinstance(text, str):
        raise UserError(f"dataset must be a name, got {text!r}")
    name, sep, rest = text.partition(":")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _REGISTRY:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(_REGISTRY)}")
    options: dict[str, Any] = {}
    for item in rest.split(",") if sep else ():
        k, eq, v = (part.strip() for part in item.partition("="))
        if not k or not eq or not v:
            raise UserError(f"dataset {text!r}: options are written name:key=value,key=value; got {item!r}")
        options[k] = _option_value(v)
    spec = _REGISTRY[key]
    if unknown := sorted(set(options) - set(spec.options)):
        raise UserError(f"unknown option {unknown[0]!r} for dataset {key!r}; valid options: "
                         f"{', '.join(spec.options) or 'none'}")
    return key, options


def _option_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = True,
                 **options: Any) -> ImageDataset:
    """Load dataset ``name`` into memory.

    File-backed datasets are looked up in ``data_dir`` (directly or in ``data_dir/<name>/``), then
    (fashion_mnist only) in :data:`DEBIAN_FASHION_MNIST_DIR`, then in the cache
    (``data_dir/<name>/`` or ``~/.cache/spikeprune/<name>/``), then downloaded into the cache if
    ``download``. ``options`` are dataset-specific: ``synthetic``'s sizes, an event dataset's frame
    settings (:class:`~spikeprune.engine.events.FrameSettings`: ``time_bins``, ``binning``,
    ``denoise_us``, ``spatial_factor``); they may also be given in ``name`` (:func:`parse_dataset`:
    ``"nmnist:time_bins=8"``), keyword options winning.

    Raises ValueError (unknown name/option, bad checksum, corrupt file) or FileNotFoundError (data
    missing and not downloadable; the message lists every way to provide it).
    """
    key, named = parse_dataset(name)
    options = {**named, **options}
    spec = _REGISTRY[key]
    if unknown := sorted(set(options) - set(spec.options)):
        raise UserError(f"unknown option {unknown[0]!r} for dataset {key!r}; valid options: "
                         f"{', '.join(spec.options) or 'none'}")
    if spec.needs_files:
        return spec.build(Path(data_dir).expanduser() if data_dir is not None else None, download, **options)
    return spec.build(**options)


def is_event_dataset(name: str) -> bool:
    """Whether ``name`` (an alias, or with options: :func:`parse_dataset`) is an event dataset, whose input
    is the ``events`` encoding."""
    base = name.partition(":")[0].strip().lower()
    return _ALIASES.get(base, base) in events.EVENT_DATASETS
