"""Tests for spikeprune.engine.data: registry, file loaders (offline, on tiny files), encodings, batching."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikeprune.engine import data
from spikeprune.engine.data import ENCODINGS, BatchLoader, ImageDataset, encode, list_datasets, load_dataset

REAL_FASHION_DIR = data.DEBIAN_FASHION_MNIST_DIR
IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test touches the network, the user's cache or the machine's Debian dataset by accident."""
    def no_network(url: str, out: BinaryIO) -> None:
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(data, "_fetch", no_network)
    monkeypatch.setattr(data, "CACHE_ROOT", tmp_path / "cache")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def idx_bytes(arr: np.ndarray) -> bytes:
    """Uncompressed IDX: magic 0x0000 08 <ndim>, big-endian uint32 dims, then the uint8 data."""
    return struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_set(directory: Path, n_train: int = 12, n_test: int = 6, size: int = 28) -> list[np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
              (np.arange(n_train) % 10).astype(np.uint8),
              rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
              (np.arange(n_test)[::-1] % 10).astype(np.uint8)]
    for name, arr in zip(IDX_NAMES, arrays):
        (directory / name).write_bytes(gzip.compress(idx_bytes(arr)))
    return arrays


def accept_files(monkeypatch: pytest.MonkeyPatch, name: str, directory: Path) -> None:
    """Patch the checksum registry so that the files now in ``directory`` are the 'published' ones."""
    specs = tuple(dataclasses.replace(f, md5=md5((directory / f.filename).read_bytes()), raw_md5=None)
                  for f in data.FILES[name])
    monkeypatch.setitem(data.FILES, name, specs)


def cifar_pattern(n: int, offset: int) -> np.ndarray:
    """uint8 [n, 3, 32, 32] with value determined by (sample, channel, y, x)."""
    i, c, y, x = np.meshgrid(np.arange(n) + offset, np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((i * 7 + c * 50 + y * 3 + x) % 256).astype(np.uint8)


def write_cifar(path: Path, kind: str, extra: dict[str, bytes] | None = None) -> tuple[np.ndarray, ...]:
    """Tiny cifar-*-python.tar.gz with pickles shaped like the real ones (bytes keys, uint8 [N, 3072])."""
    if kind == "cifar10":
        layout = {f"cifar-10-batches-py/data_batch_{i}": 2 for i in range(1, 6)} | {"cifar-10-batches-py/test_batch": 3}
        label_key, classes = b"labels", 10
    else:
        layout = {"cifar-100-python/train": 4, "cifar-100-python/test": 3}
        label_key, classes = b"fine_labels", 100
    buf, offset, parts = io.BytesIO(), 0, []
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = {"readme.html": b"<html/>"}
        for member, n in layout.items():
            images = cifar_pattern(n, offset)
            labels = [(offset + k) * 13 % classes for k in range(n)]
            offset += n
            parts.append((images, labels))
            # protocol 3: bytes keys/arrays like the Python-2 originals, numpy globals, no _codecs
            members[member] = pickle.dumps({b"batch_label": b"x", b"data": images.reshape(n, -1),
                                            label_key: labels, b"coarse_labels": labels}, protocol=3)
        members |= extra or {}  # replaces a real member, e.g. with a malicious pickle
        for member, blob in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    *train, test = parts
    return (np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train]),
            test[0], np.asarray(test[1]))


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def pattern_dataset(image: torch.Tensor, copies: int, augment: str = "crop_flip") -> ImageDataset:
    """Dataset of one repeated uint8 [C, H, W] image with mean 0 / std 1, so x * 255 recovers pixels."""
    images = image.expand(copies, *image.shape).contiguous()
    labels = torch.zeros(copies, dtype=torch.int64)
    c = image.shape[0]
    return ImageDataset("pattern", images, labels, images, labels, 1, (0.0,) * c, (1.0,) * c, augment)


