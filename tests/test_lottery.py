"""Lottery tickets (SPEC §5): IMP with rewinding, SF-IMP-1/2, resumption, CLI errors, paper presets, report."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from spikeprune.tickets import lottery
from spikeprune.cli import main
from spikeprune.core.config import load_yaml
from spikeprune.engine.data import load_dataset
from spikeprune.core.io import load_checkpoint, read_json
from spikeprune.tickets.lottery import LotteryConfig, collect_rows, load_ticket, rewound_ticket, run_lottery
from spikeprune.tickets.masks import Mask, prunable_weights
from spikeprune.report.plots import plot_accuracy_vs_sparsity
from spikeprune.report.tables import format_table, read_results, summarize
from spikeprune.engine.train import evaluate, make_loaders

TINY = dict(width=0.25, timesteps=2, epochs=3, rewind_epoch=1, rounds=3, prune_fraction=0.25, batch_size=64,
            train_limit=256, test_limit=128)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny(**kw):
    return LotteryConfig(**{**TINY, **kw})


def run(cfg, out, digits, **kw):
    return run_lottery(cfg, out, resume=True, dataset=digits, log=None, **kw)


@pytest.fixture(scope="module")
def imp_run(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("imp")
    return run(tiny(), out, digits), out


@pytest.fixture(scope="module")
def sf2_run(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("sf2")
    return run(tiny(variant="sf-imp-2", rounds=4, prune_fraction=0.5), out, digits), out


@pytest.mark.slow
def test_density_after_k_rounds_is_one_minus_p_to_the_k(imp_run):
    result, out = imp_run
    assert [r["round"] for r in result.rows] == [0, 1, 2, 3]
    numel = Mask.load(out / "round_01" / "mask.safetensors").numel
    for row in result.rows:
        # global pruning rounds once per round: at most k weights off (1 - p)^k
        assert abs(row["density"] - 0.75 ** row["round"]) <= row["round"] / numel + 1e-12
    for k in (2, 3):  # only survivors are pruned: masks are nested
        new, old = (Mask.load(out / f"round_{j:02d}" / "mask.safetensors") for j in (k, k - 1))
        assert all(bool((new[n] <= old[n]).all()) for n in new)


def test_rewound_weights_equal_rewind_state_times_mask(imp_run, digits):
    _, out = imp_run
    rewind, meta = load_checkpoint(out / "dense" / "rewind.safetensors")
    assert meta["epoch"] == 1
    # the rewind state is the dense run after epoch R = 1: its recorded history says so
    dense_history = read_json(out / "dense" / "metrics.json")
    assert dense_history["epochs"] == 3
    for k in (1, 3):
        ticket, mask, dynamic = rewound_ticket(tiny(), out, k, digits)
        assert dynamic == []
        state = ticket.state_dict()
        for name, value in state.items():
            expected = rewind[f"model/{name}"]
            if name in mask:
                expected = expected * mask[name]
            assert torch.equal(value, expected), name  # weights ⊙ mask; BN affine + running stats, biases as is


def test_pruned_weights_are_exactly_zero_after_every_round(imp_run):
    _, out = imp_run
    for k in (1, 2, 3):
        tensors, meta = load_checkpoint(out / f"round_{k:02d}" / "checkpoint.safetensors")
        mask = Mask.load(out / f"round_{k:02d}" / "mask.safetensors")
        assert meta["epoch"] == 2  # epochs - rewind_epoch
        for name, keep in mask.items():
            w = tensors[f"model/{name}"]
            assert torch.count_nonzero(w[~keep]) == 0, (k, name)
            assert torch.count_nonzero(w[keep]) > 0.9 * int(keep.sum())  # survivors trained
            assert torch.equal(tensors[f"extra/mask/{name}"], keep)  # the checkpoint carries its mask


def test_files_rows_and_ticket_accuracy(imp_run, digits):
    result, out = imp_run
    for name in ("rounds.csv", "results.json", "accuracy_vs_sparsity.png", "lottery.json"):
        assert (out / name).is_file(), name
    header = (out / "rounds.csv").read_text().splitlines()[0].split(",")
    assert {"round", "sparsity", "val_accuracy", "test_accuracy", "best_val_accuracy", "firing_rate", "seconds"} <= set(header)
    data = read_results(out)
    assert data["variant"] == "imp" and data["criterion"] == "magnitude"
    assert [r["test_accuracy"] for r in data["rounds"]] == [r["test_accuracy"] for r in result.rows]
    # the exported ticket (mask applied) evaluates to the recorded accuracy
    model, _ = load_ticket(out, 3)
    _, test = make_loaders(tiny(), digits)
    assert evaluate(model, test)["test_accuracy"] == pytest.approx(result.rows[3]["test_accuracy"])
    assert Mask.from_model(model).density <= result.rows[3]["density"]


@pytest.mark.slow
def test_sf_imp_2_revives_pruned_encoding_and_fc_weights(sf2_run, digits):
    result, out = sf2_run
    masks, dynamic = [], None
    for k in range(1, 5):
        tensors, meta = load_checkpoint(out / f"round_{k:02d}" / "mask.safetensors")
        masks.append(Mask(tensors))
        dynamic = meta["dynamic"]
    # encoding layer and FC layer are dynamic, the spiking conv layers are not
    assert dynamic == ["features.0.conv.weight", "classifier.weight"]
    revived = {n: 0 for n in masks[0]}
    for old, new in zip(masks, masks[1:]):
        for n in new:
            revived[n] += int((new[n] & ~old[n]).sum())
    assert revived["features.0.conv.weight"] + revived["classifier.weight"] > 0
    assert revived["features.2.conv.weight"] == 0 and revived["features.4.conv.weight"] == 0
    for row in result.rows:  # the density schedule is unchanged by dynamic masks
        assert abs(row["density"] - 0.5 ** row["round"]) <= row["round"] / masks[0].numel + 1e-12
    # dynamic layers are rewound unmasked and keep dense weights while training; static ones are zeroed
    ticket, mask, dyn = rewound_ticket(tiny(variant="sf-imp-2", rounds=4, prune_fraction=0.5), out, 4, digits)
    rewind, _ = load_checkpoint(out / "dense" / "rewind.safetensors")
    w = prunable_weights(ticket)
    assert torch.equal(w["classifier.weight"], rewind["model/classifier.weight"])
    assert torch.count_nonzero(w["features.2.conv.weight"][~mask["features.2.conv.weight"]]) == 0
    trained, _ = load_checkpoint(out / "round_04" / "checkpoint.safetensors")
    pruned_fc = trained["model/classifier.weight"][~mask["classifier.weight"]]
    assert torch.count_nonzero(pruned_fc) == pruned_fc.numel()  # dense updates reach pruned weights
    # and the recorded accuracy is that of the masked network
    model, _ = load_ticket(out, 4)
    _, test = make_loaders(tiny(), digits)
    assert evaluate(model, test)["test_accuracy"] == pytest.approx(result.rows[4]["test_accuracy"])


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise point runs."""


