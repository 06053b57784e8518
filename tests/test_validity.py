"""Criterion validity (issue 14): does a criterion's score rank the flips its removal causes?

The constructed layer: N channels, channel j has one weight w_j (a depthwise 1x1 conv), bias 0.5,
threshold 1, T = 1, input spike x_j ~ Bernoulli(r_j). With w_j >= 0.5 the neuron fires iff x_j = 1,
and removing w_j makes it never fire: the flip probability of removing weight j is exactly r_j, and
a removed set G flips a fraction sum_{j in G} r_j / N of the layer's spikes.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spikeprune.tickets.criteria import Scores
from spikeprune.engine.neuron import LIF
from spikeprune.report.plots import plot_validity
from spikeprune.theory.validity import criterion_validity, validity_summary

N, B = 40, 4000


class OneWeightPerNeuron(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv1d(N, N, 1, groups=N, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(w.view(N, 1, 1))
            self.conv.bias.fill_(0.5)
        self.lif = LIF(beta=0.5, u_th=1.0)
        self.static_dims = 3  # a static input is [B, N, 1]; the model adds T = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(self.conv(x).unsqueeze(0))


RATES = torch.linspace(0.05, 0.95, N)


@pytest.fixture(scope="module")
def digits():
    from spikeprune.engine.data import load_dataset

    return load_dataset("digits")


def _batches():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(B, N, 1, generator=g) < RATES.view(1, N, 1)).float()
    return [x[i:i + 1000] for i in range(0, B, 1000)]


def oracle(model, calibration=None, **_):
    """Scores = the closed-form flip probability r_j of removing weight j."""
    return Scores({"conv.weight": RATES.view(N, 1, 1).clone()}, {"conv.weight": "oracle"})


def test_rank_correlation_is_one_where_the_flip_probability_is_known_in_closed_form():
    model = OneWeightPerNeuron(1.0 + 0.5 * (1.0 - RATES))  # |w| decreases as r increases: magnitude ranks backwards
    batches = _batches()
    rows = criterion_validity(model, [oracle, "magnitude", "random"], None, batches, groups=10)
    summary = {s["criterion"]: s for s in validity_summary(rows)}
    assert summary["oracle"]["spearman"] == pytest.approx(1.0)
    assert summary["magnitude"]["spearman"] == pytest.approx(-1.0)
    assert abs(summary["random"]["spearman"]) < 0.9
    # each set's measured flip rate equals the closed form sum_{j in G} r_j / N within 5 binomial sigmas
    x = torch.cat(batches)
    for r in (r for r in rows if r.criterion == "oracle"):
        members = torch.arange(N)[r.group * 4:(r.group + 1) * 4]  # the oracle's sets: rates in order
        expected = float(RATES[members].sum()) / N
        sigma = float((RATES[members] * (1 - RATES[members])).sum().sqrt()) / (N * B ** 0.5)
        assert abs(r.flip_rate - expected) < 5 * sigma + 1e-12, (r.group, r.flip_rate, expected)
        assert r.slots == B * N and r.weights == 4
    # the measured rates are those of the data actually drawn (not only of the expectation)
    top = [r for r in rows if r.criterion == "oracle"][-1]
    assert top.flip_rate == pytest.approx(float(x[:, 36:40].sum()) / (B * N))


@pytest.mark.slow
def test_validity_on_a_registry_convnet_with_firing_aware_criteria(tmp_path, digits):
    from spikeprune.tickets.calibration import calibrate
    from spikeprune.engine.data import BatchLoader
    from spikeprune.engine.models import create_model

    torch.manual_seed(0)
    model = create_model("convnet", 10, 1, 2, 0.25, image_size=8)
    train = BatchLoader(digits, "train", 64, shuffle=True, seed=0, timesteps=2, augment=False)
    calib = calibrate(model, train, 2)
    batches = [next(iter(BatchLoader(digits, "test", 64, shuffle=False)))]
    rows = criterion_validity(model, ["sf", "sf-rms", "magnitude", "random"], calib, batches, groups=4)
    summary = validity_summary(rows)
    layers = {s["layer"] for s in summary}
    assert layers and all(not name.startswith("classifier") for name in layers)  # the readout drives no neuron
    assert {s["criterion"] for s in summary} == {"sf", "sf-rms", "magnitude", "random"}
    # each rate is a count of flipped spike slots over every slot of the driven neuron layer on the batches
    from spikeprune.engine.neuron import observe, spiking_layers

    names = {id(m): n for n, m in spiking_layers(model).items()}
    slots = {}
    with torch.no_grad(), observe(model, lambda lif, u, s: slots.__setitem__(names[id(lif)], s.numel())):
        model.eval()(batches[0][0])
    for r in rows:
        assert r.slots == slots[r.neuron]
        assert r.flip_rate * r.slots == pytest.approx(round(r.flip_rate * r.slots), abs=1e-6)
    path = plot_validity(rows, validity_summary(rows), tmp_path / "validity.png", title="test")
    assert path.stat().st_size > 1000


def test_bad_groups_and_layers_are_refused():
    model = OneWeightPerNeuron(torch.ones(N))
    with pytest.raises(ValueError, match="groups"):
        criterion_validity(model, ["magnitude"], None, _batches(), groups=1)
    with pytest.raises(ValueError, match="not a prunable weight"):
        criterion_validity(model, ["magnitude"], None, _batches(), layers=["nope.weight"])


@pytest.mark.slow
def test_cli_validity_writes_results_and_refuses_bad_input(tmp_path, capsys):
    from spikeprune.cli import main
    from spikeprune.engine.config import TrainConfig
    from spikeprune.engine.train import fit

    cfg = TrainConfig(dataset="digits", width=0.25, timesteps=2, epochs=1, batch_size=64, train_limit=256)
    fit(cfg, tmp_path / "run", progress=False, log=None)
    ck = tmp_path / "run" / "checkpoint.safetensors"
    code = main(["analyze", "validity", "--checkpoint", str(ck), "--criteria", "magnitude", "random",
                 "--groups", "3", "--samples", "64", "--calibration-batches", "1", "--out", str(tmp_path / "v")])
    assert code == 0
    record = json.loads((tmp_path / "v" / "validity.json").read_text())
    assert record["measured_on"] == "validation" and record["validation"]["fraction"] == 0.1
    assert record["samples"] == 64 and {s["criterion"] for s in record["summary"]} == {"magnitude", "random"}
    assert (tmp_path / "v" / "validity.png").is_file() and (tmp_path / "v" / "validity.csv").is_file()
    assert "spearman" in capsys.readouterr().out
    code = main(["analyze", "validity", "--checkpoint", str(ck), "--criteria", "nope", "--out", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown criterion 'nope'" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_random_criterion_is_not_the_initialisation_replayed():
    """Seeded like the model (seed 0), the random scores used to equal the Kaiming-uniform initial
    weights rescaled (same stream), so "random" pruning removed the most negative initial weights first."""
    from spikeprune.tickets.criteria import compute_scores
    from spikeprune.engine.models import create_model
    from scipy.stats import spearmanr

    torch.manual_seed(0)
    model = create_model("convnet", 10, 1, 2, 0.25, image_size=8)
    for name, s in compute_scores("random", model, None, seed=0).values.items():
        w = dict(model.named_parameters())[name]
        rho = spearmanr(s.reshape(-1).numpy(), w.detach().reshape(-1).numpy()).statistic
        assert abs(rho) < 0.2, (name, rho)


def test_validity_csv_bytes_are_those_of_the_former_hand_written_csv(tmp_path):
    """validity.csv goes through the shared CSV writer; its bytes are those the study wrote by hand before."""
    from spikeprune.core.io import write_csv
    from spikeprune.theory.validity import VALIDITY_FIELDS, ValidityRow, validity_csv_rows

    rows = [ValidityRow("features.0.weight", "features.2", "sf", 0, 12, 1.23456789e-7, 0.1, 0.333333333, 4096),
            ValidityRow("features.3.weight", "features.5", "sf-rms", 9, 7, 12345678.9, 2.0, 0.0, 17),
            ValidityRow("classifier.1.weight", "classifier.2", "random", 3, 1, -0.5, 1e-30, 1.0, 1)]
    lines = ["layer,neuron,criterion,group,weights,score_sum,score_mean,flip_rate,slots"]
    lines += [f"{r.layer},{r.neuron},{r.criterion},{r.group},{r.weights},{r.score_sum:.6g},{r.score_mean:.6g},"
              f"{r.flip_rate:.6g},{r.slots}" for r in rows]
    write_csv(tmp_path / "validity.csv", validity_csv_rows(rows), VALIDITY_FIELDS)
    assert (tmp_path / "validity.csv").read_bytes() == ("\n".join(lines) + "\n").encode()
