"""Content-addressed media store, lazy decoding and accounted drops for unreadable media."""
from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from builders.media import MediaConfig, MediaError, MediaStore, build_media, encode_video, load_image, read_video


def test_put_file_is_content_addressed(ctx, data_dir, tmp_path):
    store = MediaStore.for_context(ctx)
    src = data_dir / "images" / "horse.png"
    uri = store.put_file(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert uri == f"media/{digest}.png"
    assert store.resolve(uri) == tmp_path / "catalog" / "media" / f"{digest}.png"
    assert store.resolve(uri).read_bytes() == src.read_bytes()
    copy = tmp_path / "renamed.png"
    copy.write_bytes(src.read_bytes())
    assert store.put_file(copy) == uri                  # same bytes, same URI: stored once
    assert len(list((tmp_path / "catalog" / "media").iterdir())) == 1


def test_load_image_converts_modes(data_dir):
    for name in ("camera.png", "horse.png", "astronaut.png"):     # L, RGBA, RGB in the sample data
        assert load_image(data_dir / "images" / name).mode == "RGB"


def test_media_step_stores_and_drops_corrupt_file_by_name(ctx, captions, data_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes((data_dir / "images" / "coins.png").read_bytes()[:300])   # truncated PNG
    df = captions.select(prompt=pl.col("caption_short"), image=pl.col("file"))
    df = pl.concat([df, pl.DataFrame({"prompt": ["broken"], "image": [str(bad)]})])
    built = build_media(df.lazy(), MediaConfig(columns=["image"]), ctx)
    out = built.frame.collect()
    assert built.rows_in == 13 and built.rows_kept == 12 and built.drops == {"unreadable media": 1}
    assert built.rows_in == built.rows_kept + sum(built.drops.values())
    (drop,) = built.info["unreadable"]
    assert drop["file"] == str(bad) and drop["row"] == 12 and drop["column"] == "image"
    assert "broken.png" in built.summary
    assert all(u.startswith("media/") for u in out["image"])
    store = MediaStore.for_context(ctx)
    assert all(store.resolve(u).is_file() for u in out["image"])


def test_read_video_names_unreadable_file(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with pytest.raises(MediaError, match="clip.mp4"):
        read_video(bad)
    with pytest.raises(MediaError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")


def test_ffv1_round_trip_is_lossless(carphone, tmp_path):
    frames = carphone[0][:6]
    data, ext = encode_video(frames, 30.0, codec="ffv1")
    p = tmp_path / f"x{ext}"
    p.write_bytes(data)
    back, fps = read_video(p)
    assert np.array_equal(back, frames) and abs(fps - 30.0) < 1e-6


def test_bundled_multimodal_recipes_parse():
    from pathlib import Path

    from prefdata.recipe import load_recipe
    recipes = sorted((Path(__file__).resolve().parents[2] / "examples" / "recipes").glob("mm_*.yaml"))
    recipes = [p for p in recipes if "vlm:" not in p.read_text()]   # training recipes are not build recipes
    assert len(recipes) == 4
    for p in recipes:
        r = load_recipe(p)
        assert r.source_path.is_file() and r.kinds[-1] == "pairs"
