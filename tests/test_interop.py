"""Interop with the real SpikingJelly (installed --no-deps) and snnTorch packages (spikeprune.interop)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spikeprune import calibrate, cost_report, flip_analysis, prune, quantize_model
from spikeprune.tickets.criteria import compute_scores
from spikeprune.engine.data import BatchLoader, load_dataset
from spikeprune.theory.flips import flip_summary
from spikeprune.interop import NeuronAdapter, SUPPORTED_NEURONS, adapt, find_neurons, neuron_summary
from spikeprune.engine.neuron import lif_multistep, observe, record_statistics
from spikeprune.engine.train import evaluate, train_epoch

sj = pytest.importorskip("spikingjelly.activation_based")
snn = pytest.importorskip("snntorch")
from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402

T = 4


def _sj_neuron(kind: str, mode: str) -> nn.Module:
    return {
        "lif": lambda: neuron.LIFNode(tau=2.0, step_mode=mode),
        "lif-exact": lambda: neuron.LIFNode(tau=1 / (1 - 0.6), decay_input=False, v_reset=0.0, step_mode=mode),
        "lif-soft": lambda: neuron.LIFNode(tau=1.5, decay_input=False, v_reset=None, v_threshold=0.5, step_mode=mode),
        "plif": lambda: neuron.ParametricLIFNode(init_tau=3.0, step_mode=mode),
        "if": lambda: neuron.IFNode(v_reset=-0.2, step_mode=mode),
    }[kind]()


def sj_csnn(kind: str = "lif", mode: str = "m", width: int = 8) -> nn.Sequential:
    """conv-BN-neuron x 2 + linear, SpikingJelly layers (as in its CSNN example)."""
    return nn.Sequential(
        layer.Conv2d(1, width, 3, padding=1, bias=False, step_mode=mode), layer.BatchNorm2d(width, step_mode=mode),
        _sj_neuron(kind, mode), layer.MaxPool2d(2, step_mode=mode),
        layer.Conv2d(width, 2 * width, 3, padding=1, bias=False, step_mode=mode),
        layer.BatchNorm2d(2 * width, step_mode=mode), _sj_neuron(kind, mode),
        layer.Flatten(step_mode=mode), layer.Linear(2 * width * 16, 10, step_mode=mode))


def snn_csnn(reset: str = "subtract", beta: float = 0.6, width: int = 8) -> nn.Sequential:
    """conv-BN-Leaky x 2 + linear, the snnTorch tutorial's nn.Sequential style (init_hidden=True)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        snn.Leaky(beta=beta, init_hidden=True, reset_mechanism=reset), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
        snn.Leaky(beta=beta, threshold=0.8, init_hidden=True, reset_mechanism=reset),
        nn.Flatten(), nn.Linear(2 * width * 16, 10))


def _randomize_bn(net: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.3)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 2 + 1.0)


def _reference(net: nn.Module, x: torch.Tensor, multistep: bool) -> torch.Tensor:
    """What the package itself computes: SJ multi-step on [T, B, ...] or the usual per-step loop."""
    with torch.no_grad():
        out = net(x.unsqueeze(0).repeat(T, 1, 1, 1, 1)) if multistep else torch.stack([net(x) for _ in range(T)])
    functional.reset_net(net)  # SpikingJelly's reset; snnTorch's:
    for m in net.modules():
        if isinstance(m, snn.Leaky):
            m.reset_mem()
    return out


CASES = [("sj", k, m) for k in ("lif", "lif-exact", "lif-soft", "plif", "if") for m in ("s", "m")] + \
        [("snn", r, "s") for r in ("subtract", "zero", "none")]


@pytest.mark.parametrize("pkg,kind,mode", CASES)
def test_adapter_reproduces_package_outputs_and_spikes(pkg, kind, mode):
    torch.manual_seed(0)
    net = sj_csnn(kind, mode) if pkg == "sj" else snn_csnn(kind)
    _randomize_bn(net)
    net.eval()
    x = torch.rand(16, 1, 8, 8) * 3
    ref = _reference(net, x, mode == "m")
    model = adapt(net, T).eval()
    seen = {}

    def observer(lif, u, spikes):
        seen[lif.path] = (u, spikes)

    with torch.no_grad(), observe(model, observer):
        out = model(x)
    assert torch.equal(out, ref)  # the package's own dynamics, run time-major
    assert len(seen) == 2
    for name, (u, spikes) in seen.items():
        lif = model.net.get_submodule(name)
        # the recomputed pre-spike potential reproduces the package's spikes exactly
        mine = (u >= lif.u_th) if lif.fires_at_threshold else (u > lif.u_th)
        assert torch.equal(mine.float(), spikes.float()), name
        assert 0 < spikes.mean() < 1
        assert u.shape == spikes.shape and u.shape[0] == T


