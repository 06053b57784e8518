"""Post-training quantization of the dense checkpoint, with and without BatchNorm re-estimation.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qpsnn/ptq_bn.py [--dense CKPT] [--test-limit 2048]

No training: quantize (per-layer gamma), optionally re-estimate BN running statistics on 16 training
batches of 128, evaluate. Also prints each scheme's bit-width utilisation. Writes results/ptq_bn.json.
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
import spikeprune as sp  # noqa: E402
from spikeprune.compression import quant as q  # noqa: E402
from spikeprune.engine.data import BatchLoader  # noqa: E402
from spikeprune.core.io import write_json  # noqa: E402
from spikeprune.engine.train import evaluate, load_model  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--dense", default="/work/runs/fmnist_convnet_v1/checkpoint.safetensors")
p.add_argument("--test-limit", type=int, default=2048)
args = p.parse_args()
torch.set_num_threads(1)
dense, _ = load_model(args.dense)
ds = sp.load_dataset("fashion_mnist")
test = BatchLoader(ds, "test", 256, shuffle=False, seed=0, timesteps=4, limit=args.test_limit)
calib = [b for _, b in zip(range(16), BatchLoader(ds, "train", 128, shuffle=True, seed=0, timesteps=4, augment=False))]
rows = [{"scheme": "dense", "accuracy": evaluate(dense, test)["test_accuracy"]}]
print(rows[0])
for bits in (8, 4, 2):
    for method in ("mean", "max", "percentile"):
        for bn in (False, True):
            m = copy.deepcopy(dense)
            q.quantize_model(m, bits, method=method)
            if bn:
                q.reestimate_batchnorm(m, calib)
            u = q.utilisation_report(m)[-1]
            row = {"bits": bits, "method": method, "bn_reestimated": bn, "accuracy": evaluate(m, test)["test_accuracy"],
                   "utilisation": u["utilisation"], "entropy_bits": u["entropy_bits"],
                   "effective_utilisation": u["effective_utilisation"]}
            rows.append(row)
            print(row, flush=True)
write_json(HERE / "results" / "ptq_bn.json", {"dense": str(args.dense), "test_limit": args.test_limit, "rows": rows})
