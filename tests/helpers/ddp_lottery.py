"""Worker of tests/test_distributed.py: a 2-round IMP on digits, run under torchrun (or alone).

    torchrun --standalone --nproc_per_node 2 tests/helpers/ddp_lottery.py OUT VARIANT

Each rank writes OUT/rank-<r>.json with what it holds in memory at the end (not what rank 0 wrote):
the checksum of every round's mask as this rank computes it again from the round's files, and the
checksum of the final trained ticket; the test compares the ranks.
"""

import json
import os
import sys
from pathlib import Path

import torch

from spikeprune.core import distributed
from spikeprune.tickets.lottery import LotteryConfig, load_ticket, run_lottery
from spikeprune.tickets.masks import Mask

torch.set_num_threads(1)
out, variant = Path(sys.argv[1]), sys.argv[2]
cfg = LotteryConfig(model="convnet", dataset="digits", width=0.25, timesteps=2, epochs=2, rewind_epoch=1,
                    batch_size=64, lr=0.1, rounds=2, prune_fraction=0.5, variant=variant, seed=0)
result = run_lottery(cfg, out / "run", progress=False, log=None)
ctx = distributed.context()
record = {
    "rank": ctx.rank,
    "world_size": ctx.world_size,
    "rows": [{k: r[k] for k in ("round", "sparsity", "test_accuracy")} for r in result.rows],
    "ticket_masks": [distributed.checksum(dict(Mask.from_model(load_ticket(out / "run", k)[0]).items()))
                     for k in (1, 2)],
    "ticket_states": [distributed.checksum(load_ticket(out / "run", k)[0]) for k in (1, 2)],
}
(out / f"rank-{ctx.rank}.json").write_text(json.dumps(record))
