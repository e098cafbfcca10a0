"""Tiny random-weight VLMs with their own BPE tokenizer, built offline: a LLaVA (CLIP vision tower + Llama) and
a Qwen2-VL (for the other processor layout).

Used by the VLM tests and `examples/recipes/mm_vlm_train.yaml` (recipe key `vlm.make_tiny_model: true`) so
multi-image DPO runs end to end on a CPU without downloading anything. The tokenizer is trained on the given
texts (the dataset's prompts and answers) with `<image>` added as a special token; the processor expands each
`<image>` to (32/16)^2 = 4 patch tokens for 32x32 images. The folder loads back with `AutoProcessor` and
`AutoModelForImageTextToText` like any LLaVA checkpoint."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from training.tiny import train_tokenizer

IMAGE_TOKEN = "<image>"
TINY_VLM_SHAPE = {"image_size": 32, "patch_size": 16, "vision_hidden": 32, "hidden_size": 32,
                  "intermediate_size": 64, "num_hidden_layers": 2}


def tiny_llava(texts: Iterable[str], *, vocab_size: int = 1000, seed: int = 0):
    """(model, processor): a random LLaVA and a LlavaProcessor whose tokenizer is trained on `texts`."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    s = TINY_VLM_SHAPE
    tok = train_tokenizer(texts, vocab_size)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": s["image_size"]},
                                           crop_size={"height": s["image_size"], "width": s["image_size"]}),
        tokenizer=tok, patch_size=s["patch_size"], vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token=IMAGE_TOKEN)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=s["image_size"], patch_size=s["patch_size"],
                                       hidden_size=s["vision_hidden"], intermediate_size=2 * s["vision_hidden"],
                                       num_hidden_layers=1, num_attention_heads=2, projection_dim=s["vision_hidden"]),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=s["hidden_size"],
                                intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_hidden_layers"],
                                num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(cfg), proc


QWEN_IMAGE_TEXT = "<|vision_start|><|image_pad|><|vision_end|>"   # recipe `vlm.image_text` for Qwen2-VL


def tiny_qwen2_vl(texts: Iterable[str], *, vocab_size: int = 1000, seed: int = 0):
    """(model, processor): a random Qwen2-VL (M-RoPE, 14 px patches merged 2x2; images resized to 28..56 px) —
    the other processor/model family: flattened patches, `image_grid_thw`, per-token `mm_token_type_ids`."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    tok = train_tokenizer(texts, vocab_size)
    special = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": special})
    sid = {t: tok.convert_tokens_to_ids(t) for t in special}
    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56),
                            tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=None)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=sid["<|image_pad|>"], video_token_id=sid["<|video_pad|>"],
        vision_start_token_id=sid["<|vision_start|>"], vision_end_token_id=sid["<|vision_end|>"],
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(cfg), proc


def make_tiny_vlm(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 1000, seed: int = 0,
                  family: str = "llava") -> Path:
    """Build a tiny random model of `family` (llava | qwen2_vl) for `texts` and save model + processor to
    `out_dir` (loadable with from_pretrained)."""
    out = Path(out_dir)
    build = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl}[family]
    model, proc = build(texts, vocab_size=vocab_size, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    (out / "TINY_MODEL.json").write_text(json.dumps(
        {"what": f"random-init {family} built by training/vlm_tiny.py; not a trained model", "seed": seed,
         "parameters": sum(p.numel() for p in model.parameters()), **TINY_VLM_SHAPE}, indent=2))
    return out


def texts_of_rows(rows: Iterable[dict]) -> list[str]:
    """Prompt and answer strings of MIA-DPO rows, for tokenizer training."""
    return [r[c] for r in rows for c in ("prompt", "chosen", "rejected") if r.get(c)]
