"""CLI: every command runs in a smoke configuration; every user error is one line, exit code 2, no files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from spikeprune.engine import data as data_module
from spikeprune.cli import COMMANDS, main

SMOKE = ["--model", "convnet", "--width", "0.25", "--timesteps", "2", "--epochs", "1", "--batch-size", "64",
         "--no-progress"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, argv, match, out_dir=None):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert match.lower() in lines[0].lower(), lines[0]
    if out_dir is not None:
        results = [p for p in Path(out_dir).rglob("*") if p.is_file()] if Path(out_dir).exists() else []
        assert not results, f"files left behind: {results}"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    def refuse(url, out):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(data_module, "_fetch", refuse)
    monkeypatch.setattr(data_module, "CACHE_ROOT", tmp_path / "cache")


def test_help_for_every_command(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        assert "usage: spikeprune" in capsys.readouterr().out


def test_train_smoke_and_evaluate(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "train", *SMOKE, "--dataset", "digits", "--out", tmp_path / "run")
    assert code == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    n_test = m["validation"]["test_size"]
    assert n_test == 360 and m["test_accuracy"] * n_test == pytest.approx(round(m["test_accuracy"] * n_test))
    code, out, _ = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "run" / "checkpoint.safetensors",
                           "--out", tmp_path / "eval")
    assert code == 0
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["test_accuracy"] == pytest.approx(m["test_accuracy"])


def _printed(line_start, out):
    """The first number after ``line_start`` on the stdout line that begins with it."""
    line = next(l for l in out.splitlines() if l.strip().startswith(line_start))
    return line.strip()[len(line_start):].split()[0]


@pytest.mark.slow
def test_quickstart_smoke(capsys, tmp_path):
    qs = tmp_path / "qs"
    code, out, err = run_cli(capsys, "quickstart", "--epochs", "1", "--width", "0.25", "--no-progress",
                             "--out", qs)
    assert code == 0
    # Without a terminal (capsys is none) progress is plain lines on stderr: each dense epoch, each
    # lottery round of both criteria, the edge-popup phase.
    assert "epoch 1/1" in err
    for label in ("IMP (magnitude)", "SF-IMP-1 (sf)"):
        for k in (1, 2, 3):
            assert f"{label}: [lottery] round {k}: pruned" in err, err
    assert "edge-popup: searching" in err
    # The dense run: the printed accuracy is metrics.json's, and re-evaluating the saved checkpoint gives it.
    m = json.loads((qs / "metrics.json").read_text())
    dense_line, edge_line = [l for l in out.splitlines() if l.strip().startswith("test accuracy")]
    assert dense_line.split()[2] == f"{m['test_accuracy']:.4f}"
    code, _, _ = run_cli(capsys, "evaluate", "--checkpoint", qs / "checkpoint.safetensors", "--out", tmp_path / "ev")
    assert code == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["test_accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-12)
    assert f"{m['firing_rate']:.3f}" == _printed("firing rate", out)
    # The lottery table: 3 rounds + the dense row per criterion, each cell the round's recorded accuracy.
    table = [l for l in out.splitlines() if l.startswith("| ") and "%" in l.split("|")[1]]
    assert len(table) == 4, out
    for column, variant in ((2, "imp"), (3, "sf-imp-1")):
        rounds = json.loads((qs / "lottery" / variant / "results.json").read_text())["rounds"]
        assert [r["round"] for r in rounds] == [0, 1, 2, 3]
        assert rounds[0]["test_accuracy"] == m["test_accuracy"]  # both criteria start from the dense run above
        assert [l.split("|")[column].strip() for l in table] == [f"{100 * r['test_accuracy']:.2f}" for r in rounds]
        density = [r["density"] for r in rounds]
        assert density[0] == 1.0 and all(b < a for a, b in zip(density, density[1:]))  # each round prunes more
    assert (qs / "lottery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Edge-popup: the printed search and export accuracies are the recorded ones.
    row = json.loads((qs / "edgepopup" / "results.json").read_text())["rows"][0]
    assert row["density"] == 0.5
    assert edge_line.split()[2] == f"{row['test_accuracy']:.4f}"
    assert f"exported subnetwork: {row['exported_test_accuracy']:.4f})" in edge_line


def test_yaml_preset_and_flag_precedence(capsys, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: mlp\nwidth: 0.25\ntimesteps: 3\nepochs: 2\nbatch-size: 64\n")
    code, _, _ = run_cli(capsys, "train", "--config", preset, "--epochs", "1", "--dataset", "digits",
                         "--no-progress", "--out", tmp_path / "run")
    assert code == 0
    cfg = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]
    assert (cfg["model"], cfg["timesteps"], cfg["epochs"]) == ("mlp", 3, 1)


def test_shipped_presets_are_valid():
    from spikeprune.cli.args import config_from_args  # noqa: F401
    from spikeprune.core.config import load_yaml

    presets = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert presets, "configs/ has no presets"
    for preset in presets:
        assert isinstance(load_yaml(preset), dict)


@pytest.mark.parametrize("flags,match", [
    (["--model", "nope"], "unknown model"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--timesteps", "0"], "timesteps"),
    (["--timesteps", "-3"], "timesteps"),
    (["--beta", "1.5"], "beta"),
    (["--beta", "0"], "beta"),
    (["--width", "0"], "width"),
    (["--width", "-2"], "width"),
    (["--epochs", "abc"], "epochs must be an integer"),
    (["--surrogate", "relu"], "surrogate must be one of"),
])
def test_bad_hyperparameters(capsys, tmp_path, flags, match):
    out = tmp_path / "run"
    base = [f for f in SMOKE] + ["--dataset", "digits"]
    argv = ["train", *base, *flags, "--out", out]
    assert_user_error(capsys, argv, match, out)


def test_unknown_flag_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "--nope", "1", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--nope" in err


def test_data_missing_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    out = tmp_path / "run"
    assert_user_error(capsys, ["train", *SMOKE, "--dataset", "fashion_mnist", "--data-dir", tmp_path / "empty",
                               "--out", out], "apt-get install dataset-fashion-mnist")
    assert not (out / "metrics.json").exists() and not (out / "checkpoint.safetensors").exists()
    assert_user_error(capsys, ["train", *SMOKE, "--dataset", "cifar10", "--out", out], "--data-dir")


def test_corrupt_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"not a safetensors file at all")
    assert_user_error(capsys, ["train", *SMOKE, "--dataset", "digits", "--out", out, "--resume"], "corrupt")
    assert_user_error(capsys, ["evaluate", "--checkpoint", out / "checkpoint.safetensors", "--out",
                               tmp_path / "ev"], "corrupt", tmp_path / "ev")


def test_foreign_checkpoint(capsys, tmp_path):
    import torch
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(3)}, str(foreign))
    assert_user_error(capsys, ["evaluate", "--checkpoint", foreign, "--out", tmp_path / "ev"],
                      "not a spikeprune checkpoint", tmp_path / "ev")
    # A checkpoint of another architecture: resuming it as an mlp is refused before anything is written.
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *SMOKE, "--dataset", "digits", "--out", run)[0] == 0
    before = (run / "checkpoint.safetensors").read_bytes()
    assert_user_error(capsys, ["train", *SMOKE, "--dataset", "digits", "--model", "mlp", "--out", run, "--resume"],
                      "model")
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_checkpoint_of_other_architecture_does_not_load(tmp_path):
    import torch

    from spikeprune import create_model
    from spikeprune.engine.train import load_model_state, model_tensors

    a = create_model("convnet", 10, 1, 2, 0.25, image_size=8)
    b = create_model("mlp", 10, 1, 2, 0.25, image_size=8)
    with pytest.raises(ValueError, match="another architecture"):
        load_model_state(b, model_tensors(a))
    c = create_model("convnet", 10, 1, 2, 0.5, image_size=8)
    with pytest.raises(ValueError, match="shape"):
        load_model_state(c, model_tensors(a))
    assert torch.is_tensor(next(iter(model_tensors(a).values())))


def test_unwritable_output_dir(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_user_error(capsys, ["train", *SMOKE, "--dataset", "digits", "--out", blocker / "run"],
                      "cannot write to output directory")


def test_yaml_unknown_key_and_bad_yaml(capsys, tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("model: convnet\nlearning_rate: 0.1\n")
    assert_user_error(capsys, ["train", "--config", bad_key, "--out", tmp_path / "r1"], "unknown key 'learning_rate'",
                      tmp_path / "r1")
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("model: [unclosed\n")
    assert_user_error(capsys, ["train", "--config", not_yaml, "--out", tmp_path / "r2"], "not valid YAML",
                      tmp_path / "r2")
    assert_user_error(capsys, ["train", "--config", tmp_path / "missing.yaml", "--out", tmp_path / "r3"],
                      "cannot read config", tmp_path / "r3")


@pytest.mark.slow
def test_real_process_exit_code_and_single_line():
    proc = subprocess.run([sys.executable, "-m", "spikeprune.cli", "train", "--model", "nope", "--out", "/tmp/x"],
                          capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown model" in proc.stderr


def test_checkpoint_on_a_dataset_of_another_shape_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--model", "mlp", "--width", "0.25", "--epochs", "1", "--dataset", "digits",
                           "--no-progress", "--out", tmp_path / "run")
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    for command in (["evaluate", "--out", tmp_path / "ev"], ["cost"]):
        assert_user_error(capsys, [command[0], "--checkpoint", ckpt, "--dataset", "synthetic", *command[1:]],
                          "expects 1x[8, 8] inputs", tmp_path / "ev")


def test_flags_that_override_a_checkpoint_say_so(capsys, tmp_path):
    """Issue 18: a command reads the model's settings from the checkpoint; a flag that changes one of
    them wins and says so in one line on stderr; without such flags nothing is said."""
    code, _, _ = run_cli(capsys, "train", "--width", "0.25", "--timesteps", "2", "--epochs", "1", "--no-progress",
                         "--out", tmp_path / "run")
    assert code == 0
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", ckpt, "--out", tmp_path / "e1")
    assert code == 0 and "overrides" not in err
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", ckpt, "--encoding", "poisson",
                           "--dataset", "synthetic:in_channels=1,image_size=8,train_size=16,test_size=16",
                           "--out", tmp_path / "e2")
    assert code == 0
    assert "--encoding poisson overrides the checkpoint's direct" in err
    assert "--dataset synthetic:in_channels=1,image_size=8,train_size=16,test_size=16 overrides the " \
           "checkpoint's digits" in err
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["encoding"] == "poisson"
