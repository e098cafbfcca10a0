"""Helpers shared by the trainer tests (a module with its own name, not conftest: several test folders have a
conftest.py, so `from conftest import ...` would pick whichever was imported first in a whole-suite run)."""
from __future__ import annotations

import torch


def small_llama(vocab: int, dtype=torch.float32, seed: int = 0):
    from training.tiny import tiny_llama

    return tiny_llama(vocab, seed=seed, dtype=dtype, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
