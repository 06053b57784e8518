"""adapt() on the networks users bring (tests/zoo_nets.py): mode, exactness, subclasses, stateful
SpikingJelly layers, the readout of snnTorch output=True layers, unsupported neurons."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

sj = pytest.importorskip("spikingjelly.activation_based")
snn = pytest.importorskip("snntorch")

import zoo_nets  # noqa: E402
from spikingjelly.activation_based import layer, neuron  # noqa: E402

from spikeprune import calibrate  # noqa: E402
from spikeprune.interop import SUPPORTED_NEURONS, adapt, find_neurons, neuron_summary  # noqa: E402
from spikeprune.engine.neuron import observe  # noqa: E402

T = zoo_nets.T
ZOO = list(zoo_nets.ZOO)
SUPPORTED = "supported: " + ", ".join(SUPPORTED_NEURONS)


def _bn_stats(net: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for t in (m.running_mean, m.running_var)]


@pytest.mark.parametrize("name", zoo_nets.params(ZOO))
@pytest.mark.parametrize("eval_mode", [True, False])
def test_adapted_model_follows_the_nets_mode(name, eval_mode):
    net = zoo_nets.build(name, eval_mode=eval_mode)
    net.get_submodule(next(n for n, m in net.named_modules() if n and not find_neurons(m))).train(not eval_mode)
    modes = {id(m): m.training for m in net.modules()}  # one submodule in the other mode: must be left so
    model = adapt(net, T)
    assert model.training is not eval_mode
    assert all(a.training is not eval_mode for a in model.neurons().values())
    assert {id(m): m.training for m in net.modules() if id(m) in modes} == modes  # nothing flipped
    if eval_mode:
        before = _bn_stats(model)
        with torch.no_grad():
            model(zoo_nets.images(2))
        calibrate(model, [zoo_nets.images(2)], 1)  # restores model.training afterwards
        assert not model.training
        assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(model)))  # BN statistics untouched


@pytest.mark.parametrize("name", zoo_nets.params(ZOO))
def test_adapt_equals_the_packages_own_run(name):
    net = zoo_nets.build(name)
    x = zoo_nets.images(2)
    ref = zoo_nets.package_run(net, x)
    model = adapt(copy.deepcopy(net), T)
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape and torch.equal(out, ref)
    if name.startswith("snntorch"):  # the last Leaky has output=True: read out by its membrane potential
        assert model.output == "membrane" and list(neuron_summary(model).values())[-1]["output"] == "membrane"
        assert not torch.equal(out, zoo_nets.package_run(net, x, output="spikes"))
        spikes = adapt(copy.deepcopy(net), T, output="spikes")
        with torch.no_grad():
            assert torch.equal(spikes(x), zoo_nets.package_run(net, x, output="spikes"))
        assert spikes.output == "spikes"
    else:
        assert model.output == "spikes"
        assert {m["output"] for m in neuron_summary(model).values()} == {"spikes"}


# --------------------------------------------------------------------------------------------------
# The readout of snnTorch output=True layers
# --------------------------------------------------------------------------------------------------


def test_membrane_readout_is_differentiable_and_observed_as_spikes():
    net = zoo_nets.build("snntorch-csnn")
    model = adapt(net, T)
    x = zoo_nets.images(2)
    seen = {}
    with observe(model, lambda lif, u, s: seen.update({lif.path: (u, s)})):
        out = model(x)
    u, s = seen["8"]
    assert torch.equal(out.detach(), u) and set(s.unique().tolist()) <= {0.0, 1.0}
    out.sum().backward()  # trains on the membrane potential, as the snnTorch tutorials do
    assert net[7].weight.grad is not None and net[7].weight.grad.abs().sum() > 0


def test_membrane_readout_of_a_spikingjelly_final_neuron():
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(6, 5), neuron.LIFNode(tau=2.0))
    x = torch.rand(3, 6) * 3
    model = adapt(net, T, static_dims=2, output="membrane")
    got = {}
    with observe(model, lambda lif, u, s: got.update(u=u)):
        out = model(x)
    assert torch.equal(out.detach(), got["u"])
    out.sum().backward()
    assert net[0].weight.grad.abs().sum() > 0
    # "auto" reads out by membrane only what snnTorch marks with output=True
    assert adapt(nn.Sequential(layer.Linear(6, 5), neuron.LIFNode()), T, static_dims=2).output == "spikes"
    assert adapt(nn.Sequential(nn.Linear(6, 5), snn.Leaky(beta=0.5, init_hidden=True)), T, static_dims=2).output \
        == "spikes"


def test_output_option_is_checked():
    with pytest.raises(ValueError, match="output must be one of"):
        adapt(zoo_nets.build("snntorch-csnn"), T, output="logits")
    with pytest.raises(ValueError, match="last layer is Linear"):
        adapt(zoo_nets.build("sj-sequential-single-step"), T, output="membrane")
    with pytest.raises(ValueError, match="needs an nn.Sequential"):
        adapt(zoo_nets.build("sj-plif-CIFAR10Net"), T, output="membrane")


# --------------------------------------------------------------------------------------------------
# A user's subclass of a supported neuron
# --------------------------------------------------------------------------------------------------


class MyLIF(neuron.LIFNode):
    """Only a different constructor: runs exactly as LIFNode."""

    def __init__(self):
        super().__init__(tau=2.0, v_threshold=0.8)

    def extra_repr(self):
        return "mine"


class MyChargeLIF(neuron.LIFNode):
    def neuronal_charge(self, x):  # changes the dynamics the adapter recomputes
        self.v = self.v + 2 * x


class MyStepLIF(neuron.LIFNode):
    def single_step_functional_forward(self, inputs, states, **kwargs):
        return super().single_step_functional_forward(inputs, states, **kwargs)


class MyLeaky(snn.Leaky):
    def __init__(self):
        super().__init__(beta=0.6, init_hidden=True)


class MyFireLeaky(snn.Leaky):
    def fire(self, mem):
        return super().fire(mem * 2)


def test_subclass_with_only_a_constructor_runs_exactly():
    for make, pkg in ((MyLIF, "sj"), (MyLeaky, "snn")):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), make(), nn.Linear(8, 3)).eval()
        assert list(find_neurons(net)) == ["1"]  # recognised though defined in this module
        x = torch.rand(5, 6) * 3
        ref = zoo_nets.package_run(net, x)  # the user's own step loop, stateful
        model = adapt(net, T, static_dims=2)
        with torch.no_grad():
            a = model(x)
            b = model(x)  # no state leaks from one call into the next
        assert torch.equal(a, ref) and torch.equal(b, ref)
        assert model.net[1].kind == ("sj-lif" if pkg == "sj" else "snn-leaky")
        if pkg == "sj":
            assert model.net[1].u_th == 0.8


@pytest.mark.parametrize("cls,what", [(MyChargeLIF, "neuronal_charge"), (MyStepLIF, "single_step_functional_forward"),
                                      (MyFireLeaky, "fire")])
def test_subclass_overriding_the_dynamics_is_refused(cls, what):
    made = cls(beta=0.5, init_hidden=True) if issubclass(cls, snn.Leaky) else cls()
    net = nn.Sequential(nn.Linear(4, 4), made)
    with pytest.raises(ValueError) as e:
        adapt(net, T, static_dims=2)
    msg = str(e.value)
    assert cls.__qualname__ in msg and what in msg and SUPPORTED in msg and "\n" not in msg
    assert net[1] is made  # nothing modified


def test_custom_spikingjelly_neuron_is_refused_not_run_stateless():
    class Custom(neuron.BaseNode):
        def neuronal_charge(self, x):
            self.v = self.v + x

    net = nn.Sequential(nn.Linear(4, 4), Custom(), nn.Linear(4, 4), neuron.LIFNode())
    with pytest.raises(ValueError, match="Custom.*" + SUPPORTED.replace("(", r"\(").replace(")", r"\)")):
        adapt(net, T, static_dims=2)


# --------------------------------------------------------------------------------------------------
# Stateful SpikingJelly layers that are not neurons (layer.Dropout)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["s", "m"])
def test_spikingjelly_dropout_is_reset_per_sequence(mode):
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(6, 32, step_mode=mode), neuron.LIFNode(tau=2.0, step_mode=mode),
                        layer.Dropout(0.5, step_mode=mode), layer.Linear(32, 4, step_mode=mode))
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 2.0)
    model = adapt(net, T, static_dims=2)
    assert model.training
    x = torch.rand(6, 6) * 3
    with torch.no_grad():
        a = model(x)
        b = model(x)
        c = model(x[:3])  # a smaller last batch: a stale mask of batch 6 would not broadcast
    assert c.shape == (T, 3, 4)
    assert not torch.equal(a, b)  # a new mask per sequence
    dropped = model.net[2]
    assert dropped.mask is None  # reset after the sequence, as functional.reset_net would
    # one mask for all T steps of a sequence (SpikingJelly's semantics), also in single-step mode (where folding
    # T into the batch would draw a mask per step)
    seen = []
    hook = dropped.register_forward_hook(lambda m, i, o: seen.append((i[0], o, m.mask.clone())))
    with torch.no_grad():
        model(x)
    hook.remove()
    inputs, outputs, mask = seen[0]
    assert mask.shape == (6, 32) and inputs.shape == outputs.shape == (T, 6, 32)
    assert torch.equal(outputs, inputs * mask)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: no dropout, deterministic


def test_zoo_nets_with_dropout_train_on_batches_of_different_sizes():
    for name in ("sj-plif-CIFAR10Net",):
        model = adapt(zoo_nets.build(name, eval_mode=False), T)
        outs = [model(zoo_nets.images(b, seed=1)[:b]) for b in (3, 2)]
        assert [o.shape[1] for o in outs] == [3, 2]
        with torch.no_grad():
            assert not torch.equal(model(zoo_nets.images(2, seed=1)), model(zoo_nets.images(2, seed=1)))


# --------------------------------------------------------------------------------------------------
# Unsupported neurons: one line naming the class and what is supported
# --------------------------------------------------------------------------------------------------

UNSUPPORTED = [
    (lambda: snn.Synaptic(alpha=0.5, beta=0.5, init_hidden=True), "Synaptic"),
    (lambda: snn.RLeaky(beta=0.5, linear_features=4, init_hidden=True), "RLeaky"),
    (lambda: snn.Alpha(alpha=0.6, beta=0.5, init_hidden=True), "Alpha"),
    (lambda: snn.Leaky(beta=0.5), "init_hidden=True"),
]


@pytest.mark.parametrize("make,name", UNSUPPORTED, ids=["Synaptic", "RLeaky", "Alpha", "Leaky-no-init-hidden"])
def test_unsupported_snntorch_neurons_are_one_line(make, name):
    net = nn.Sequential(nn.Linear(4, 4), make())
    with pytest.raises(ValueError) as e:
        adapt(net, T, static_dims=2)
    msg = str(e.value)
    assert name in msg and type(net[1]).__name__ in msg and SUPPORTED in msg and "\n" not in msg


CLI_NETS = '''
import torch.nn as nn
import snntorch as snn

def synaptic():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), snn.Synaptic(alpha=0.5, beta=0.5, init_hidden=True))

def leaky_no_hidden():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), snn.Leaky(beta=0.5))
'''


@pytest.mark.parametrize("fn,name", [("synaptic", "Synaptic"), ("leaky_no_hidden", "init_hidden=True")])
def test_cli_unsupported_snntorch_neuron_exit_2(tmp_path, capsys, fn, name):
    from spikeprune.cli import main

    (tmp_path / "nets.py").write_text(CLI_NETS)
    out = tmp_path / "out"
    assert main(["interop", "--model", f"{tmp_path / 'nets.py'}:{fn}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and name in err and SUPPORTED in err
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# spikeprune interop on zoo nets: the network is checked against the dataset before anything is written
# --------------------------------------------------------------------------------------------------

ZOO_FILE = str(__import__("pathlib").Path(zoo_nets.__file__))


def test_cli_zoo_net_on_the_wrong_dataset_is_one_line_exit_2(tmp_path, capsys):
    from spikeprune.cli import main

    for fn in ("sj_sequential_single_step", "plif_cifar10net"):
        out = tmp_path / fn
        assert main(["interop", "--model", f"{ZOO_FILE}:{fn}", "--out", str(out)]) == 2  # digits: 1x8x8
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "'digits'" in err and "1x8x8" in err and "3 channels" in err and "--dataset synthetic" in err
        assert not out.exists()  # nothing written, not even the directory


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo_nets.params(ZOO))
def test_cli_interop_runs_end_to_end_on_every_zoo_net(name, tmp_path, capsys):
    """`spikeprune interop --model tests/zoo_nets.py:<factory>` on every network users bring (synthetic
    3x32x32 data; T = 2 and one calibration/analysis batch to keep it short)."""
    import json

    from spikeprune.cli import main

    factory = zoo_nets.ZOO[name].__name__
    out = tmp_path / "out"
    code = main(["interop", "--model", f"{ZOO_FILE}:{factory}", "--dataset", "synthetic", "--timesteps", "2",
                 "--batch-size", "32", "--calibration-batches", "1", "--analysis-batches", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic" and metrics["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert metrics["output"] == ("membrane" if name.startswith("snntorch") else "spikes")
    assert all((out / f).is_file() for f in ("neurons.json", "mask.safetensors", "cost.json", "flips.csv"))


def test_dataset_probe_wraps_only_the_shape_mismatch_of_a_layer():
    from spikeprune.engine.data import load_dataset
    from spikeprune.interop.pipeline import check_fits_dataset

    synthetic, digits = load_dataset("synthetic", train_size=8, test_size=8), load_dataset("digits")
    model = adapt(zoo_nets.build("sj-plif-CIFAR10Net", eval_mode=False), T)  # multi-step, own forward
    before = _bn_stats(model)
    check_fits_dataset(model, synthetic, "synthetic")
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, _bn_stats(model)))  # probe in eval
    with pytest.raises(ValueError, match=r"'digits', whose samples are 1x8x8: .*3 channels"):
        check_fits_dataset(model, digits, "digits")
    with pytest.raises(ValueError, match="gives 10 outputs per sample but dataset 'synthetic' has 4 classes"):
        check_fits_dataset(model, load_dataset("synthetic", num_classes=4, train_size=8, test_size=8), "synthetic")

    class Buggy(nn.Module):  # a genuine bug with a shape-like message: not disguised as bad input
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (bug in my layer)")

    buggy = adapt(nn.Sequential(Buggy(), neuron.LIFNode()), T)
    with pytest.raises(RuntimeError, match="bug in my layer"):
        check_fits_dataset(buggy, synthetic, "synthetic")


# --------------------------------------------------------------------------------------------------
# Warnings: sf falling back to magnitude, global ranking emptying a layer
# --------------------------------------------------------------------------------------------------


def test_sf_on_a_net_without_batchnorm_warns_and_records_the_fallback():
    import warnings

    from spikeprune import SpikepruneWarning, prune
    from spikeprune.tickets.criteria import compute_scores
    from spikeprune.core.diagnostics import SFFallbackWarning

    model = adapt(zoo_nets.build("snntorch-csnn"), T)
    batches = [zoo_nets.images(4, seed=s) for s in range(2)]
    with pytest.warns(SFFallbackWarning, match="scored no layer by firing statistics") as rec:
        prune(model, "sf", 0.8, calibration=batches)
    msg = str(rec[0].message)
    assert issubclass(SFFallbackWarning, SpikepruneWarning) and issubclass(SpikepruneWarning, UserWarning)
    assert "net.3.weight: no BatchNorm between it and the neuron 'net.5'" in msg and "net.7.weight" in msg
    model = adapt(zoo_nets.build("snntorch-csnn"), T)
    with pytest.warns(SFFallbackWarning):
        scores = compute_scores("sf", model, calibrate(model, batches, 2))
    assert set(scores.fallback) == {"net.0.weight", "net.3.weight", "net.7.weight"}
    assert "not spikes" in scores.fallback["net.0.weight"] and set(scores.kinds.values()) == {"magnitude"}

    # with BN after the hidden conv: only the last (no-BN) layer falls back, and says so
    model = adapt(zoo_nets.build("snntorch-csnn-bn"), T)
    with pytest.warns(SFFallbackWarning, match="1 spiking layer") as rec:
        scores = compute_scores("sf", model, calibrate(model, batches, 2))
    assert "net.9.weight" in str(rec[0].message) and "net.4.weight" not in str(rec[0].message)
    assert scores.kinds["net.4.weight"] == "sf" and "net.4.weight" not in scores.fallback

    # the expected fallbacks (encoding layer, a readout driving no neuron) are recorded, not warned about
    model = adapt(zoo_nets.build("sj-sequential-single-step"), T)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpikepruneWarning)
        scores = compute_scores("sf", model, calibrate(model, batches, 2))
    assert scores.fallback == {"net.0.weight": "its input is not spikes (an encoding layer)",
                               "net.9.weight": "it drives no spiking neuron (a readout layer)"}


def test_global_ranking_emptying_a_layer_warns():
    import warnings

    from spikeprune import SpikepruneWarning, prune
    from spikeprune.core.diagnostics import LayerCollapseWarning
    from spikeprune.tickets.masks import Mask
    from spikeprune.tickets.strategies import global_prune, layerwise_prune

    # the zoo's BN conv has small weights next to a large classifier: global magnitude 80 % removes all of it
    model = adapt(zoo_nets.build("snntorch-csnn-bn"), T)
    with pytest.warns(LayerCollapseWarning, match=r"emptied net\.4\.weight \(of 19200 before; 64 output units\)"):
        mask = prune(model, "magnitude", 0.8)
    assert int(mask["net.4.weight"].sum()) == 0
    # fewer survivors than output units (not empty) warns too; a step that does neither does not
    scores = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), "b": torch.full((2, 4), 10.0)}
    full = Mask({n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()})
    with pytest.warns(LayerCollapseWarning, match=r"left a with 2 weights \(of 6 before; 3 output units\)"):
        global_prune(scores, full, 4 / 14)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpikepruneWarning)
        global_prune(scores, full, 1 / 14)
        layerwise_prune(scores, full, 0.5)
        before = global_prune(scores, full, 0.0)
    # already below: a further round does not repeat the warning
    low = Mask({"a": torch.tensor([[False, False], [False, True], [False, True]]), "b": full["b"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpikepruneWarning)
        assert int(global_prune(scores, low, 1 / 10)["a"].sum()) == 1
    assert before.num_kept == 14


def test_cli_interop_reports_warnings_in_metrics_and_output(tmp_path, capsys):
    import json

    from spikeprune.cli import main

    out = tmp_path / "out"
    code = main(["interop", "--model", f"{ZOO_FILE}:snntorch_csnn", "--dataset", "synthetic", "--timesteps", "2",
                 "--calibration-batches", "1", "--analysis-batches", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["output"] == "membrane"
    assert "no BatchNorm" in metrics["criterion_fallback"]["net.3.weight"]
    categories = [w["category"] for w in metrics["warnings"]]
    assert "SFFallbackWarning" in categories
    lines = [line for line in captured.out.splitlines() if line.startswith("warning: ")]
    assert [line[len("warning: "):] for line in lines] == [w["message"] for w in metrics["warnings"]]
