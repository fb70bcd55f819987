"""An OpenAI-compatible embedding server for Qwen3-VL-Embedding."""

import os

# The forward pass and the CPU preprocessing run on different threads. OpenMP's default spin-wait keeps each
# team's cores busy long after every op, so the two starved each other (100x slower on CPU); a passive wait cost a
# thread wake-up per op instead (about 1.5x slower per forward pass, bench/vs_vllm.py). A short spin keeps both:
# a team spins about 10,000 rounds for the next op, then sleeps. A value in `.env` wins over this default
# (environment.py), and the real environment over both.
SPINCOUNT_DEFAULTED = "GOMP_SPINCOUNT" not in os.environ
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
