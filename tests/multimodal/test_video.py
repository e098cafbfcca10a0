"""PaMi-VDPO augmentations (determinism, strength ordering, stored clips) and DenseDPO segment labels on the
real carphone pristine/distorted pair."""
from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest

from builders.media import MediaStore, encode_video, read_video
from builders.video import (
    AUGMENTATIONS,
    TEMPORAL,
    DenseSegmentsConfig,
    VideoAugmentConfig,
    augment,
    build_dense_segments,
    build_video_augment,
    clip_distance,
    segment_bounds,
)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_augmentation_is_deterministic_and_graded(name, carphone):
    clip = carphone[0][:30]
    outs = [augment(clip, name, s, np.random.default_rng(11)) for s in (0.2, 0.5, 0.9)]
    again = augment(clip, name, 0.5, np.random.default_rng(11))
    assert np.array_equal(outs[1], again)
    assert all(o.shape == clip.shape and o.dtype == np.uint8 for o in outs)
    d = [clip_distance(clip, o) for o in outs]
    assert 0 < d[0] < d[1] < d[2], d                       # close → far


@pytest.mark.parametrize("name", ["shuffle", "reverse"])
def test_reordering_augmentations_keep_every_frame(name, carphone):
    clip = carphone[0][:30]
    out = augment(clip, name, 0.9, np.random.default_rng(0))
    key = lambda c: Counter(f.tobytes() for f in c)  # noqa: E731
    assert key(out) == key(clip)


def test_temporal_augmentations_only_reuse_source_frames(carphone):
    clip = carphone[0][:30]
    src = {f.tobytes() for f in clip}
    for name in TEMPORAL:
        assert {f.tobytes() for f in augment(clip, name, 0.7, np.random.default_rng(3))} <= src


def test_video_augment_step_stores_exact_augmented_clips(ctx, data_dir):
    df = pl.DataFrame({"prompt": ["What is the man doing?"], "video": ["video/carphone_pristine.mp4"],
                       "response": ["He is talking on the phone in a car."]})
    cfg = VideoAugmentConfig(max_frames=12, codec="ffv1", candidates_per_stage=2, strengths=[0.9, 0.3], threads=2)
    built = build_video_augment(df.lazy(), cfg, ctx)
    out = built.frame.collect()
    assert built.rows_kept == 1 and out.height == 4
    assert out["stage"].to_list() == [0, 0, 1, 1] and out["strength"].to_list() == [0.3, 0.3, 0.9, 0.9]
    assert (out["chosen"] == out["rejected"]).all() and (out["video_chosen"] != out["video_rejected"]).all()
    store = MediaStore.for_context(ctx)
    orig, _ = read_video(data_dir / "video" / "carphone_pristine.mp4", max_frames=12)
    chosen, _ = read_video(store.resolve(out["video_chosen"][0]))
    assert np.array_equal(chosen, orig)                     # lossless codec: the stored chosen clip is exact
    for r in out.iter_rows(named=True):
        rej, _ = read_video(store.resolve(r["video_rejected"]))
        assert rej.shape == orig.shape
        assert abs(clip_distance(orig, rej) - r["aug_distance"]) < 1e-12
    again = build_video_augment(df.lazy(), cfg, ctx).frame.collect()
    assert again.equals(out)


def test_video_augment_drops_unreadable_clip_by_name(ctx, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"garbage" * 50)
    df = pl.DataFrame({"prompt": ["q", "q"], "video": ["video/carphone_distorted.mp4", str(bad)],
                       "response": ["a", "a"]})
    built = build_video_augment(df.lazy(), VideoAugmentConfig(max_frames=6, strengths=[0.5]), ctx)
    assert built.drops == {"unreadable media": 1} and built.rows_kept == 1
    assert built.info["unreadable"][0]["file"] == str(bad) and "broken.mp4" in built.summary


def _pair_frame(a, b, ref):
    return pl.DataFrame({"prompt": ["carphone"], "video_chosen": [a], "video_rejected": [b], "reference": [ref]})


@pytest.mark.parametrize("scorer", ["psnr", "ssim"])
def test_carphone_pristine_beats_distorted_in_every_segment(ctx, scorer):
    p, d = "video/carphone_pristine.mp4", "video/carphone_distorted.mp4"
    # given in the "wrong" order: the builder makes the better clip the chosen one and flips the labels
    cfg = DenseSegmentsConfig(segment_seconds=1.0, scorer=scorer, reference_column="reference", max_frames=60)
    built = build_dense_segments(_pair_frame(d, p, p).lazy(), cfg, ctx)
    r = built.frame.collect().row(0, named=True)
    assert r["video_chosen"] == p and r["video_rejected"] == d
    assert r["segment_pref"] == [1, 1]                      # 60 frames at 29.97 fps → two 1-second segments
    assert r["segment_frames"] == [[0, 30], [30, 60]]
    assert r["margin"] > 0


def test_no_reference_sharpness_prefers_pristine(ctx):
    p, d = "video/carphone_pristine.mp4", "video/carphone_distorted.mp4"
    cfg = DenseSegmentsConfig(segment_frames=40, scorer="sharpness")          # all 120 frames
    r = build_dense_segments(_pair_frame(p, d, p).lazy(), cfg, ctx).frame.collect().row(0, named=True)
    assert r["video_chosen"] == p and r["segment_pref"] == [1, 1, 1]