def collect(loader: BatchLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


# --------------------------------------------------------------------------------------------------
# registry and built-in datasets
# --------------------------------------------------------------------------------------------------
def test_list_datasets() -> None:
    # issue 15 added the event datasets (spikeprune.engine.events, through tonic) and their encoding.
    assert list_datasets() == ["digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic",
                               "nmnist", "dvsgesture", "cifar10dvs"]
    assert ENCODINGS == ("direct", "poisson", "events")


def test_unknown_dataset_and_options() -> None:
    with pytest.raises(ValueError, match="available: digits, fashion_mnist"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="'bogus'"):
        load_dataset("mnist", bogus=1)
    with pytest.raises(ValueError, match="'bogus'"):
        load_dataset("synthetic", bogus=1)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("synthetic", image_size=0)


def test_digits_offline_and_deterministic() -> None:
    ds = load_dataset("digits")
    assert ds.train_images.shape == (1437, 1, 8, 8) and ds.test_images.shape == (360, 1, 8, 8)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == (8, 8) and ds.augment == "none"
    assert int(ds.train_images.max()) == 255  # 16 * 255 / 16
    # stratified: every class has ~20 % of its samples in test
    total = torch.bincount(ds.train_labels, minlength=10) + torch.bincount(ds.test_labels, minlength=10)
    assert torch.all((torch.bincount(ds.test_labels, minlength=10) - 0.2 * total).abs() <= 1)
    again = load_dataset("digits")
    assert torch.equal(ds.train_images, again.train_images) and torch.equal(ds.test_labels, again.test_labels)
    x = ds.train_images.double() / 255
    assert ds.mean[0] == pytest.approx(x.mean().item()) and ds.std[0] == pytest.approx(x.std(correction=0).item())


def test_synthetic_deterministic_and_learnable() -> None:
    a, b = load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=3)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, load_dataset("synthetic", seed=4).train_images)
    assert a.train_images.shape == (512, 3, 32, 32) and a.test_images.shape == (256, 3, 32, 32)
    assert a.augment == "none" and load_dataset("synthetic", augment="crop_flip").augment == "crop_flip"
    small = load_dataset("synthetic", num_classes=4, in_channels=1, image_size=12, train_size=40, test_size=20)
    assert small.train_images.shape == (40, 1, 12, 12) and small.num_classes == 4 and len(small.std) == 1
    # nearest class-mean classifier
    x_tr, x_te = a.train_images.flatten(1).float(), a.test_images.flatten(1).float()
    means = torch.stack([x_tr[a.train_labels == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(x_te, means).argmin(1) == a.test_labels).float().mean().item()
    assert accuracy > 0.9


def test_image_dataset_validates() -> None:
    imgs, labels = torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("bad", imgs.float(), labels, imgs, labels, 1, (0.0,), (1.0,), "none")
    with pytest.raises(ValueError, match="augment"):
        ImageDataset("bad", imgs, labels, imgs, labels, 1, (0.0,), (1.0,), "mixup")
    with pytest.raises(ValueError, match="per channel"):
        ImageDataset("bad", imgs, labels, imgs, labels, 1, (0.0, 0.0), (1.0, 1.0), "none")


# --------------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("subdir", [False, True])
def test_idx_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, subdir: bool) -> None:
    directory = tmp_path / "d" / name if subdir else tmp_path / "d"
    arrays = write_idx_set(directory)
    accept_files(monkeypatch, name, directory)
    ds = load_dataset(name, tmp_path / "d", download=False)
    assert ds.name == name and ds.num_classes == 10 and ds.augment == "none"
    assert ds.train_images.shape == (12, 1, 28, 28) and ds.test_images.shape == (6, 1, 28, 28)
    assert ds.train_labels.dtype == torch.int64
    for tensor, arr in zip((ds.train_images[:, 0], ds.train_labels, ds.test_images[:, 0], ds.test_labels), arrays):
        assert np.array_equal(tensor.numpy(), arr)
    assert ds.mean == ((0.1307,) if name == "mnist" else (0.2860,))


def test_idx_accepts_recompressed_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Like Debian's files: the .gz md5 differs from the published one but the content is identical."""
    write_idx_set(tmp_path)
    specs = tuple(dataclasses.replace(f, md5="0" * 32, raw_md5=md5(gzip.decompress((tmp_path / f.filename).read_bytes())))
                  for f in data.FILES["fashion_mnist"])
    monkeypatch.setitem(data.FILES, "fashion_mnist", specs)
    assert len(load_dataset("fashion_mnist", tmp_path).train_labels) == 12


def test_idx_checksum_mismatch(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    with pytest.raises(ValueError, match="checksum mismatch .*train-images-idx3-ubyte.gz.*f68b3c2d"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("corruption, message", [
    ("magic", "not an IDX file"), ("truncated", "truncated or corrupt"), ("gzip", "not a valid gzip"),
    ("empty", "truncated"), ("mismatch", "do not match"),
])
def test_idx_corrupt_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, corruption: str, message: str) -> None:
    arrays = write_idx_set(tmp_path)
    target = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = idx_bytes(arrays[2])
    blob = {"magic": gzip.compress(struct.pack(">I", 0x0801) + raw[4:]),
            "truncated": gzip.compress(raw[:-100]),
            "gzip": gzip.compress(raw)[:200],
            "empty": gzip.compress(b""),
            "mismatch": gzip.compress(idx_bytes(arrays[2][:3]))}[corruption]
    target.write_bytes(blob)
    accept_files(monkeypatch, "mnist", tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        load_dataset("mnist", tmp_path)
    if corruption != "mismatch":
        assert str(target) in str(err.value)


def test_fashion_mnist_search_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    debian = tmp_path / "debian"
    write_idx_set(debian, n_train=12)
    write_idx_set(tmp_path / "mine", n_train=14)
    specs = tuple(dataclasses.replace(f, md5="0" * 32, raw_md5=None) for f in data.FILES["fashion_mnist"])
    monkeypatch.setitem(data.FILES, "fashion_mnist", specs)
    monkeypatch.setattr(data, "_verify", lambda blob, spec, path: None)  # both sets are "good"
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian)
    assert len(load_dataset("fashion_mnist").train_labels) == 12  # Debian's copy when no --data-dir
    assert len(load_dataset("fashion-mnist", tmp_path / "mine").train_labels) == 14  # --data-dir wins


@pytest.mark.slow
@pytest.mark.skipif(not REAL_FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", REAL_FASHION_DIR)
    ds = load_dataset("fashion_mnist")
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.train_labels.unique().tolist() == list(range(10)) and ds.test_labels.unique().tolist() == list(range(10))


# --------------------------------------------------------------------------------------------------
# downloads and missing data
# --------------------------------------------------------------------------------------------------
def test_offline_fashion_mnist_message() -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion_mnist")
    msg = str(err.value)
    for needle in ("apt-get install dataset-fashion-mnist", "--data-dir", *IDX_NAMES,
                   "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", "network disabled"):
        assert needle in msg


def test_missing_without_download_does_not_fetch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(url: str, out: BinaryIO) -> None:
        raise AssertionError("fetched although download=False")
    monkeypatch.setattr(data, "_fetch", fail)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", tmp_path, download=False)
    msg = str(err.value)
    assert "--data-dir" in msg and "https://www.cs.toronto.edu/~kriz/" in msg and "apt-get" not in msg


def test_download_checksum_mismatch_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data, "_fetch", lambda url, out: out.write(b"not the real file"))
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert md5(b"not the real file") in msg
    assert not (tmp_path / "mnist").exists()  # not even the empty cache folder the download created


def test_download_falls_back_to_mirror(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = tmp_path / "server"
    write_idx_set(source)
    accept_files(monkeypatch, "mnist", source)
    calls: list[str] = []

    def fake_fetch(url: str, out: BinaryIO) -> None:
        calls.append(url)
        if "ossci" in url:
            raise urllib.error.URLError("mirror down")
        out.write((source / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    ds = load_dataset("mnist", tmp_path / "dl")
    assert len(ds.train_labels) == 12 and len(calls) == 8
    assert sorted(p.name for p in (tmp_path / "dl" / "mnist").iterdir()) == sorted(IDX_NAMES)
    monkeypatch.setattr(data, "_fetch", lambda url, out: pytest.fail("cached files were downloaded again"))
    assert torch.equal(load_dataset("mnist", tmp_path / "dl").test_images, ds.test_images)


# --------------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str) -> None:
    filename = data.FILES[kind][0].filename
    train_x, train_y, test_x, test_y = write_cifar(tmp_path / kind / filename, kind)
    accept_files(monkeypatch, kind, tmp_path / kind)
    ds = load_dataset(kind, tmp_path)
    assert ds.num_classes == (10 if kind == "cifar10" else 100) and ds.augment == "crop_flip"
    assert ds.in_channels == 3 and ds.image_size == (32, 32) and len(ds.mean) == 3
    assert ds.train_images.shape == (10 if kind == "cifar10" else 4, 3, 32, 32)
    # cifar_pattern is defined in [n, c, y, x] order: channel-major rows must come back there
    assert np.array_equal(ds.train_images.numpy(), train_x) and np.array_equal(ds.test_images.numpy(), test_x)
    assert int(ds.train_images[1, 2, 5, 9]) == (1 * 7 + 2 * 50 + 5 * 3 + 9) % 256
    assert ds.train_labels.tolist() == train_y.tolist() and ds.test_labels.tolist() == test_y.tolist()


def test_cifar_missing_member(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "cifar-100-python.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz"):
        pass
    path.write_bytes(buf.getvalue())
    accept_files(monkeypatch, "cifar100", tmp_path)
    with pytest.raises(ValueError, match="lacks cifar-100-python/test"):
        load_dataset("cifar100", tmp_path)


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": Evil(marker)}, protocol=2)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        data.RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    assert not marker.exists()
    # an ordinary numpy pickle is fine
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(data.RestrictedUnpickler(io.BytesIO(pickle.dumps(arr, protocol=3))).load(), arr)


def test_cifar_archive_with_malicious_pickle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": Evil(marker)}, protocol=3)
    write_cifar(tmp_path / "cifar-10-python.tar.gz", "cifar10", extra={"cifar-10-batches-py/data_batch_1": evil})
    accept_files(monkeypatch, "cifar10", tmp_path)  # even a file that passes the checksum cannot run code
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar_unverified_archive_is_not_parsed(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-python.tar.gz", "cifar10")
    with pytest.raises(ValueError, match="checksum mismatch.*c58f30108f718f92721af3b95e74349a"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------------------------------
# encodings and BatchLoader
# --------------------------------------------------------------------------------------------------
def test_encode() -> None:
    images = torch.rand(4, 2, 5, 5)
    assert encode(images, "direct", None, None) is images
    g = torch.Generator().manual_seed(0)
    extremes = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(3, 2, 4, 4)
    spikes = encode(extremes, "poisson", 7, g)
    assert spikes.shape == (7, 3, 2, 4, 4)
    assert spikes[:, :, 0].sum() == 0 and spikes[:, :, 1].min() == 1
    with pytest.raises(ValueError, match="'rate'"):
        encode(images, "rate", 4, None)
    with pytest.raises(ValueError, match="timesteps"):
        encode(images, "poisson", 0, None)


def test_loader_direct_normalisation() -> None:
    ds = load_dataset("synthetic", train_size=40, test_size=10)
    x, y = next(iter(BatchLoader(ds, "train", 16, shuffle=False)))
    mean, std = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    expected = (ds.train_images[:16].double() / 255 - mean.double()) / std.double()
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
    assert torch.allclose(x.double(), expected, atol=1e-5) and torch.equal(y, ds.train_labels[:16])


def test_loader_poisson() -> None:
    ds = load_dataset("synthetic", train_size=64, test_size=8)
    loader = BatchLoader(ds, "train", 32, shuffle=True, encoding="poisson", timesteps=50)
    x, _ = next(iter(loader))
    assert x.shape == (50, 32, 3, 32, 32) and x.dtype == torch.float32
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    unshuffled_x, _ = next(iter(BatchLoader(ds, "train", 64, shuffle=False, encoding="poisson", timesteps=50)))
    rate, intensity = unshuffled_x.mean(0), ds.train_images.float() / 255
    assert abs(rate.mean().item() - intensity.mean().item()) < 0.01
    assert torch.corrcoef(torch.stack([rate.flatten(), intensity.flatten()]))[0, 1] > 0.9


def test_loader_reproducible_per_epoch() -> None:
    ds = load_dataset("synthetic", train_size=50, test_size=10, augment="crop_flip")

    def make(seed: int = 0) -> BatchLoader:
        return BatchLoader(ds, "train", 16, shuffle=True, seed=seed, encoding="poisson", timesteps=3)

    run = make()
    epochs = []
    for epoch in range(3):
        run.set_epoch(epoch)
        epochs.append(collect(run))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epochs[2], collect(run)))  # re-iterating repeats
    resumed = make()
    resumed.set_epoch(2)  # a fresh process resuming at epoch 2
    for (xa, ya), (xb, yb) in zip(epochs[2], collect(resumed)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = [torch.cat([y for _, y in e]) for e in epochs]
    assert not torch.equal(order[0], order[1]) and not torch.equal(epochs[0][0][0], epochs[1][0][0])
    assert not torch.equal(collect(make(seed=1))[0][0], epochs[0][0][0])
    # shuffling is a permutation: every sample appears exactly once per epoch
    assert sorted(order[0].tolist()) == sorted(ds.train_labels.tolist())


def test_loader_crop_flip_only_shifts_and_flips() -> None:
    for size, pad in ((8, 1), (32, 4)):
        image = (torch.arange(2 * size * size) % 250 + 1).to(torch.uint8).view(2, size, size)  # no zeros
        ds = pattern_dataset(image, copies=64)
        loader = BatchLoader(ds, "train", 64, shuffle=True)
        assert loader.augment and loader.pad == pad
        x, _ = next(iter(loader))
        out = (x * 255).round().to(torch.uint8)
        assert out.shape == (64, 2, size, size)
        padded = F.pad(image, (pad, pad, pad, pad))
        seen: set[tuple[int, int, bool]] = set()
        for sample in out:
            matches = [(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (False, True)
                       if torch.equal(sample, (lambda c: c.flip(-1) if flip else c)(padded[:, dy:dy + size, dx:dx + size]))]
            assert matches, "augmented sample is not a shifted/flipped copy with zero padding"
            seen.add(matches[0])
        assert len(seen) > 5 and {m[2] for m in seen} == {False, True}


def test_loader_augment_defaults() -> None:
    ds = load_dataset("synthetic", train_size=8, test_size=8, augment="crop_flip")
    assert BatchLoader(ds, "train", 4, shuffle=True).augment
    assert not BatchLoader(ds, "test", 4, shuffle=False).augment
    assert not BatchLoader(ds, "train", 4, shuffle=True, augment=False).augment
    plain = load_dataset("synthetic", train_size=8, test_size=8)
    assert not BatchLoader(plain, "train", 4, shuffle=True).augment
    assert BatchLoader(plain, "test", 4, shuffle=False, augment=True).augment


@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_len_limit_drop_last(drop_last: bool) -> None:
    ds = load_dataset("synthetic", train_size=50, test_size=23)
    loader = BatchLoader(ds, "test", 10, shuffle=False, drop_last=drop_last)
    batches = collect(loader)
    assert len(batches) == len(loader) == (2 if drop_last else 3) and loader.num_samples == 23
    assert [len(y) for _, y in batches] == ([10, 10] if drop_last else [10, 10, 3])
    limited = BatchLoader(ds, "train", 8, shuffle=True, limit=20, drop_last=drop_last)
    labels = torch.cat([y for _, y in limited])
    assert limited.num_samples == 20 and len(limited) == (2 if drop_last else 3)
    if not drop_last:
        assert sorted(labels.tolist()) == sorted(ds.train_labels[:20].tolist())
    assert BatchLoader(ds, "train", 8, shuffle=False, limit=1000).num_samples == 50


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size"), ({"encoding": "rate"}, "'rate'"),
    ({"encoding": "poisson"}, "timesteps"), ({"encoding": "poisson", "timesteps": 0}, "timesteps"),
    ({"split": "val"}, "'val'"), ({"limit": 0}, "limit"),
])
def test_loader_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    ds = load_dataset("synthetic", train_size=8, test_size=8)
    args: dict[str, object] = {"split": "train", "batch_size": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        BatchLoader(ds, args.pop("split"), args.pop("batch_size"), shuffle=False, **args)  # type: ignore[arg-type]


# --- validation split (issue 14) -----------------------------------------------------------------


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(x.flatten().tolist()) for x in images}


def test_validation_split_is_disjoint_from_train_and_test_and_stable_for_a_seed():
    from spikeprune.engine.data import split_validation, validation_indices

    ds = load_dataset("digits")
    fit_set, val_set, info = split_validation(ds, 0.1, seed=3)
    n = len(ds.train_labels)
    assert info == {"fraction": 0.1, "seed": 3, "train_size": n - round(0.1 * n), "val_size": round(0.1 * n),
                    "test_size": len(ds.test_labels)}
    assert len(fit_set.train_labels) == info["train_size"] and len(val_set.test_labels) == info["val_size"]
    # as index sets: a partition of the training split
    tr, va = validation_indices(n, 0.1, 3)
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(set(tr.tolist()) | set(va.tolist())) == n
    assert torch.equal(val_set.test_images, ds.train_images[va]) and torch.equal(fit_set.train_images, ds.train_images[tr])
    # as content: no validation image is a training or a test image (digits has no duplicate images
    # across these splits; a shared image would mean leakage, whatever its index)
    val_rows = _rows(val_set.test_images)
    assert val_rows.isdisjoint(_rows(fit_set.train_images)) and val_rows.isdisjoint(_rows(ds.test_images))
    assert fit_set.test_images is ds.test_images  # the test split is untouched
    # stable: same seed -> the same indices, recomputed from scratch (not just the cache)
    assert torch.equal(validation_indices(n, 0.1, 3)[1], va)
    assert va.tolist() == sorted(va.tolist())
    # recorded 2026-12-07 (torch 2.13.0 CPU): pins the split across processes, machines and versions,
    # so a saved run's validation set is the one a resumed or re-run one gets
    assert va[:5].tolist() == [10, 14, 32, 33, 45]
    other = validation_indices(n, 0.1, 4)[1]
    assert not torch.equal(other, va)
    # fraction 0: no validation set, the dataset itself
    same, none, info0 = split_validation(ds, 0.0)
    assert same is ds and none is None and info0["val_size"] == 0


def test_validation_split_rejects_bad_fraction():
    from spikeprune.engine.data import validation_indices

    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            validation_indices(100, bad, 0)


def test_training_loader_never_reads_validation_samples():
    from spikeprune.engine.config import TrainConfig
    from spikeprune.engine.train import make_loaders, make_val_loader

    ds = load_dataset("digits")
    cfg = TrainConfig(val_fraction=0.2, val_seed=1, batch_size=64)
    train, _ = make_loaders(cfg, ds)
    val = make_val_loader(cfg, ds)
    assert not val.augment and train.num_samples + val.num_samples == len(ds.train_labels)
    seen_train = _rows(torch.cat([x for x, _ in train]).mul(torch.tensor(ds.std).view(1, -1, 1, 1))
                       .add(torch.tensor(ds.mean).view(1, -1, 1, 1)).mul(255).round().to(torch.uint8))
    seen_val = _rows(torch.cat([x for x, _ in val]).mul(torch.tensor(ds.std).view(1, -1, 1, 1))
                     .add(torch.tensor(ds.mean).view(1, -1, 1, 1)).mul(255).round().to(torch.uint8))
    assert seen_train.isdisjoint(seen_val) and len(seen_val) > 0
