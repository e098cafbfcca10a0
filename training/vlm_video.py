"""Video preference pairs for the VLM trainer (PaMi-VDPO, spec §5.6): `video_chosen` / `video_rejected` with the same
response on both sides. Each clip becomes `num_frames` frames sampled uniformly (the centre of each of
`num_frames` equal spans of the clip), fed as the multi-image input of one conversation: the prompt gets one
`<image>` per frame, the chosen side sees the chosen clip's frames and the rejected side the rejected clip's, so the
loss is on the video difference (the responses are equal).

A frame is named by a URI `clip#frame=i/k` (frame i of k uniform samples), decoded when a batch is collated; the
last few decoded clips are cached, so a batch decodes each clip once.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from prefdata.errors import IngestError

VIDEO_COLUMNS = ("prompt", "video_chosen", "video_rejected", "chosen", "rejected")
PLACEHOLDER = "<image>"
_FRAME = re.compile(r"^(.*)#frame=(\d+)/(\d+)$")
_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()
_CACHE_CLIPS = 8


def sample_frame_indices(n_frames: int, k: int) -> list[int]:
    """Indices of k frames spread uniformly over a clip of n_frames: floor((i + 1/2) n / k), i = 0..k-1."""
    if n_frames < 1 or k < 1:
        raise ValueError(f"need a clip with frames and k >= 1 (got {n_frames} frames, k={k})")
    return [(2 * i + 1) * n_frames // (2 * k) for i in range(k)]


def frame_uris(uri: str, k: int) -> list[str]:
    return [f"{uri}#frame={i}/{k}" for i in range(k)]


def is_frame_uri(uri: str) -> bool:
    return _FRAME.match(uri) is not None


def _clip(path: Path) -> np.ndarray:
    key = str(path)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    import av
    try:
        with av.open(key) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
    except (av.error.FFmpegError, OSError, ValueError) as e:   # ValueError: np.stack of no frames
        raise IngestError(key, f"cannot decode video: {e}") from None
    _CACHE[key] = frames
    if len(_CACHE) > _CACHE_CLIPS:
        _CACHE.popitem(last=False)
    return frames


def load_frame(paths, uri: str) -> Image.Image:
    """The frame a `clip#frame=i/k` URI names, as an RGB image."""
    clip, i, k = _FRAME.match(uri).groups()
    frames = _clip(paths.resolve(clip))
    return Image.fromarray(frames[sample_frame_indices(len(frames), int(k))[int(i)]])


def video_pair_row(row: dict, k: int) -> dict:
    """A video pair as the VLM trainer's multi-image row: k frame placeholders before the prompt, the chosen
    clip's frames as `images`, the rejected clip's as `images_rejected`."""
    out = dict(row)
    if any(row.get(c) is None for c in VIDEO_COLUMNS):
        out["images"] = None
        return out
    out["prompt"] = PLACEHOLDER * k + "\n" + row["prompt"]
    out["images"] = frame_uris(row["video_chosen"], k)
    out["images_rejected"] = frame_uris(row["video_rejected"], k)
    return out
