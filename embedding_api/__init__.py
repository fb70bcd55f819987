"""An OpenAI-compatible embedding server for Qwen3-VL-Embedding."""

import os

# The forward pass and the CPU preprocessing run on different threads; with OpenMP's default spin-wait each
# thread's team keeps the cores busy ~200 ms after every op and the two starve each other (100x slower on CPU).
# A value in `.env` wins over this default (environment.py), and the real environment over both.
OMP_WAIT_POLICY_DEFAULTED = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
