"""The shared batcher: queue, budgets, batches across requests; knows the family protocol, not the model library."""