def test_exact_cases_match_spikeprune_lif():
    """SPEC §1: SJ LIFNode(tau=1/(1-beta), decay_input=False, v_reset=0) and snnTorch Leaky(reset 'zero')
    are spikeprune's LIF; the adapters' membrane potentials equal lif_multistep's."""
    x = torch.randn(T, 8, 5, 4, 4) * 1.5
    for net in (neuron.LIFNode(tau=1 / (1 - 0.6), decay_input=False, v_reset=0.0), snn.Leaky(beta=0.6,
                init_hidden=True, reset_mechanism="zero")):
        model = adapt(nn.Sequential(net), T)
        got = {}
        with torch.no_grad(), observe(model, lambda lif, u, s: got.update(u=u, s=s)):
            model(x)
        spikes, u = lif_multistep(x, beta=0.6, u_th=1.0)
        assert torch.allclose(got["u"], u, atol=1e-6)
        mism = (got["s"] != spikes) & ((u - 1.0).abs() > 1e-5)  # snnTorch fires at u > u_th, SJ/ours at >=
        assert not bool(mism.any())


def test_mapping_of_parameters():
    model = adapt(nn.Sequential(
        neuron.LIFNode(tau=4.0), neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None, v_threshold=0.5),
        neuron.ParametricLIFNode(init_tau=2.0), neuron.IFNode(),
        snn.Leaky(beta=0.7, threshold=0.9, init_hidden=True)), T)
    m = neuron_summary(model)
    assert m["net.0"]["beta"] == pytest.approx(0.75) and m["net.0"]["input_gain"] == pytest.approx(0.25)
    assert m["net.0"]["reset"] == "hard" and m["net.0"]["v_reset"] == 0.0
    assert m["net.1"]["beta"] == pytest.approx(0.5) and m["net.1"]["input_gain"] == 1.0
    assert m["net.1"]["reset"] == "soft" and m["net.1"]["v_reset"] is None and m["net.1"]["u_th"] == 0.5
    assert m["net.2"]["beta"] == pytest.approx(0.5)  # PLIF: tau = 1 / sigmoid(w)
    with torch.no_grad():
        model.net[2].neuron.w.fill_(0.0)  # learned tau changes -> the adapter reads it live
    assert model.net[2].beta == pytest.approx(0.5)
    model.net[2].neuron.w.data.fill_(2.0)
    assert model.net[2].beta == pytest.approx(1 - torch.sigmoid(torch.tensor(2.0)).item())
    assert m["net.3"]["beta"] == 1.0
    assert m["net.4"] == pytest.approx({**m["net.4"], "beta": 0.7, "u_th": 0.9}) and m["net.4"]["reset"] == "soft"
    assert not m["net.4"]["fires_at_threshold"]


def test_state_never_survives_a_forward_pass_deepcopy_and_rewinding():
    torch.manual_seed(1)
    for net in (sj_csnn("lif", "s"), snn_csnn("subtract")):
        _randomize_bn(net)
        raw = copy.deepcopy(net).eval()
        # The pitfall: the package keeps the membrane on the module. A copy taken after a pass continues
        # from the stale potential instead of starting at rest.
        x = torch.rand(8, 1, 8, 8) * 3
        with torch.no_grad():
            first = raw(x)
            stale = copy.deepcopy(raw)(x)
        assert not torch.equal(first, stale)

        model = adapt(net, T).eval()
        snapshot = copy.deepcopy(model.state_dict())
        with torch.no_grad():
            a = model(x)
            b = copy.deepcopy(model)(x)  # copy after a pass: same result, nothing stale
            c = model(x[:5])  # another batch size: no shape clash with a remembered state
        assert torch.equal(a, b) and torch.equal(c, a[:, :5])
        for adapter in model.neurons().values():
            n = adapter.neuron
            v = getattr(n, "v", None) if hasattr(n, "v_threshold") else n.mem
            assert not torch.is_tensor(v) or v.numel() == 0  # back at rest (SJ: float, snnTorch: empty)
        assert model.state_dict().keys() == snapshot.keys()
        rewound = copy.deepcopy(model)
        with torch.no_grad():
            for p in rewound.parameters():
                p.add_(1.0)
        rewound.load_state_dict(snapshot)  # rewinding from a snapshot restores identical behaviour
        with torch.no_grad():
            assert torch.equal(rewound(x), a)


