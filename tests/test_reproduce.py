"""spikeprune reproduce: every study end to end at smoke scale, reports rebuilt from results, protocols."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from spikeprune.cli import main
from spikeprune.studies.protocols import SCALES, STUDIES, protocol

ROOT = Path(__file__).resolve().parents[1]


def _images_exist(report: Path) -> list[str]:
    import re

    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    for name in images:
        assert (report.parent / name).stat().st_size > 1000, name
    return images


@pytest.mark.slow
def test_reproduce_fig5_smoke_writes_the_report_and_resumes(tmp_path, capsys):
    out = tmp_path / "fig5"
    assert main(["reproduce", "fig5", "--scale", "smoke", "--out", str(out)]) == 0
    report = out / "report.md"
    text = report.read_text()
    assert "PARTIAL" not in text and "spikeprune reproduce fig5 --scale smoke" in text
    assert "| sparsity | imp | sf-imp-1 | sf-imp-1@none | sf-imp-2 |" in text and "| 75.0 % |" in text
    assert "SF-IMP-1 twice" in text and "sf-imp-1@none (literal ranking) minus sf-imp-1 (budget ranking)" in text
    # issue 18: the table says what ± is and over how many seeds; no command with a literal `--jobs N`
    seeds = len(protocol("fig5", "smoke").seeds)
    assert (f"over n = {seeds} seeds" if seeds > 1 else "each value is one run (n = 1)") in text
    assert "--jobs N" not in text and "takes `--jobs` followed by a number" in text
    # the markdown table shows exactly the numbers of report.json (in %, rounded to 2 digits)
    table = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and " % |" in line]
    numbers_md = {round(float(r[0].split()[0]), 1): [c.split()[0] for c in r[1:]] for r in table}
    assert len(_images_exist(report)) == 1
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["complete"]
    series = next(iter(numbers["numbers"].values()))["series"]
    assert set(series) == {"imp", "sf-imp-1", "sf-imp-1@none", "sf-imp-2"}
    for column, (variant, points) in enumerate(series.items()):
        assert [round(p["sparsity"], 4) for p in points] == [0.0, 0.5, 0.75]
        assert [numbers_md[round(100 * p["sparsity"], 1)][column] for p in points] == \
            [f"{100 * p['test_accuracy']:.2f}" for p in points]
        # every reported accuracy is the mean over seeds of what the runs wrote in their rounds.csv
        runs = sorted(out.glob(f"runs/*/seed-*/{variant}/rounds.csv"))
        assert runs
        per_run = [list(csv.DictReader(f.open())) for f in runs]
        for k, p in enumerate(points):
            assert p["test_accuracy"] == pytest.approx(sum(float(r[k]["test_accuracy"]) for r in per_run) / len(per_run))
    assert (out / "configs").is_dir() and list((out / "configs").glob("*.yaml"))

    ckpt = next(out.glob("runs/*/seed-0/imp/round_02/checkpoint.safetensors"))
    stamp = ckpt.stat().st_mtime_ns
    assert main(["reproduce", "fig5", "--scale", "smoke", "--out", str(out)]) == 0  # resumed: nothing re-run
    assert ckpt.stat().st_mtime_ns == stamp

    again = tmp_path / "rebuilt"  # the report alone, from the existing runs
    assert main(["reproduce", "fig5", "--scale", "smoke", "--from-results", str(out / "runs"),
                 "--out", str(again)]) == 0
    assert json.loads((again / "report.json").read_text())["numbers"] == numbers["numbers"]
    assert not (again / "runs").exists()


@pytest.mark.parametrize("study,expect", [
    # fig3: both readings of the paper's setup (issue 14), each compared with the same dense reference
    ("fig3", "| edge-popup, affine_bn=False, init=signed_constant | 0.5 | 0.5 |"),
    ("theory", "| prune-0.5-sf | local | 3 |"),
    ("qpsnn", "| 4-bit ReScaW, 50 % channels (SVS) | 4 | mean | 0.5 |"),
])
@pytest.mark.slow
def test_reproduce_smoke_every_study(tmp_path, study, expect):
    out = tmp_path / study
    assert main(["reproduce", study, "--scale", "smoke", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert expect in text and "PARTIAL" not in text and "## The paper's claims" in text
    assert _images_exist(out / "report.md")
    assert json.loads((out / "report.json").read_text())["complete"]
    if study == "fig3":
        assert "| edge-popup, affine_bn=True, init=kaiming_normal | 0.5 | 0.5 |" in text
        assert "Two readings of the setup" in text and "Two readings of the x-axis" in text
        assert (out / "runs").is_dir() and len(list((out / "runs").rglob("dense*/metrics.json"))) == 1  # shared
    if study == "theory":  # issue 14: informative (non-vacuous) rows lead, vacuous ones are counted
        numbers = json.loads((out / "report.json").read_text())["numbers"]["informative"]
        rows = [r for f in out.glob("runs/**/flips.json") for r in json.loads(f.read_text())["rows"]]
        pos = [r for r in rows if r["eps"] > 0]
        assert numbers["rows_eps_positive"] == len(pos) > 0
        assert numbers["lemma_nonvacuous"] == sum(r["bound"] < 1 for r in pos)
        assert numbers["lemma_vacuous"] == sum(r["bound"] >= 1 for r in pos)
        assert numbers["theorem35_nonvacuous"] == sum(r["bound_theorem35"] < 1 for r in pos)
        # the refined bound checked on held-out inputs (two batches of 32): counted from the rows
        assert numbers["refined_heldout_rows"] == sum(r["holds_refined_heldout"] is not None for r in pos) > 0
        assert "Refined bound on held-out inputs" in text
        assert text.index("Informative rows first") < text.index("All perturbations (worst layer")
        assert "Informative settings first" in text


def test_partial_results_are_labelled(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["reproduce", "fig5", "--scale", "cpu", "--from-results", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "PARTIAL" in text and "No finished round yet" in text


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["reproduce", "fig5", "--from-results", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "fig9", "--out", str(tmp_path)])
    assert e.value.code == 2


def test_every_protocol_builds_its_configs():
    from spikeprune.compression.compress import CompressConfig
    from spikeprune.tickets.edgepopup import EdgePopupConfig
    from spikeprune.tickets.lottery import LotteryConfig
    from spikeprune.core.config import fields_of
    from spikeprune.engine.config import TrainConfig

    for study in STUDIES:
        for scale in SCALES:
            p = protocol(study, scale)
            assert p.panels and p.seeds
            for values in p.panels.values():
                if study == "fig5":
                    LotteryConfig(**values)
                elif study == "fig3":
                    EdgePopupConfig(**fields_of(EdgePopupConfig, values))
                elif study == "qpsnn":
                    CompressConfig(**fields_of(CompressConfig, values))
                else:
                    TrainConfig(**fields_of(TrainConfig, values))


def test_cpu_lottery_protocol_is_the_benchmark_study():
    spec = importlib.util.spec_from_file_location("lottery_study", ROOT / "benchmarks" / "lottery" / "study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    values = next(iter(protocol("fig5", "cpu").panels.values()))
    assert {k: values[k] for k in study.BASE} == study.BASE
    assert values["prune_fraction"] == study.P and values["rounds"] == study.ROUNDS


def test_fig3_report_never_credits_a_longer_search_against_a_shorter_training_run(tmp_path):
    # A 4-epoch search has no dense run of its own budget here: it must be compared with the most-trained
    # reference (10 epochs), not with the 1-epoch one that shares more of its settings.
    from spikeprune.studies.protocols import protocol
    from spikeprune.report.reproduction import fig3_section as _fig3_report

    keys = dict(model="convnet", width=1.0, timesteps=4, lr=0.1)
    row = lambda epochs, acc: {"density": 0.5, "sparsity": 0.5, "test_accuracy": acc, "seed": 0, "width": 1.0,  # noqa: E731
                               "num_classes": 10, "export_matches": True,
                               "hyperparameters": {**keys, "epochs": epochs, "train_limit": 1000}}
    refs = [{"path": "short", "test_accuracy": 0.80, "settings": {**keys, "epochs": 1, "train_limit": 1000}},
            {"path": "long", "test_accuracy": 0.92, "settings": {**keys, "epochs": 10, "train_limit": None}}]
    data = {"panels": {"p": {"rows": [row(1, 0.76), row(4, 0.81)], "references": refs, "widths": [1.0],
                             "complete": True}}}
    _, numbers = _fig3_report(protocol("fig3", "smoke"), data, tmp_path)
    by_acc = {round(x["test_accuracy"], 2): x for x in numbers["p"]["points"]}
    assert by_acc[0.76]["relative_to_dense"] == pytest.approx(0.76 / 0.80)  # same budget: the 1-epoch run
    assert by_acc[0.81]["relative_to_dense"] == pytest.approx(0.81 / 0.92)  # longer search: the 10-epoch run


def test_qpsnn_report_knows_when_the_flat_study_results_are_complete(tmp_path):
    # benchmarks/qpsnn/study.py writes one flat JSON per cell; the cpu protocol is complete when every
    # one of its cells is among them (same bits, scale, channel sparsity, criterion, order, fine-tuning).
    import json

    from spikeprune.studies.protocols import protocol
    from spikeprune.studies.reproduce import _qpsnn_collect

    p = protocol("qpsnn", "cpu")
    cells = list(p.panels.values())
    for i, v in enumerate(cells):
        (tmp_path / f"cell{i}.json").write_text(json.dumps({
            "id": f"cell{i}", "bits": v["bits"], "scale": v["scale"], "sparsity": v["channel_sparsity"],
            "criterion": v["channel_criterion"], "order": v["order"], "ft_epochs": v["finetune_epochs"],
            "membrane_bits": None, "test_accuracy": 0.9}))
    assert _qpsnn_collect(p, tmp_path)["complete"]
    (tmp_path / "cell0.json").unlink()
    assert not _qpsnn_collect(p, tmp_path)["complete"]
