#!/bin/bash
# Runs 2 and 3: the benchmark on the models of models.sh plus the committed 10-epoch convnet, from the
# repository root: bash benchmarks/event_engine/bench.sh benchmarks/event_engine/run3  (~4 min, one core)
set -e
export OMP_NUM_THREADS=1
date; uptime
python benchmarks/event_engine/bench.py --dense runs/ee/dense/checkpoint.safetensors --imp runs/ee/imp \
  --compressed runs/ee/qp/model.safetensors \
  --extra "dense 10 epochs=benchmarks/evidence/checkpoints/fmnist_w1_val.safetensors" --out "${1:?output folder}"
date; uptime
