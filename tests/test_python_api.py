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


def test_evaluate_is_evaluate_checkpoint(trained, tmp_path, capsys):
    """``spikeprune evaluate`` == ``deploy.evaluate.evaluate_checkpoint``; its numbers are ``sp.evaluate``'s,
    under the same keys (``test_accuracy``, ``test_loss``, ``firing_rate``, ``firing_rates``)."""
    from spikeprune.deploy.evaluate import EvaluateConfig, evaluate_checkpoint
    from spikeprune.engine.data import BatchLoader, load_dataset

    root, fitted = trained
    ckpt = str(root / "cli" / "checkpoint.safetensors")
    assert main(["evaluate", "--checkpoint", ckpt, "--batch-size", "100", "--out", str(tmp_path / "cli")]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = evaluate_checkpoint(EvaluateConfig(checkpoint=ckpt, batch_size=100), tmp_path / "py")
    _same_json(tmp_path / "cli" / "metrics.json", tmp_path / "py" / "metrics.json")
    assert isinstance(result, sp.RunResult) and result.metrics == json.loads((tmp_path / "py" / "metrics.json").read_text())
    assert printed == {k: result.metrics[k] for k in ("test_accuracy", "firing_rate")}
    loader = BatchLoader(load_dataset("digits"), "test", 100, shuffle=False, timesteps=TINY["timesteps"])
    direct = sp.evaluate(result.model, loader)
    assert set(direct) == {"test_accuracy", "test_loss", "firing_rate", "firing_rates"}
    assert all(direct[k] == result.metrics[k] for k in direct)
    # the key prefix follows the split, so fit's validation pass writes val_* under the names of history.csv
    assert set(sp.evaluate(result.model, loader, split="val")) == {"val_accuracy", "val_loss", "firing_rate",
                                                                   "firing_rates"}
    with pytest.raises(sp.UserError, match="split"):
        sp.evaluate(result.model, loader, split="test accuracy")


def test_analyze_flips_and_validity(trained, tmp_path, capsys):
    """``spikeprune analyze flips`` == ``studies.flips.analyze_flips``; ``analyze validity`` ==
    ``studies.validity.analyze_validity``: the same files, and the RunResult holds what the JSON holds."""
    from spikeprune.studies.flips import analyze_flips
    from spikeprune.studies.validity import analyze_validity
    from spikeprune.theory.config import FlipsConfig, ValidityConfig

    root, _ = trained
    ckpt = str(root / "cli" / "checkpoint.safetensors")
    flips = dict(perturb=("prune:0.5:magnitude", "weight-noise:0.2"), samples=64, batch_size=32, p_sup="gaussian",
                 calibration_batches=1)
    argv = ["analyze", "flips", "--checkpoint", ckpt, "--perturb", *flips["perturb"][:1], "--perturb",
            flips["perturb"][1], *_flags(**{k: v for k, v in flips.items() if k != "perturb"})]
    assert main([*argv, "--out", str(tmp_path / "flips_cli")]) == 0
    result = analyze_flips(FlipsConfig(checkpoint=ckpt, **flips), tmp_path / "flips_py")
    _same_json(tmp_path / "flips_cli" / "flips.json", tmp_path / "flips_py" / "flips.json")
    assert (tmp_path / "flips_cli" / "flips.csv").read_text() == (tmp_path / "flips_py" / "flips.csv").read_text()
    # the same files (the CLI's run-folder record and lock, .spikeprune-*, aside)
    names = [sorted(p.name for p in (tmp_path / d).iterdir() if not p.name.startswith(".")) for d in ("flips_cli", "flips_py")]
    assert names[0] == names[1] and "flips.png" in names[0]
    saved = json.loads((tmp_path / "flips_py" / "flips.json").read_text())
    assert result.rows == saved.pop("rows") and result.metrics == saved and len(result.rows) > 0
    assert len(result.metrics["perturbations"]) == 2

    validity = dict(criteria=("magnitude", "random"), groups=2, samples=64, batch_size=32, calibration_batches=1)
    argv = ["analyze", "validity", "--checkpoint", ckpt, "--criteria", *validity["criteria"],
            *_flags(**{k: v for k, v in validity.items() if k != "criteria"})]
    assert main([*argv, "--out", str(tmp_path / "val_cli")]) == 0
    capsys.readouterr()
    result = analyze_validity(ValidityConfig(checkpoint=ckpt, **validity), tmp_path / "val_py")
    _same_json(tmp_path / "val_cli" / "validity.json", tmp_path / "val_py" / "validity.json")
    assert (tmp_path / "val_cli" / "validity.csv").read_text() == (tmp_path / "val_py" / "validity.csv").read_text()
    saved = json.loads((tmp_path / "val_py" / "validity.json").read_text())
    assert result.rows == saved.pop("rows") and result.metrics == saved
    assert {s["criterion"] for s in result.metrics["summary"]} == {"magnitude", "random"}


def test_export_is_export_checkpoint(trained, tmp_path, capsys):
    """``spikeprune export`` == ``interop.nir_export.export_checkpoint``: the same NIR graph, weight for weight."""
    pytest.importorskip("nir")
    import numpy as np

    from spikeprune.interop.nir_export import export_checkpoint, read_nir

    root, _ = trained
    ckpt = str(root / "cli" / "checkpoint.safetensors")
    assert main(["export", "--checkpoint", ckpt, "--format", "nir", "--out", str(tmp_path / "cli.nir")]) == 0
    capsys.readouterr()
    summary = export_checkpoint(ckpt, tmp_path / "py.nir", format="nir")
    a, b = read_nir(tmp_path / "cli.nir"), read_nir(tmp_path / "py.nir")
    assert sorted(a.nodes) == sorted(b.nodes) == sorted(summary["nodes"]) and sorted(a.edges) == sorted(b.edges)
    compared = 0
    for name, node in a.nodes.items():
        other = b.nodes[name]
        assert type(node) is type(other)
        for key, value in vars(node).items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, getattr(other, key)), (name, key)
                compared += 1
    assert compared >= len(summary["nodes"]) // 2  # weights, biases, time constants: something was compared
    assert summary["weights"] == sum(np.asarray(n.weight).size for n in a.nodes.values() if hasattr(n, "weight"))


