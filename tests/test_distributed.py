"""Data parallelism (spikeprune.core.distributed): sharding, collectives, and a real 2-process torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikeprune.core import distributed
from spikeprune.engine.data import BatchLoader, load_dataset

HELPER = Path(__file__).parent / "helpers" / "ddp_lottery.py"


def test_shard_slice_partitions_like_tensor_split():
    for n in (0, 1, 5, 64, 127):
        for world in (1, 2, 3, 4):
            parts = [list(range(n))[distributed.shard_slice(n, r, world)] for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert parts == [t.tolist() for t in torch.arange(n).tensor_split(world)]
    with pytest.raises(ValueError, match="rank"):
        distributed.shard_slice(4, 2, 2)


@pytest.mark.parametrize("encoding,augment", [("direct", False), ("direct", True), ("poisson", False)])
def test_shards_put_together_are_the_single_process_batches(encoding, augment):
    ds = load_dataset("synthetic", num_classes=4, in_channels=1, image_size=8, train_size=70, test_size=8, seed=0)
    kw = dict(shuffle=True, seed=3, encoding=encoding, timesteps=2, augment=augment)
    whole = BatchLoader(ds, "train", 16, **kw)
    shards = [BatchLoader(ds, "train", 16, rank=r, world_size=3, **kw) for r in range(3)]
    for loader in (whole, *shards):
        loader.set_epoch(5)
    dim = 1 if encoding == "poisson" else 0
    batches = list(whole)
    parts = list(zip(*shards))
    assert len(shards[0]) == len(whole) == 5
    assert len(parts) == 5  # the last global batch has 6 samples >= 3 ranks: nobody skips it
    for (x, y), per_rank in zip(batches, parts):
        assert torch.equal(torch.cat([p[0] for p in per_rank], dim), x)
        assert torch.equal(torch.cat([p[1] for p in per_rank]), y)


def test_a_global_batch_smaller_than_the_world_is_skipped_by_every_rank():
    ds = load_dataset("synthetic", num_classes=2, in_channels=1, image_size=8, train_size=9, test_size=4, seed=0)
    shards = [list(BatchLoader(ds, "train", 8, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert [len(s) for s in shards] == [1, 1]  # 8 + 1: the batch of 1 is dropped on both ranks
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(ds, "train", 8, shuffle=False, rank=2, world_size=2)


def test_single_process_context_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.context()
    assert (ctx.rank, ctx.world_size, ctx.active) == (0, 1, False)
    assert distributed.all_reduce_sums({"a": 2.0}) == {"a": 2.0}
    assert distributed.all_gather_objects("x") == ["x"]
    assert distributed.collective_write() == (True, False)


def test_checksum_sees_every_bit():
    a = {"w": torch.zeros(3), "m": torch.ones(2, dtype=torch.bool), "n": torch.tensor(3)}
    b = {**a, "w": torch.tensor([0.0, 0.0, 1e-30])}
    assert distributed.checksum(a) == distributed.checksum(dict(a))
    assert distributed.checksum(a) != distributed.checksum(b)


def _run(out: Path, torchrun: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = (launcher if torchrun else [sys.executable]) + [str(HELPER), str(out), "imp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in out.glob("rank-*.json")}


@pytest.mark.slow
def test_torchrun_two_processes_gloo_imp_masks_match_across_ranks(tmp_path):
    ranks = _run(tmp_path / "ddp", torchrun=True)
    assert sorted(ranks) == [0, 1] and ranks[0]["world_size"] == 2
    # every rank ends with the same masks and the same trained tickets
    assert ranks[0]["ticket_masks"] == ranks[1]["ticket_masks"]
    assert ranks[0]["ticket_states"] == ranks[1]["ticket_states"]
    assert ranks[0]["rows"] == ranks[1]["rows"]  # metrics are reduced over ranks: one global number
    from spikeprune.core.io import load_checkpoint, read_json

    run = tmp_path / "ddp" / "run"
    for k in (1, 2):  # the masks each rank computed on its own (all-gathered before rank 0 wrote)
        _, meta = load_checkpoint(run / f"round_{k:02d}" / "mask.safetensors")
        assert len(meta["rank_checksums"]) == 2 and meta["ranks_agree"], meta["rank_checksums"]
    for where in ("dense", "round_01", "round_02"):  # DDP kept the replicas bit-identical
        dist_info = read_json(run / where / "metrics.json")["distributed"]
        assert dist_info["world_size"] == 2 and dist_info["backend"] == "gloo"
        assert dist_info["replicas_identical"], dist_info
    assert not list(run.rglob("*.tmp"))  # the other rank's discarded copies are gone
    assert [r["sparsity"] for r in ranks[0]["rows"]] == [0.0, 0.5, 0.75]

    single = _run(tmp_path / "single", torchrun=False)[0]
    assert single["world_size"] == 1
    # same global batches; only BatchNorm's per-rank batch statistics differ: accuracy within noise
    # (360 test images: one binomial standard error is ~2 points)
    ddp_acc = [r["test_accuracy"] for r in ranks[0]["rows"]]
    one_acc = [r["test_accuracy"] for r in single["rows"]]
    assert min(ddp_acc + one_acc) > 0.6, (ddp_acc, one_acc)
    assert abs(sum(ddp_acc) / 3 - sum(one_acc) / 3) < 0.05, (ddp_acc, one_acc)
    assert max(abs(a - b) for a, b in zip(ddp_acc, one_acc)) < 0.08, (ddp_acc, one_acc)


@pytest.mark.slow
def test_torchrun_two_processes_edgepopup_search(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    helper = Path(__file__).parent / "helpers" / "ddp_edgepopup.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(helper),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == {**ranks[1], "rank": 0}  # same accuracy (reduced over ranks), same subnetwork
    assert ranks[0]["exported_test_accuracy"] == ranks[0]["test_accuracy"] > 0.2
    from spikeprune.core.io import read_json

    info = read_json(tmp_path / "run" / "metrics.json")["distributed"]
    assert info["world_size"] == 2 and info["replicas_identical"], info
