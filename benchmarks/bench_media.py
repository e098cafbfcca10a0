"""Media augmentation speed and memory. Prints ONE JSON line.

1. spatial augmentation (blur, crop+resize, colour jitter, noise) of real frames: a naive per-frame PIL/numpy
   loop vs the builders' uint8 OpenCV kernels (`augment`, one call per op and clip) — frames/s;
2. PaMi-VDPO video augmentation end to end (decode → augment → encode → store): a naive sequential
   PyAV + per-frame PIL loop vs `build_video_augment` (bounded thread pool, batched ops) — frames/s;
3. bounded memory: peak RSS of a streamed 1,000-clip `video_augment` build vs a 100-clip build, each in a
   fresh subprocess (a build that held clips in RAM would grow ~10× between the two);
4. MIA-DPO image build: a naive per-sample PIL script (open every image a sample shows, compose the
   collage / inset, save it with Pillow's default PNG settings, one sample after another) vs `build_mia_dpo`
   (each source decoded once, resized cells cached, threads, PNG zlib level 1) on a pool of distinct real
   images — samples/s. Also `build_mia_dpo` at zlib level 6, whose files are byte-identical to the naive
   script's (checked), to separate the encoder setting from caching + threads; the level-1 files are
   checked pixel-identical.

Usage: python benchmarks/bench_media.py [--clips 1000] [--naive-clips 6] [--mia-rows 96] [--only spatial,video,memory,mia]"""
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
IMAGES = ROOT / "examples" / "data" / "images"


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
    """The two loops alternate, `reps` times, and each reports its median: on a shared box a burst of
    load then hits both sides alike instead of whichever happened to run during it."""
    rng = np.random.default_rng(0)
    res: dict[str, list[float]] = {"naive_pil": [], "batched": []}
    for fn in (naive_spatial, batched_spatial):
        fn(frames[:4], 0.5, rng)      # warm-up
    for _ in range(reps):
        for name, fn in (("naive_pil", naive_spatial), ("batched", batched_spatial)):
            t = time.perf_counter()
            fn(frames, 0.5, rng)
            res[name].append(len(frames) / (time.perf_counter() - t))
    naive, ours = float(np.median(res["naive_pil"])), float(np.median(res["batched"]))
    return {"spatial_frames_per_s_naive": round(naive, 1), "spatial_frames_per_s_batched": round(ours, 1),
            "spatial_speedup": round(ours / naive, 2)}


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


