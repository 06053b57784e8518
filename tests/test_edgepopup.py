"""Edge-popup (SPEC §5): frozen weights, exact per-layer top-k, straight-through score gradients (LTH-SNN
Eq. 11, descended), an export that computes the same thing without scores, determinism, CLI, presets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from spikeprune import create_model
from spikeprune.cli import main
from spikeprune.core.config import from_mapping, load_yaml
from spikeprune.engine.data import BatchLoader, load_dataset
from spikeprune.tickets.edgepopup import (
    GAIN,
    INITS,
    EdgePopupConfig,
    SubnetLinear,
    TopKMask,
    export_subnetwork,
    load_search_model,
    scored_layers,
    search,
    search_densities,
    subnet_mask,
    to_edgepopup,
)
from spikeprune.tickets.masks import Mask, prunable_weights
from spikeprune.engine.train import evaluate, load_model, make_loaders, spike_loss

TINY = dict(model="convnet", dataset="synthetic", width=0.25, timesteps=2, batch_size=32, lr=0.1,
            train_limit=128, test_limit=64)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", num_classes=4, in_channels=1, image_size=8, train_size=128, test_size=64)


def _tiny_model(name="convnet", **kw):
    torch.manual_seed(0)
    return create_model(name, 4, 1, 2, 0.25, image_size=8, **kw)


def _batch(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


# ---------------------------------------------------------------------------------------------
# The mask and its gradient.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "convnet", "vgg16", "resnet19"])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.77, 1.0])
def test_every_layer_keeps_exactly_round_density_numel(name, density):
    searched = to_edgepopup(_tiny_model(name), density)
    layers = scored_layers(searched)
    # every prunable layer is searched, the encoding layer and the classifier included
    assert [f"{n}.weight" for n in layers] == list(prunable_weights(_tiny_model(name)))
    for n, layer in layers.items():
        kept = int(layer.mask().sum())
        assert kept == round(density * layer.weight.numel()), n
        assert layer.bias is None and not layer.weight.requires_grad
    mask = subnet_mask(searched)
    assert all(int(mask[k].sum()) == round(density * mask[k].numel()) for k in mask)


def test_mask_is_the_top_k_of_abs_scores():
    layer = SubnetLinear(6, 5, density=0.4)
    with torch.no_grad():
        layer.scores.copy_(torch.randn(5, 6))
    m = layer.mask().bool()
    k = round(0.4 * 30)
    threshold = layer.scores.abs().flatten().sort(descending=True).values[k - 1]
    assert torch.equal(m, layer.scores.abs() >= threshold)  # continuous scores: no ties


def test_score_gradient_is_straight_through_eq11_and_descends():
    """dL/ds = sign(s) * w * dL/d(w*m): LTH-SNN Eq. 11 (sum_t dL/dI_v S_u w_uv), then s <- s - lr * grad."""
    torch.manual_seed(0)
    layer = SubnetLinear(7, 3, density=0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 7))
        layer.scores.copy_(torch.randn(3, 7))
    spikes = (torch.rand(4, 5, 7) < 0.4).float()  # S_u over [T, B, in]
    upstream = torch.randn(4, 5, 3)  # dL/dI_v over [T, B, out]
    (layer(spikes) * upstream).sum().backward()
    dl_dw_masked = torch.einsum("tbv,tbu->vu", upstream, spikes)  # sum over t and b of dL/dI_v * S_u
    expected = layer.scores.detach().sign() * layer.weight * dl_dw_masked
    assert torch.allclose(layer.scores.grad, expected, atol=1e-6)
    assert layer.weight.grad is None
    # pruned weights get a gradient too (that is what lets them come back)
    assert (layer.scores.grad[~layer.mask().bool()] != 0).any()
    before = layer.scores.detach().clone()
    torch.optim.SGD([layer.scores], lr=0.1).step()
    assert torch.allclose(layer.scores.detach(), before - 0.1 * expected, atol=1e-7)


def test_topk_function_shapes_and_backward():
    s = torch.randn(4, 3, 3, 3, requires_grad=True)
    m = TopKMask.apply(s.abs(), 10)
    assert m.shape == s.shape and m.dtype == s.dtype and int(m.sum()) == 10
    (m * torch.arange(s.numel()).view_as(s)).sum().backward()
    assert torch.equal(s.grad, s.detach().sign() * torch.arange(s.numel()).view_as(s).float())


@pytest.mark.parametrize("init", INITS)
def test_frozen_weight_inits(init):
    searched = to_edgepopup(create_model("convnet", 10, 1, 2, 1.0, image_size=8), 0.5, init=init, seed=3)
    for name, layer in scored_layers(searched).items():
        fan = layer.weight[0].numel()
        std = GAIN / math.sqrt(fan)
        w = layer.weight.detach()
        if init == "signed_constant":
            assert torch.equal(w.abs(), torch.full_like(w, std)), name
            assert 0.4 < (w > 0).float().mean() < 0.6
        elif init == "kaiming_uniform":
            assert w.abs().max() <= math.sqrt(3) * std + 1e-7
        if w.numel() > 5000:
            assert w.std().item() == pytest.approx(std, rel=0.05), name
        bound = 1 / math.sqrt(fan)  # Ramanujan's score init: U(-1/sqrt(fan), 1/sqrt(fan))
        assert layer.scores.detach().abs().max() <= bound
    scaled = to_edgepopup(create_model("convnet", 10, 1, 2, 1.0, image_size=8), 0.25, init=init, scale_fan=True,
                          seed=3)
    w_plain = scored_layers(searched)["classifier"].weight
    w_scaled = scored_layers(scaled)["classifier"].weight
    assert torch.allclose(w_scaled, w_plain * 2.0)  # fan * density: std / sqrt(0.25)


def test_same_seed_same_network_at_every_density_and_bn():
    a = to_edgepopup(_tiny_model(), 0.1, seed=5)
    b = to_edgepopup(_tiny_model(), 0.9, seed=5)
    c = to_edgepopup(_tiny_model(), 0.9, seed=6)
    for (n, la), lb, lc in zip(scored_layers(a).items(), scored_layers(b).values(), scored_layers(c).values()):
        assert torch.equal(la.weight, lb.weight) and torch.equal(la.scores, lb.scores), n
        assert not torch.equal(la.weight, lc.weight)
    trainable = [n for n, p in a.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".scores") for n in trainable)  # non-affine BN: nothing else learns
    assert all(not m.affine for m in a.modules() if isinstance(m, nn.BatchNorm2d))
    affine = to_edgepopup(_tiny_model(), 0.5, affine_bn=True)
    extra = [n for n, p in affine.named_parameters() if p.requires_grad and not n.endswith(".scores")]
    assert extra and all(".bn." in n for n in extra)


def test_original_model_untouched_and_no_double_conversion():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    searched = to_edgepopup(model, 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="already an edge-popup model"):
        to_edgepopup(searched, 0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(density=0.0), "density must be in \\(0, 1\\]"),
    (dict(density=1.5), "density must be in \\(0, 1\\]"),
    (dict(density=-0.2), "density must be in \\(0, 1\\]"),
    (dict(density=float("nan")), "density must be in"),
    (dict(density=True), "density must be in"),
    (dict(density=1e-6), "keeps no weight"),
    (dict(density=0.5, init="xavier"), "unknown init 'xavier'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        to_edgepopup(_tiny_model(), **kwargs)


def test_model_without_prunable_layer():
    with pytest.raises(ValueError, match="no prunable layer"):
        to_edgepopup(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()), 0.5)


# ---------------------------------------------------------------------------------------------
# Search runs: frozen weights, learning scores, export, determinism.
# ---------------------------------------------------------------------------------------------


def test_search_keeps_weights_bit_identical_moves_scores_and_exports_exactly(tmp_path, synthetic):
    cfg = EdgePopupConfig(**TINY, epochs=3, density=0.3)
    initial = to_edgepopup(_build(cfg, synthetic), 0.3, seed=cfg.seed)
    row = search(cfg, tmp_path, dataset=synthetic, progress=False, log=None).metrics
    searched = load_search_model(tmp_path / "checkpoint.safetensors")
    for (n, before), after in zip(scored_layers(initial).items(), scored_layers(searched).values()):
        assert torch.equal(before.weight, after.weight), n  # bit-identical: never trained
        assert not torch.equal(before.scores, after.scores), n  # the scores learnt
        assert int(after.mask().sum()) == round(0.3 * after.weight.numel())
    assert not subnet_mask(initial).equal(subnet_mask(searched))  # the subnetwork changed
    # the exported subnetwork: an ordinary registered model, no scores, same accuracy on the same data
    plain, meta = load_model(tmp_path / "subnet.safetensors")
    fresh = create_model("convnet", 4, 1, 2, 0.25, image_size=8)
    assert set(plain.state_dict()) == set(fresh.state_dict())
    assert not any("scores" in k for k in plain.state_dict())
    _, test = make_loaders(cfg, synthetic)
    assert evaluate(plain, test)["test_accuracy"] == row["test_accuracy"] == row["exported_test_accuracy"]
    assert evaluate(searched, test)["test_accuracy"] == row["test_accuracy"]
    mask = Mask.load(tmp_path / "mask.safetensors")
    assert mask.equal(subnet_mask(searched)) and mask.density == pytest.approx(0.3, abs=1e-3)
    assert Mask.from_model(plain).equal(mask)  # pruned weights are exactly zero, kept ones are not
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-affine BN -> affine with gamma = 1, beta = 0
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
    assert torch.equal(plain.classifier.bias, torch.zeros_like(plain.classifier.bias))
    assert meta["config"]["dataset"] == "synthetic" and row["weights_trained"] is False
    assert row["sparsity"] == pytest.approx(0.7) and row["trained_parameters"] == 0


@pytest.mark.parametrize("name,options,affine_bn", [("resnet19", {"tdbn": True}, False), ("resnet19", {}, True),
                                                    ("vgg16", {}, False), ("mlp", {}, False)])
def test_export_computes_the_same_outputs(name, options, affine_bn):
    searched = to_edgepopup(_tiny_model(name, **options), 0.4, affine_bn=affine_bn, seed=2)
    opt = torch.optim.SGD([p for p in searched.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    x, y = _batch()
    for _ in range(3):  # move scores, BN statistics (and gamma/beta under affine_bn) away from init
        opt.zero_grad()
        spike_loss(searched(x), y).backward()
        opt.step()
    plain, mask = export_subnetwork(searched)
    searched.eval()
    plain.eval()
    assert torch.equal(searched(x), plain(x))
    assert set(plain.state_dict()) == set(_tiny_model(name, **options).state_dict())
    assert not any(isinstance(m, type(l)) for m in plain.modules() for l in scored_layers(searched).values())
    assert mask.density == pytest.approx(0.4, abs=2e-3)


def test_conv1d_conv3d_in_an_unregistered_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(24, 3))
    model3 = nn.Sequential(nn.Conv3d(1, 2, 2, bias=True), nn.BatchNorm3d(2, affine=False), nn.Flatten(),
                           nn.Linear(2 * 27, 3, bias=False))
    for net, x in ((model, torch.randn(5, 2, 8)), (model3, torch.randn(5, 1, 4, 4, 4))):
        searched = to_edgepopup(net, 0.5)
        net_layers = [type(m).__name__ for m in scored_layers(searched).values()]
        assert net_layers[0].startswith("SubnetConv") and net_layers[1] == "SubnetLinear"
        searched(x).sum().backward()
        searched.eval()
        plain, mask = export_subnetwork(searched)
        plain.eval()
        assert torch.equal(searched(x), plain(x))
        assert set(plain.state_dict()) == set(net.state_dict())  # biases and BN affinity as in the original


def test_exported_subnetwork_is_accepted_by_the_pruning_tools(synthetic):
    """The export is an ordinary model + Mask: calibration and SF pruning continue from it."""
    from spikeprune import prune

    searched = to_edgepopup(_tiny_model(), 0.5, seed=1)
    x, y = _batch()
    searched(x)  # BN statistics
    plain, mask = export_subnetwork(searched)
    loader = BatchLoader(synthetic, "train", 32, shuffle=False, timesteps=2)
    pruned = prune(plain, "sf", sparsity=0.75, mask=mask, calibration=loader, calibration_batches=2)
    assert pruned.density == pytest.approx(0.25, abs=0.01)
    assert all(not (pruned[k] & ~mask[k]).any() for k in mask)  # only removes, never revives


def _build(cfg, dataset):
    from spikeprune.engine.train import build_model

    return build_model(cfg, dataset)


def test_search_is_deterministic_for_a_seed(tmp_path, synthetic):
    cfg = EdgePopupConfig(**TINY, epochs=2, density=0.5, seed=4)
    a = search(cfg, tmp_path / "a", dataset=synthetic, progress=False, log=None).metrics
    b = search(cfg, tmp_path / "b", dataset=synthetic, progress=False, log=None).metrics
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]
    assert Mask.load(tmp_path / "a" / "mask.safetensors").equal(Mask.load(tmp_path / "b" / "mask.safetensors"))
    sa = load_search_model(tmp_path / "a" / "checkpoint.safetensors").state_dict()
    sb = load_search_model(tmp_path / "b" / "checkpoint.safetensors").state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_config_rules():
    assert EdgePopupConfig(densities="0.1,0.9").densities == (0.1, 0.9)
    for bad, match in [(dict(density=0), "density must be in"), (dict(densities=(0.1, 1.2)), "each of densities"),
                       (dict(densities=(0.3, 0.3)), "repeated"), (dict(density=0.3, densities=(0.1,)), "not both"),
                       (dict(init="zeros"), "init must be one of")]:
        with pytest.raises(ValueError, match=match):
            EdgePopupConfig(**bad)


def test_the_run_over_densities_is_search_densities_not_a_sweep():
    """Issue 17: "sweep" names the job sweeps of spikeprune.studies.sweep; edge-popup's loop over densities of
    one configuration is ``search_densities`` (no alias left under the old name)."""
    import spikeprune
    from spikeprune.studies import sweep as job_sweeps
    from spikeprune.tickets import edgepopup

    assert "search_densities" in edgepopup.__all__ and edgepopup.search_densities is search_densities
    assert "sweep" not in edgepopup.__all__ and not hasattr(edgepopup, "sweep")
    assert spikeprune.edgepopup_sweep is job_sweeps.edgepopup_sweep
    with pytest.raises(ValueError, match=r"use search_densities\(\) for densities"):
        search(EdgePopupConfig(densities=(0.1, 0.5)), "unused")


# ---------------------------------------------------------------------------------------------
# CLI: files of several densities, resume, evaluate the export, one-line errors.
# ---------------------------------------------------------------------------------------------

SMOKE = ["--model", "convnet", "--dataset", "digits", "--width", "0.25", "--timesteps", "2", "--epochs", "1",
         "--batch-size", "64", "--train-limit", "256", "--no-progress"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_sweep_resume_and_evaluate_export(capsys, tmp_path, monkeypatch):
    from spikeprune.tickets import edgepopup

    dense = tmp_path / "dense"
    assert run_cli(capsys, "train", *SMOKE, "--out", dense)[0] == 0
    out = tmp_path / "ep"
    calls = []
    real_search = edgepopup.search

    def killed_after_first(cfg, *a, **kw):  # the run "dies" while starting its second density
        calls.append(cfg.density)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_search(cfg, *a, **kw)

    monkeypatch.setattr(edgepopup, "search", killed_after_first)
    argv = ["edgepopup", *SMOKE, "--densities", "0.3,0.7", "--reference", dense, "--out", out]
    assert run_cli(capsys, *argv)[0] == 130
    partial = json.loads((out / "results.json").read_text())
    assert not partial["complete"] and [r["density"] for r in partial["rows"]] == [0.3]
    first = (out / "density-0.3" / "result.json").stat().st_mtime_ns
    # without --resume an existing run is refused; with it the finished density is not redone
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(edgepopup, "search", real_search)
    code, stdout, _ = run_cli(capsys, *argv, "--resume")
    assert code == 0 and "vs dense" in stdout
    assert (out / "density-0.3" / "result.json").stat().st_mtime_ns == first
    summary = json.loads((out / "results.json").read_text())
    assert summary["complete"] and [r["density"] for r in summary["rows"]] == [0.3, 0.7]
    assert [r["sparsity"] for r in summary["rows"]] == pytest.approx([0.7, 0.3])
    dense_acc = json.loads((dense / "metrics.json").read_text())["test_accuracy"]
    assert summary["dense_reference"]["mean"] == dense_acc
    assert summary["rows"][0]["relative_to_dense"] == pytest.approx(summary["rows"][0]["test_accuracy"] / dense_acc)
    assert (out / "results.csv").read_text().splitlines()[0].startswith("density,sparsity,seed")
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "non-affine BN" in summary["bn"]
    # the export is an ordinary checkpoint: `spikeprune evaluate` reproduces the searched accuracy
    code, _, _ = run_cli(capsys, "evaluate", "--checkpoint", out / "density-0.7" / "subnet.safetensors",
                         "--out", tmp_path / "ev")
    assert code == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["test_accuracy"] == summary["rows"][1]["test_accuracy"]
    # ... and the cost report (issue 6) and the spike-flip analysis (issue 5) take the export + its mask
    subnet, mask = out / "density-0.7" / "subnet.safetensors", out / "density-0.7" / "mask.safetensors"
    code, _, err = run_cli(capsys, "cost", "--checkpoint", subnet, "--mask", mask, "--batches", "1",
                           "--latency-repeats", "0", "--out", tmp_path / "cost")
    assert code == 0, err
    cost = json.loads((tmp_path / "cost" / "cost.json").read_text())
    total = next(r for r in summary["rows"][1]["layers"] if r["name"] == "total")
    assert (cost["total"]["weights"], cost["total"]["nonzero"]) == (total["numel"], total["kept"])  # to the weight
    code, _, err = run_cli(capsys, "analyze", "flips", "--checkpoint", subnet, "--perturb", f"prune:{mask}",
                           "--perturb", "prune:0.5:sf", "--samples", "32", "--batch-size", "32",
                           "--calibration-batches", "1", "--out", tmp_path / "flips")
    assert code == 0, err
    assert json.loads((tmp_path / "flips" / "flips.json").read_text())["rows"]


def test_cli_affine_bn_is_stated_loudly(capsys, tmp_path):
    code, out, err = run_cli(capsys, "edgepopup", *SMOKE, "--density", "0.5", "--affine-bn", "--out", tmp_path)
    assert code == 0 and "AFFINE BN" in out and "WARNING" in err
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["affine_bn"] and "TRAINED" in summary["bn"] and summary["rows"][0]["trained_parameters"] > 0


def _no_prunable_layer(num_classes, in_channels, T, width, image_size, neuron):
    class Nothing(nn.Module):
        def forward(self, x):
            return x.new_zeros(T, x.shape[0], num_classes)
    return Nothing()


@pytest.fixture
def model_without_prunable_layer(monkeypatch):
    """Registered for one test only (other tests iterate over every registered model)."""
    from spikeprune.engine.models import registry

    monkeypatch.setitem(registry._REGISTRY, "_no_prunable_layer", _no_prunable_layer)


@pytest.mark.parametrize("flags,match", [
    (["--density", "0"], "density must be in (0, 1]"),
    (["--density", "1.5"], "density must be in (0, 1]"),
    (["--density", "-0.5"], "density must be in (0, 1]"),
    (["--density", "half"], "density must be a number"),
    (["--densities", "0.1,2"], "each of densities must be in (0, 1]"),
    (["--density", "0.3", "--densities", "0.1,0.5"], "not both"),
    (["--density", "0.0001"], "keeps no weight"),
    (["--init", "xavier"], "init must be one of"),
    (["--model", "_no_prunable_layer"], "no prunable layer"),
    (["--reference", "/nonexistent/run"], "reference"),
])
def test_cli_bad_input_is_one_line_exit_2_no_files(capsys, tmp_path, flags, match, model_without_prunable_layer):
    out = tmp_path / "ep"
    code, _, err = run_cli(capsys, "edgepopup", *SMOKE, *flags, "--out", out)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and match in lines[0], err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Paper-scale presets (LTH-SNN Appendix E), run end to end at tiny size on CIFAR-shaped data.
# ---------------------------------------------------------------------------------------------

PRESETS = sorted(CONFIGS.glob("edgepopup_*.yaml"))


def test_presets_exist_and_say_appendix_e():
    names = {p.stem for p in PRESETS}
    assert names == {f"edgepopup_{m}_{d}" for m in ("vgg16", "resnet19") for d in ("cifar10", "cifar100")}
    for p in PRESETS:
        cfg = from_mapping(EdgePopupConfig, load_yaml(p), str(p))
        assert (cfg.timesteps, cfg.lr, cfg.schedule, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.optimizer) \
            == (5, 0.3, "cosine", 5e-4, 128, 300, "sgd")
        assert cfg.densities == (0.1, 0.3, 0.5, 0.7, 0.9) and cfg.init == "signed_constant" and not cfg.affine_bn


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_runs_end_to_end_at_tiny_size(preset, tmp_path):
    values = load_yaml(preset)
    cfg = from_mapping(EdgePopupConfig, {**values, "width": 0.0625, "epochs": 1, "batch_size": 16,
                                         "train_limit": 32, "test_limit": 16, "densities": (0.1, 0.9)})
    classes = 100 if cfg.dataset == "cifar100" else 10
    data = load_dataset("synthetic", num_classes=classes, in_channels=3, image_size=32, train_size=32, test_size=16)
    summary = search_densities(cfg, tmp_path, dataset=data, progress=False, log=None).metrics
    assert summary["complete"] and len(summary["rows"]) == 2
    for row in summary["rows"]:
        assert row["exported_test_accuracy"] == row["test_accuracy"] and row["timesteps"] == 5
    assert (tmp_path / "density-0.1" / "subnet.safetensors").is_file()
