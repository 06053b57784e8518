"""Event datasets through tonic: files in tonic's on-disk formats -> frames [T, B, 2, H, W], cache, checksums, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tonic")

from event_files import synthetic_nmnist, write_aedat4, write_gesture_npy, write_nmnist_bin  # noqa: E402
from spikeprune.cli import main  # noqa: E402
from spikeprune.core.diagnostics import UserError  # noqa: E402
from spikeprune.engine import data, events  # noqa: E402
from spikeprune.engine.datasets import EventDataset  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    def refuse(url, out):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(data, "_fetch", refuse)
    monkeypatch.setattr(data, "CACHE_ROOT", tmp_path / "cache")


# A hand-built N-MNIST recording (x, y, p, t_us). tonic's ToFrame(n_time_bins=4) slices [t0, t_last) into
# windows of (t_last - t0) // 4 = 100 us, so the event at t_last = 400 falls in no bin (searchsorted end).
NMNIST_EVENTS = [(1, 2, 1, 0), (1, 2, 1, 50), (3, 4, 0, 120), (33, 33, 1, 250), (5, 6, 0, 399), (7, 7, 1, 400)]


def expected_nmnist_time_frames() -> np.ndarray:
    f = np.zeros((4, 2, 34, 34), dtype=np.uint8)
    f[0, 1, 2, 1] = 2      # two events at x=1, y=2, on-polarity in [0, 100)
    f[1, 0, 4, 3] = 1
    f[2, 1, 33, 33] = 1
    f[3, 0, 6, 5] = 1
    return f


def write_nmnist_tree(root: Path) -> None:
    write_nmnist_bin(root / "Train" / "3" / "00001.bin", NMNIST_EVENTS)
    write_nmnist_bin(root / "Train" / "7" / "00002.bin", [(0, 0, 0, 10), (0, 0, 0, 20), (2, 1, 1, 30)])
    write_nmnist_bin(root / "Test" / "5" / "00003.bin", [(4, 4, 1, 1000), (4, 4, 1, 1008), (4, 5, 0, 1016)])


def test_nmnist_bin_files_to_frames_numerically(tmp_path):
    write_nmnist_tree(tmp_path / "NMNIST")  # a folder laid out as tonic's save_to/NMNIST
    ds = data.load_dataset("nmnist", tmp_path, download=False, time_bins=4)
    assert isinstance(ds, EventDataset)
    assert (ds.in_channels, ds.image_size, ds.num_classes, ds.time_bins) == (2, (34, 34), 10, 4)
    assert ds.train_labels.tolist() == [3, 7] and ds.test_labels.tolist() == [5]
    np.testing.assert_array_equal(ds.frames("train")[0].numpy(), expected_nmnist_time_frames())
    # Second train sample: t in [10, 30], window (30-10)//4 = 5: bins [10,15) [15,20) [20,25) [25,30)
    second = ds.frames("train")[1].numpy()
    assert second[0, 0, 0, 0] == 1 and second[2, 0, 0, 0] == 1 and second.sum() == 2
    # The loader: no encoding, T = 2 sums pairs of bins -> [T, B, 2, H, W] spike counts.
    loader = data.BatchLoader(ds, "train", 2, shuffle=False, encoding="events", timesteps=2)
    x, y = next(iter(loader))
    assert x.shape == (2, 2, 2, 34, 34) and x.dtype == torch.float32 and y.tolist() == [3, 7]
    f = torch.from_numpy(expected_nmnist_time_frames()).float()
    torch.testing.assert_close(x[:, 0], torch.stack([f[0] + f[1], f[2] + f[3]]))
    assert float(x[:, 0].sum()) == 5  # 6 events, the last one outside tonic's last window


def test_nmnist_count_binning_and_denoise(tmp_path):
    write_nmnist_tree(tmp_path)
    ds = data.load_dataset("nmnist", tmp_path, download=False, time_bins=2, binning="count")
    f = ds.frames("train")[0].numpy()
    # n_event_bins=2 of 6 events: events [0:3] and [3:6] (every event counted).
    assert f[0, 1, 2, 1] == 2 and f[0, 0, 4, 3] == 1 and f[0].sum() == 3
    assert f[1, 1, 33, 33] == 1 and f[1, 0, 6, 5] == 1 and f[1, 1, 7, 7] == 1 and f[1].sum() == 3
    # tonic Denoise(filter_time=10): an event survives if a 4-neighbour fired within the last 10 us:
    # (4,4)@1000 and (4,4)@1008 have none, (4,5)@1016 has (4,4)@1008.
    dn = data.load_dataset("nmnist", tmp_path, download=False, time_bins=1, binning="count", denoise_us=10)
    kept = dn.frames("test")[0].numpy()
    assert kept.sum() == 1 and kept[0, 0, 5, 4] == 1


def test_gesture_npy_files_downsampled(tmp_path):
    root = tmp_path / "dvsgesture"  # data_dir/<name>/ as for the image datasets
    # rows (x, y, p, t_ms); spatial_factor 0.25 maps x=9 -> 2, y=13 -> 3 (tonic Downsample floors).
    write_gesture_npy(root / "ibmGestureTrain" / "user01_fluorescent" / "4.npy",
                      [(9, 13, 1, 0), (10, 14, 1, 1), (127, 0, 0, 2), (64, 64, 0, 4)])
    write_gesture_npy(root / "ibmGestureTest" / "user24_led" / "10.npy", [(0, 0, 0, 0), (1, 1, 1, 3)])
    ds = data.load_dataset("dvsgesture", tmp_path, download=False, time_bins=2)
    assert (ds.image_size, ds.num_classes, ds.train_labels.tolist(), ds.test_labels.tolist()) == \
        ((32, 32), 11, [4], [10])
    f = ds.frames("train")[0].numpy()
    # t (us) 0, 1000, 2000, 4000: windows of 2000 us -> [0, 2000): 2 events, [2000, 4000): 1, t=4000 out.
    assert f[0, 1, 3, 2] == 2 and f[0].sum() == 2
    assert f[1, 0, 0, 31] == 1 and f[1].sum() == 1


def test_cifar10dvs_aedat4_files_and_split(tmp_path):
    root = tmp_path / "CIFAR10DVS"  # tonic's save_to/CIFAR10DVS/<class>/<id>.aedat4
    for i in range(10):  # 10 "cat" recordings (label 3): the first 9 train, the last tests (90/10 per class)
        write_aedat4(root / "cat" / f"cifar10_cat_{i}.aedat4", [(8, 12, 1, 0), (9, 13, 1, 10 + i), (100, 40, 0, 50),
                                                               (0, 127, 0, 99), (5, 5, 1, 100)])
    write_aedat4(root / "truck" / "cifar10_truck_0.aedat4", [(0, 0, 0, 0), (4, 4, 1, 1)])
    ds = data.load_dataset("cifar10dvs", tmp_path, download=False, time_bins=2)
    assert ds.train_labels.tolist() == [3] * 9 + [9] and ds.test_labels.tolist() == [3]
    assert ds.image_size == (32, 32) and ds.num_classes == 10
    f = ds.frames("train")[0].numpy()
    # t in [0, 100], windows of 50 us: [0, 50): (8,12),(9,13) -> pixel (2, 3) on twice; [50, 100): (100,40) off
    # -> (25, 10), (0,127) off -> (0, 31); t = 100 outside the last window.
    assert f[0, 1, 3, 2] == 2 and f[0].sum() == 2
    assert f[1, 0, 10, 25] == 1 and f[1, 0, 31, 0] == 1 and f[1].sum() == 2
    truck = ds.frames("train")[9].numpy()   # t in [0, 1]: window 1 // 2 = 0 us: tonic's bins are empty
    assert truck.sum() == 0


def test_cache_is_keyed_by_settings_and_reused(tmp_path, monkeypatch):
    write_nmnist_tree(tmp_path)
    a = data.load_dataset("nmnist", tmp_path, download=False, time_bins=4)
    cache = tmp_path / "nmnist"
    files = sorted(cache.glob("frames-*.safetensors"))
    assert len(files) == 1
    def no_rebuild(*args, **kwargs):
        raise AssertionError("frames rebuilt although cached")
    build = events._build_frames
    monkeypatch.setattr(events, "_build_frames", no_rebuild)
    b = data.load_dataset("nmnist", tmp_path, download=False, time_bins=4)
    assert torch.equal(a.train_images, b.train_images)
    with pytest.raises(AssertionError, match="rebuilt"):  # other settings: another key, built again
        data.load_dataset("nmnist", tmp_path, download=False, time_bins=2)
    key = events.cache_key("nmnist", events.FrameSettings(time_bins=4), ["x"])
    assert key != events.cache_key("nmnist", events.FrameSettings(time_bins=4, denoise_us=1), ["x"])
    assert key != events.cache_key("nmnist", events.FrameSettings(time_bins=4), ["y"])
    # Without tonic (the extra not installed): the cache still loads; building frames is one UserError.
    monkeypatch.setattr(events, "_build_frames", build)
    monkeypatch.setitem(sys.modules, "tonic", None)  # `import tonic` raises ImportError
    c = data.load_dataset("nmnist", tmp_path, download=False, time_bins=4)
    assert torch.equal(a.train_images, c.train_images)
    with pytest.raises(UserError, match=r"needs tonic.*spikeprune\[events\]"):
        data.load_dataset("nmnist", tmp_path, download=False, time_bins=1)


def _zip_of(folder: Path, arc_root: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.rglob("*.bin")):
            z.write(p, f"{arc_root}/{p.relative_to(folder)}")
    return buf.getvalue()


def test_checksummed_archive_download_and_refusals(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_nmnist_tree(src)
    blobs = {"train.zip": _zip_of(src / "Train", "Train"), "test.zip": _zip_of(src / "Test", "Test")}
    specs = tuple(data.RemoteFile(n, (f"https://example.invalid/{n}",), hashlib.md5(b).hexdigest())
                  for n, b in blobs.items())
    monkeypatch.setitem(data.FILES, "nmnist", specs)
    # Offline, nothing on disk: one clear FileNotFoundError naming the files.
    with pytest.raises(FileNotFoundError, match="train.zip"):
        data.load_dataset("nmnist", download=True)
    served = dict(blobs)
    monkeypatch.setattr(data, "_fetch", lambda url, out: out.write(served[url.rsplit("/", 1)[1]]))
    ds = data.load_dataset("nmnist", time_bins=4)   # downloaded into CACHE_ROOT/nmnist, verified, extracted
    np.testing.assert_array_equal(ds.frames("train")[0].numpy(), expected_nmnist_time_frames())
    assert (data.CACHE_ROOT / "nmnist" / "train.zip").is_file()
    # A corrupt archive given by the user is refused by its md5 before anything is read.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.zip").write_bytes(b"not a zip")
    (bad / "test.zip").write_bytes(blobs["test.zip"])
    with pytest.raises(UserError, match="checksum mismatch"):
        data.load_dataset("nmnist", bad, download=False)
    # A download that does not match the published md5 leaves nothing behind.
    served["train.zip"] = b"tampered"
    empty = tmp_path / "empty"
    with pytest.raises(UserError, match="checksum mismatch"):
        data.load_dataset("nmnist", empty)
    assert not list((empty / "nmnist").glob("*.zip"))


def test_bad_options_and_encodings(tmp_path):
    write_nmnist_tree(tmp_path)
    # Options in the name (as --dataset passes them) are the keyword options.
    assert data.parse_dataset("N-MNIST: time_bins=4, binning=count, spatial_factor=0.5") == \
        ("nmnist", {"time_bins": 4, "binning": "count", "spatial_factor": 0.5})
    named = data.load_dataset("nmnist:time_bins=4", tmp_path, download=False)
    assert named.time_bins == 4 and torch.equal(
        named.train_images, data.load_dataset("nmnist", tmp_path, download=False, time_bins=4).train_images)
    for bad, match in (("nmnist:time_bins", "key=value"), ("nmnist:bins=3", "unknown option"),
                       ("nmnist:time_bins=0", "time_bins"), ("nmnist:spatial_factor=2", "spatial_factor")):
        with pytest.raises(UserError, match=match):
            data.load_dataset(bad, tmp_path, download=False)
    with pytest.raises(UserError, match="binning"):
        data.load_dataset("nmnist", tmp_path, binning="sometimes")
    with pytest.raises(UserError, match="unknown option"):
        data.load_dataset("nmnist", tmp_path, bins=3)
    ds = data.load_dataset("nmnist", tmp_path, download=False, time_bins=4)
    with pytest.raises(UserError, match="use encoding 'events'"):
        data.BatchLoader(ds, "train", 2, shuffle=False, encoding="direct")
    with pytest.raises(UserError, match="divide"):
        data.BatchLoader(ds, "train", 2, shuffle=False, encoding="events", timesteps=3)
    with pytest.raises(UserError, match="image dataset"):
        data.BatchLoader(data.load_dataset("digits"), "train", 2, shuffle=False, encoding="events", timesteps=2)
    fit, val, info = data.split_validation(ds, 0.5, seed=0)  # the split keeps the EventDataset
    assert isinstance(fit, EventDataset) and isinstance(val, EventDataset) and val.time_bins == 4


def _hand_counts(root: Path, time_bins: int = 4) -> dict[str, int]:
    """Counted by hand from the N-MNIST files written under ``root``: samples per split, and the events of
    the test split that fall in tonic's ``time_bins`` windows of ``(t_last - t0) // time_bins`` us from t0
    (events at or after ``t0 + time_bins * window`` fall in no frame; see NMNIST_EVENTS)."""
    counts = {"train": 0, "test": 0, "test_events": 0}
    for split, folder in (("train", "Train"), ("test", "Test")):
        for f in sorted((root / folder).glob("*/*.bin")):
            raw = f.read_bytes()
            t = [((raw[i + 2] & 0x7F) << 16) | (raw[i + 3] << 8) | raw[i + 4] for i in range(0, len(raw), 5)]
            counts[split] += 1
            if split == "test":
                end = t[0] + time_bins * ((t[-1] - t[0]) // time_bins)
                counts["test_events"] += sum(1 for v in t if v < end)
    return counts


def _is_fraction_of(rate: float, n: int) -> bool:
    """Whether ``rate`` is k / n for a whole k in [0, n] (an accuracy over n samples)."""
    return 0 <= rate <= 1 and abs(rate * n - round(rate * n)) < 1e-6


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_dense_lottery_cost_on_nmnist(capsys, tmp_path):
    """Smoke configuration end to end on N-MNIST-format files: train, evaluate, lottery, cost."""
    synthetic_nmnist(tmp_path / "d", per_class=6, classes=10, events_per_sample=40)
    # The frame settings travel in the dataset's name, so evaluate and cost (which read the checkpoint's
    # recorded config) rebuild the same 4-bin frames.
    common = ["--dataset", "nmnist:time_bins=4", "--encoding", "events", "--data-dir", tmp_path / "d", "--model", "convnet",
              "--width", "0.25", "--timesteps", "2", "--batch-size", "32", "--no-progress"]
    code, _, err = run_cli(capsys, "train", *common, "--epochs", "1", "--out", tmp_path / "dense")
    assert code == 0, err
    m = json.loads((tmp_path / "dense" / "metrics.json").read_text())
    assert m["config"]["encoding"] == "events" and m["config"]["dataset"] == "nmnist:time_bins=4"
    hand = _hand_counts(tmp_path / "d")
    assert (hand["train"], hand["test"]) == (60, 60)
    assert _is_fraction_of(m["test_accuracy"], hand["test"])  # correct test samples / the 60 written
    frames = data.load_dataset("nmnist:time_bins=4", tmp_path / "d", download=False).frames("test")
    assert frames.shape[0] == hand["test"] and float(frames.sum()) == hand["test_events"]
    ck = tmp_path / "dense" / "checkpoint.safetensors"
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", ck, "--data-dir", tmp_path / "d",
                           "--out", tmp_path / "ev")
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test_accuracy"] == \
        pytest.approx(m["test_accuracy"])
    code, _, err = run_cli(capsys, "lottery", *common, "--epochs", "2", "--rounds", "1", "--prune-fraction", "0.5",
                           "--out", tmp_path / "lot")
    assert code == 0, err
    code, out, err = run_cli(capsys, "cost", "--checkpoint", ck, "--data-dir", tmp_path / "d", "--batches", "1",
                             "--latency-repeats", "1", "--out", tmp_path / "cost")
    assert code == 0, err
    report = json.loads((tmp_path / "cost" / "cost.json").read_text())
    assert report["samples"] == min(256, hand["test"])  # --batches 1 of cost's batch size 256: every test sample
    # Mixing the two kinds of input is one line, exit 2.
    code, _, err = run_cli(capsys, "train", *common[:2], "--encoding", "direct", "--data-dir", tmp_path / "d",
                           "--epochs", "1", "--no-progress", "--out", tmp_path / "bad")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "events" in err


def test_interop_runs_a_users_snntorch_net_on_event_frames(capsys, tmp_path):
    """`interop` (a user's own network) feeds an event dataset's [T, B, 2, H, W] counts, no encoding."""
    pytest.importorskip("snntorch")
    synthetic_nmnist(tmp_path / "d", per_class=4, classes=10, events_per_sample=40)
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\nimport snntorch as snn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 34 * 34, 10),\n"
        "                         snn.Leaky(beta=0.5, init_hidden=True, output=True))\n")
    code, _, err = run_cli(capsys, "interop", "--model", f"{tmp_path / 'net.py'}:build", "--dataset",
                           "nmnist:time_bins=4", "--data-dir", tmp_path / "d", "--timesteps", "2", "--epochs", "1",
                           "--batch-size", "16", "--out", tmp_path / "iop")
    assert code == 0, err
    m = json.loads((tmp_path / "iop" / "metrics.json").read_text())
    hand = _hand_counts(tmp_path / "d")
    assert m["dataset"] == "nmnist:time_bins=4" and m["timesteps"] == 2 and hand["test"] == 40
    assert _is_fraction_of(m["dense"]["accuracy"], hand["test"]) and _is_fraction_of(m["pruned"]["accuracy"], hand["test"])
    assert m["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert m["energy_uj"] == json.loads((tmp_path / "iop" / "cost.json").read_text())["total"]["energy_uj"]
