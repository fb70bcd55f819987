"""Development tools kept out of the runtime package: tiny random checkpoints for tests, demos and benchmarks."""
