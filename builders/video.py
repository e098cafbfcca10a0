"""Video preference builders: PaMi-VDPO augmented rejections and DenseDPO per-segment labels.

PaMi-VDPO (methods.md §5.6, §6(h)): the rejected input is an augmented copy of the chosen clip with the same
response text. Temporal (shuffle, reverse, drop, speed, repeat) and spatial (crop, blur, noise, color jitter)
transforms run at graded strengths; each strength is a curriculum stage, ordered close → far (stage 0 =
mildest), because early training should see rejections that are still semantically relevant.

DenseDPO (§5.5, §6(g)): an aligned clip pair is cut into fixed-length segments and each segment gets a label
+1 (chosen better), −1 (worse) or 0 (tie) from a per-frame scorer averaged over the segment: PSNR or SSIM
against a reference clip, a no-reference sharpness score, or CLIP image-text similarity to a caption.

Spatial augmentations (crop, blur, noise, colour jitter) run OpenCV's uint8 kernels frame by frame into one
preallocated output (no float copy of the clip); temporal ones index the frame array. torch is used only by the
DenseDPO scorers (the SSIM Gaussian window, the sharpness Laplacian). Clips are processed by a bounded thread
pool and only URIs are kept, so a build over thousands of clips holds a few clips in memory at a time."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from statistics import NormalDist
from typing import ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from builders.base import Built, StepConfig, StepContext
from builders.media import MediaDrop, MediaError, MediaStore, drop_summary, encode_video, read_video
from builders.segment_scorers import ClipFrameScorer, ClipFrameSpec
from prefdata.errors import IngestError, SchemaError
from prefdata.schema import conform, validate

Aug = Literal["shuffle", "reverse", "drop", "speed", "repeat", "crop", "blur", "noise", "color_jitter"]
TEMPORAL = ("shuffle", "reverse", "drop", "speed", "repeat")
SPATIAL = ("crop", "blur", "noise", "color_jitter")


# ---------------------------------------------------------------- augmentations: uint8 [T,H,W,3] array -> same shape

def _temporal_index(idx: np.ndarray, clip: np.ndarray) -> np.ndarray:
    return clip[idx.astype(np.int64)]


def aug_shuffle(clip: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Permute round(s·T) randomly chosen frames among their own positions (a derangement of them). The
    draws do not depend on s: one random priority per position picks the first k positions (a stronger
    shuffle moves a superset of frames) and one random key per position orders the cycle."""
    t = clip.shape[0]
    k = min(t, max(2, round(s * t)))
    priority, key = rng.permutation(t), rng.random(t)
    pos = np.sort(priority[:k])
    order = np.argsort(key[pos], kind="stable")
    idx = np.arange(t)
    # one k-cycle through the chosen positions: every chosen frame moves (a derangement)
    idx[pos[order]] = pos[np.roll(order, -1)]
    return _temporal_index(idx, clip)


