"""Training: metrics and files, determinism, exact resume after a kill, checkpoints that rebuild models."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikeprune.engine.config import TrainConfig
from spikeprune.engine.data import load_dataset
from spikeprune.core.io import load_checkpoint
from spikeprune.engine.train import CHECKPOINT, evaluate, fit, load_model, make_loaders, spike_loss

TINY = dict(model="convnet", dataset="synthetic", width=0.25, timesteps=2, batch_size=32, lr=0.05,
            train_limit=128, test_limit=64)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", num_classes=4, in_channels=1, image_size=8, train_size=128, test_size=64)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fit_writes_metrics_history_and_checkpoint(tmp_path, synthetic):
    cfg = TrainConfig(**TINY, epochs=2)
    result = fit(cfg, tmp_path, dataset=synthetic, progress=False, log=None)
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test_accuracy", "val_accuracy", "best_val_epoch", "best_val_accuracy", "test_accuracy_at_best_val",
                "validation", "train_loss", "epochs", "seconds", "firing_rate"):
        assert key in m
    assert "best_test_accuracy" not in m  # issue 14: nothing is selected on the test set
    # the selected epoch is the one with the best validation accuracy, and its test accuracy is that epoch's
    hist = list(csv.DictReader(io.StringIO((tmp_path / "history.csv").read_text())))
    best = max(hist, key=lambda r: float(r["val_accuracy"]))
    assert m["best_val_accuracy"] == pytest.approx(float(best["val_accuracy"]))
    assert m["test_accuracy_at_best_val"] == pytest.approx(float(hist[m["best_val_epoch"] - 1]["test_accuracy"]))
    assert m["validation"] == {"fraction": 0.1, "seed": 0, "train_size": len(synthetic.train_labels) - m["validation"]["val_size"],
                               "val_size": round(0.1 * len(synthetic.train_labels)), "test_size": len(synthetic.test_labels)}
    last = hist[-1]
    assert m["test_accuracy"] == pytest.approx(float(last["test_accuracy"]))
    assert m["firing_rate"] == pytest.approx(float(last["firing_rate"]))
    again = evaluate(result.model, make_loaders(cfg, synthetic)[1])
    assert again["test_accuracy"] == pytest.approx(m["test_accuracy"]) and again["firing_rate"] == pytest.approx(m["firing_rate"])
    assert m["epochs"] == 2 and m == result.metrics | {}
    rows = (tmp_path / "history.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss") and len(rows) == 3
    _, meta = load_checkpoint(tmp_path / CHECKPOINT)
    assert meta["epoch"] == 2 and meta["kind"] == "train"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_training_learns(tmp_path, synthetic):
    cfg = TrainConfig(**TINY, epochs=6)
    m = fit(cfg, tmp_path, dataset=synthetic, progress=False, log=None).metrics
    assert m["best_val_accuracy"] > 0.8 and m["test_accuracy_at_best_val"] > 0.8  # 4 well-separated synthetic classes


def test_same_seed_same_weights(tmp_path, synthetic):
    cfg = TrainConfig(**TINY, epochs=2)
    a = fit(cfg, tmp_path / "a", dataset=synthetic, progress=False, log=None).model
    b = fit(cfg, tmp_path / "b", dataset=synthetic, progress=False, log=None).model
    assert all(torch.equal(x, y) for x, y in zip(_state(a).values(), _state(b).values()))


@pytest.mark.parametrize("extra", [dict(), dict(encoding="poisson", optimizer="adam", lr=0.01)])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, synthetic, extra):
    cfg = TrainConfig(**{**TINY, **extra}, epochs=4)
    straight = fit(cfg, tmp_path / "straight", dataset=synthetic, progress=False, log=None)

    def crash(epoch, model):
        if epoch == 1:
            raise KeyboardInterrupt  # dies right after epoch 2's checkpoint, like a kill
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "resumed", dataset=synthetic, on_epoch_end=crash, progress=False, log=None)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    torch.manual_seed(12345)  # resuming must not depend on the global RNG of the new process
    resumed = fit(cfg, tmp_path / "resumed", resume=True, dataset=synthetic, progress=False, log=None)
    for (k, a), b in zip(_state(straight.model).items(), _state(resumed.model).values()):
        assert torch.equal(a, b), k
    for key in ("test_accuracy", "train_loss", "best_val_accuracy", "best_val_epoch", "test_accuracy_at_best_val"):
        assert straight.metrics[key] == resumed.metrics[key]


@pytest.mark.slow
def test_sigkill_then_resume_cli(tmp_path):
    """A real ``kill -9`` of ``spikeprune train`` mid-run; ``--resume`` ends with identical weights."""
    args = ["--model", "convnet", "--dataset", "digits", "--width", "0.25", "--timesteps", "2",
            "--epochs", "12", "--batch-size", "32", "--seed", "3", "--no-progress"]
    cmd = [sys.executable, "-m", "spikeprune.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + ["train", *args, "--out", str(tmp_path / "straight")], check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["train", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / CHECKPOINT).exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, meta = load_checkpoint(killed / CHECKPOINT)
    assert meta["epoch"] < 12, "the run finished before it could be killed"
    subprocess.run(cmd + ["train", *args, "--out", str(killed), "--resume"], check=True, env=env,
                   capture_output=True)
    a, _ = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    b, _ = load_checkpoint(killed / CHECKPOINT)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_and_to_resume_different_hparams(tmp_path, synthetic):
    cfg = TrainConfig(**TINY, epochs=1)
    fit(cfg, tmp_path, dataset=synthetic, progress=False, log=None)
    with pytest.raises(ValueError, match="already holds a run"):
        fit(cfg, tmp_path, dataset=synthetic, progress=False, log=None)
    with pytest.raises(ValueError, match="beta"):
        fit(TrainConfig(**TINY, epochs=1, beta=0.6), tmp_path, resume=True, dataset=synthetic,
            progress=False, log=None)


def test_checkpoint_rebuilds_the_model(tmp_path, synthetic):
    cfg = TrainConfig(**TINY, epochs=1)
    trained = fit(cfg, tmp_path, dataset=synthetic, progress=False, log=None).model.eval()
    rebuilt, meta = load_model(tmp_path / CHECKPOINT)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(trained(x), rebuilt.eval()(x))
    _, test = make_loaders(cfg, synthetic)
    assert evaluate(rebuilt, test)["test_accuracy"] == pytest.approx(meta["history"][-1]["test_accuracy"])


def test_after_step_hook_and_extra_tensors(tmp_path, synthetic):
    calls = []
    cfg = TrainConfig(**TINY, epochs=1)
    fit(cfg, tmp_path, dataset=synthetic, after_step=lambda m: calls.append(1),
        extra_tensors=lambda: {"mask/x": torch.ones(3, dtype=torch.bool)}, progress=False, log=None)
    assert len(calls) == 4  # 128 samples / batch 32
    tensors, _ = load_checkpoint(tmp_path / CHECKPOINT)
    assert tensors["extra/mask/x"].dtype == torch.bool


def test_bf16_runs(tmp_path, synthetic):
    cfg = TrainConfig(**TINY, epochs=1, bf16=True)
    result = fit(cfg, tmp_path, dataset=synthetic, progress=False, log=None)
    test = make_loaders(cfg, synthetic)[1]
    # the reported accuracy is the bf16 forward's; the fp32 one of the same weights differs only by rounding
    assert evaluate(result.model, test, bf16=True)["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    fp32 = fit(TrainConfig(**TINY, epochs=1), tmp_path / "fp32", dataset=synthetic, progress=False, log=None)
    w16, w32 = (next(r.model.parameters()) for r in (result, fp32))
    assert not torch.equal(w16, w32) and torch.allclose(w16, w32, atol=0.05)  # autocast really ran, same run


def test_losses():
    out = torch.randn(4, 3, 5)
    y = torch.tensor([0, 1, 2])
    per_t = sum(torch.nn.functional.cross_entropy(out[t], y) for t in range(4)) / 4
    assert torch.allclose(spike_loss(out, y, "per_timestep"), per_t)
    assert torch.allclose(spike_loss(out, y, "mean_output"), torch.nn.functional.cross_entropy(out.mean(0), y))


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_checkpoint(bad)
    from safetensors.torch import save_file
    save_file({"w": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a spikeprune checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    assert not Path(tmp_path / "missing.safetensors").exists()


def test_device_choice_is_validated_and_auto_falls_back_to_cpu():
    import torch

    from spikeprune.engine.config import TrainConfig
    from spikeprune.engine.train import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(device="gpu0")
    # where a run executes is not part of what it computes: resuming on another device is allowed
    from spikeprune.core.config import hyperparameters

    assert "device" not in hyperparameters(TrainConfig(device="cpu"))


def test_result_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the final file must be readable like any other."""
    import stat

    from spikeprune.core.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
