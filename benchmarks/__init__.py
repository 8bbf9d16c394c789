"""Speed benchmarks: JAX against PyTorch baselines on the same device, in one run."""
