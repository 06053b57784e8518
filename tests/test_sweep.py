"""Sweeps as independent jobs (spikeprune.studies.sweep): sharing, parallel processes, resumption, failures."""

import pytest

from spikeprune.cli import main
from spikeprune.tickets.edgepopup import EdgePopupConfig
from spikeprune.core.io import read_json
from spikeprune.tickets.lottery import LotteryConfig
from spikeprune.studies.sweep import Job, edgepopup_sweep, lottery_sweep, run_jobs

TINY = dict(model="convnet", dataset="digits", width=0.25, timesteps=2, batch_size=128, train_limit=256,
            test_limit=128)


@pytest.mark.slow
def test_lottery_sweep_shares_one_dense_run_per_seed_and_summarises(tmp_path):
    cfg = LotteryConfig(**TINY, epochs=2, rewind_epoch=1, rounds=1, prune_fraction=0.5)
    variants = ["imp", "sf-imp-1", "sf-imp-1@none"]
    summary = lottery_sweep(cfg, tmp_path, variants=variants, log=None).metrics
    runs = [tmp_path / "seed-0" / v for v in variants]
    inode = {(r / "dense" / "checkpoint.safetensors").stat().st_ino for r in runs}
    assert len(inode) == 1  # the dense phase was trained once and hard-linked into every variant
    assert set(summary["series"]) == set(variants) and summary["complete"]
    # VARIANT@NORMALIZE: the same variant with its own global-ranking normalisation, recorded in its run
    recorded = {v: read_json(tmp_path / "seed-0" / v / "lottery.json")["config"] for v in variants}
    assert recorded["sf-imp-1@none"]["variant"] == "sf-imp-1" and recorded["sf-imp-1@none"]["normalize"] == "none"
    assert recorded["sf-imp-1"]["normalize"] == "auto"
    for points in summary["series"].values():
        assert [round(p["sparsity"], 6) for p in points] == [0.0, 0.5] and points[0]["n"] == 1
    assert (tmp_path / "summary.png").stat().st_size > 0 and "imp" in (tmp_path / "summary.csv").read_text()
    # issue 18: the file's top level describes the sweep, not its first run (no "variant: imp" for both)
    written = read_json(tmp_path / "summary.json")
    assert "variant" not in written["config"]
    assert written["varied"]["variant"] == ["imp", "sf-imp-1"] and written["config"]["seed"] == 0  # one seed: shared
    assert written["varied"]["normalize"] == ["auto", "none"]  # sf-imp-1@none
    assert written["criteria"] == {"imp": "magnitude", "sf-imp-1": "sf", "sf-imp-1@none": "sf"}
    assert "each value is one run (n = 1): no confidence interval" in summary["table"]
    again = lottery_sweep(cfg, tmp_path, variants=variants, log=None).metrics  # resumed: nothing to do
    assert set(again["status"].values()) == {"done"}
    assert again["series"] == summary["series"]


@pytest.mark.slow
def test_edgepopup_sweep_runs_jobs_in_parallel_processes(tmp_path):
    cfg = EdgePopupConfig(**TINY, epochs=1, densities=(0.3, 0.7))
    summary = edgepopup_sweep(cfg, tmp_path, seeds=[0], jobs=2, log=None).metrics
    assert summary["status"] == {"seed-0/density-0.3": "ok", "seed-0/density-0.7": "ok"}
    assert sorted(r["density"] for r in summary["rows"]) == [0.3, 0.7] and summary["complete"]
    for d in ("0.3", "0.7"):
        assert read_json(tmp_path / "seed-0" / f"density-{d}" / "result.json")["export_matches"]
        assert (tmp_path / "logs" / f"seed-0_density-{d}.log").exists()
    assert read_json(tmp_path / "seed-0" / "results.json")["complete"]


@pytest.mark.slow
def test_a_failed_job_is_reported_by_name_and_the_others_finish(tmp_path):
    good = Job("good", "train", {**TINY, "epochs": 1}, str(tmp_path / "good"))
    bad = Job("bad", "train", {**TINY, "epochs": 1, "dataset": "no_such_dataset"}, str(tmp_path / "bad"))
    status = run_jobs([bad, good], tmp_path, max_jobs=2, log=None)
    assert status["good"] == "ok" and status["bad"].startswith("failed")
    assert "no_such_dataset" in (tmp_path / "logs" / "bad.log").read_text()
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        run_jobs([good], tmp_path, max_jobs=0)


def test_cli_sweep_bad_input_is_one_line(tmp_path, capsys):
    assert main(["lottery", "--dataset", "digits", "--variants", "imp,nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown variant 'nope'" in err and len(err.strip().splitlines()) == 1
    assert main(["lottery", "--dataset", "digits", "--variants", "imp,sf-imp-1@nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown normalisation 'nope'" in err and len(err.strip().splitlines()) == 1
    assert main(["edgepopup", "--dataset", "digits", "--seeds", "0,0", "--out", str(tmp_path)]) == 2
    assert "repeated" in capsys.readouterr().err
