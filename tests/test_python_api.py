"""Each CLI command's Python equivalent (docs/reference.md) writes the same result files.

Only wall-clock numbers may differ (seconds, latencies and the speed-ups computed from them); every
accuracy, firing rate, mask, weight and cost count must be equal to the last bit.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import spikeprune as sp
from spikeprune.cli import main

TINY = dict(dataset="digits", width=0.25, timesteps=2, epochs=2, batch_size=64, train_limit=256, test_limit=128)


def _timed(key: str) -> bool:
    """A wall-clock entry: seconds, latencies (ms and percentiles) and the speed-ups computed from them."""
    return key.endswith("seconds") or key.endswith("_ms") or key.startswith("speedup")


def _flags(**values) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _untimed(obj):
    """``obj`` without wall-clock entries (recursively)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not _timed(k)}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _same_json(a: Path, b: Path) -> None:
    assert _untimed(json.loads(a.read_text())) == _untimed(json.loads(b.read_text())), a.name


def _same_csv(a: Path, b: Path) -> None:
    rows = [[_untimed(r) for r in csv.DictReader(p.open())] for p in (a, b)]
    assert rows[0] == rows[1], a.name


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), a.name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same training run, once by ``spikeprune train`` and once by ``sp.fit``."""
    root = tmp_path_factory.mktemp("api")
    assert main(["train", *_flags(**TINY), "--no-progress", "--out", str(root / "cli")]) == 0
    result = sp.fit(sp.TrainConfig(**TINY), root / "py", progress=False, log=None)
    assert isinstance(result, sp.RunResult) and result.out == root / "py"
    return root, result


def test_train_is_fit(trained):
    root, result = trained
    _same_json(root / "cli" / "metrics.json", root / "py" / "metrics.json")
    _same_csv(root / "cli" / "history.csv", root / "py" / "history.csv")
    _same_tensors(root / "cli" / "checkpoint.safetensors", root / "py" / "checkpoint.safetensors")
    assert _untimed(result.metrics) == _untimed(json.loads((root / "py" / "metrics.json").read_text()))
    assert len(result.rows) == TINY["epochs"]


@pytest.mark.slow
def test_lottery_is_run_lottery(tmp_path):
    lot = dict(TINY, rounds=1, rewind_epoch=1, variant="sf-imp-1", calibration_batches=1)
    assert main(["lottery", *_flags(**lot), "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    result = sp.run_lottery(sp.LotteryConfig(**lot), tmp_path / "py", log=None)
    for name in ("results.json", "rounds.csv"):
        (_same_json if name.endswith("json") else _same_csv)(tmp_path / "cli" / name, tmp_path / "py" / name)
    _same_tensors(tmp_path / "cli" / "round_01" / "mask.safetensors", tmp_path / "py" / "round_01" / "mask.safetensors")
    assert [r["round"] for r in result.rows] == [0, 1] and result.metrics == result.rows[-1]
    model, meta = sp.load_ticket(tmp_path / "py", 1)
    assert sp.Mask.from_model(model).density == pytest.approx(result.rows[1]["density"], abs=1e-3)


def test_compress_and_cost(trained, tmp_path):
    root, _ = trained
    ckpt = root / "cli" / "checkpoint.safetensors"
    comp = dict(bits=4, channel_sparsity=0.5, qat_epochs=0, finetune_epochs=1, calibration_batches=1,
                cost_batches=1, latency_repeats=1)
    assert main(["compress", "--checkpoint", str(ckpt), *_flags(**comp), "--no-progress",
                 "--out", str(tmp_path / "cli")]) == 0
    recorded = sp.load_model(ckpt)[1]["config"]
    cfg = sp.CompressConfig(**{k: v for k, v in recorded.items() if k in TINY or k == "model"},
                            checkpoint=str(ckpt), **comp)
    result = sp.compress(cfg, tmp_path / "py", log=None)
    _same_json(tmp_path / "cli" / "metrics.json", tmp_path / "py" / "metrics.json")
    _same_json(tmp_path / "cli" / "cost.json", tmp_path / "py" / "cost.json")
    _same_tensors(tmp_path / "cli" / "model.safetensors", tmp_path / "py" / "model.safetensors")
    model, meta = sp.load_compressed(tmp_path / "py" / "model.safetensors")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model.eval()(x), result.model.eval()(x))
    # spikeprune cost == compression.compress.cost_of_checkpoint (what the command calls)
    from spikeprune.compression.compress import cost_of_checkpoint

    assert main(["cost", "--checkpoint", str(tmp_path / "py" / "model.safetensors"), "--latency-repeats", "0",
                 "--out", str(tmp_path / "cost_cli")]) == 0
    cost_of_checkpoint(tmp_path / "py" / "model.safetensors", latency_repeats=0, out=tmp_path / "cost_py")
    _same_json(tmp_path / "cost_cli" / "cost.json", tmp_path / "cost_py" / "cost.json")
