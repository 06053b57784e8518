"""Run directories under careless use: concurrent runs, kills mid-write, killed sweeps, resumes under
other thread counts, and runs of one kind writing into another's folder (spikeprune.core.rundir, issue 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from spikeprune.cli import main
from spikeprune.engine.config import TrainConfig
from spikeprune.engine.data import load_dataset
from spikeprune.core.io import load_checkpoint
from spikeprune.core.rundir import LOCK_FILE, RECORD_FILE, RunDirectoryError, lock_holder, run_directory
from spikeprune.engine.train import CHECKPOINT, fit

CLI = [sys.executable, "-m", "spikeprune.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
TRAIN = ["--dataset", "digits", "--model", "convnet", "--width", "0.25", "--timesteps", "2", "--batch-size", "32",
         "--train-limit", "256", "--test-limit", "128", "--no-progress"]
TINY = dict(model="convnet", dataset="synthetic", width=0.25, timesteps=2, batch_size=32, lr=0.05,
            train_limit=128, test_limit=64)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", num_classes=4, in_channels=1, image_size=8, train_size=128, test_size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished `spikeprune train` run (in this process: no start-up cost)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    return out


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
            and p.name != LOCK_FILE}


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


# ---------------------------------------------------------------------------------------------
# Concurrent runs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_second_train_on_the_same_out_refuses_and_the_first_finishes_intact(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(CLI + ["train", *TRAIN, "--epochs", "40", "--out", str(out)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while (lock_holder(out) or {}).get("pid") != first.pid:
        assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    # The first run is stopped (SIGSTOP keeps its lock) while the second one runs: on a fast CPU its 40
    # epochs could otherwise end, and release the lock, during the second one's start-up (seen once).
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(CLI + ["train", *TRAIN, "--epochs", "40", "--out", str(out)], env=ENV,
                                capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.poll() is None, "the first run ended before the second one started; the test proves nothing"
    assert second.returncode == 2
    line = _one_line(second.stderr)
    assert str(out) in line and f"pid {first.pid}" in line and "in use" in line
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 40
    _, meta = load_checkpoint(out / CHECKPOINT)
    assert meta["epoch"] == 40 and len(meta["history"]) == 40
    assert len((out / "history.csv").read_text().strip().splitlines()) == 41
    assert lock_holder(out) is None  # released at exit


@pytest.mark.slow
def test_lock_is_exclusive_reentrant_and_released(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from spikeprune.core.rundir import run_directory\n"
        "with run_directory(sys.argv[1], 'train'):\n"
        "    print('held', flush=True); time.sleep(60)\n"), str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(out)["pid"] == holder.pid
        with pytest.raises(RunDirectoryError, match=f"in use by another spikeprune run \\(pid {holder.pid}"):
            with run_directory(out, "train"):
                pass
        # a sub-directory has its own lock: a sweep's job beside its parent
        with run_directory(out / "seed-0" / "imp", "lottery"):
            with run_directory(out / "seed-0" / "imp", "lottery"):  # nested in one process
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_holder(out) is None  # the kernel drops a dead process's lock
    with run_directory(out, "train"):
        assert lock_holder(out)["pid"] == os.getpid()


def test_empty_out_is_refused():
    with pytest.raises(RunDirectoryError, match="empty"):
        with run_directory("", "train"):
            pass


def test_empty_out_cli_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:  # refused while parsing the flags (cli.args.out_path)
        main(["train", *TRAIN, "--epochs", "1", "--out", ""])
    assert exit_.value.code == 2
    assert "empty" in _one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_failed_run_leaves_no_new_directory(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    _one_line(capsys.readouterr().err)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Kills mid-write: stale temp files.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_mid_write_leaves_no_temp_file_after_the_next_start(tmp_path):
    out = tmp_path / "run"
    (out / "round_01").mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from spikeprune.core.io import atomic_path\n"
        "from spikeprune.core.rundir import run_directory\n"
        "out = Path(sys.argv[1])\n"
        "with run_directory(out, 'train'):\n"
        "    with atomic_path(out / 'round_01' / 'checkpoint.safetensors') as a, atomic_path(out / 'metrics.json') as b:\n"
        "        a.write_bytes(b'half'); b.write_text('{\"half')\n"
        "        print('writing', flush=True); time.sleep(60)\n"), str(out)], env=ENV, stdout=subprocess.PIPE,
        text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    stale = sorted(p.name for p in out.rglob("*.tmp"))
    assert len(stale) == 2 and all(p.startswith((".checkpoint.safetensors.", ".metrics.json.")) for p in stale)
    assert not (out / "metrics.json").exists()  # never a half-written result
    # somebody else's files that merely look alike stay
    (out / ".notes.tmp").write_text("mine")
    (out / "x.abcdefgh.tmp").write_text("mine")
    # a live run in a sub-directory keeps its temp files
    busy = out / "busy"
    busy.mkdir()
    live = busy / ".metrics.json.abcd1234.spikeprune.tmp"
    live.write_text("live")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from spikeprune.core.rundir import run_directory\n"
        "with run_directory(sys.argv[1]):\n"
        "    print('held', flush=True); time.sleep(60)\n"), str(busy)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        live.write_text("live")  # (the holder's own start cleaned its directory)
        with run_directory(out, "train"):
            left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert left == [".notes.tmp", "busy/.metrics.json.abcd1234.spikeprune.tmp", "x.abcdefgh.tmp"]


@pytest.mark.slow
@pytest.mark.slow
def test_sigkill_of_train_then_resume_leaves_no_temp_file(tmp_path):
    """A real `kill -9` of `spikeprune train` while it writes; the resumed run starts by cleaning up."""
    out = tmp_path / "run"
    proc = subprocess.Popen(CLI + ["train", *TRAIN, "--epochs", "30", "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob(".*.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)  # poll until an atomic write is in flight, then kill it right there
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not list(out.glob(".*.tmp")):  # missed the write window: leave what a kill there leaves
        (out / ".checkpoint.safetensors.k1ll3d00.spikeprune.tmp").write_bytes(b"half")
    done = subprocess.run(CLI + ["train", *TRAIN, "--epochs", "30", "--out", str(out), "--resume"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 30


# ---------------------------------------------------------------------------------------------
# Sweeps die with their parent.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killing_a_sweep_parent_ends_its_jobs(tmp_path, sig):
    out = tmp_path / "sweep"
    parent = subprocess.Popen(CLI + ["edgepopup", *TRAIN, "--epochs", "500", "--seeds", "0,1", "--jobs", "2",
                                     "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    lines: list[str] = []

    def read() -> None:
        for line in parent.stderr:
            lines.append(line)
            if "sweep: started" in line:
                pids.append(int(line.split("(pid ")[1].split(";")[0]))
    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 90
    while len(pids) < 2:
        assert time.time() < deadline and parent.poll() is None, "".join(lines)
        time.sleep(0.05)
    # the jobs are running (importing or training), in one process group of their own
    assert all(not _gone(p) for p in pids)
    groups = {os.getpgid(p) for p in pids}
    assert len(groups) == 1 and groups != {os.getpgid(parent.pid)}
    time.sleep(1.5)  # let them get past start-up
    parent.send_signal(sig)
    parent.wait(timeout=30)
    deadline = time.time() + 15
    while not all(_gone(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    alive = [p for p in pids if not _gone(p)]
    for p in alive:  # do not leave them behind even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not alive, f"jobs {alive} outlived their sweep (signal {sig.name})"
    assert lock_holder(out) is None
    if sig == signal.SIGINT:
        assert parent.returncode == 130


# ---------------------------------------------------------------------------------------------
# Resume under other threads.
# ---------------------------------------------------------------------------------------------


def _crash_after(n):
    def crash(epoch, model):
        if epoch == n - 1:
            raise KeyboardInterrupt
    return crash


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow  # 2 threads on a busy 2-core machine: up to ~20 s
def test_resume_takes_the_recorded_thread_count_and_is_bit_identical(tmp_path, synthetic, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    cfg = TrainConfig(**TINY, epochs=3)
    try:
        torch.set_num_threads(2)
        straight = fit(cfg, tmp_path / "straight", dataset=synthetic, progress=False, log=None)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, tmp_path / "resumed", dataset=synthetic, on_epoch_end=_crash_after(1), progress=False, log=None)
        _, meta = load_checkpoint(tmp_path / "resumed" / CHECKPOINT)
        assert meta["runtime"]["threads"] == 2 and meta["runtime"]["torch"] == torch.__version__
        torch.set_num_threads(1)  # a new process with another default: the recorded count wins
        messages = []
        resumed = fit(cfg, tmp_path / "resumed", resume=True, dataset=synthetic, progress=False, log=messages.append)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert any("with 2 thread(s), as recorded" in m for m in messages)
    assert "bit-identical" not in capsys.readouterr().err
    for (k, a), b in zip(_state(straight.model).items(), _state(resumed.model).values()):
        assert torch.equal(a, b), k


def test_resume_with_another_thread_count_warns_in_one_line(tmp_path, synthetic, monkeypatch, capsys):
    before = torch.get_num_threads()
    cfg = TrainConfig(**TINY, epochs=2)
    try:
        torch.set_num_threads(2)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, tmp_path, dataset=synthetic, on_epoch_end=_crash_after(1), progress=False, log=None)
        capsys.readouterr()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user asks for another count
        torch.set_num_threads(1)
        fit(cfg, tmp_path, resume=True, dataset=synthetic, progress=False, log=None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    line = _one_line(capsys.readouterr().err)
    assert "not be bit-identical" in line and "1 threads (OMP_NUM_THREADS=1)" in line and "written with 2" in line


# ---------------------------------------------------------------------------------------------
# Another kind of run's results: never overwritten without --force.
# ---------------------------------------------------------------------------------------------


def test_evaluate_refuses_to_overwrite_a_training_runs_metrics_without_force(trained, capsys):
    before = _snapshot(trained)
    record = json.loads((trained / RECORD_FILE).read_text())
    assert record["kind"] == "train"
    ckpt = str(trained / CHECKPOINT)
    assert main(["evaluate", "--checkpoint", ckpt, "--out", str(trained)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "holds a train run" in line and "metrics.json" in line and "--force" in line
    assert _snapshot(trained) == before  # nothing changed, the record included
    # its own folder is fine, twice
    assert main(["evaluate", "--checkpoint", ckpt, "--out", str(trained / "eval")]) == 0
    assert main(["evaluate", "--checkpoint", ckpt, "--out", str(trained / "eval")]) == 0
    # and --force overwrites
    assert main(["evaluate", "--checkpoint", ckpt, "--out", str(trained), "--force"]) == 0
    assert "checkpoint" in json.loads((trained / "metrics.json").read_text())
    assert json.loads((trained / RECORD_FILE).read_text())["also"] == ["evaluate"]
    # the training run still resumes (its own kind) and re-reports itself
    assert main(["train", *TRAIN, "--epochs", "1", "--out", str(trained), "--resume"]) == 0
    assert json.loads((trained / "metrics.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_compress_and_cost_refuse_to_overwrite_another_runs_results(tmp_path, synthetic, capsys):
    # a run written before run records existed: its kind is read from its files
    run = tmp_path / "legacy"
    fit(TrainConfig(**TINY, epochs=1), run, dataset=synthetic, progress=False, log=None)
    assert not (run / RECORD_FILE).exists()
    before = _snapshot(run)
    small = ["--dataset", "digits", "--width", "0.25", "--timesteps", "2", "--batch-size", "32",
             "--train-limit", "128", "--test-limit", "64", "--epochs", "1", "--qat-epochs", "0",
             "--finetune-epochs", "1", "--calibration-batches", "1", "--no-progress"]
    assert main(["compress", *small, "--out", str(run)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "holds a train run" in line and "compress would overwrite its metrics.json" in line
    assert _snapshot(run) == before
    assert main(["compress", *small, "--out", str(run), "--force"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert "size_reduction" in m  # compress's metrics replaced train's
    # cost into the compression run would replace its cost.json
    compressed = str(run / "model.safetensors")
    capsys.readouterr()
    before = _snapshot(run)
    assert main(["cost", "--checkpoint", compressed, "--latency-repeats", "0", "--batches", "1",
                 "--out", str(run)]) == 2
    assert "cost would overwrite its cost.json" in _one_line(capsys.readouterr().err)
    assert _snapshot(run) == before
    # analyze writes files nobody else writes there: allowed, and allowed again
    args = ["analyze", "flips", "--checkpoint", str(run / "dense" / CHECKPOINT), "--perturb", "prune:0.5", "--samples", "32",
            "--calibration-batches", "1", "--mode", "local", "--out", str(run)]
    assert main(args) == 0 and main(args) == 0


# ---------------------------------------------------------------------------------------------
# torchrun: rank 0 holds the directory, every rank shares its verdict.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.slow
def test_torchrun_ranks_share_one_lock(tmp_path):
    out = tmp_path / "ddp"
    env = {**ENV}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "spikeprune.cli"]
    done = subprocess.run(launcher + ["train", *TRAIN, "--epochs", "1", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["distributed"]["world_size"] == 2
    assert json.loads((out / RECORD_FILE).read_text())["kind"] == "train"
    # while another process holds the directory, both ranks refuse (rank 0 decides, rank 1 is told)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from spikeprune.core.rundir import run_directory\n"
        "with run_directory(sys.argv[1], 'train'):\n"
        "    print('held', flush=True); time.sleep(120)\n"), str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = subprocess.run(launcher + ["train", *TRAIN, "--epochs", "1", "--out", str(out), "--resume"],
                                 env=env, capture_output=True, text=True, timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if "spikeprune train: error:" in line]
    # torchrun tears the peer down as soon as one rank exits, so the second line may never be printed
    assert 1 <= len(errors) <= 2 and all(f"in use by another spikeprune run (pid {holder.pid}" in e for e in errors)
    assert "spikeprune/rundir.py" not in refused.stderr  # (torchrun prints its own traceback of the launch)
