"""VLM multi-image DPO batch math on MIA-DPO pairs with a tiny random LLaVA-style model (real tokenizer, real
images). The recipe-driven loop is tested in test_vlm_train.py."""
from __future__ import annotations

import polars as pl
import pytest
import torch

from builders.images import MiaDpoConfig, build_mia_dpo
from training.diffusion_data import MediaPaths
from training.vlm import collate_pairs, pair_logps


@pytest.fixture(scope="module")
def tiny_llava(captions):
    from training.vlm_tiny import tiny_llava
    return tiny_llava(captions["caption_short"].to_list() + ["Describe image 1 of 2.", "Which image shows"])


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