def test_spliced_pair_gets_mixed_labels(ctx, carphone, tmp_path):
    p, d, fps = carphone
    p, d = p[:30], d[:30]
    a = np.concatenate([p[:10], d[10:20], p[20:]])         # good, bad, good
    b = np.concatenate([d[:10], p[10:20], p[20:]])         # bad, good, good (identical to A)
    paths = {}
    for name, frames in (("a", a), ("b", b), ("ref", p)):
        data, ext = encode_video(frames, fps, codec="ffv1")   # lossless, so labels depend only on content
        paths[name] = str(tmp_path / f"{name}{ext}")
        (tmp_path / f"{name}{ext}").write_bytes(data)
    cfg = DenseSegmentsConfig(segment_frames=10, scorer="psnr", reference_column="reference")
    built = build_dense_segments(_pair_frame(paths["a"], paths["b"], paths["ref"]).lazy(), cfg, ctx)
    r = built.frame.collect().row(0, named=True)
    chosen_is_a = r["video_chosen"] == paths["a"]
    assert r["segment_pref"] == ([1, -1, 0] if chosen_is_a else [-1, 1, 0])
    assert built.info["segments"] == {"+1": 1, "-1": 1, "0": 1}


def test_misaligned_clips_are_an_accounted_drop(ctx):
    df = _pair_frame("video/carphone_pristine.mp4", "video/bigbuckbunny.mp4", "video/carphone_pristine.mp4")
    cfg = DenseSegmentsConfig(segment_frames=10, scorer="psnr", reference_column="reference", max_frames=20)
    built = build_dense_segments(df.lazy(), cfg, ctx)
    assert built.drops == {"misaligned clips (frame count or size differ)": 1} and built.rows_kept == 0


def test_segment_bounds_absorb_the_remainder():
    assert segment_bounds(25, 10) == [(0, 10), (10, 25)]
    assert segment_bounds(5, 10) == [(0, 5)]


def _float_reference(name, clip, s, rng):
    """The float maths the spatial augmentations implement (the former torch versions), for comparison with
    the uint8 OpenCV kernels: same parameters, same random draws, one final rounding."""
    import math

    import torch
    import torch.nn.functional as F

    from builders.video import gaussian_blur
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).double()
    if name == "blur":
        y = gaussian_blur(x, 0.5 + 4.5 * s)
    elif name == "crop":
        h, w = clip.shape[1:3]
        side = math.sqrt(1.0 - 0.75 * s)
        ch, cw = max(2, round(h * side)), max(2, round(w * side))
        uy, ux = rng.random(2)                             # window position drawn independently of s
        y0, x0 = round(uy * (h - ch)), round(ux * (w - cw))
        y = F.interpolate(x[:, :, y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bilinear", align_corners=False)
    else:                                                  # color_jitter
        b, c, sat = (1.0 + 0.8 * s * (1 if rng.random() < 0.5 else -1) for _ in range(3))
        mean = x.mean(dim=(1, 2, 3), keepdim=True) * b
        y = x * (b * c) + mean * (1.0 - c)
        grey = (y * torch.tensor([0.299, 0.587, 0.114], dtype=y.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
        y = y * sat + grey * (1.0 - sat)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name", ["blur", "crop", "color_jitter"])
@pytest.mark.parametrize("s", [0.2, 0.9])
def test_uint8_spatial_kernels_match_the_float_maths(name, s, carphone):
    clip = carphone[0][:6]
    for seed in range(4):                                  # several crop windows / jitter sign draws
        got = augment(clip, name, s, np.random.default_rng(seed))
        ref = _float_reference(name, clip, s, np.random.default_rng(seed))
        diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
        # OpenCV's fixed-point bilinear weights and float32 colour maths round differently from float64: never
        # by more than one grey level, and only on a minority of pixels (measured up to 13% for the resize)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.2, (seed, diff.max(), (diff > 0).mean())


def test_noise_is_gaussian_with_the_stated_std():
    from builders.video import _NORMAL_LEVELS
    assert abs(_NORMAL_LEVELS.mean()) < 1e-12 and abs((_NORMAL_LEVELS ** 2).mean() - 1.0) < 1e-12
    assert np.allclose(_NORMAL_LEVELS, -_NORMAL_LEVELS[::-1])
    grey = np.full((4, 96, 96, 3), 128, np.uint8)          # mid-grey: no clipping at ±3σ for s ≤ 0.7
    for s in (0.2, 0.5):
        n = augment(grey, "noise", s, np.random.default_rng(1)).astype(np.float64) - 128
        assert abs(n.std() - 60 * s) < 0.02 * 60 * s and abs(n.mean()) < 0.5
        assert np.abs(n).max() <= np.rint(np.abs(_NORMAL_LEVELS).max() * 60 * s)
        assert abs((n < 0).mean() - (n > 0).mean()) < 0.01       # symmetric about 0
    edge = np.zeros((2, 32, 32, 3), np.uint8)              # saturation: never wraps around below 0
    assert augment(edge, "noise", 0.9, np.random.default_rng(2)).min() == 0


def test_clip_distance_is_the_mean_absolute_difference():
    g = np.random.default_rng(4)
    a, b = (g.integers(0, 256, size=(3, 7, 5, 3), dtype=np.uint8) for _ in range(2))
    ref = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0
    assert clip_distance(a, b) == ref and clip_distance(a, a) == 0.0
    assert clip_distance(np.zeros_like(a), np.full_like(a, 255)) == 1.0
