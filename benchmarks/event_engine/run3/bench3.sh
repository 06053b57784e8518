#!/bin/bash
. /work/main/.venv/bin/activate
export PYTHONPATH=/work/runs/snap3/src OMP_NUM_THREADS=1
cd /work/runs
date; uptime
python snap3/benchmarks/event_engine/bench.py --dense ee/dense/checkpoint.safetensors --imp ee/imp \
  --compressed ee/qp/model.safetensors \
  --extra "dense 10 epochs=/work/main/benchmarks/evidence/checkpoints/fmnist_w1_val.safetensors" \
  --out benchmarks/event_engine/run3
date; uptime
