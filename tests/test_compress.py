"""The joint pipeline and its CLI: ``spikeprune compress`` and ``spikeprune cost`` (smoke + bad input)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from spikeprune.cli import main
from spikeprune.compression.compress import load_compressed
from spikeprune.compression.quant import QuantConv2d, weight_codes
from spikeprune.compression.structured import channel_groups
from spikeprune.engine.train import load_model

TINY = ["--dataset", "digits", "--width", "0.25", "--timesteps", "2", "--batch-size", "64", "--train-limit", "256",
        "--test-limit", "128", "--calibration-batches", "2", "--cost-batches", "1", "--latency-repeats", "1",
        "--no-progress"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, argv, match, out_dir=None):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert match.lower() in lines[0].lower(), lines[0]
    if out_dir is not None:
        left = [p for p in Path(out_dir).rglob("*") if p.is_file()] if Path(out_dir).exists() else []
        assert not left, f"files left behind: {left}"


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    assert main(["train", "--dataset", "digits", "--width", "0.25", "--timesteps", "2", "--batch-size", "64",
                 "--epochs", "1", "--train-limit", "256", "--test-limit", "128", "--no-progress",
                 "--out", str(out)]) == 0
    return out / "checkpoint.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("order", ["quantize-first", "prune-first"])
def test_compress_smoke_resume_and_cost(capsys, tmp_path, dense_checkpoint, order):
    out = tmp_path / "c"
    argv = ["compress", *TINY, "--checkpoint", dense_checkpoint, "--bits", "3", "--channel-sparsity", "0.5",
            "--channel-criterion", "svs", "--qat-epochs", "1", "--finetune-epochs", "1", "--order", order, "--out", out]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["weight_bits"] == 3
    assert m["size_reduction"] > 10 and m["flop_reduction"] > 3
    model, meta = load_compressed(out / "model.safetensors")
    assert [g.size for g in channel_groups(model)] == [4, 8, 16]  # half of (8, 16, 32)
    conv = model.features[2].conv
    assert isinstance(conv, QuantConv2d) and conv.frozen
    codes = weight_codes(conv.weight, 3, conv.weight_gamma)
    assert torch.equal(conv.weight, conv.weight_gamma * ((2 / 7) * codes.float() - 1))  # stored on the grid
    plain, _ = load_model(out / "model.safetensors")  # an ordinary checkpoint too
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(plain.eval()(x), model.eval()(x))
    # the reported accuracy is the stored model's on the test split (the first 128 digits, --test-limit)
    from spikeprune.engine.data import BatchLoader, load_dataset
    from spikeprune.engine.train import evaluate
    digits = load_dataset("digits")
    test = BatchLoader(digits, "test", 64, shuffle=False, timesteps=2, limit=128)
    assert evaluate(model, test)["test_accuracy"] == pytest.approx(m["test_accuracy"])
    # resume: finished phases are not repeated, the metrics come back unchanged
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text()) == m
    # a run killed during fine-tuning continues from the pruned model and ends with the same weights
    from safetensors.torch import load_file

    first = load_file(str(out / "model.safetensors"))
    for name in ("metrics.json", "model.safetensors", "cost.json"):
        (out / name).unlink()
    shutil.rmtree(out / "finetune")
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert code == 0, err
    again = load_file(str(out / "model.safetensors"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    # the cost command on the result
    code, stdout, err = run_cli(capsys, "cost", "--checkpoint", out / "model.safetensors", "--batches", "1",
                                "--latency-repeats", "1", "--out", tmp_path / "cost")
    assert code == 0, err
    assert "features.2.conv" in stdout and "latency" in stdout
    report = json.loads((tmp_path / "cost" / "cost.json").read_text())
    assert report["layers"][1]["bits"] == 3 and report["total"]["size_dense_bytes"] == pytest.approx(m["size_bytes"])


@pytest.mark.slow
def test_compress_with_membrane_quantization(capsys, tmp_path, dense_checkpoint):
    out = tmp_path / "m"
    code, _, err = run_cli(capsys, "compress", *TINY, "--checkpoint", dense_checkpoint, "--bits", "4",
                           "--membrane-bits", "8", "--channel-sparsity", "0.3", "--qat-epochs", "1",
                           "--finetune-epochs", "0", "--out", out)
    assert code == 0, err
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["membrane_bits"] == 8
    code, stdout, err = run_cli(capsys, "cost", "--checkpoint", out / "model.safetensors", "--batches", "1",
                                "--latency-repeats", "0")
    assert code == 0, err
    # evaluate runs the model as compressed (quantized membranes), not with float membranes
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", out / "model.safetensors", "--out", tmp_path / "ev")
    assert code == 0, err
    from spikeprune.compression.compress import load_compressed
    from spikeprune.engine.data import BatchLoader, load_dataset
    from spikeprune.engine.train import evaluate

    loader = BatchLoader(load_dataset("digits"), "test", 256, shuffle=False, timesteps=2)
    model, _ = load_compressed(out / "model.safetensors", next(iter(loader))[0])
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test_accuracy"] == evaluate(model, loader)["test_accuracy"]


@pytest.mark.parametrize("flags, match", [
    (["--bits", "0"], "bits must be an integer in [1, 16]"),
    (["--bits", "17"], "bits must be an integer in [1, 16]"),
    (["--membrane-bits", "1"], "membrane_bits"),
    (["--channel-sparsity", "1.0"], "channel_sparsity"),
    (["--channel-sparsity", "-0.1"], "channel_sparsity"),
    (["--channel-criterion", "nope"], "channel_criterion"),
    # width 0.0625: the first conv has 2 channels; removing 90 % of them would remove both
    (["--width", "0.0625", "--channel-sparsity", "0.9"], "every channel of layer features.0"),
])
def test_compress_bad_input_is_one_line(capsys, tmp_path, flags, match):
    out = tmp_path / "bad"
    assert_user_error(capsys, ["compress", *TINY, "--qat-epochs", "1", *flags, "--out", out], match, out)


def test_compress_checkpoint_from_another_architecture(capsys, tmp_path, dense_checkpoint):
    out = tmp_path / "arch"
    assert_user_error(capsys, ["compress", *TINY, "--model", "mlp", "--checkpoint", dense_checkpoint, "--out", out],
                      "holds a convnet model", out)
    assert_user_error(capsys, ["compress", *TINY, "--width", "0.5", "--checkpoint", dense_checkpoint, "--out", out],
                      "width", out)


def test_cost_bad_input(capsys, tmp_path, dense_checkpoint):
    assert_user_error(capsys, ["cost", "--checkpoint", tmp_path / "missing.safetensors"], "does not exist")
    assert_user_error(capsys, ["cost", "--checkpoint", dense_checkpoint, "--e-mac", "-1"], "e_mac_pj")
    assert_user_error(capsys, ["cost", "--checkpoint", dense_checkpoint, "--bits", "40"], "bits")
    # a mask made for another architecture
    import spikeprune as sp
    from spikeprune.tickets.masks import Mask

    Mask.ones(sp.create_model("mlp", 10, 1, 2, 0.25, image_size=8)).save(tmp_path / "mask.safetensors")
    assert_user_error(capsys, ["cost", "--checkpoint", dense_checkpoint, "--mask", tmp_path / "mask.safetensors",
                               "--latency-repeats", "0"], "mask entry")


def test_cost_of_lottery_and_edgepopup_checkpoints(capsys, tmp_path, dense_checkpoint):
    """The other issues' outputs: a lottery round (mask stored in the checkpoint, SF-IMP-2 keeps dense
    weights behind it), an edge-popup export (an ordinary masked model) and its search checkpoint."""
    from spikeprune.tickets.edgepopup import export_subnetwork, to_edgepopup
    from spikeprune.core.io import load_checkpoint, save_checkpoint
    from spikeprune.tickets.masks import Mask
    from spikeprune.engine.train import save_model

    # a lottery-round checkpoint: dense weights + extra/mask/* (as fit(extra_tensors=...) writes them)
    tensors, meta = load_checkpoint(dense_checkpoint)
    model, _ = load_model(dense_checkpoint)
    keep = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.3
            for n, w in ((n, model.get_parameter(n)) for n in Mask.ones(model))}
    save_checkpoint(tmp_path / "round.safetensors", {**tensors, **{f"extra/mask/{n}": k for n, k in keep.items()}},
                    meta)
    kept = sum(int(k.sum()) for k in keep.values()) / sum(k.numel() for k in keep.values())
    code, _, err = run_cli(capsys, "cost", "--checkpoint", tmp_path / "round.safetensors", "--batches", "1",
                           "--latency-repeats", "0", "--out", tmp_path / "c1")
    assert code == 0, err
    rep = json.loads((tmp_path / "c1" / "cost.json").read_text())
    assert rep["total"]["density"] == pytest.approx(kept) and rep["mask"] == "stored in the checkpoint"

    # edge-popup: the export costs like any masked model; the search checkpoint is refused in one line
    search = to_edgepopup(load_model(dense_checkpoint)[0], 0.5)
    save_model(tmp_path / "search.safetensors", search)
    subnet, mask = export_subnetwork(search)
    save_model(tmp_path / "subnet.safetensors", subnet)
    code, _, err = run_cli(capsys, "cost", "--checkpoint", tmp_path / "subnet.safetensors", "--batches", "1",
                           "--latency-repeats", "0", "--out", tmp_path / "c2")
    assert code == 0, err
    rep = json.loads((tmp_path / "c2" / "cost.json").read_text())
    assert rep["total"]["density"] == pytest.approx(mask.density, abs=1e-3)
    assert_user_error(capsys, ["cost", "--checkpoint", tmp_path / "search.safetensors"], "edge-popup search")


def test_compress_preset_loads():
    from spikeprune.compression.compress import CompressConfig
    from spikeprune.core.config import from_mapping, load_yaml

    cfg = from_mapping(CompressConfig, load_yaml(Path(__file__).parent.parent / "configs" / "qpsnn_fashion_mnist.yaml"))
    assert (cfg.bits, cfg.channel_sparsity, cfg.channel_criterion) == (4, 0.5, "svs")


def test_compress_reads_the_network_from_its_checkpoint(capsys, tmp_path, dense_checkpoint):
    """README's command: no --width/--timesteps/--dataset; the checkpoint's training config supplies them
    (as `cost` reads them), flags still override, and the run records what it used."""
    out = tmp_path / "c"
    code, _, err = run_cli(capsys, "compress", "--checkpoint", dense_checkpoint, "--bits", "4",
                           "--channel-sparsity", "0.5", "--qat-epochs", "0", "--finetune-epochs", "0",
                           "--calibration-batches", "1", "--cost-batches", "1", "--latency-repeats", "1",
                           "--no-progress", "--out", out)
    assert code == 0, err
    used = json.loads((out / "compress.json").read_text())
    assert (used["width"], used["timesteps"], used["dataset"], used["test_limit"]) == (0.25, 2, "digits", 128)
    # an explicit flag that contradicts the checkpoint is still refused, naming both
    assert_user_error(capsys, ["compress", "--checkpoint", dense_checkpoint, "--timesteps", "4", "--out",
                               tmp_path / "d"], "has width 0.25 and T 2", out_dir=tmp_path / "d")


# ---------------------------------------------------------------------------------------------
# Issue 17: the field was `criterion` (a word lottery uses for the weight criterion); old files still load.
# ---------------------------------------------------------------------------------------------


def test_the_former_criterion_key_loads_from_yaml_and_mappings(tmp_path):
    import argparse

    from spikeprune.cli.args import add_config_arguments, config_from_args
    from spikeprune.compression.compress import CompressConfig
    from spikeprune.core.config import from_mapping, to_argv
    from spikeprune.core.diagnostics import UserError

    assert from_mapping(CompressConfig, {"criterion": "l1"}).channel_criterion == "l1"
    with pytest.raises(UserError, match="both channel_criterion and criterion"):
        from_mapping(CompressConfig, {"criterion": "l1", "channel_criterion": "bn"})
    old = tmp_path / "old.yaml"
    old.write_text("bits: 3\ncriterion: l1\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser, CompressConfig)
    cfg = config_from_args(CompressConfig, parser.parse_args(["--config", str(old)]))
    assert (cfg.bits, cfg.channel_criterion) == (3, "l1")
    # a flag still overrides the YAML, whichever name the YAML uses
    cfg = config_from_args(CompressConfig, parser.parse_args(["--config", str(old), "--channel-criterion", "bn"]))
    assert cfg.channel_criterion == "bn"
    # a command rendered against an old YAML does not repeat what the YAML already says
    assert to_argv(CompressConfig(bits=3, channel_criterion="l1"), base={"bits": 3, "criterion": "l1"}) == []


def _legacy_run(out: Path, criterion: str) -> "object":
    """A finished compression run folder as an earlier version wrote it: its manifest says `criterion`."""
    from spikeprune.compression.compress import CompressConfig
    from spikeprune.core.config import to_dict

    cfg = CompressConfig(dataset="digits", width=0.25, timesteps=2, qat_epochs=1)
    saved = {("criterion" if k == "channel_criterion" else k): v for k, v in to_dict(cfg).items()}
    saved["criterion"] = criterion
    out.mkdir()
    (out / "compress.json").write_text(json.dumps(saved))
    (out / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5, "config": saved}))
    return cfg


def test_a_run_folder_whose_manifest_says_criterion_resumes(tmp_path):
    from spikeprune.compression.compress import compress
    from spikeprune.core.diagnostics import UserError

    cfg = _legacy_run(tmp_path / "run", "svs")
    result = compress(cfg, tmp_path / "run", resume=True, log=None)
    assert result.metrics["test_accuracy"] == 0.5
    with pytest.raises(UserError, match="already holds a compression run"):
        compress(cfg, tmp_path / "run", log=None)
    # the former name is compared as the new one: another channel criterion is refused, naming it
    cfg = _legacy_run(tmp_path / "other", "l1")
    with pytest.raises(UserError, match="channel_criterion='l1', now channel_criterion='svs'"):
        compress(cfg, tmp_path / "other", resume=True, log=None)


def test_the_former_criterion_flag_is_refused_naming_the_new_one(capsys, tmp_path):
    out = tmp_path / "c"
    with pytest.raises(SystemExit) as exit_:  # a usage error: argparse's exit, as for an unknown flag
        main(["compress", *TINY, "--criterion", "l1", "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--criterion is now --channel-criterion" in err and "pass --channel-criterion l1" in err, err
    assert not out.exists()
    # the flag of lottery's own weight criterion is untouched
    from spikeprune.cli import build_parser

    assert build_parser().parse_args(["lottery", "--criterion", "sf", "--out", str(out)]).criterion == "sf"