def _killing_fit(after_epochs: int, before_inner: bool):
    real = lottery.fit
    count = [0]

    def fit(*args, **kwargs):
        inner = kwargs.get("on_epoch_end")

        def hook(epoch, model):
            count[0] += 1
            if before_inner and count[0] == after_epochs:
                raise Killed
            if inner is not None:
                inner(epoch, model)
            if count[0] == after_epochs:
                raise Killed

        kwargs["on_epoch_end"] = hook
        return real(*args, **kwargs)

    return fit


def _snapshot(out: Path, rounds: int):
    masks = [Mask.load(out / f"round_{k:02d}" / "mask.safetensors") for k in range(1, rounds + 1)]
    final, _ = load_checkpoint(out / f"round_{rounds:02d}" / "checkpoint.safetensors")
    rows = [(r["round"], r["test_accuracy"], r["best_val_accuracy"], r["firing_rate"], r["density"])
            for r in collect_rows(out)]
    return masks, {k: v for k, v in final.items() if k.startswith("model/")}, rows


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run(tiny(variant="sf-imp-1", rounds=3), out, digits)
    return _snapshot(out, 3)


@pytest.mark.parametrize("kill,left", [
    # dense epoch R checkpointed, rewind state not yet written
    (dict(after_epochs=1, before_inner=True), ("dense/checkpoint.safetensors", "!dense/rewind.safetensors")),
    # round 1, after its first epoch
    (dict(after_epochs=4, before_inner=False), ("round_01/checkpoint.safetensors", "!round_01/metrics.json")),
    # round 2 trained to its last epoch, its metrics not yet written
    (dict(after_epochs=7, before_inner=False), ("round_02/checkpoint.safetensors", "!round_02/metrics.json")),
], ids=["dense-before-rewind", "mid-round-1", "end-of-round-2"])
@pytest.mark.slow
def test_killed_and_resumed_run_is_bit_identical(digits, tmp_path, monkeypatch, uninterrupted, kill, left):
    cfg = tiny(variant="sf-imp-1", rounds=3)
    killed = tmp_path / "killed"
    monkeypatch.setattr(lottery, "fit", _killing_fit(**kill))
    with pytest.raises(Killed):
        run(cfg, killed, digits)
    monkeypatch.undo()
    for name in left:  # the kill happened where intended
        assert (killed / name.lstrip("!")).exists() != name.startswith("!"), name
    run(cfg, killed, digits)
    ref_masks, ref_model, ref_rows = uninterrupted
    masks, model, rows = _snapshot(killed, 3)
    assert all(a.equal(b) for a, b in zip(ref_masks, masks))
    assert rows == ref_rows
    assert all(torch.equal(ref_model[k], model[k]) for k in ref_model)