def _same_json_across(a: Path, b: Path, root_a: Path, root_b: Path) -> None:
    """Like :func:`_same_json`, for files that name their own run folder (``checkpoint``, ``mask`` paths)."""
    text_a = a.read_text().replace(str(root_a), str(root_b))
    assert _untimed(json.loads(text_a)) == _untimed(json.loads(b.read_text())), a.name


def test_edgepopup_is_search_densities(tmp_path, capsys):
    """``spikeprune edgepopup`` == ``tickets.edgepopup.search_densities`` (a RunResult: metrics = results.json's
    summary)."""
    from spikeprune.tickets.edgepopup import search_densities

    ep = dict(TINY, epochs=1, density=0.5)
    assert main(["edgepopup", *_flags(**ep), "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    result = search_densities(sp.EdgePopupConfig(**ep), tmp_path / "py", progress=False, log=None)
    cli, py = tmp_path / "cli", tmp_path / "py"
    _same_json_across(cli / "results.json", py / "results.json", cli, py)
    _same_json_across(cli / "density-0.5" / "result.json", py / "density-0.5" / "result.json", cli, py)
    _same_csv(cli / "density-0.5" / "history.csv", py / "density-0.5" / "history.csv")
    for name in ("subnet.safetensors", "mask.safetensors"):
        _same_tensors(cli / "density-0.5" / name, py / "density-0.5" / name)
    assert isinstance(result, sp.RunResult) and result.out == py
    assert _untimed(result.metrics) == _untimed(json.loads((py / "results.json").read_text()))


def test_every_command_has_a_documented_python_equivalent():
    """docs/reference.md's command table names a Python equivalent for every CLI command, and each resolves."""
    import importlib.util

    from spikeprune.cli import COMMANDS

    spec = importlib.util.spec_from_file_location("gen_reference", Path(__file__).parents[1] / "docs" / "gen_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    table = {c: calls for c, calls, _ in gen.PYTHON_EQUIVALENTS}
    commands = {c for c in COMMANDS} | {"analyze flips", "analyze validity", "theory slth", "theory width"}
    commands -= {"analyze", "theory"}
    assert commands <= {c.split(" --")[0] for c in table}, commands - set(table)
    for _, calls, _ in gen.PYTHON_EQUIVALENTS:
        for dotted in calls:
            assert gen.resolve(dotted) is not None, dotted


def test_interop_is_analyse_third_party(tmp_path, capsys):
    """``spikeprune interop`` == ``interop.pipeline.analyse_third_party`` on a user's own snnTorch network."""
    pytest.importorskip("snntorch")
    from spikeprune.interop.pipeline import analyse_third_party

    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\nimport snntorch as snn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), snn.Leaky(beta=0.5, init_hidden=True, output=True))\n")
    factory = f"{tmp_path / 'net.py'}:build"
    settings = dict(timesteps=2, epochs=1, analysis_batches=1, calibration_batches=1)
    assert main(["interop", "--model", factory, *_flags(**settings), "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    result = analyse_third_party(factory, tmp_path / "py", **settings, log=lambda _: None)
    cli, py = tmp_path / "cli", tmp_path / "py"
    for name in ("metrics.json", "cost.json", "flip_summary.json", "neurons.json"):
        _same_json(cli / name, py / name)
    assert (cli / "flips.csv").read_text() == (py / "flips.csv").read_text()
    _same_tensors(cli / "mask.safetensors", py / "mask.safetensors")
    assert isinstance(result, sp.RunResult) and result.out == py
    assert _untimed(result.metrics) == _untimed(json.loads((py / "metrics.json").read_text()))
    assert result.rows == result.metrics["history"] and len(result.rows) == 1
