"""Pixels for the diffusion trainers: decode the media a pairs table points at into normalised tensors.

Training never imports builders (GPU machines may lack polars), so the few lines that decode an image or a
clip live here too. URIs follow the catalog rule: `media/<sha256>.<ext>` under the media root, other
relative paths under the dataset's base directory."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from prefdata.errors import IngestError, SchemaError

_HASHED = re.compile(r"^media/[0-9a-f]{64}\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class MediaPaths:
    root: Path          # where content-addressed media live (the catalog directory)
    base_dir: Path      # other relative URIs

    def resolve(self, uri: str) -> Path:
        p = Path(uri)
        if p.is_absolute():
            return p
        return (self.root if _HASHED.match(uri) else self.base_dir) / p


def _square(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,H,W] float -> centre-cropped square, resized to size×size (antialiased)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    x = x[..., y0:y0 + s, x0:x0 + s]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def image_tensor(path: Path, size: int) -> torch.Tensor:
    """[3,size,size] in [-1, 1] (the range diffusers denoisers and VAEs expect)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    except FileNotFoundError:
        raise IngestError(str(path), "image file not found") from None
    except OSError as e:
        raise IngestError(str(path), f"cannot decode image: {e}") from None
    x = torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1.0
    return _square(x, size)[0]


def video_tensor(path: Path, size: int, num_frames: int, stride: int) -> torch.Tensor:
    """[3,F,size,size] in [-1, 1]: frames 0, stride, 2·stride, … (F = num_frames)."""
    import av
    need = (num_frames - 1) * stride + 1
    frames = []
    try:
        with av.open(str(path)) as c:
            for f in c.decode(c.streams.video[0]):
                frames.append(f.to_ndarray(format="rgb24"))
                if len(frames) >= need:
                    break
    except (av.error.FFmpegError, OSError) as e:
        raise IngestError(str(path), f"cannot decode video: {e}") from None
    if len(frames) < need:
        raise IngestError(str(path), f"clip has {len(frames)} frames; {num_frames} frames at stride {stride} "
                                     f"need {need}")
    x = torch.from_numpy(np.stack(frames[::stride][:num_frames])).float().permute(0, 3, 1, 2) / 127.5 - 1.0
    return _square(x, size).permute(1, 0, 2, 3).contiguous()


def segment_mask(bounds: list[list[int]], num_frames: int, stride: int, temporal_factor: int = 1) -> torch.Tensor:
    """[S, F'] float mask: which model (latent) frames belong to each source-frame segment [start, end).

    Sampled frame i shows source frame i·stride; with a temporal VAE compressing `temporal_factor` frames
    into one latent frame, latent frame j covers sampled frames j·k … j·k+k−1 and is assigned to the segment
    holding its first frame (boundaries must map to latent frames, methods.md §5.5)."""
    n_lat = -(-num_frames // temporal_factor)
    m = torch.zeros(len(bounds), n_lat)
    for s, (a, b) in enumerate(bounds):
        for j in range(n_lat):
            src = j * temporal_factor * stride
            if a <= src < b:
                m[s, j] = 1.0
    return m


def require_columns(columns: list[str], need: list[str], what: str) -> None:
    for c in need:
        if c not in columns:
            raise SchemaError(f"{what} needs column {c!r} (dataset has {columns})", column=c)
