"""Phase skipping has one owner (issue 17): ``core.rundir.phase_done`` is the one test of "this phase is done",
each runner names its finished files once (``is_complete`` ...), and a sweep's ``Job.done`` asks the runners."""

import pytest

from spikeprune.compression import compress
from spikeprune.core.rundir import phase_done
from spikeprune.engine import train
from spikeprune.studies import flips
from spikeprune.studies.sweep import Job
from spikeprune.tickets import edgepopup, lottery


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


def test_phase_done_needs_every_output_as_a_file(tmp_path):
    assert not phase_done(tmp_path / "missing", "a.json")  # a folder that does not exist: not done
    assert not phase_done(tmp_path, "a.json", "b.safetensors")
    touch(tmp_path / "a.json")
    assert phase_done(tmp_path, "a.json") and phase_done(str(tmp_path), "a.json")
    assert not phase_done(tmp_path, "a.json", "b.safetensors")  # one output of two: not done
    (tmp_path / "b.safetensors").mkdir()  # a directory of that name is not the output
    assert not phase_done(tmp_path, "a.json", "b.safetensors")
    touch(tmp_path / "sub" / "c.json")  # a relative path inside the folder
    assert phase_done(tmp_path, "a.json", "sub/c.json")
    with pytest.raises(ValueError, match="at least one output"):
        phase_done(tmp_path)


#: what each runner writes, in the order it writes the files that decide completion (the last one finishes it)
LAYOUTS = {
    "train": ["checkpoint.safetensors", "history.csv", "metrics.json"],
    "lottery-dense": ["lottery.json", "dense/checkpoint.safetensors", "dense/rewind.safetensors", "dense/metrics.json"],
    "lottery": ["lottery.json", "dense/rewind.safetensors", "dense/metrics.json", "round_01/mask.safetensors",
                "round_01/metrics.json", "results.json", "round_02/mask.safetensors", "round_02/metrics.json"],
    "edgepopup": ["checkpoint.safetensors", "metrics.json", "subnet.safetensors", "mask.safetensors", "result.json"],
}


def runner_complete(kind, out, rounds):
    return {"train": lambda: train.is_complete(out), "lottery-dense": lambda: lottery.dense_complete(out),
            "lottery": lambda: lottery.is_complete(out, rounds), "edgepopup": lambda: edgepopup.is_complete(out)}[kind]()


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_job_done_agrees_with_the_runners_completion(tmp_path, kind):
    out, rounds = tmp_path / kind, 2
    job = Job(kind, kind, {"rounds": rounds}, str(out))
    seen = []
    for name in LAYOUTS[kind]:
        assert job.done() == runner_complete(kind, out, rounds)
        seen.append(job.done())
        touch(out / name)
    assert job.done() and runner_complete(kind, out, rounds)
    assert not any(seen)  # done only once the last file deciding it is written
    # the files that meant "finished" before issue 17 still do (Job.done used to name them itself)
    old = {"train": ["metrics.json"], "lottery-dense": ["dense/metrics.json", "dense/rewind.safetensors"],
           "lottery": ["round_02/metrics.json", "results.json"], "edgepopup": ["result.json"]}[kind]
    fresh = tmp_path / "old" / kind
    for name in old:
        touch(fresh / name)
    assert Job(kind, kind, {"rounds": rounds}, str(fresh)).done()
    for name in old:  # and each of them is needed
        (fresh / name).rename(fresh / (name + ".moved"))
        assert not Job(kind, kind, {"rounds": rounds}, str(fresh)).done()
        (fresh / (name + ".moved")).rename(fresh / name)


def test_a_lottery_run_with_more_rounds_is_not_done_by_a_shorter_one(tmp_path):
    for name in LAYOUTS["lottery"]:
        touch(tmp_path / name)
    assert lottery.is_complete(tmp_path, 2) and lottery.is_complete(tmp_path, 1)
    assert not lottery.is_complete(tmp_path, 3)  # resumed with rounds=3: round 3 is still to do
    assert lottery.round_complete(tmp_path, 0) and lottery.round_complete(tmp_path, 2)
    assert lottery.mask_written(tmp_path, 2) and not lottery.mask_written(tmp_path, 3)


def test_the_other_runners_name_their_finished_files(tmp_path):
    touch(tmp_path / "metrics.json")
    assert not compress.is_complete(tmp_path)  # a compression run is finished with its manifest and metrics
    touch(tmp_path / "compress.json")
    assert compress.is_complete(tmp_path)
    assert not flips.is_complete(tmp_path)
    touch(tmp_path / "flips.json")
    assert flips.is_complete(tmp_path)


TINY = dict(model="convnet", dataset="digits", width=0.25, timesteps=2, batch_size=128, train_limit=256,
            test_limit=128)


@pytest.mark.slow
def test_real_runs_are_complete_by_their_runners_definition(tmp_path):
    from spikeprune.tickets.edgepopup import EdgePopupConfig, search
    from spikeprune.tickets.lottery import LotteryConfig, run_lottery

    cfg = LotteryConfig(**TINY, epochs=2, rewind_epoch=1, rounds=1, prune_fraction=0.5)
    lot = tmp_path / "lottery"
    run_lottery(cfg, lot, log=None)
    assert Job("d", "lottery-dense", {}, str(lot)).done() and lottery.dense_complete(lot)
    assert Job("l", "lottery", {"rounds": 1}, str(lot)).done() and not lottery.is_complete(lot, 2)
    assert Job("t", "train", {}, str(lot / "round_01")).done()  # a round is a finished training run
    ep = tmp_path / "edgepopup"
    search(EdgePopupConfig(**TINY, epochs=1, density=0.5), ep, progress=False, log=None)
    assert Job("e", "edgepopup", {}, str(ep)).done() and edgepopup.is_complete(ep)


def test_a_flip_study_killed_before_its_result_file_is_not_complete(tmp_path, monkeypatch):
    """flips.json is the completion file, so it is written last: a study that dies after its plots but
    before flips.json must be redone, not taken as finished without them."""
    import torch

    from spikeprune import create_model

    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, num_classes=10, image_size=(8, 8))
    test = [(torch.rand(8, 1, 8, 8) * 4, torch.zeros(8, dtype=torch.long))]

    def killed(*_a, **_k):
        raise KeyboardInterrupt("killed while writing flips.json")

    monkeypatch.setattr(flips, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        flips.flip_study(model, ["weight-noise:0.2"], test, tmp_path)
    assert (tmp_path / "flips.png").is_file() and (tmp_path / "flips.csv").is_file()
    assert not flips.is_complete(tmp_path)
    monkeypatch.undo()
    flips.flip_study(model, ["weight-noise:0.2"], test, tmp_path)
    assert flips.is_complete(tmp_path)