def test_unwrap_restores_the_users_network():
    net = sj_csnn("lif", "m")
    classes = [type(m) for m in net]
    model = adapt(net, T)
    assert all(isinstance(model.net[i], NeuronAdapter) for i in (2, 6))
    assert type(model.net[0]) is nn.Conv2d  # SJ's layer.Conv2d seen as a plain conv (quantizer, exporter)
    with pytest.raises(ValueError, match="already adapted"):
        adapt(net, T)
    back = model.unwrap()
    assert back is net and [type(m) for m in back] == classes
    assert isinstance(adapt(back, T), nn.Module)  # unwrapped: can be adapted again


def test_unsupported_neurons_name_the_class_and_the_supported_ones():
    cases = [
        (nn.Sequential(nn.Linear(4, 4), neuron.QIFNode()), "QIFNode"),
        (nn.Sequential(nn.Linear(4, 4), neuron.EIFNode()), "EIFNode"),
        (nn.Sequential(nn.Linear(4, 4), snn.Synaptic(alpha=0.5, beta=0.5, init_hidden=True)), "Synaptic"),
        (nn.Sequential(nn.Linear(4, 4), snn.Leaky(beta=0.5)), "init_hidden=True"),
    ]
    for net, name in cases:
        before = [type(m) for m in net.modules()]
        with pytest.raises(ValueError) as e:
            adapt(net, T)
        msg = str(e.value)
        assert name in msg and "supported: " + ", ".join(SUPPORTED_NEURONS) in msg and "\n" not in msg
        assert [type(m) for m in net.modules()] == before  # nothing was modified
    with pytest.raises(ValueError, match="no spiking neuron"):
        adapt(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), T)
    with pytest.raises(ValueError, match="timesteps"):
        adapt(sj_csnn(), 0)


class _SingleStepBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.lif = neuron.LIFNode()

    def forward(self, x):
        return self.lif(self.fc(x))


def test_single_step_model_needs_a_sequential():
    with pytest.raises(ValueError, match="nn.Sequential"):
        adapt(_SingleStepBlock(), T)
    assert list(find_neurons(_SingleStepBlock())) == ["lif"]


# --------------------------------------------------------------------------------------------------
# Must show: SJ and snnTorch CSNNs trained a little on digits, SF-pruned to 80 %, cost + flip analysis.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _train_prune_analyse(net: nn.Module, digits, *, quantize: bool):
    torch.manual_seed(0)
    model = adapt(net, T)
    train = BatchLoader(digits, "train", 64, shuffle=True, seed=0)
    test = BatchLoader(digits, "test", 120, shuffle=False)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for epoch in range(2):
        train.set_epoch(epoch)
        train_epoch(model, train, opt)
    dense = evaluate(model, test)
    assert dense["test_accuracy"] > 0.6, dense  # learned something in 2 epochs (chance: 0.1)
    assert set(dense["firing_rates"]) == set(model.neurons())

    reference = copy.deepcopy(model).eval()
    calib = [b for _, b in zip(range(4), train)]
    scores = compute_scores("sf", model, calibrate(model, calib, 4))
    # the conv reading spikes (BN + neuron after it) gets Eq. 12-13; the encoding layer stays magnitude
    assert scores.kinds["net.4.weight"] == "sf" and scores.kinds["net.0.weight"] == "magnitude"
    mask = prune(model, "sf", 0.8, calibration=calib)
    assert mask.sparsity == pytest.approx(0.8, abs=0.01)
    pruned = evaluate(model, test)

    if quantize:
        quantize_model(model, bits=4)
    report = cost_report(model, [b for _, b in zip(range(2), test)])
    rows = {r.name: r for r in report.layers}
    assert set(rows) == {"net.0", "net.4", "net.8"}
    assert rows["net.0"].executions == 1 and not rows["net.0"].input_is_spikes  # encoding layer ran once
    assert rows["net.4"].input_is_spikes and rows["net.4"].executions == T and rows["net.4"].sops > 0
    assert report.totals["density"] == pytest.approx(0.2, abs=0.01)
    assert all(r.bits == (4 if quantize else 32) for r in report.layers)

    rows = flip_analysis(reference, model, [b for _, b in zip(range(2), test)], p_sup_method="gaussian")
    summary = flip_summary(rows)
    assert {s["layer"] for s in summary} == {"net.2", "net.6"}
    assert all(s["eps"] > 0 for s in summary)
    assert any(s["max_flip_rate"] > 0 for s in summary)  # pruning 80 % flips spikes
    # LTH-SNN Lemma 3.3/3.4's argument: a neuron's first flip happens only inside the crisis neighbourhood
    assert all(s["first_flips_outside"] == 0 for s in summary)
    assert all(s["holds"] for s in summary if s["mode"] == "local")
    return dense, pruned


