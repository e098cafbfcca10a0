"""A tiny random-weight Llama with its own byte-level BPE tokenizer, built offline.

Used by tests, benchmarks and `examples/recipes/train_tiny.yaml` (recipe key `make_tiny_model: true`) so the
trainer can be exercised end to end on a CPU without downloading anything. The tokenizer is trained on the
texts it is given (the dataset's own prompts and responses), so no hub tokenizer is needed either.

    python -m training.tiny runs/tiny-llama --text data.parquet      # columns prompt/chosen/rejected/responses
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import torch

# The default shape is the benchmark's 7.3M-parameter model: 2 x 8000*256 embeddings + 4 layers.
TINY_SHAPE = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000):
    """Byte-level BPE (GPT-2 style) with <s> prepended like Llama; deterministic for the same texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(vocab_size: int, *, seed: int = 0, dtype: torch.dtype = torch.float32, **shape):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=4096, tie_word_embeddings=False,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, **{**TINY_SHAPE, **shape})
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(dtype)


def texts_of_table(table) -> list[str]:
    """All prompt/response strings of a pairs or lists Arrow table (for tokenizer training)."""
    out: list[str] = []
    for col in ("prompt", "chosen", "rejected"):
        if col in table.column_names:
            out.extend(s for s in table.column(col).to_pylist() if s)
    if "responses" in table.column_names:
        out.extend(s for lst in table.column("responses").to_pylist() if lst for s in lst if s)
    return out


def make_tiny_model(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 8000, seed: int = 0,
                    **shape) -> Path:
    """Train a tokenizer on `texts`, build a random Llama for it and save both to `out_dir`."""
    out = Path(out_dir)
    tok = train_tokenizer(texts, vocab_size)
    model = tiny_llama(len(tok), seed=seed, **shape)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "TINY_MODEL.json").write_text(json.dumps(
        {"what": "random-init Llama built by training/tiny.py; not a trained model", "seed": seed,
         "parameters": sum(p.numel() for p in model.parameters()), **TINY_SHAPE, **shape}, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    import pyarrow.parquet as pq

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--text", required=True, help="parquet file whose prompt/response columns train the tokenizer")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    path = make_tiny_model(a.out_dir, texts_of_table(pq.read_table(a.text)), vocab_size=a.vocab_size, seed=a.seed)
    print(path)


if __name__ == "__main__":
    main()