def aug_reverse(clip: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Reverse a contiguous sub-clip of round(s·T) frames (s = 1: the whole clip), placed at a relative
    position u drawn independently of s (so a stronger reversal's window contains a weaker one's)."""
    t = clip.shape[0]
    k = min(t, max(2, round(s * t)))
    start = round(rng.random() * (t - k))
    idx = np.arange(t)
    idx[start:start + k] = idx[start:start + k][::-1]
    return _temporal_index(idx, clip)


def aug_drop(clip: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Cut a contiguous sub-clip of round(s·T/2) frames and stretch the rest back to T frames (length kept,
    so chosen and rejected stay the same size for batching). The cut's relative position is drawn
    independently of s."""
    t = clip.shape[0]
    k = min(t - 1, max(1, round(s * t / 2)))
    start = round(rng.random() * (t - k))
    keep = np.concatenate([np.arange(start), np.arange(start + k, t)])
    idx = keep[np.floor(np.linspace(0, len(keep) - 1e-9, t)).astype(int)]
    return _temporal_index(idx, clip)


def aug_speed(clip: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Play (1 + 3s)× faster and hold the last frame (length kept; looping instead would make a faster
    clip land closer to the original at some speeds, breaking the strength order)."""
    t = clip.shape[0]
    f = 1.0 + 3.0 * s
    return _temporal_index(np.minimum(np.floor(np.arange(t) * f).astype(int), t - 1), clip)


def aug_repeat(clip: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Slow motion by frame repetition: each frame shown (1 + 3s) times, clip length kept."""
    t = clip.shape[0]
    f = 1.0 + 3.0 * s
    return _temporal_index(np.minimum(np.floor(np.arange(t) / f).astype(int), t - 1), clip)


# Spatial augmentations run OpenCV's uint8 kernels frame by frame into one preallocated output: no float copy
# of the clip is ever made. Measured on 120 carphone frames (176×144, 2 cores) the batched float-torch versions
# were 0.52× a per-frame PIL loop; these are several times faster than it (benchmarks/bench_media.py).

def _import_cv2():
    try:
        import cv2
    except ImportError as e:   # pragma: no cover - depends on the install
        raise IngestError("cv2", "video augmentations need OpenCV: install the `video` extra "
                          "(pip install prefdata[video], which brings opencv-python-headless)") from e
    return cv2


def aug_crop(clip: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Random crop keeping (1 − 0.75s) of the area (same window every frame), resized back to H×W (bilinear,
    half-pixel centres). The window's relative position (u_y, u_x) is drawn independently of s, so a
    stronger crop's window lies inside a weaker one's."""
    cv2 = _import_cv2()
    _, h, w, _ = clip.shape
    side = math.sqrt(1.0 - 0.75 * s)
    ch, cw = max(2, round(h * side)), max(2, round(w * side))
    uy, ux = rng.random(2)
    y0, x0 = round(uy * (h - ch)), round(ux * (w - cw))
    out = np.empty_like(clip)
    for i, f in enumerate(clip):
        cv2.resize(f[y0:y0 + ch, x0:x0 + cw], (w, h), dst=out[i], interpolation=cv2.INTER_LINEAR)
    return out


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, radius ceil(3σ) (≥ 1)."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-(np.arange(-r, r + 1, dtype=np.float64) ** 2) / (2 * sigma * sigma))
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur on a float [N,C,H,W] tensor (used by the SSIM scorer), two conv calls."""
    k = torch.from_numpy(gaussian_kernel(sigma)).to(x.dtype)
    r = (len(k) - 1) // 2
    c = x.shape[1]
    pad_h, pad_w = min(r, x.shape[2] - 1), min(r, x.shape[3] - 1)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w == r else F.pad(x, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect") if pad_h == r else F.pad(x, (0, 0, r, r), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def aug_blur(clip: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, sigma = 0.5 + 4.5s pixels, radius ceil(3σ), mirrored borders (separable, per frame)."""
    cv2 = _import_cv2()
    k = gaussian_kernel(0.5 + 4.5 * s)
    out = np.empty_like(clip)
    for i, f in enumerate(clip):
        cv2.sepFilter2D(f, -1, k, k, dst=out[i], borderType=cv2.BORDER_REFLECT_101)
    return out


def _unit_normal_levels(n: int = 256) -> np.ndarray:
    """n equiprobable quantiles of N(0, 1), rescaled to unit variance: noise drawn by indexing them with
    uniform random bytes is a Gaussian quantised to 256 levels (tails cut at ±2.9σ)."""
    q = np.array([NormalDist().inv_cdf((k + 0.5) / n) for k in range(n)])
    return q / np.sqrt((q ** 2).mean())


_NORMAL_LEVELS = _unit_normal_levels()


def aug_noise(clip: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, std = 60s grey levels, from the row's generator (seeded). One uniform byte per
    sample picks one of 256 equiprobable Gaussian levels (a table lookup instead of a float Gaussian draw,
    ~10× cheaper); the positive and negative parts are added and subtracted with uint8 saturation, which
    equals clamp(x + noise) because each sample has only one of the two parts."""
    cv2 = _import_cv2()
    levels = np.rint(_NORMAL_LEVELS * 60.0 * s)
    plus = np.clip(levels, 0, 255).astype(np.uint8)
    minus = np.clip(-levels, 0, 255).astype(np.uint8)
    t, h, w, c = clip.shape
    rows = clip.reshape(t, h, w * c)     # single-channel rows: OpenCV's fastest element-wise layout
    out = np.empty_like(rows)
    part = np.empty((h, w * c), np.uint8)
    for i in range(t):                   # frame by frame: the temporaries stay in cache on large frames
        u = rng.integers(0, 256, size=(h, w * c), dtype=np.uint8)
        cv2.add(rows[i], cv2.LUT(u, plus, dst=part), dst=out[i])
        cv2.subtract(out[i], cv2.LUT(u, minus, dst=part), dst=out[i])
    return out.reshape(clip.shape)


def color_jitter_matrix(b: float, c: float, sat: float) -> np.ndarray:
    """3×3 RGB matrix of brightness b, contrast c (about the frame mean, added separately) and saturation sat
    (towards ITU-R 601 luma): x → sat·(b·c·x) + (1 − sat)·luma(b·c·x)."""
    luma = np.array([0.299, 0.587, 0.114])
    return b * c * (sat * np.eye(3) + (1.0 - sat) * np.outer(np.ones(3), luma))


def aug_color_jitter(clip: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by 1 ± 0.8s (sign drawn per factor). Per frame the three
    are one affine colour map (3×3 matrix + the mean-dependent offset b·(1 − c)·mean, which saturation keeps
    since the luma weights sum to 1), applied by OpenCV in one pass with a single rounding."""
    cv2 = _import_cv2()
    b, c, sat = (1.0 + 0.8 * s * (1 if rng.random() < 0.5 else -1) for _ in range(3))
    m = np.zeros((3, 4), np.float64)
    m[:, :3] = color_jitter_matrix(b, c, sat)
    out = np.empty_like(clip)
    for i, f in enumerate(clip):
        m[:, 3] = b * (1.0 - c) * (sum(cv2.mean(f)[:3]) / 3.0)
        cv2.transform(f, m, dst=out[i])
    return out


AUGMENTATIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "shuffle": aug_shuffle, "reverse": aug_reverse, "drop": aug_drop, "speed": aug_speed, "repeat": aug_repeat,
    "crop": aug_crop, "blur": aug_blur, "noise": aug_noise, "color_jitter": aug_color_jitter,
}


def augment(frames: np.ndarray, name: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one augmentation to a uint8 [T,H,W,3] clip; returns a new array of the same shape and dtype."""
    return AUGMENTATIONS[name](np.ascontiguousarray(frames), strength, rng)


def clip_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference in [0, 1]: how far an augmented clip moved from the original. The
    uint8 |a − b| and an exact integer sum (no int16 copies of both clips) give the same value as a float
    mean of the differences, ~3× faster on a 720p clip."""
    cv2 = _import_cv2()
    d = cv2.absdiff(a.reshape(-1, a.shape[-2] * a.shape[-1]), b.reshape(-1, b.shape[-2] * b.shape[-1]))
    return float(d.sum(dtype=np.uint64) / d.size / 255.0)


def _rng(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:15], 16)])


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _bounded_map(fn, items, threads: int) -> Iterator:
    """Ordered map with at most 2×threads jobs in flight (bounded memory over a long input)."""
    with ThreadPoolExecutor(threads) as ex:
        pending = []
        for it in items:
            pending.append(ex.submit(fn, it))
            if len(pending) >= 2 * threads:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()


# ---------------------------------------------------------------- PaMi-VDPO step

class VideoAugmentConfig(StepConfig, frozen=True):
    output_kind: ClassVar[str] = "pairs"
    video_column: str = "video"
    prompt_column: str = "prompt"
    response_column: str = "response"       # the fixed response y shared by chosen and rejected
    augmentations: list[Aug] = Field(default_factory=lambda: ["shuffle", "reverse", "drop", "speed",
                                                              "crop", "blur", "noise", "color_jitter"])
    strengths: list[float] = Field(default_factory=lambda: [0.2, 0.5, 0.9])   # stage k = k-th smallest
    candidates_per_stage: int = Field(1, ge=1)   # distinct augmentations drawn per stage and clip
    max_frames: int | None = Field(None, ge=2)   # decode at most this many frames per clip
    codec: Literal["libx264", "ffv1", "mpeg4"] = "libx264"
    crf: int = Field(18, ge=0, le=51)
    threads: int = Field(4, ge=1)
    seed: int | None = None

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v):
        if not v or any(not 0.0 < s <= 1.0 for s in v):
            raise ValueError("strengths must be a non-empty list of values in (0, 1]")
        return sorted(v)  # close → far


def build_video_augment(frame: pl.LazyFrame, cfg: VideoAugmentConfig, ctx: StepContext) -> Built:
    df = frame.collect()
    for c in (cfg.video_column, cfg.prompt_column, cfg.response_column):
        if c not in df.columns:
            raise SchemaError(f"video_augment: input has no column {c!r} (have {df.columns})", column=c)
    if cfg.candidates_per_stage > len(cfg.augmentations):
        raise SchemaError(f"video_augment: candidates_per_stage {cfg.candidates_per_stage} exceeds the "
                          f"{len(cfg.augmentations)} augmentations listed")
    seed = ctx.seed if cfg.seed is None else cfg.seed
    store = MediaStore.for_context(ctx)
    videos = df.get_column(cfg.video_column).to_list()
    prompts = df.get_column(cfg.prompt_column).to_list()
    responses = df.get_column(cfg.response_column).to_list()

    def job(i: int) -> list[dict] | MediaDrop | str:
        if videos[i] is None or prompts[i] is None or responses[i] is None:
            return "missing video, prompt or response"
        path = store.resolve(videos[i])
        try:
            frames, fps = read_video(path, row=i, max_frames=cfg.max_frames)
        except MediaError as e:
            return MediaDrop(i, cfg.video_column, str(path), str(e))
        # the stored chosen clip is the exact decoded frames we augmented, so both sides share codec and length
        data, ext = encode_video(frames, fps, codec=cfg.codec, crf=cfg.crf)
        chosen_uri = store.put_bytes(data, ext)
        rng = _rng(seed, videos[i], str(i))
        dist: dict[tuple[str, int], float] = {}      # (augmentation, stage) -> distance to the chosen clip

        def augmented(name: str, stage: int) -> np.ndarray:
            # one generator per clip and augmentation, restarted at every strength: the same random
            # directions (crop window, jitter signs, noise, shuffled frames) scaled by the strength
            aug = augment(frames, name, cfg.strengths[stage], _rng(seed, videos[i], str(i), name))
            dist[name, stage] = clip_distance(frames, aug)
            return aug

        out: list[dict] = []
        for stage, s in enumerate(cfg.strengths):
            picks = rng.choice(len(cfg.augmentations), size=cfg.candidates_per_stage, replace=False)
            for a in sorted(picks.tolist()):
                name = cfg.augmentations[a]
                aug = augmented(name, stage)
                # close → far is checked, not assumed: how far a temporal or crop augmentation lands depends
                # on the content (a clip that comes back to an earlier frame, a zoom into a flat region).
                # A rejected clip no farther than the chosen clip or than a weaker strength of the same
                # augmentation is skipped and reported, so the kept stages strictly rise in distance.
                for j in range(stage):
                    if (name, j) not in dist:       # a weaker strength not drawn for this clip: its distance only
                        augmented(name, j)
                weaker = max([0.0, *(dist[name, j] for j in range(stage))])
                if dist[name, stage] <= weaker:
                    out.append({"row": i, "skipped": True, "augmentation": name, "strength": s,
                                "aug_distance": dist[name, stage], "weaker_max": weaker})
                    continue
                data, ext = encode_video(aug, fps, codec=cfg.codec, crf=cfg.crf)
                out.append({"row": i, "video_chosen": chosen_uri, "video_rejected": store.put_bytes(data, ext),
                            "augmentation": name, "strength": s, "stage": stage,
                            "aug_distance": dist[name, stage], "frames": int(frames.shape[0])})
        return out

    rows, bad, drops, kept, not_farther = [], [], {}, 0, []
    for res in _bounded_map(job, range(df.height), cfg.threads):
        if isinstance(res, MediaDrop):
            bad.append(res)
            drops["unreadable media"] = drops.get("unreadable media", 0) + 1
        elif isinstance(res, str):
            drops[res] = drops.get(res, 0) + 1
        else:
            kept += 1
            rows.extend(r for r in res if not r.get("skipped"))
            not_farther.extend({k: r[k] for k in ("row", "augmentation", "strength", "aug_distance", "weaker_max")}
                               for r in res if r.get("skipped"))
    n = len(rows)
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    prompt = [prompts[r["row"]] for r in rows]
    resp = [responses[r["row"]] for r in rows]
    table = conform(pa.table({
        "prompt_id": pa.array([_sha(p + "\x00" + v) for p, v in zip(prompt, col("video_chosen"), strict=True)], pa.string()),
        "prompt": pa.array(prompt, pa.string()), "chosen": pa.array(resp, pa.string()),
        "rejected": pa.array(resp, pa.string()),
        "chosen_id": pa.array([_sha(v + "\x00" + y) for v, y in zip(col("video_chosen"), resp, strict=True)], pa.string()),
        "rejected_id": pa.array([_sha(v + "\x00" + y) for v, y in zip(col("video_rejected"), resp, strict=True)], pa.string()),
        "score_chosen": pa.nulls(n, pa.float64()), "score_rejected": pa.nulls(n, pa.float64()),
        "margin": pa.nulls(n, pa.float64()), "weight": pa.array([1.0] * n, pa.float64()),
        "stage": pa.array(col("stage"), pa.int32()),
        "strategy": pa.array([f"pami_vdpo:{a}" for a in col("augmentation")], pa.string()),
        "video_chosen": pa.array(col("video_chosen"), pa.string()),
        "video_rejected": pa.array(col("video_rejected"), pa.string()),
        "augmentation": pa.array(col("augmentation"), pa.string()),
        "strength": pa.array(col("strength"), pa.float64()),
        "aug_distance": pa.array(col("aug_distance"), pa.float64()),
        "frames": pa.array(col("frames"), pa.int32()),
    }), "pairs")
    validate(table, "pairs")
    per_stage = {k: sum(r["stage"] == k for r in rows) for k in range(len(cfg.strengths))}
    summary = f"{n} augmented video pairs from {kept} clips · stages " + ", ".join(
        f"{k} (s={s:g}): {per_stage[k]}" for k, s in enumerate(cfg.strengths))
    if not_farther:
        summary += f" · {len(not_farther)} augmented clip(s) skipped: not farther than a weaker strength"
    if bad:
        summary += f" · {drop_summary(bad)}"
    return Built(pl.from_arrow(table).lazy(), "pairs", drops=drops, rows_in=df.height, rows_kept=kept,
                 info={"per_stage": per_stage, "strengths": list(cfg.strengths), "seed": seed,
                       "not_farther": len(not_farther), "not_farther_examples": not_farther[:20],
                       "unreadable": [d.as_dict() for d in bad]}, summary=summary)


# ---------------------------------------------------------------- DenseDPO per-segment labels

def psnr_per_frame(x: np.ndarray, ref: np.ndarray, cap: float = 100.0) -> np.ndarray:
    """PSNR in dB per frame; identical frames get `cap` instead of +inf (finite, orderable)."""
    mse = ((x.astype(np.float64) - ref.astype(np.float64)) ** 2).reshape(len(x), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        p = 10.0 * np.log10(255.0 ** 2 / mse)
    return np.minimum(p, cap)


def _luma(x: np.ndarray) -> torch.Tensor:                 # [T,H,W,3] uint8 -> [T,1,H,W] float in [0,255]
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    return (0.299 * t[..., 0] + 0.587 * t[..., 1] + 0.114 * t[..., 2]).unsqueeze(1)


def ssim_per_frame(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """SSIM on luma (Gaussian window σ=1.5, K1=0.01, K2=0.03), all frames at once."""
    a, b = _luma(x), _luma(ref)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda z: gaussian_blur(z, 1.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    va = blur(a * a) - mu_a ** 2
    vb = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return m.mean(dim=(1, 2, 3)).double().numpy()


def sharpness_per_frame(x: np.ndarray) -> np.ndarray:
    """No-reference sharpness: variance of the Laplacian of luma (compression and blur lower it)."""
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    r = F.conv2d(_luma(x), lap)
    return r.var(dim=(1, 2, 3)).double().numpy()


def segment_bounds(n_frames: int, seg: int) -> list[tuple[int, int]]:
    """Fixed-length segments [start, end); a short remainder joins the last segment (no sliver segments)."""
    n = max(1, n_frames // seg)
    bounds = [(k * seg, (k + 1) * seg) for k in range(n)]
    bounds[-1] = (bounds[-1][0], n_frames)
    return bounds


def segment_labels(score_a: np.ndarray, score_b: np.ndarray, bounds: list[tuple[int, int]],
                   tie: float) -> tuple[list[int], np.ndarray, np.ndarray]:
    """+1 where A's segment mean beats B's by more than `tie`, −1 where B wins, 0 otherwise."""
    ma = np.array([score_a[s:e].mean() for s, e in bounds])
    mb = np.array([score_b[s:e].mean() for s, e in bounds])
    d = ma - mb
    return [int(v) for v in np.where(d > tie, 1, np.where(d < -tie, -1, 0))], ma, mb


class DenseSegmentsConfig(StepConfig, frozen=True):
    output_kind: ClassVar[str] = "pairs"
    video_a_column: str = "video_chosen"
    video_b_column: str = "video_rejected"
    reference_column: str | None = None           # needed by psnr / ssim
    caption_column: str | None = None             # needed by clip
    segment_frames: int | None = Field(None, ge=1)
    segment_seconds: float | None = Field(None, gt=0)
    scorer: Literal["psnr", "ssim", "sharpness", "clip"] = "psnr"
    tie_threshold: float | None = None            # in scorer units; default per scorer (see _TIE)
    psnr_cap: float = 100.0
    clip: ClipFrameSpec | None = None             # the CLIP model for scorer clip (local weights only)
    max_frames: int | None = Field(None, ge=2)
    threads: int = Field(2, ge=1)


_TIE = {"psnr": 0.5, "ssim": 0.005, "sharpness": 0.05, "clip": 0.005}   # sharpness: relative (fraction)


def build_dense_segments(frame: pl.LazyFrame, cfg: DenseSegmentsConfig, ctx: StepContext) -> Built:
    df = frame.collect()
    need = [cfg.video_a_column, cfg.video_b_column, "prompt"]
    if cfg.scorer in ("psnr", "ssim"):
        if not cfg.reference_column:
            raise SchemaError(f"dense_segments: scorer {cfg.scorer!r} needs reference_column (the ground-truth clip)")
        need.append(cfg.reference_column)
    if cfg.scorer == "clip":
        if not cfg.caption_column:
            raise SchemaError("dense_segments: scorer 'clip' needs caption_column")
        if cfg.clip is None:
            raise SchemaError("dense_segments: scorer 'clip' needs a `clip` section (family, arch, path)")
        need.append(cfg.caption_column)
    for c in need:
        if c not in df.columns:
            raise SchemaError(f"dense_segments: input has no column {c!r} (have {df.columns})", column=c)
    if (cfg.segment_frames is None) == (cfg.segment_seconds is None):
        raise SchemaError("dense_segments: set exactly one of segment_frames or segment_seconds")
    store = MediaStore.for_context(ctx)
    tie = _TIE[cfg.scorer] if cfg.tie_threshold is None else cfg.tie_threshold
    clip = ClipFrameScorer(cfg.clip, ctx) if cfg.scorer == "clip" else None
    cols = {c: df.get_column(c).to_list() for c in need}

    def load(col: str, i: int):
        uri = cols[col][i]
        if uri is None:
            raise MediaError(f"row {i}", f"column {col!r} is null", row=i)
        return read_video(store.resolve(uri), row=i, max_frames=cfg.max_frames)

    def score(frames: np.ndarray, ref: np.ndarray | None, i: int) -> np.ndarray:
        if cfg.scorer == "psnr":
            return psnr_per_frame(frames, ref, cfg.psnr_cap)
        if cfg.scorer == "ssim":
            return ssim_per_frame(frames, ref)
        if cfg.scorer == "sharpness":
            return np.log(sharpness_per_frame(frames) + 1e-9)   # log: the tie threshold becomes relative
        return clip(frames, cols[cfg.caption_column][i])

    def job(i: int):
        if clip is not None and not (cols[cfg.caption_column][i] or "").strip():
            return ("no caption for the clip scorer", i, None)
        try:
            a, fps = load(cfg.video_a_column, i)
            b, _ = load(cfg.video_b_column, i)
            ref = load(cfg.reference_column, i)[0] if cfg.reference_column else None
        except MediaError as e:
            return MediaDrop(i, "video", e.path, str(e))
        shapes = {a.shape} | {b.shape} | ({ref.shape} if ref is not None else set())
        if len(shapes) > 1:
            return ("misaligned clips (frame count or size differ)", i, sorted(map(str, shapes)))
        seg = cfg.segment_frames or max(1, round(cfg.segment_seconds * fps))
        bounds = segment_bounds(a.shape[0], seg)
        sa, sb = score(a, ref, i), score(b, ref, i)
        labels, ma, mb = segment_labels(sa, sb, bounds, tie)
        return {"row": i, "labels": labels, "bounds": bounds, "seg_a": ma.tolist(), "seg_b": mb.tolist(),
                "score_a": float(sa.mean()), "score_b": float(sb.mean()), "fps": fps}

    out, bad, drops, misaligned = [], [], {}, []
    for res in _bounded_map(job, range(df.height), cfg.threads):
        if isinstance(res, MediaDrop):
            bad.append(res)
            drops["unreadable media"] = drops.get("unreadable media", 0) + 1
        elif isinstance(res, tuple):
            drops[res[0]] = drops.get(res[0], 0) + 1
            if res[2] is not None:
                misaligned.append({"row": res[1], "shapes": res[2]})
        else:
            out.append(res)
    keep_idx = [r["row"] for r in out]
    base = df[keep_idx] if keep_idx else df.clear()
    # chosen = the clip with the better overall score, so margin >= 0 and +1 means "chosen better"
    swap = [r["score_a"] < r["score_b"] for r in out]
    va, vb = base.get_column(cfg.video_a_column).to_list(), base.get_column(cfg.video_b_column).to_list()
    vc = [b if s else a for a, b, s in zip(va, vb, swap, strict=True)]
    vr = [a if s else b for a, b, s in zip(va, vb, swap, strict=True)]
    sc = [max(r["score_a"], r["score_b"]) for r in out]
    sr = [min(r["score_a"], r["score_b"]) for r in out]
    labels = [[-v for v in r["labels"]] if s else r["labels"] for r, s in zip(out, swap, strict=True)]
    prompts = base.get_column("prompt").to_list()
    carry = base.drop([c for c in base.columns if c in _OWN or c in (cfg.video_a_column, cfg.video_b_column)])
    new = pl.DataFrame({
        "prompt_id": [_sha(p) for p in prompts], "prompt": prompts,
        "chosen": vc, "rejected": vr,
        "chosen_id": [_sha(v) for v in vc], "rejected_id": [_sha(v) for v in vr],
        "score_chosen": sc, "score_rejected": sr, "margin": [c - r for c, r in zip(sc, sr, strict=True)],
        "weight": [1.0] * len(out), "stage": pl.Series([0] * len(out), dtype=pl.Int32),
        "strategy": [f"densedpo:{cfg.scorer}"] * len(out), "video_chosen": vc, "video_rejected": vr,
        "segment_pref": pl.Series(labels, dtype=pl.List(pl.Int8)),
        "segment_frames": pl.Series([[list(b) for b in r["bounds"]] for r in out], dtype=pl.List(pl.List(pl.Int32))),
        "segment_score_chosen": [r["seg_b"] if s else r["seg_a"] for r, s in zip(out, swap, strict=True)],
        "segment_score_rejected": [r["seg_a"] if s else r["seg_b"] for r, s in zip(out, swap, strict=True)],
        "segment_scorer": [cfg.scorer] * len(out),
    }, strict=False)
    result = pl.concat([new, carry], how="horizontal") if carry.width else new
    table = conform(result.to_arrow(), "pairs")
    validate(table, "pairs")
    flat = [v for lab in labels for v in lab]
    counts = {"+1": flat.count(1), "-1": flat.count(-1), "0": flat.count(0)}
    summary = (f"{len(out)} segment-labelled pairs · {len(flat)} segments "
               f"(+1 {counts['+1']}, −1 {counts['-1']}, tie {counts['0']}) by {cfg.scorer}")
    if bad:
        summary += f" · {drop_summary(bad)}"
    info = {"segments": counts, "tie_threshold": tie, "unreadable": [d.as_dict() for d in bad],
            "misaligned": misaligned}
    if clip is not None:
        info["clip_image_calls"] = clip.image_calls
    return Built(pl.from_arrow(table).lazy(), "pairs", drops=drops, rows_in=df.height, rows_kept=len(out),
                 info=info, summary=summary)


_OWN = {"prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id", "score_chosen", "score_rejected",
        "margin", "weight", "stage", "strategy", "video_chosen", "video_rejected", "segment_pref", "segment_frames",
        "segment_score_chosen", "segment_score_rejected", "segment_scorer"}
