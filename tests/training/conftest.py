"""Shared fixtures for the trainer tests: real pairs/lists copied from the bundled data (tests/data/training),
tiny random Llamas built from configs, a tokenizer trained on those texts. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "training"


@pytest.fixture(scope="session")
def hh_pairs():
    return pq.read_table(DATA / "hh_pairs.parquet")


@pytest.fixture(scope="session")
def arena_lists():
    return pq.read_table(DATA / "arena_lists.parquet")


@pytest.fixture(scope="session")
def tokenizer(hh_pairs, arena_lists):
    from training.tiny import texts_of_table, train_tokenizer

    return train_tokenizer(texts_of_table(hh_pairs) + texts_of_table(arena_lists), vocab_size=2000)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, hh_pairs, arena_lists):
    """A saved tiny model + tokenizer (small shape so the tests stay fast)."""
    from training.tiny import make_tiny_model, texts_of_table

    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    make_tiny_model(out, texts_of_table(hh_pairs) + texts_of_table(arena_lists), vocab_size=2000, seed=0,
                    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2)
    return out
