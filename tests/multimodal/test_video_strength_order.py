"""PaMi-VDPO stages are ordered close → far for every augmentation. Each augmentation's random directions
(crop window, jitter signs, noise, shuffled frames, cut position) are drawn once per clip and scaled by the
strength; where the content still decides (a temporal change or a zoom that lands no farther than a weaker
one), the builder skips that rejected clip and reports it, so the kept stages strictly rise in distance.
Checked through `build_video_augment` on several clips (a synthetic rotating colour wheel, the bundled
carphone and Big Buck Bunny clips) and seeds, and on the augmentation functions directly."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from builders.media import encode_video, read_video
from builders.video import AUGMENTATIONS, VideoAugmentConfig, augment, build_video_augment, clip_distance

STRENGTHS = [0.25, 0.5, 0.75, 1.0]


def colour_wheel(frames: int = 12, size: int = 48, turn: float = 0.04) -> np.ndarray:
    """A saturated hue wheel (hue = angle, value falls towards the centre) turning by `turn` of a circle
    per frame: every pixel colourful, smooth motion (under half a turn in all, so frames further apart in
    time differ more)."""
    y, x = np.mgrid[0:size, 0:size] - (size - 1) / 2
    ang, rad = np.arctan2(y, x), np.hypot(x, y) / (size / 2)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        h = (ang / (2 * np.pi) + t * turn) % 1.0
        rgb = np.stack([np.clip(np.abs(((h * 6 + k) % 6) - 3) - 1, 0, 1) for k in (0, 4, 2)], axis=-1)
        out[t] = np.rint(255 * rgb * np.clip(0.35 + rad, 0, 1)[..., None])
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory, data_dir) -> dict[str, str]:
    """Three short lossless clips on disk: colour wheel, carphone, Big Buck Bunny (scaled down to 64×36)."""
    import cv2
    d = tmp_path_factory.mktemp("clips")
    bunny, _ = read_video(data_dir / "video" / "bigbuckbunny.mp4", max_frames=24)
    bunny = np.stack([cv2.resize(f, (64, 36), interpolation=cv2.INTER_AREA) for f in bunny[::2]])
    car, _ = read_video(data_dir / "video" / "carphone_pristine.mp4", max_frames=12)
    out = {}
    for name, frames in (("wheel", colour_wheel()), ("carphone", car), ("bunny", bunny)):
        data, ext = encode_video(frames, 10.0, codec="ffv1")
        (d / f"{name}{ext}").write_bytes(data)
        out[name] = str(d / f"{name}{ext}")
    return out


SHARED_DRAWS_ONLY = ("blur", "color_jitter", "noise")   # no content can reverse their order


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_augmentation_rises_with_strength_through_the_builder(ctx, clips, seed):
    names = sorted(AUGMENTATIONS)
    df = pl.DataFrame({"prompt": ["q"] * len(clips), "video": list(clips.values()), "response": ["a"] * len(clips)})
    cfg = VideoAugmentConfig(augmentations=names, strengths=STRENGTHS, candidates_per_stage=len(names),
                             codec="ffv1", threads=2, seed=seed)
    built = build_video_augment(df.lazy(), cfg, ctx)
    out = built.frame.collect()
    skipped = built.info["not_farther_examples"]
    # every (clip, augmentation, strength) is either a pair or a reported skip; skips are the exception
    assert out.height + built.info["not_farther"] == len(clips) * len(names) * len(STRENGTHS)
    assert len(skipped) == built.info["not_farther"] <= 3
    assert all(e["aug_distance"] <= e["weaker_max"] and e["augmentation"] not in SHARED_DRAWS_ONLY
               for e in skipped), skipped
    clip_of = dict(zip(out.unique("video_chosen", maintain_order=True)["video_chosen"], clips, strict=True))
    for (chosen, aug), g in out.sort("strength").group_by(["video_chosen", "augmentation"], maintain_order=True):
        gone = sorted(e["strength"] for e in skipped if e["augmentation"] == aug and
                      list(clips)[e["row"]] == clip_of[chosen])
        assert sorted(g["strength"].to_list() + gone) == STRENGTHS
        assert g["stage"].to_list() == [STRENGTHS.index(x) for x in g["strength"]]
        d = g["aug_distance"].to_list()
        assert 0 < d[0] and all(a < b for a, b in zip(d, d[1:], strict=False)), (clip_of[chosen], aug, seed, d)


def test_the_issue_case_colour_wheel_jitter_is_ordered(ctx, clips):
    # the reported case: colour jitter on a colour wheel, strengths 0.25 … 1.0, nothing skipped, rising
    for seed in range(6):
        cfg = VideoAugmentConfig(augmentations=["color_jitter"], strengths=STRENGTHS, codec="ffv1", seed=seed)
        built = build_video_augment(pl.DataFrame({"prompt": ["q"], "video": [clips["wheel"]], "response": ["a"]})
                                    .lazy(), cfg, ctx)
        d = built.frame.collect()["aug_distance"].to_list()
        assert len(d) == 4 and all(a < b for a, b in zip(d, d[1:], strict=False)), (seed, d)
        assert built.info["not_farther"] == 0


@pytest.mark.parametrize("name", SHARED_DRAWS_ONLY)
def test_shared_directions_rise_with_strength_on_any_clip(name, carphone):
    # the same generator state at every strength (what the builder passes): same blur, same jitter signs,
    # same noise bytes, only scaled — strictly rising on colour wheels, carphone and pure noise
    noise = np.random.default_rng(0).integers(0, 256, size=(6, 24, 32, 3), dtype=np.uint8)
    for clip in (colour_wheel(12), colour_wheel(20, turn=0.02), carphone[0][:8], noise):
        for seed in range(6):
            d = [clip_distance(clip, augment(clip, name, s, np.random.default_rng(seed))) for s in STRENGTHS]
            assert 0 < d[0] and all(a < b for a, b in zip(d, d[1:], strict=False)), (clip.shape, seed, d)


@pytest.mark.parametrize("name", ["shuffle", "reverse"])
def test_a_stronger_reordering_moves_a_superset_of_frames(name):
    ids = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)   # frame i = i
    for seed in range(10):
        moved = [np.flatnonzero(augment(ids, name, s, np.random.default_rng(seed))[:, 0, 0, 0] != np.arange(20))
                 for s in STRENGTHS]
        # shuffle: the moved frames; reverse: the reversed window (its middle frame stays when its length is odd)
        sets = [set(m.tolist()) if name == "shuffle" else set(range(m.min(), m.max() + 1)) for m in moved]
        assert all(a < b for a, b in zip(sets, sets[1:], strict=False)), (seed, sets)
