"""Model families: one adapter per family behind the `EmbeddingFamily` protocol (`base`), how checkpoints are found
and loaded (`loader`, `download`, `device`), and the CPU kernels the adapters use."""