def make_image_pool(n: int, d: Path):
    """n distinct source images from the 12 bundled real ones (mirrored and progressively cropped copies,
    saved as PNG), each with its own caption; returns the rows table."""
    import polars as pl
    from PIL import ImageOps
    caps = [json.loads(line) for line in (IMAGES / "captions.jsonl").read_text().splitlines() if line.strip()]
    rows = []
    for k in range(n):
        c, v = caps[k % len(caps)], k // len(caps)
        with Image.open(IMAGES.parent / c["file"]) as im:
            im = im.convert("RGB")
        im = ImageOps.mirror(im) if v % 2 else im
        m = 4 * (v // 2)
        name = f"src_{k:05d}.png"      # relative to the pool folder: the same URIs (so the same plans) every run
        im.crop((m, m, im.width - m, im.height - m)).save(d / name, compress_level=1)
        rows.append({"image": name, "response": f"{c['caption_short']} View {v}."})
    return pl.DataFrame(rows)


def naive_mia(df, cfg, seed: int, base: Path, root: Path) -> tuple[float, list[list[str]]]:
    """The per-sample script: no readability pass, no cache, no threads. Uses the builder's planner so
    both sides draw exactly the same samples."""
    from builders.images import compose_grid, compose_inset, plan_samples
    from builders.media import MediaStore, load_image
    store = MediaStore(root, base)
    uris, answers = df["image"].to_list(), df["response"].to_list()
    t = time.perf_counter()
    plans = plan_samples(uris, answers, cfg, seed, lambda u: None, store.resolve).plans
    out = []
    for p in plans:
        paths = [store.resolve(uris[j]) for j in p.images]
        imgs = [load_image(q) for q in paths]
        if p.mode == "sequence":
            out.append([store.put_file(q) for q in paths])
            continue
        canvas = compose_grid(imgs, *p.layout, cfg)[0] if p.mode == "grid" else \
            compose_inset(imgs[0], imgs[1], cfg, p.corner)[0]
        out.append([store.put_image(canvas)])          # Pillow's default PNG settings
    return len(plans) / (time.perf_counter() - t), out


def ours_mia(df, cfg, seed: int, base: Path, root: Path) -> tuple[float, list[list[str]]]:
    from builders.base import StepContext
    from builders.images import build_mia_dpo
    ctx = StepContext(base_dir=base, catalog=SimpleNamespace(root=root), seed=seed, progress=False)
    t = time.perf_counter()
    built = build_mia_dpo(df.lazy(), cfg, ctx)
    rows = built.frame.collect()
    return rows.height / (time.perf_counter() - t), rows["images"].to_list()


def bench_mia(n_rows: int, threads: int) -> dict:
    from builders.images import MiaDpoConfig
    from builders.media import load_image
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        df = make_image_pool(n_rows, d)
        cfg = MiaDpoConfig(image_column="image", answer_column="response", question_column=None, per_row="each",
                           threads=threads)
        ours_mia(df.head(12), cfg, 0, d, d / "warmup")       # imports and first-call costs out of the timings
        naive, naive_out = naive_mia(df, cfg, 0, d, d / "naive")
        ours6, ours6_out = ours_mia(df, cfg.model_copy(update={"png_compress_level": 6}), 0, d, d / "ours6")
        ours, ours_out = ours_mia(df, cfg, 0, d, d / "ours")
        if ours6_out != naive_out:
            raise SystemExit("mia: build at zlib level 6 wrote different files than the naive script")
        for a, b in zip(naive_out, ours_out, strict=True):
            for ua, ub in zip(a, b, strict=True):
                if ua != ub and np.asarray(load_image(d / "naive" / ua)).tobytes() != \
                        np.asarray(load_image(d / "ours" / ub)).tobytes():
                    raise SystemExit(f"mia: {ub} differs in pixels from the naive script's {ua}")
        mb = lambda sub: sum(f.stat().st_size for f in (d / sub / "media").iterdir()) / 2**20  # noqa: E731
        return {"mia_rows": n_rows, "mia_samples": len(naive_out),
                "mia_samples_per_s_naive": round(naive, 2), "mia_samples_per_s_ours": round(ours, 2),
                "mia_speedup": round(ours / naive, 2),
                "mia_samples_per_s_ours_png6": round(ours6, 2), "mia_speedup_png6": round(ours6 / naive, 2),
                "mia_media_mb_naive": round(mb("naive"), 1), "mia_media_mb_ours": round(mb("ours"), 1)}


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
    ap.add_argument("--mia-rows", type=int, default=96)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--only", default="spatial,video,memory,mia")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        child_build(int(a.child[0]), a.child[1])
        return
    parts = set(a.only.split(","))
    from builders.media import read_video
    frames, _ = read_video(CLIP)
    out = {"bench": "media", "clip": CLIP.name, "clip_frames": int(len(frames)),
           "frame_size": list(frames.shape[1:3]), "cpu_count": os.cpu_count(), "threads": a.threads,
           "load_avg_1m": round(os.getloadavg()[0], 2)}
    if "spatial" in parts:
        out |= bench_spatial(frames, reps=7)
    if "video" in parts:
        strengths = [0.2, 0.5, 0.9]
        with tempfile.TemporaryDirectory() as d:
            out["video_frames_per_s_naive"] = round(naive_video(a.naive_clips, strengths, Path(d)), 1)
            out["video_frames_per_s_ours"] = round(ours_video(a.naive_clips, strengths, Path(d) / "cat", a.threads), 1)
        out["video_speedup"] = round(out["video_frames_per_s_ours"] / out["video_frames_per_s_naive"], 2)
    if "mia" in parts:
        out |= bench_mia(a.mia_rows, a.threads)
    for n in (a.clips // 10, a.clips) if "memory" in parts else ():
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run([sys.executable, __file__, "--child", str(n), d], capture_output=True, text=True,
                               check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            out[f"build_{n}_clips_peak_rss_mb"] = round(res["peak_rss_mb"], 1)
            out[f"build_{n}_clips_seconds"] = round(res["seconds"], 1)
            out[f"build_{n}_clips_rows"] = res["rows"]
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
