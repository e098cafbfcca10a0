"""Helpers shared by the trainer tests (a module with its own name, not conftest: several test folders have a
conftest.py, so `from conftest import ...` would pick whichever was imported first in a whole-suite run)."""
from __future__ import annotations

import torch


def small_llama(vocab: int, dtype=torch.float32, seed: int = 0):
    from training.tiny import tiny_llama

    return tiny_llama(vocab, seed=seed, dtype=dtype, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)


def recipe_error(path, load=None):
    """The RecipeError that loading `path` raises; checks it is one line naming the recipe file."""
    import pytest

    from prefdata.errors import RecipeError
    from training.recipe import load_train_recipe

    with pytest.raises(RecipeError) as e:
        (load or load_train_recipe)(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    return e.value


def shortest_prompt_pairs(pairs, n: int, path):
    """The n pairs with the shortest prompts (so a small max_length keeps every one), written to `path`."""
    import pyarrow.parquet as pq

    lens = [len(p) for p in pairs.column("prompt").to_pylist()]
    pq.write_table(pairs.take(sorted(range(len(lens)), key=lens.__getitem__)[:n]), path)
    return path
