"""Media augmentation speed and memory. Prints ONE JSON line.

1. spatial augmentation (blur, crop+resize, colour jitter, noise) of real frames: a naive per-frame PIL/numpy
   loop vs the builders' batched tensor ops (one call per clip) — frames/s;
2. PaMi-VDPO video augmentation end to end (decode → augment → encode → store): a naive sequential
   PyAV + per-frame PIL loop vs `build_video_augment` (bounded thread pool, batched ops) — frames/s;
3. bounded memory: peak RSS of a streamed 1,000-clip `video_augment` build vs a 100-clip build, each in a
   fresh subprocess (a build that held clips in RAM would grow ~10× between the two).

Usage: python benchmarks/bench_media.py [--clips 1000] [--naive-clips 8]"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance, ImageFilter  # noqa: E402

CLIP = ROOT / "examples" / "data" / "video" / "carphone_pristine.mp4"


def naive_spatial(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """What a per-image script does: PIL per frame for each transform."""
    out = []
    h, w = frames.shape[1:3]
    side = (1.0 - 0.75 * s) ** 0.5
    ch, cw = round(h * side), round(w * side)
    for f in frames:
        im = Image.fromarray(f)
        im = im.filter(ImageFilter.GaussianBlur(0.5 + 4.5 * s))
        im = im.crop((0, 0, cw, ch)).resize((w, h), Image.Resampling.BILINEAR)
        im = ImageEnhance.Brightness(im).enhance(1 + 0.8 * s)
        im = ImageEnhance.Contrast(im).enhance(1 + 0.8 * s)
        im = ImageEnhance.Color(im).enhance(1 + 0.8 * s)
        a = np.asarray(im, dtype=np.float32) + rng.normal(0, 60 * s, (h, w, 3))
        out.append(np.clip(a, 0, 255).astype(np.uint8))
    return np.stack(out)


def batched_spatial(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    from builders.video import augment
    x = frames
    for name in ("blur", "crop", "color_jitter", "noise"):
        x = augment(x, name, s, rng)
    return x


def bench_spatial(frames: np.ndarray, reps: int) -> dict:
    rng = np.random.default_rng(0)
    res = {}
    for name, fn in (("naive_pil", naive_spatial), ("batched", batched_spatial)):
        fn(frames[:4], 0.5, rng)      # warm-up
        t = time.perf_counter()
        for _ in range(reps):
            fn(frames, 0.5, rng)
        res[name] = reps * len(frames) / (time.perf_counter() - t)
    return {"spatial_frames_per_s_naive": round(res["naive_pil"], 1),
            "spatial_frames_per_s_batched": round(res["batched"], 1),
            "spatial_speedup": round(res["batched"] / res["naive_pil"], 2)}


def naive_video(n_clips: int, strengths: list[float], out_dir: Path) -> float:
    """Sequential: decode with PyAV (no threading), per-frame PIL augment, encode each rejected clip."""
    import av
    frames_done = 0
    t = time.perf_counter()
    for i in range(n_clips):
        with av.open(str(CLIP)) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        for s in strengths:
            aug = naive_spatial(frames, s, np.random.default_rng(i))
            buf = io.BytesIO()
            with av.open(buf, mode="w", format="mp4") as oc:
                st = oc.add_stream("libx264", rate=30)
                st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
                for f in aug:
                    for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                        oc.mux(p)
                for p in st.encode():
                    oc.mux(p)
            (out_dir / f"naive_{i}_{s}.mp4").write_bytes(buf.getvalue())
            frames_done += len(frames)
    return frames_done / (time.perf_counter() - t)


def ours_video(n_clips: int, strengths: list[float], root: Path, threads: int) -> float:
    import polars as pl

    from builders.base import StepContext
    from builders.video import VideoAugmentConfig, build_video_augment
    df = pl.DataFrame({"prompt": ["q"] * n_clips, "video": [str(CLIP)] * n_clips, "response": ["a"] * n_clips})
    ctx = StepContext(base_dir=ROOT, catalog=SimpleNamespace(root=root), seed=0, progress=False)
    cfg = VideoAugmentConfig(augmentations=["blur", "crop", "color_jitter", "noise"], strengths=strengths,
                             threads=threads)
    t = time.perf_counter()
    built = build_video_augment(df.lazy(), cfg, ctx)
    n_frames = int(built.frame.collect()["frames"].sum())
    return n_frames / (time.perf_counter() - t)


def child_build(n_clips: int, root: str) -> None:
    """Subprocess body: a streamed build; prints its peak RSS (MiB) and seconds."""
    import polars as pl

    from builders.base import StepContext
    from builders.video import VideoAugmentConfig, build_video_augment
    df = pl.DataFrame({"prompt": ["q"] * n_clips, "video": [str(CLIP)] * n_clips, "response": ["a"] * n_clips})
    ctx = StepContext(base_dir=ROOT, catalog=SimpleNamespace(root=Path(root)), seed=0, progress=False)
    t = time.perf_counter()
    built = build_video_augment(df.lazy(), VideoAugmentConfig(augmentations=["blur", "noise", "crop"],
                                                              strengths=[0.5], max_frames=16, threads=2), ctx)
    rows = built.frame.collect().height
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--naive-clips", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        child_build(int(a.child[0]), a.child[1])
        return
    from builders.media import read_video
    frames, _ = read_video(CLIP)
    out = {"bench": "media", "clip": CLIP.name, "clip_frames": int(len(frames)),
           "frame_size": list(frames.shape[1:3]), "cpu_count": os.cpu_count()}
    out |= bench_spatial(frames, reps=3)
    strengths = [0.2, 0.5, 0.9]
    with tempfile.TemporaryDirectory() as d:
        out["video_frames_per_s_naive"] = round(naive_video(a.naive_clips, strengths, Path(d)), 1)
        out["video_frames_per_s_ours"] = round(ours_video(a.naive_clips, strengths, Path(d) / "cat", a.threads), 1)
    out["video_speedup"] = round(out["video_frames_per_s_ours"] / out["video_frames_per_s_naive"], 2)
    for n in (a.clips // 10, a.clips):
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run([sys.executable, __file__, "--child", str(n), d], capture_output=True, text=True,
                               check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            out[f"build_{n}_clips_peak_rss_mb"] = round(res["peak_rss_mb"], 1)
            out[f"build_{n}_clips_seconds"] = round(res["seconds"], 1)
            out[f"build_{n}_clips_rows"] = res["rows"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