@pytest.mark.slow
def test_kill_between_mask_and_training_and_finished_phases_are_skipped(digits, tmp_path, monkeypatch):
    cfg = tiny(rounds=2)
    out = tmp_path / "run"
    real_train = lottery._train_round
    calls = []

    def train_once_then_die(cfg_, out_, k, *a):
        calls.append(k)
        if k == 2 and calls.count(2) == 1:
            raise Killed  # the mask of round 2 is on disk, its training has not started
        return real_train(cfg_, out_, k, *a)

    monkeypatch.setattr(lottery, "_train_round", train_once_then_die)
    with pytest.raises(Killed):
        run(cfg, out, digits)
    mask_before = Mask.load(out / "round_02" / "mask.safetensors")
    run(cfg, out, digits)
    assert Mask.load(out / "round_02" / "mask.safetensors").equal(mask_before)
    assert calls == [1, 2, 2]  # round 1 was not trained twice
    # a third call finds everything done and trains nothing; extending the run adds one round
    run(cfg, out, digits)
    assert calls == [1, 2, 2]
    result = run(tiny(rounds=3), out, digits)
    assert calls == [1, 2, 2, 3] and len(result.rows) == 4


@pytest.mark.slow
def test_variants_share_one_dense_run(digits, tmp_path):
    first = tmp_path / "imp"
    run(tiny(rounds=1), first, digits)
    second = tmp_path / "random"
    second.mkdir()
    shutil.copytree(first / "dense", second / "dense", copy_function=os.link)
    before = (first / "dense" / "checkpoint.safetensors").stat().st_mtime_ns
    result = run(tiny(rounds=1, criterion="random"), second, digits)
    assert (first / "dense" / "checkpoint.safetensors").stat().st_mtime_ns == before
    assert result.rows[0]["test_accuracy"] == read_json(first / "dense" / "metrics.json")["test_accuracy"]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(first / "dense", other / "dense")
    with pytest.raises(ValueError, match="does not match"):
        run(tiny(rounds=1, lr=0.05), other, digits)


@pytest.mark.slow
def test_resume_guards(digits, tmp_path):
    out = tmp_path / "run"
    run(tiny(rounds=1), out, digits)
    with pytest.raises(ValueError, match="--resume"):
        run_lottery(tiny(rounds=1), out, dataset=digits, log=None)
    with pytest.raises(ValueError, match="prune_fraction"):
        run(tiny(rounds=1, prune_fraction=0.5), out, digits)


# ---------------------------------------------------------------------------------------------
# CLI: smoke run and user errors.
# ---------------------------------------------------------------------------------------------

