"""Neuromorphic event datasets (N-MNIST, DVS128 Gesture, CIFAR10-DVS) through tonic, as cached frames.

An event camera emits a stream of events ``(x, y, t, p)``; SNNs trained on these datasets see them as
frames: per time bin and polarity, the number of events at each pixel. This module holds what is
specific to event data; finding, downloading and checksumming the files is :mod:`spikeprune.engine.data`'s,
exactly as for the image datasets (``--data-dir``, ``data_dir/<name>/``, the cache, then a checksummed
download of the published archives listed in :data:`spikeprune.engine.data.FILES`):

* the folder layouts tonic 1.x extracts (:func:`roots` also accepts tonic's own ``save_to/NMNIST/``,
  ``save_to/DVSGesture/``, ``save_to/CIFAR10DVS/``);
* every recording is read with tonic's own readers and dtypes (``tonic.io.read_mnist_file`` for the
  40-bit N-MNIST ``.bin`` files, tonic's preprocessed ``.npy`` files for DVS Gesture,
  ``tonic.io.read_aedat4`` for CIFAR10-DVS) and turned into frames with tonic's transforms
  (``Denoise``, ``Downsample``, ``ToFrame`` with ``n_time_bins`` or ``n_event_bins``);
* the frames of both splits are cached in one safetensors file keyed by the transform settings and
  the source files (:func:`cache_key`), so the events are read and binned once.

The frames are held by an :class:`~spikeprune.engine.datasets.EventDataset`; the
:class:`~spikeprune.engine.encoding.BatchLoader` with ``encoding="events"`` turns a batch into spike
counts ``[T, B, 2, H, W]``: no encoding layer runs on them.

tonic is an optional dependency (``pip install 'spikeprune[events]'``); it is imported only when
frames have to be built, never to read the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from spikeprune.core.diagnostics import UserError
from spikeprune.core.io import atomic_path
from spikeprune.engine.datasets import EventDataset

__all__ = ["BINNINGS", "EVENT_DATASETS", "FrameSettings", "cache_key", "events_to_frames", "load_frames"]

# Bumped whenever the way frames are computed changes, so an old cache is never read as a new one.
_FORMAT_VERSION = 1
BINNINGS = ("time", "count")


@dataclass(frozen=True)
class FrameSettings:
    """How a recording becomes frames (every field is part of the cache key).

    ``time_bins`` frames per sample (``F``); ``binning="time"`` slices the recording into ``F`` equal
    durations (tonic ``ToFrame(n_time_bins=F)``), ``"count"`` into ``F`` slices of equal event count
    (``ToFrame(n_event_bins=F)``). ``denoise_us > 0`` first drops events with no neighbour within 1
    pixel and ``denoise_us`` microseconds (tonic ``Denoise``). ``spatial_factor < 1`` downsamples the
    pixel grid (tonic ``Downsample``; 128x128 sensors -> 32x32 at 0.25).
    """

    time_bins: int = 16
    binning: str = "time"
    denoise_us: int = 0
    spatial_factor: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.time_bins, bool) or not isinstance(self.time_bins, int) or not 1 <= self.time_bins <= 1024:
            raise UserError(f"time_bins must be an integer in [1, 1024]; got {self.time_bins!r}")
        if self.binning not in BINNINGS:
            raise UserError(f"binning must be one of {BINNINGS}; got {self.binning!r}")
        if isinstance(self.denoise_us, bool) or not isinstance(self.denoise_us, int) or self.denoise_us < 0:
            raise UserError(f"denoise_us must be an integer >= 0 (0: off); got {self.denoise_us!r}")
        if not isinstance(self.spatial_factor, (int, float)) or not 0 < self.spatial_factor <= 1:
            raise UserError(f"spatial_factor must be in (0, 1]; got {self.spatial_factor!r}")


@dataclass(frozen=True)
class _Source:
    """One event dataset: tonic's class name, sensor ``(W, H)``, classes, default frame settings, layout, reader.
    Its published archives are listed in :data:`spikeprune.engine.data.FILES` (one list of downloads)."""

    tonic_name: str
    sensor: tuple[int, int]
    num_classes: int
    defaults: FrameSettings
    collect: Callable[[Path], dict[str, list[tuple[Path, int]]]]   # extracted root -> split -> (file, label)
    read: Callable[[Path], np.ndarray]                              # file -> tonic structured events
    extracted: tuple[str, ...]                                      # folders that mark an extracted root
    extracted_all: bool = True                                      # all of them (else any: CIFAR10-DVS classes)


# ----------------------------------------------------------------------------------------------------
# Per-dataset layout (the folders tonic 1.x extracts) and readers (tonic's own).
# ----------------------------------------------------------------------------------------------------
def _collect_nmnist(root: Path) -> dict[str, list[tuple[Path, int]]]:
    # tonic NMNIST: <root>/Train/<digit>/<id>.bin; the label is the folder's last character.
    return {split: [(p, int(p.parent.name[-1])) for p in sorted((root / folder).glob("*/*.bin"))]
            for split, folder in (("train", "Train"), ("test", "Test"))}


def _read_nmnist(path: Path) -> np.ndarray:
    import tonic

    return tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)


def _collect_gesture(root: Path) -> dict[str, list[tuple[Path, int]]]:
    # tonic DVSGesture (preprocessed release): <root>/ibmGestureTrain/user<NN>_<lighting>/<label>.npy
    return {split: [(p, int(p.stem)) for p in sorted((root / folder).glob("user*_*/*.npy"))]
            for split, folder in (("train", "ibmGestureTrain"), ("test", "ibmGestureTest"))}


def _read_gesture(path: Path) -> np.ndarray:
    import tonic

    # As tonic.datasets.DVSGesture.__getitem__: rows (x, y, p, t[ms]); t converted to microseconds.
    # allow_pickle=False: a dataset file never runs code.
    try:
        events = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise UserError(f"{path} is not a DVS Gesture .npy event file ({e})") from e
    if events.ndim != 2 or events.shape[1] != 4:
        raise UserError(f"{path} is not a DVS Gesture .npy event file (expected [N, 4] x,y,p,t; got "
                        f"{events.shape})")
    events = events.copy()
    events[:, 3] *= 1000
    return np.lib.recfunctions.unstructured_to_structured(events, tonic.datasets.DVSGesture.dtype)


_CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _collect_cifar10dvs(root: Path) -> dict[str, list[tuple[Path, int]]]:
    # tonic CIFAR10DVS: <root>/<class>/<id>.aedat4. The release has no test split; the convention of
    # SpikingJelly and most papers: per class, the first 90 % of the (sorted) recordings train, the rest test.
    out: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for label, cls in enumerate(_CIFAR10DVS_CLASSES):
        files = sorted((root / cls).glob("*.aedat4"))
        cut = int(round(0.9 * len(files)))
        out["train"] += [(p, label) for p in files[:cut]]
        out["test"] += [(p, label) for p in files[cut:]]
    return out


def _read_cifar10dvs(path: Path) -> np.ndarray:
    import tonic

    events = tonic.io.read_aedat4(str(path))
    events.dtype.names = ["t", "x", "y", "p"]  # as tonic.datasets.CIFAR10DVS.__getitem__
    return events


SOURCES: dict[str, _Source] = {
    "nmnist": _Source("NMNIST", (34, 34), 10, FrameSettings(time_bins=16), _collect_nmnist, _read_nmnist,
                      ("Train", "Test")),
    "dvsgesture": _Source("DVSGesture", (128, 128), 11, FrameSettings(time_bins=16, spatial_factor=0.25),
                          _collect_gesture, _read_gesture, ("ibmGestureTrain", "ibmGestureTest")),
    "cifar10dvs": _Source("CIFAR10DVS", (128, 128), 10, FrameSettings(time_bins=16, spatial_factor=0.25),
                          _collect_cifar10dvs, _read_cifar10dvs, _CIFAR10DVS_CLASSES, extracted_all=False),
}
EVENT_DATASETS = tuple(SOURCES)
OPTIONS = tuple(f.name for f in FrameSettings.__dataclass_fields__.values())


# ----------------------------------------------------------------------------------------------------
# Events -> frames (tonic's transforms)
# ----------------------------------------------------------------------------------------------------
def frame_size(sensor: tuple[int, int], settings: FrameSettings) -> tuple[int, int]:
    """``(W, H)`` of the frames after ``Downsample(spatial_factor)``."""
    return (max(1, int(sensor[0] * settings.spatial_factor)), max(1, int(sensor[1] * settings.spatial_factor)))


def events_to_frames(events: np.ndarray, sensor: tuple[int, int], settings: FrameSettings) -> np.ndarray:
    """One recording -> uint8 frames ``[F, 2, H, W]`` with tonic's transforms.

    ``events``: a tonic structured array with fields x, y, t (microseconds), p; ``sensor`` = ``(W, H)``.
    Counts above 255 saturate (uint8 cache). A recording with no events (or fewer slices than ``F``,
    e.g. after denoising) is padded with empty frames at the end.
    """
    import tonic.transforms as tt

    steps: list[Any] = []
    if settings.denoise_us > 0 and len(events):
        steps.append(tt.Denoise(filter_time=settings.denoise_us))
    w, h = frame_size(sensor, settings)
    if settings.spatial_factor != 1:
        steps.append(tt.Downsample(spatial_factor=settings.spatial_factor))
    key = "n_time_bins" if settings.binning == "time" else "n_event_bins"
    steps.append(tt.ToFrame(sensor_size=(w, h, 2), **{key: settings.time_bins}))
    out = np.zeros((settings.time_bins, 2, h, w), dtype=np.uint8)
    for step in steps[:-1]:
        events = step(events)
    if len(events) == 0:
        return out
    frames = steps[-1](events)                        # int16 [F', 2, H, W] (tonic: T x P x H x W)
    n = min(len(frames), settings.time_bins)
    out[:n] = np.clip(frames[:n], 0, 255)
    return out


# ----------------------------------------------------------------------------------------------------
# Where the recordings are (data.py finds, downloads, verifies and extracts the archives)
# ----------------------------------------------------------------------------------------------------
def roots(name: str, dirs: list[Path]) -> list[Path]:
    """Candidate roots of ``name``'s recordings and archives: each of data.py's search dirs (``dirs``, the
    cache last), and each as tonic's ``save_to`` (``d / "NMNIST"``, ...), in that order."""
    tonic_name = SOURCES[name].tonic_name
    return list(dict.fromkeys(p for d in dirs for p in (d, d / tonic_name)))


