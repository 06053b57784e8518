#!/usr/bin/env bash
# The T = 4 and T = 8 runs of run.sh with fewer rounds (3 x 1 step), the four configurations in
# parallel: the shared machine (load 10-11 on 2 cores) left no time to run them one after another.
set -u
E=spikeprune,spikeprune-eager,spikingjelly,snntorch,ann-x-T
OUT=benchmarks/fusedlif
for T in 4 8; do
  nice -n 19 python benchmarks/engine_speed.py --timesteps $T --rounds 3 --steps 1 --engines $E --memory \
    --json $OUT/convnet_T$T.json --markdown $OUT/raw_convnet_T$T.md > $OUT/log_convnet_T$T.txt 2>&1 &
  nice -n 19 python benchmarks/engine_speed.py --model vgg16 --width 0.25 --image-size 32 --channels 3 \
    --batch-size 32 --timesteps $T --rounds 3 --steps 1 --engines $E --memory \
    --json $OUT/vgg16_T$T.json --markdown $OUT/raw_vgg16_T$T.md > $OUT/log_vgg16_T$T.txt 2>&1 &
done
wait