@pytest.mark.slow
def test_spikingjelly_csnn_digits_sf_prune_cost_flips(digits):
    dense, pruned = _train_prune_analyse(sj_csnn("lif", "m"), digits, quantize=True)
    assert pruned["test_accuracy"] > 0.3


@pytest.mark.slow
def test_snntorch_csnn_digits_sf_prune_cost_flips(digits):
    dense, pruned = _train_prune_analyse(snn_csnn("subtract", beta=0.7), digits, quantize=False)
    assert pruned["test_accuracy"] > 0.3


def test_record_statistics_and_if_neurons():
    """IF neurons (beta = 1) give statistics and SF scores; the flip bounds need a leak and say so."""
    net = sj_csnn("if", "s")
    _randomize_bn(net)
    model = adapt(net, T).eval()
    x = torch.rand(16, 1, 8, 8) * 3
    with record_statistics(model) as rec, torch.no_grad():
        model(x)
    assert set(rec.layers) == {"net.2", "net.6"} and rec["net.2"].membrane_mean.shape == (8,)
    with pytest.raises(ValueError, match="leaky neuron"):
        flip_analysis(model, copy.deepcopy(model), [x])
    with pytest.raises(ValueError, match="membrane quantization"):
        quantize_model(model, 4, membrane_bits=8, example_input=x)


# --------------------------------------------------------------------------------------------------
# CLI: spikeprune interop
# --------------------------------------------------------------------------------------------------

NETS = '''
import torch.nn as nn
import snntorch as snn
from spikingjelly.activation_based import layer, neuron

def leaky():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), snn.Leaky(beta=0.7, init_hidden=True),
                         nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16),
                         snn.Leaky(beta=0.7, init_hidden=True), nn.Flatten(), nn.Linear(256, 10))

def qif():
    return nn.Sequential(layer.Conv2d(1, 8, 3, padding=1), layer.BatchNorm2d(8), neuron.QIFNode(),
                         layer.Flatten(), layer.Linear(512, 10))
'''