CLI_TINY = ["--width", "0.25", "--timesteps", "2", "--epochs", "2", "--rewind-epoch", "1", "--batch-size", "64",
            "--train-limit", "128", "--test-limit", "64", "--no-progress"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(capsys, argv, match, out_dir=None):
    code, out, err = cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match.lower() in lines[0].lower(), lines[0]
    if out_dir is not None and Path(out_dir).exists():
        assert not [p for p in Path(out_dir).rglob("*") if p.is_file()]


def test_cli_lottery_smoke(capsys, tmp_path):
    code, out, _ = cli(capsys, "lottery", *CLI_TINY, "--rounds", "1", "--criterion", "random", "--out", tmp_path / "r")
    assert code == 0 and "| sparsity |" in out and "imp (random)" in out
    assert (tmp_path / "r" / "round_01" / "metrics.json").is_file()


@pytest.mark.parametrize("flags,match", [
    (["--prune-fraction", "0"], "prune_fraction must be in (0, 1)"),
    (["--prune-fraction", "1"], "prune_fraction must be in (0, 1)"),
    (["--prune-fraction", "1.5"], "prune_fraction must be in (0, 1)"),
    (["--rounds", "0"], "rounds must be >= 1"),
    (["--rewind-epoch", "2"], "rewind_epoch must be in [0, epochs)"),
    (["--rewind-epoch", "-1"], "rewind_epoch must be in [0, epochs)"),
    (["--criterion", "nope"], "unknown criterion 'nope'"),
    (["--variant", "nope"], "variant must be one of"),
    (["--variant", "sf-imp-2", "--criterion", "magnitude"], "firing-aware"),
    (["--calibration-batches", "0"], "calibration_batches"),
    (["--normalize", "nope"], "normalize must be one of"),
])
def test_cli_bad_input_is_one_line(capsys, tmp_path, flags, match):
    out = tmp_path / "r"
    assert_one_line_error(capsys, ["lottery", *CLI_TINY, *flags, "--out", out], match, out)


def test_cli_mask_that_does_not_fit(capsys, tmp_path):
    out = tmp_path / "r"
    assert cli(capsys, "lottery", *CLI_TINY, "--rounds", "1", "--out", out)[0] == 0
    from spikeprune import create_model

    other = create_model("convnet", 10, 1, 2, 0.5, image_size=8)  # twice as wide
    Mask.ones(other).save(out / "round_02" / "mask.safetensors")
    assert_one_line_error(capsys, ["lottery", *CLI_TINY, "--rounds", "2", "--resume", "--out", out], "shape")


def test_model_without_prunable_layer_is_a_value_error():
    from torch import nn

    from spikeprune import LIF

    with pytest.raises(ValueError, match="no prunable layer"):
        Mask.ones(nn.Sequential(LIF()))


def test_cli_model_without_prunable_layer_is_one_line(capsys, tmp_path, monkeypatch):
    # A registered model (any user plug-in) whose only layers are spiking neurons: the lottery refuses it
    # before writing a file or training an epoch.
    from torch import nn

    from spikeprune import LIF
    from spikeprune.engine.models import registry

    class Pooled(nn.Module):
        def __init__(self, num_classes, T):
            super().__init__()
            self.T, self.num_classes, self.lif = T, num_classes, LIF()

        def forward(self, x):
            x = x.flatten(1)[:, : self.num_classes]
            return self.lif(x.unsqueeze(0).repeat(self.T, 1, 1))

    def lif_only(num_classes, in_channels, T, width, image_size, neuron):
        return Pooled(num_classes, T)

    monkeypatch.setitem(registry._REGISTRY, "lif_only", lif_only)
    out = tmp_path / "r"
    assert_one_line_error(capsys, ["lottery", *CLI_TINY, "--model", "lif_only", "--out", out], "no prunable layer", out)


# ---------------------------------------------------------------------------------------------
# Kim et al.'s paper-scale presets, end to end at tiny size on synthetic CIFAR-shaped data.
# ---------------------------------------------------------------------------------------------

PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("kim_*.yaml"))


