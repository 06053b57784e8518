#!/usr/bin/env bash
# Issue 19 benchmark: train step + training memory, 5 engines side by side, convnet and SNN-VGG-16.
# Run from the repository root; niced, because the machine is shared.
set -u
E=spikeprune,spikeprune-eager,spikingjelly,snntorch,ann-x-T
OUT=benchmarks/fusedlif
for T in 2 4 8; do
  nice -n 19 python benchmarks/engine_speed.py --timesteps $T --rounds 5 --steps 2 --engines $E --memory \
    --json $OUT/convnet_T$T.json --markdown $OUT/raw.md
  nice -n 19 python benchmarks/engine_speed.py --model vgg16 --width 0.25 --image-size 32 --channels 3 \
    --batch-size 32 --timesteps $T --rounds 5 --steps 2 --engines $E --memory \
    --json $OUT/vgg16_T$T.json --markdown $OUT/raw.md
done
