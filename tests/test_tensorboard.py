"""``--tensorboard`` (spikeprune.core.tensorboard_log): the event files hold exactly the numbers of the run's
files, per epoch (history.csv) and per lottery round (rounds.csv); without the package, one line and exit 2
before any work."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

import spikeprune as sp
from spikeprune.cli import main
from spikeprune.core.tensorboard_log import history_tag

TINY = dict(dataset="digits", width=0.25, timesteps=2, epochs=2, batch_size=64, train_limit=256, test_limit=128)
EPOCH_COLUMNS = ["lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
                 "firing_rate"]


def _flags(**values) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files in ``folder``: tag -> [(step, value), ...]."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert any(p.name.startswith("events.out.tfevents") for p in folder.iterdir()), folder
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _as_logged(text: str) -> float:
    """A CSV number as TensorBoard stores it (float32)."""
    return float(np.float32(float(text)))


def _check_matches_csv(folder: Path, csv_path: Path, step: str, columns: list[str], prefix: str = "") -> None:
    rows = list(csv.DictReader(csv_path.open()))
    logged = _scalars(folder)
    expected = {history_tag(c, prefix): [(int(r[step]), _as_logged(r[c])) for r in rows if r[c] != ""]
                for c in columns}
    expected = {t: v for t, v in expected.items() if v}
    assert logged == expected, (sorted(logged), sorted(expected))


def test_history_tags_group_the_splits():
    assert [history_tag(c) for c in EPOCH_COLUMNS] == [
        "lr", "loss/train", "accuracy/train", "loss/val", "accuracy/val", "loss/test", "accuracy/test", "firing_rate"]
    assert history_tag("sparsity", "lottery/") == "lottery/sparsity"


def test_train_tensorboard_equals_history(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "cli"
    assert main(["train", *_flags(**TINY), "--no-progress", "--tensorboard", "--out", str(out)]) == 0
    capsys.readouterr()
    _check_matches_csv(out / "tensorboard", out / "history.csv", "epoch", EPOCH_COLUMNS)
    assert len(_scalars(out / "tensorboard")["accuracy/test"]) == TINY["epochs"]
    # the Python API writes the same numbers, and leaves the run's files as they are without the flag
    result = sp.fit(sp.TrainConfig(**TINY), tmp_path / "py", progress=False, log=None, tensorboard=True)
    assert _scalars(tmp_path / "py" / "tensorboard") == _scalars(out / "tensorboard")
    assert result.rows[-1]["test_accuracy"] == pytest.approx(_scalars(out / "tensorboard")["accuracy/test"][-1][1])
    sp.fit(sp.TrainConfig(**TINY), tmp_path / "plain", progress=False, log=None)
    assert not (tmp_path / "plain" / "tensorboard").exists()
    assert (tmp_path / "plain" / "history.csv").read_text().splitlines()[0] == (out / "history.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("when", ["after logging", "before logging"])
def test_a_resumed_run_logs_every_epoch_once(when, tmp_path, monkeypatch):
    """Killed after epoch 1 was checkpointed (and logged, or not yet), then resumed: the log holds epochs 1
    and 2 once each, equal to history.csv."""
    pytest.importorskip("tensorboard")
    from spikeprune.core import tensorboard_log

    cfg = sp.TrainConfig(**TINY)
    out = tmp_path / "run"

    class Killed(Exception):
        pass

    def kill(*_):
        raise Killed

    with monkeypatch.context() as m:
        if when == "before logging":
            m.setattr(tensorboard_log.ScalarLog, "add", kill)
            with pytest.raises(Killed):
                sp.fit(cfg, out, progress=False, log=None, tensorboard=True)
        else:
            with pytest.raises(Killed):
                sp.fit(cfg, out, progress=False, log=None, tensorboard=True, on_epoch_end=kill)
    assert len(list(csv.DictReader((out / "history.csv").open()))) == 1  # epoch 1 was saved
    sp.fit(cfg, out, resume=True, progress=False, log=None, tensorboard=True)
    logged = _scalars(out / "tensorboard")
    assert [s for s, _ in logged["accuracy/test"]] == [1, 2]
    _check_matches_csv(out / "tensorboard", out / "history.csv", "epoch", EPOCH_COLUMNS)


@pytest.mark.slow
def test_a_resumed_lottery_logs_every_round_once(tmp_path):
    pytest.importorskip("tensorboard")
    from spikeprune.tickets.lottery import ROUND_SCALARS

    lot = dict(TINY, rounds=1, rewind_epoch=1, variant="imp")
    out = tmp_path / "lot"
    sp.run_lottery(sp.LotteryConfig(**lot), out, log=None, tensorboard=True)
    sp.run_lottery(sp.LotteryConfig(**dict(lot, rounds=2)), out, resume=True, log=None, tensorboard=True)
    assert [s for s, _ in _scalars(out / "tensorboard")["lottery/sparsity"]] == [0, 1, 2]
    _check_matches_csv(out / "tensorboard", out / "rounds.csv", "round", ROUND_SCALARS, prefix="lottery/")


@pytest.mark.slow
def test_lottery_tensorboard_equals_rounds_and_histories(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from spikeprune.tickets.lottery import ROUND_SCALARS

    lot = dict(TINY, rounds=2, rewind_epoch=1, variant="imp")
    out = tmp_path / "lot"
    assert main(["lottery", *_flags(**lot), "--no-progress", "--tensorboard", "--out", str(out)]) == 0
    capsys.readouterr()
    _check_matches_csv(out / "tensorboard", out / "rounds.csv", "round", ROUND_SCALARS, prefix="lottery/")
    assert [s for s, _ in _scalars(out / "tensorboard")["lottery/sparsity"]] == [0, 1, 2]
    for run in ("dense", "round_01", "round_02"):
        _check_matches_csv(out / run / "tensorboard", out / run / "history.csv", "epoch", EPOCH_COLUMNS)


def test_edgepopup_tensorboard_equals_history(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "ep"
    assert main(["edgepopup", *_flags(**dict(TINY, epochs=1, density=0.5)), "--no-progress", "--tensorboard",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    run = out / "density-0.5"
    _check_matches_csv(run / "tensorboard", run / "history.csv", "epoch", EPOCH_COLUMNS)


@pytest.mark.parametrize("argv", [
    ["train", *_flags(**TINY)],
    ["lottery", *_flags(**TINY, rounds=1, rewind_epoch=1)],
    ["edgepopup", *_flags(**TINY, density=0.5)],
    ["quickstart", "--epochs", "1"],
], ids=lambda a: a[0])
def test_without_the_package_one_line_and_exit_2_before_any_work(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    out = tmp_path / "run"
    assert main([*argv, "--tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'spikeprune[tensorboard]'" in err[0], err
    # nothing ran: no checkpoint, no history, no result file (at most the run folder's own lock record)
    assert not out.exists() or all(p.name.startswith(".") for p in out.rglob("*")), list(out.rglob("*"))
    with pytest.raises(sp.UserError, match="tensorboard"):
        sp.fit(sp.TrainConfig(**TINY), tmp_path / "api", tensorboard=True)
    assert not (tmp_path / "api").exists()


def test_sweeps_refuse_the_flag(tmp_path, capsys):
    assert main(["lottery", *_flags(**TINY, rounds=1, rewind_epoch=1), "--seeds", "0,1", "--tensorboard",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "one run" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_quickstart_logs_every_run_it_makes(tmp_path, capsys):
    """The quickstart's lotteries adopt its dense run: their round logs still start at round 0."""
    pytest.importorskip("tensorboard")
    from spikeprune.tickets.lottery import ROUND_SCALARS

    out = tmp_path / "qs"
    assert main(["quickstart", "--epochs", "2", "--rounds", "1", "--edgepopup-epochs", "1", "--no-progress",
                 "--tensorboard", "--out", str(out)]) == 0
    capsys.readouterr()
    _check_matches_csv(out / "tensorboard", out / "history.csv", "epoch", EPOCH_COLUMNS)
    for variant in ("imp", "sf-imp-1"):
        lot = out / "lottery" / variant
        _check_matches_csv(lot / "tensorboard", lot / "rounds.csv", "round", ROUND_SCALARS, prefix="lottery/")
        assert [s for s, _ in _scalars(lot / "tensorboard")["lottery/sparsity"]] == [0, 1]
        _check_matches_csv(lot / "round_01" / "tensorboard", lot / "round_01" / "history.csv", "epoch", EPOCH_COLUMNS)
    run = out / "edgepopup" / "density-0.5"
    _check_matches_csv(run / "tensorboard", run / "history.csv", "epoch", EPOCH_COLUMNS)
