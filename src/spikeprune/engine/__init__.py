"""The simulator: the LIF neuron (eager and fused kernels), datasets and encodings, the training loop, allocator and torchrun helpers."""