def test_cli_interop_unsupported_neuron_is_one_line_exit_2(tmp_path, capsys):
    from spikeprune.cli import main

    (tmp_path / "nets.py").write_text(NETS)
    out = tmp_path / "out"
    code = main(["interop", "--model", f"{tmp_path / 'nets.py'}:qif", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "QIFNode" in err and "supported: " + ", ".join(SUPPORTED_NEURONS) in err
    assert not out.exists()  # nothing written
    assert main(["interop", "--model", "no_colon_here", "--out", str(out)]) == 2
    assert main(["interop", "--model", f"{tmp_path / 'nets.py'}:missing", "--out", str(out)]) == 2


def test_cli_interop_runs_the_pipeline(tmp_path, capsys):
    import json

    from spikeprune.cli import main

    (tmp_path / "nets.py").write_text(NETS)
    out = tmp_path / "out"
    code = main(["interop", "--model", f"{tmp_path / 'nets.py'}:leaky", "--epochs", "1", "--timesteps", "2",
                 "--analysis-batches", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for f in ("neurons.json", "mask.safetensors", "cost.json", "flips.csv", "flip_summary.json", "metrics.json"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert metrics["dense"]["accuracy"] > 0.5
    neurons = json.loads((out / "neurons.json").read_text())
    assert [n["source"] for n in neurons.values()] == ["snntorch._neurons.leaky.Leaky"] * 2


class _SJMultiStepCSNN(nn.Module):
    """SpikingJelly's own style: a custom class in multi-step mode whose forward takes [T, B, ...]."""

    def __init__(self):
        super().__init__()
        self.features = sj_csnn("plif", "m")
        functional.set_step_mode(self, "m")

    def forward(self, x_seq):
        return self.features(x_seq)


def test_analyse_third_party_takes_an_interop_config_and_logs_to_stderr(tmp_path, capsys):
    """The Python API takes the command's InteropConfig (or the same settings as keywords, not both) and
    prints its progress on stderr; stdout stays free for the caller."""
    import json

    from spikeprune.interop.config import InteropConfig
    from spikeprune.interop.pipeline import analyse_third_party

    (tmp_path / "nets.py").write_text(NETS)
    cfg = InteropConfig(model=f"{tmp_path / 'nets.py'}:leaky", epochs=1, timesteps=2, analysis_batches=1)
    with pytest.raises(TypeError, match="epochs"):
        analyse_third_party(cfg, tmp_path / "both", epochs=2)
    assert not (tmp_path / "both").exists()
    result = analyse_third_party(cfg, tmp_path / "out")
    out, err = capsys.readouterr()
    assert out == "" and "epoch 1/1" in err and "accuracy dense" in err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["epochs"], metrics["timesteps"], metrics["factory"]) == (1, 2, cfg.model)
    assert result.metrics["sparsity"] == metrics["sparsity"] == pytest.approx(cfg.sparsity, abs=0.01)


def test_custom_multistep_spikingjelly_model_and_reset_net():
    torch.manual_seed(2)
    net = _SJMultiStepCSNN()
    _randomize_bn(net)
    net.eval()
    x = torch.rand(8, 1, 8, 8) * 3
    ref = _reference(net, x, multistep=True)
    model = adapt(net, T).eval()
    assert not model.sequential
    with record_statistics(model) as rec, torch.no_grad():
        out = model(x)
    assert torch.equal(out, ref) and set(rec.layers) == {"net.features.2", "net.features.6"}
    functional.reset_net(model)  # SpikingJelly's reset walks every module: the adapters must not break it
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_spike_check_catches_a_wrong_membrane_potential(monkeypatch):
    """The self-check is not vacuous: a recomputed u that disagrees with the package's spikes is an error."""
    from spikeprune.interop import SpikeMismatchError

    net = sj_csnn("lif", "s")
    _randomize_bn(net)
    model = adapt(net, T).eval()
    x = torch.rand(8, 1, 8, 8) * 3
    adapter = model.net[2]
    original = adapter._sj_charge
    monkeypatch.setattr(adapter, "_sj_charge", lambda x, v: original(x, v) + 0.3)
    with pytest.raises(SpikeMismatchError, match="disagrees"), torch.no_grad():
        calibrate(model, [x], 1)
    with torch.no_grad():
        model(x)  # unobserved: no recomputation, no check


def test_cli_interop_loads_weights_from_safetensors(tmp_path, capsys):
    import json

    from safetensors.torch import save_file

    from spikeprune.cli import main

    (tmp_path / "nets.py").write_text(NETS)
    import importlib.util

    spec = importlib.util.spec_from_file_location("nets_for_weights", tmp_path / "nets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(5)
    net = mod.leaky()
    state = net.state_dict()
    state["2.beta"] = torch.tensor(0.55)  # a value the factory does not set: visible in neurons.json
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    out = tmp_path / "out"
    code = main(["interop", "--model", f"{tmp_path / 'nets.py'}:leaky", "--weights", str(tmp_path / "w.safetensors"),
                 "--timesteps", "2", "--analysis-batches", "1", "--calibration-batches", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 0
    neurons = json.loads((out / "neurons.json").read_text())
    assert neurons["net.2"]["beta"] == pytest.approx(0.55) and neurons["net.6"]["beta"] == pytest.approx(0.7)
    del state["0.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "partial.safetensors"))
    assert main(["interop", "--model", f"{tmp_path / 'nets.py'}:leaky", "--weights",
                 str(tmp_path / "partial.safetensors"), "--out", str(tmp_path / "out3")]) == 2
    assert "does not fit" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    assert main(["interop", "--model", f"{tmp_path / 'nets.py'}:leaky", "--weights", str(tmp_path / "bad.safetensors"),
                 "--out", str(tmp_path / "out2")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