def test_there_are_four_kim_presets():
    names = {p.stem for p in PRESETS}
    assert names == {"kim_resnet19_cifar10", "kim_resnet19_cifar100", "kim_vgg16_cifar10", "kim_vgg16_cifar100"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_kim_preset_protocol_and_tiny_end_to_end(preset, tmp_path):
    values = load_yaml(preset)
    cfg = LotteryConfig(**values)
    # the protocol of Kim et al. (ECCV 2022) / LTH-SNN App. E
    assert (cfg.timesteps, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (5, 300, 128, 0.3, 5e-4)
    assert (cfg.optimizer, cfg.schedule, cfg.momentum) == ("sgd", "cosine", 0.9)
    assert (cfg.rewind_epoch, cfg.prune_fraction, cfg.scope, cfg.variant) == (20, 0.25, "global", "imp")
    assert 0.75 ** cfg.rounds < 0.02  # down to Kim et al.'s 98.1 % sparsity
    num_classes = 100 if cfg.dataset == "cifar100" else 10
    data = load_dataset("synthetic", num_classes=num_classes, in_channels=3, image_size=32, train_size=32,
                        test_size=16, seed=0)
    small = LotteryConfig(**{**values, "dataset": "synthetic", "width": 0.0625, "epochs": 2, "rewind_epoch": 1,
                             "rounds": 1, "batch_size": 16, "timesteps": 2})
    result = run_lottery(small, tmp_path / "run", dataset=data, log=None)
    assert len(result.rows) == 2 and abs(result.rows[1]["density"] - 0.75) < 1e-3


# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------


def test_summarize_matches_a_hand_computed_t_interval():
    runs = [[{"round": 0, "density": 1.0, "test_accuracy": a}, {"round": 1, "density": 0.5, "test_accuracy": b}]
            for a, b in [(0.90, 0.80), (0.92, 0.86), (0.91, 0.83)]]
    rows = summarize(runs)
    assert rows[1]["test_accuracy"] == pytest.approx(0.83)
    std = math.sqrt(((0.80 - 0.83) ** 2 + (0.86 - 0.83) ** 2 + 0) / 2)
    assert rows[1]["test_accuracy_std"] == pytest.approx(std)
    assert rows[1]["test_accuracy_ci"] == pytest.approx(4.302652729911275 * std / math.sqrt(3))  # t_{0.975, 2}
    assert rows[0]["n"] == 3 and rows[1]["sparsity"] == pytest.approx(0.5)
    table = format_table({"a": rows})
    assert "| 50.0 % | 83.00 ± " in table


def test_plot_is_a_png(tmp_path):
    series = {"x": [{"sparsity": 0.0, "test_accuracy": 0.9}, {"sparsity": 0.98, "test_accuracy": 0.8,
                                                               "test_accuracy_ci": 0.01}],
              "y": [{"density": 1.0, "test_accuracy": 0.9}, {"density": 0.1, "test_accuracy": 0.85}]}
    path = plot_accuracy_vs_sparsity(series, tmp_path / "p.png", reference=0.9, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="density"):
        plot_accuracy_vs_sparsity({"z": [{"test_accuracy": 0.5}]}, tmp_path / "q.png")


@pytest.mark.slow
def test_an_ordinary_training_run_can_be_adopted_as_the_dense_phase(digits, tmp_path, imp_run):
    from spikeprune.tickets.lottery import adopt_dense, rewind_saver, train_config
    from spikeprune.engine.train import fit

    cfg = tiny()
    run_dir = tmp_path / "train"
    fit(train_config(cfg), run_dir, dataset=digits, progress=False, log=None,
        on_epoch_end=rewind_saver(run_dir, cfg, cfg.rewind_epoch))
    adopt_dense(run_dir, tmp_path / "lottery")
    result = run(cfg, tmp_path / "lottery", digits)
    # identical to the lottery run that trained its own dense phase (imp_run, same config)
    reference, out = imp_run
    assert [r["test_accuracy"] for r in result.rows] == [r["test_accuracy"] for r in reference.rows]
    a, _ = load_checkpoint(tmp_path / "lottery" / "dense" / "rewind.safetensors")
    b, _ = load_checkpoint(out / "dense" / "rewind.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(ValueError, match="not a finished training run"):
        adopt_dense(tmp_path / "nowhere", tmp_path / "other")


def test_evaluate_cli_runs_a_round_as_it_was_evaluated(sf2_run, digits, tmp_path, capsys):
    """`spikeprune evaluate` on an SF-IMP-2 round applies the mask the checkpoint carries (its dynamic
    layers keep dense weights behind a forward-only mask): same accuracy as the ticket itself."""
    import json

    from spikeprune.cli import main
    from spikeprune.engine.data import BatchLoader

    _, out = sf2_run
    ckpt = out / "round_04" / "checkpoint.safetensors"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ev")]) == 0
    capsys.readouterr()
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    loader = BatchLoader(digits, "test", 256, shuffle=False, timesteps=TINY["timesteps"])
    assert got["mask"] == "stored in the checkpoint"
    ref = evaluate(load_ticket(out, 4)[0], loader)
    assert (got["test_accuracy"], got["firing_rate"]) == (ref["test_accuracy"], ref["firing_rate"])
