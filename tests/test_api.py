"""The rules of the public API (spikeprune.__doc__, docs/reference.md): one result type for every run,
``(model, meta)`` from every loader, transforms that return what they did and never the model."""

from __future__ import annotations

import inspect

import torch

import spikeprune as sp
from spikeprune.core.rundir import RunResult
from spikeprune.engine.neuron import lif_multistep

RUNS = ["fit", "run_lottery", "compress", "lottery_sweep", "edgepopup_sweep", "reproduce"]
LOADERS = ["load_model", "load_ticket", "load_compressed"]


def test_every_run_declares_run_result():
    from spikeprune.tickets import edgepopup

    runs = [getattr(sp, n) for n in RUNS] + [sp.load_ticket.__globals__["train_dense"], edgepopup.search,
                                            edgepopup.search_densities]
    for fn in runs:
        ret = inspect.signature(fn).return_annotation
        assert ret in ("RunResult", RunResult), f"{fn.__qualname__} returns {ret}, not RunResult"


def test_every_loader_declares_model_and_meta():
    for name in LOADERS:
        ret = str(inspect.signature(getattr(sp, name)).return_annotation).replace(" ", "")
        assert ret.startswith("tuple[nn.Module,dict[str,Any]]"), f"{name} returns {ret}, not (model, meta)"


def test_public_names_are_the_workflow_not_the_internals():
    # the kernels and the science's building blocks stay in their subpackages
    for internal in ("lif_multistep", "prune_step", "subnet_mask", "construct", "protocol", "BatchLoader"):
        assert internal not in sp.__all__ and not hasattr(sp, internal), internal
    assert all(hasattr(sp, n) for n in sp.__all__)
    assert lif_multistep is not None  # still importable from spikeprune.engine.neuron


def test_prune_changes_the_model_in_place_and_returns_the_mask():
    model = sp.create_model("mlp", in_channels=1, num_classes=10, image_size=(8, 8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = sp.prune(model, "magnitude", 0.5)
    assert isinstance(mask, sp.Mask) and not isinstance(mask, torch.nn.Module)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "prune must change the model it is given"
    for name, keep in mask.items():
        assert torch.all(dict(model.named_parameters())[name][~keep] == 0)


def test_quantize_model_changes_the_model_and_returns_what_it_quantized():
    model = sp.create_model("convnet", 10, 1, 2, 0.25, image_size=8)  # classes, channels, T, width
    done = sp.quantize_model(model, 4, per_channel=True, first_last="full", example_input=torch.randn(2, 1, 8, 8))
    assert not isinstance(done, torch.nn.Module)
    quantized = {n for n, m in model.named_modules() if hasattr(m, "quantized_weight")}
    assert set(done) == quantized and quantized  # the encoding layer and classifier stay float
    assert "features.0.conv" not in done and "classifier" not in done
    assert all(v.startswith("4-bit") and "per channel" in v for v in done.values())
