#!/bin/bash
set -e
. /work/main/.venv/bin/activate
export PYTHONPATH=/work/runs/snap/src OMP_NUM_THREADS=1
cd /work/runs
P="--dataset fashion_mnist --model convnet --epochs 1 --train-limit 20000 --test-limit 2000 --optimizer adam --lr 1e-3 --no-progress"
date; python -m spikeprune.cli train $P --out ee/dense
date; python -m spikeprune.cli lottery $P --rounds 5 --prune-fraction 0.5358 --rewind-epoch 0 --variant imp --out ee/imp
date; python -m spikeprune.cli compress --checkpoint ee/dense/checkpoint.safetensors --dataset fashion_mnist --bits 4 --channel-sparsity 0.5 --qat-epochs 1 --finetune-epochs 1 --train-limit 10000 --test-limit 2000 --optimizer adam --finetune-lr 1e-3 --no-progress --out ee/qp
date; echo done
