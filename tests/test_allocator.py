"""spikeprune.engine.allocator: the spikeprune command tunes glibc's malloc; results do not change."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the allocator tuning is glibc-only (it is a no-op elsewhere)")

PROBE = ("import json, sys; from spikeprune.engine.allocator import tune_malloc; "
         "print(json.dumps([tune_malloc(), tune_malloc()]))")


def _probe(env_value: str | None) -> list[bool]:
    env = {k: v for k, v in os.environ.items() if k != "SPIKEPRUNE_MALLOC"}
    if env_value is not None:
        env["SPIKEPRUNE_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
@glibc
def test_tune_malloc_applies_once_and_honours_opt_out():
    assert _probe(None) == [True, True]  # applied, idempotent
    assert _probe("system") == [False, False]


@pytest.mark.slow
@glibc
def test_training_is_bit_identical_with_and_without_tuning(tmp_path):
    # The allocator decides where tensors live, never what they hold: the same weights and accuracy either
    # way (the checkpoint's metadata holds wall-clock times, so tensors are compared, not file bytes).
    from safetensors.torch import load_file

    results = []
    for mode in ("system", "tuned"):
        env = {**os.environ, "SPIKEPRUNE_MALLOC": mode, "OMP_NUM_THREADS": "1"}
        out = tmp_path / mode
        subprocess.run([sys.executable, "-m", "spikeprune.cli", "train", "--model", "mlp", "--dataset", "digits",
                        "--epochs", "1", "--train-limit", "256", "--test-limit", "128", "--no-progress",
                        "--out", str(out)], env=env, check=True, capture_output=True)
        metrics = json.loads((out / "metrics.json").read_text())
        results.append((load_file(out / "checkpoint.safetensors"), metrics["test_accuracy"]))
    (a, acc_a), (b, acc_b) = results
    assert acc_a == acc_b and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
