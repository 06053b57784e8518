"""Worker of tests/test_distributed.py: one edge-popup search on digits under torchrun.

    torchrun --standalone --nproc_per_node 2 tests/helpers/ddp_edgepopup.py OUT

Each rank writes OUT/rank-<r>.json with the checksum of the subnetwork it holds in memory.
"""

import json
import sys
from pathlib import Path

import torch

from spikeprune.core import distributed
from spikeprune.tickets.edgepopup import EdgePopupConfig, search

torch.set_num_threads(1)
out = Path(sys.argv[1])
cfg = EdgePopupConfig(model="convnet", dataset="digits", width=0.25, timesteps=2, epochs=1, batch_size=64,
                      density=0.5, seed=0)
row = search(cfg, out / "run", progress=False, log=None).metrics
ctx = distributed.context()
from spikeprune.tickets.masks import Mask  # noqa: E402

record = {"rank": ctx.rank, "world_size": ctx.world_size, "test_accuracy": row["test_accuracy"],
          "exported_test_accuracy": row["exported_test_accuracy"],
          "mask": distributed.checksum(dict(Mask.load(out / "run" / "mask.safetensors").items()))}
(out / f"rank-{ctx.rank}.json").write_text(json.dumps(record))
