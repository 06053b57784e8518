#!/bin/bash
# The benchmark's models (run 1's commands; ~30 min on one core), from the repository root, into runs/ee/.
set -e
export OMP_NUM_THREADS=1
P="--dataset fashion_mnist --model convnet --epochs 1 --train-limit 20000 --test-limit 2000 --optimizer adam --lr 1e-3 --no-progress"
spikeprune train $P --out runs/ee/dense
spikeprune lottery $P --rounds 5 --prune-fraction 0.5358 --rewind-epoch 0 --variant imp --out runs/ee/imp
spikeprune compress --checkpoint runs/ee/dense/checkpoint.safetensors --dataset fashion_mnist --bits 4 \
  --channel-sparsity 0.5 --qat-epochs 1 --finetune-epochs 1 --train-limit 10000 --test-limit 2000 \
  --optimizer adam --finetune-lr 1e-3 --no-progress --out runs/ee/qp