def is_extracted(name: str, root: Path) -> bool:
    """Whether ``root`` holds ``name``'s extracted recordings (tonic's folders)."""
    source = SOURCES[name]
    found = [(root / folder).is_dir() for folder in source.extracted]
    return all(found) if source.extracted_all else any(found)


def nested_archives(name: str, root: Path) -> list[Path]:
    """Archives inside an extracted archive that still need extracting: the CIFAR10-DVS release zip holds
    one zip per class (tonic extracts them the same way)."""
    if name != "cifar10dvs":
        return []
    return [p for p in sorted(root.glob("*.zip")) if p.stem in _CIFAR10DVS_CLASSES and not (root / p.stem).is_dir()]


# ----------------------------------------------------------------------------------------------------
# Cache and loading
# ----------------------------------------------------------------------------------------------------
def cache_key(name: str, settings: FrameSettings, sources: list[str]) -> str:
    """16 hex digits of sha256 over the dataset, every frame setting, the identity of the source files
    (archive md5s, or the extracted folder's path) and the frame format version."""
    blob = json.dumps({"dataset": name, "settings": asdict(settings), "sources": sources,
                       "format": _FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _build_frames(name: str, root: Path, settings: FrameSettings) -> dict[str, torch.Tensor]:
    source = SOURCES[name]
    try:
        import tonic  # noqa: F401
    except ImportError as e:
        raise UserError(f"{name} needs tonic to read its events: pip install 'spikeprune[events]'") from e
    w, h = frame_size(source.sensor, settings)
    out: dict[str, torch.Tensor] = {}
    for split, items in source.collect(root).items():
        if not items:
            raise UserError(f"{name}: no {split} recordings under {root}")
        frames = np.zeros((len(items), settings.time_bins * 2, h, w), dtype=np.uint8)
        labels = np.zeros(len(items), dtype=np.int64)
        for i, (path, label) in enumerate(items):
            if not 0 <= label < source.num_classes:
                raise UserError(f"{path}: label {label} outside 0..{source.num_classes - 1}")
            f = events_to_frames(source.read(path), source.sensor, settings)
            frames[i] = f.reshape(-1, h, w)
            labels[i] = label
        out[f"{split}_images"], out[f"{split}_labels"] = torch.from_numpy(frames), torch.from_numpy(labels)
    return out


def settings_for(name: str, **options: Any) -> FrameSettings:
    """``name``'s default :class:`FrameSettings` with ``options`` (checked) applied."""
    return replace(SOURCES[name].defaults, **options)


def load_frames(name: str, root: Path, sources: list[str], cache_dir: Path, settings: FrameSettings) -> EventDataset:
    """Frames of event dataset ``name`` from the recordings under ``root``.

    ``sources`` identify the recordings (archive md5s, or the extracted folder) and, with ``settings``,
    key the cache: the frames are read from ``cache_dir/frames-<cache_key>.safetensors`` when present (and
    its recorded settings match), else built from the recordings and written there atomically.
    """
    source = SOURCES[name]
    path = cache_dir / f"frames-{cache_key(name, settings, sources)}.safetensors"
    tensors: dict[str, torch.Tensor] | None = None
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if json.loads(meta.get("settings", "null")) == asdict(settings):
                    tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt, never trusted
            tensors = None
    if tensors is None:
        tensors = _build_frames(name, root, settings)
        with atomic_path(path, collective=False) as tmp:  # every process builds and writes its own copy
            save_file(tensors, str(tmp), metadata={"settings": json.dumps(asdict(settings)), "dataset": name,
                                                     "sources": json.dumps(sources)})
    # mean/std: one per polarity, unused (the events encoding feeds counts, unnormalised).
    return EventDataset(name, tensors["train_images"], tensors["train_labels"], tensors["test_images"],
                        tensors["test_labels"], source.num_classes, (0.0, 0.0), (1.0, 1.0), "none",
                        time_bins=settings.time_bins)
