"""An OpenAI-compatible embedding server for Qwen3-VL-Embedding."""

__version__ = "0.1.0"
