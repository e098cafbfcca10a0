"""Media in the catalog: content-addressed files, lazy decoding, accounted drops for bad media.

Images and clips are stored as files named by the sha256 of their bytes (`media/<sha256>.<ext>`) under a
media root (the catalog directory when the build has one). Tables only hold URIs, so a dataset version
stays small and identical media are stored once. Decoding happens when a builder or trainer needs
pixels, never at ingest time beyond a readability check.

URI rule (no guessing between locations): a content-addressed URI `media/<64 hex>.<ext>` resolves under
the media root; any other relative URI resolves under the build's base directory; absolute paths are
used as they are."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError

from builders.base import Built, StepConfig, StepContext
from prefdata.errors import IngestError, SchemaError
from prefdata.media_files import MEDIA_DIR, put_media_bytes

_HASHED = re.compile(r"^media/[0-9a-f]{64}\.[A-Za-z0-9]+$")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}


class MediaError(IngestError):
    """A media file is missing, truncated or cannot be decoded. Names the file (and row when known)."""


def media_root(ctx: StepContext) -> Path:
    """Where content-addressed media live: the catalog directory when the build writes to a catalog
    (so datasets and their media travel together), otherwise the build's base directory."""
    cat = ctx.catalog
    for attr in ("root", "path"):
        root = getattr(cat, attr, None) if cat is not None else None
        if root is not None:
            return Path(root)
    return Path(ctx.base_dir)


@dataclass(frozen=True)
class MediaStore:
    root: Path            # URIs `media/<sha>.<ext>` are relative to this directory
    base_dir: Path        # other relative URIs (user files) are relative to this one

    @classmethod
    def for_context(cls, ctx: StepContext) -> MediaStore:
        return cls(media_root(ctx), Path(ctx.base_dir))

    def resolve(self, uri: str) -> Path:
        p = Path(uri)
        if p.is_absolute():
            return p
        if _HASHED.match(uri):
            return self.root / p
        return self.base_dir / p

    def put_bytes(self, data: bytes, ext: str) -> str:
        """Store bytes under their sha256; returns the URI (atomic, see prefdata.media_files)."""
        return put_media_bytes(self.root, data, ext)

    def put_file(self, path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        uri = f"{MEDIA_DIR}/{h.hexdigest()}{path.suffix.lower()}"
        dest = self.root / uri
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            os.close(fd)
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        return uri

    def put_image(self, img: Image.Image, fmt: Literal["png", "jpeg", "webp"] = "png") -> str:
        import io
        buf = io.BytesIO()
        # PNG is lossless, so a collage's pixel layout survives the round trip exactly.
        img.save(buf, format=fmt.upper(), **({"optimize": False} if fmt == "png" else {"quality": 95}))
        return self.put_bytes(buf.getvalue(), ".jpg" if fmt == "jpeg" else "." + fmt)


# ---------------------------------------------------------------- decoding (lazy: called when pixels are needed)

def load_image(path: Path, *, row: int | None = None) -> Image.Image:
    """Decode an image fully and convert to RGB (sample data mixes L, RGB and RGBA)."""
    try:
        with Image.open(path) as im:
            im.load()   # force decode now: a truncated file must fail here, not later in a worker
            if im.mode == "RGBA":
                # composite on white so transparent regions do not turn black
                bg = Image.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.split()[3])
                return bg
            return im.convert("RGB")
    except FileNotFoundError:
        raise MediaError(str(path), "image file not found", row=row) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(str(path), f"cannot decode image: {e}", row=row) from None


def read_video(path: Path, *, row: int | None = None, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a clip to uint8 RGB frames [T, H, W, 3] and its frame rate, with PyAV (extra `video`)."""
    av = _import_av()
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            frames = []
            for f in c.decode(stream):
                frames.append(f.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except FileNotFoundError:
        raise MediaError(str(path), "video file not found", row=row) from None
    except (av.error.FFmpegError, IndexError, ValueError, OSError) as e:
        raise MediaError(str(path), f"cannot decode video: {e}", row=row) from None
    if not frames:
        raise MediaError(str(path), "video has no decodable frames", row=row)
    return np.stack(frames), fps


def encode_video(frames: np.ndarray, fps: float, *, codec: Literal["libx264", "ffv1", "mpeg4"] = "libx264",
                 crf: int = 18) -> tuple[bytes, str]:
    """Encode uint8 RGB frames [T, H, W, 3] in memory; returns (bytes, extension). ffv1 is lossless
    (for exact tests); libx264 at crf 18 is visually lossless and small."""
    import io
    from fractions import Fraction
    av = _import_av()
    t, h, w, _ = frames.shape
    ext = ".mkv" if codec == "ffv1" else ".mp4"
    buf = io.BytesIO()
    # bitexact: no muxer timestamps/UIDs, so the same frames give the same bytes (and the same content hash)
    with av.open(buf, mode="w", format="matroska" if codec == "ffv1" else "mp4",
                 options={"fflags": "+bitexact"}) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        # yuv420p needs even sizes; crop one pixel rather than resample so pixels stay aligned
        h2, w2 = (h, w) if codec == "ffv1" else (h - h % 2, w - w % 2)
        s.width, s.height = w2, h2
        s.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        if codec == "libx264":
            s.options = {"crf": str(crf), "preset": "veryfast"}
        for i in range(t):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i, :h2, :w2]), format="rgb24")
            for pkt in s.encode(vf):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return buf.getvalue(), ext


def _import_av():
    try:
        import av
    except ImportError as e:   # pragma: no cover - depends on the install
        raise IngestError("av", "video needs PyAV: install the `video` extra (pip install prefdata[video])") from e
    return av


def media_kind(uri: str) -> Literal["image", "video"]:
    ext = Path(uri).suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    raise MediaError(uri, f"unknown media extension {ext!r} (images: {sorted(IMAGE_EXTS)}, videos: {sorted(VIDEO_EXTS)})")


def check_media(store: MediaStore, uri: str, *, row: int | None = None) -> None:
    """Decode once to prove the file is usable (raises MediaError naming it)."""
    path = store.resolve(uri)
    if media_kind(uri) == "image":
        load_image(path, row=row)
    else:
        read_video(path, row=row, max_frames=2)


@dataclass
class MediaDrop:
    row: int
    column: str
    file: str
    error: str

    def as_dict(self) -> dict:
        return {"row": self.row, "column": self.column, "file": self.file, "error": self.error}


def drop_summary(drops: Iterable[MediaDrop]) -> str:
    drops = list(drops)
    if not drops:
        return ""
    names = ", ".join(sorted({Path(d.file).name for d in drops})[:5])
    return f"dropped {len(drops)} row(s) with unreadable media ({names})"


# ---------------------------------------------------------------- the `media` step: ingest files into the store

class MediaConfig(StepConfig, frozen=True):
    """Copy the media a table references into the content-addressed store and rewrite the URIs.
    `columns`: string or list<string> columns holding paths (relative to the recipe's base dir)."""
    columns: list[str]
    kind: Literal["responses", "pairs", "lists"] = "responses"
    check: bool = True           # decode each file once; unreadable files drop the row (named in info)


def build_media(frame: pl.LazyFrame, cfg: MediaConfig, ctx: StepContext) -> Built:
    df = frame.collect()
    missing = [c for c in cfg.columns if c not in df.columns]
    if missing:
        raise SchemaError(f"media step: column(s) {missing} not in the input (have {df.columns})", column=missing[0])
    store = MediaStore.for_context(ctx)
    cache: dict[str, str | MediaDrop] = {}   # the same file referenced twice is hashed/decoded once
    bad: list[MediaDrop] = []
    keep = np.ones(df.height, dtype=bool)
    new_cols: dict[str, list] = {}
    for col in cfg.columns:
        is_list = isinstance(df.schema[col], pl.List)
        values = df.get_column(col).to_list()
        out = []
        for i, v in enumerate(values):
            uris = v if is_list else [v]
            mapped = []
            for u in uris or []:
                if u is None:
                    mapped.append(None)
                    continue
                res = cache.get(u)
                if res is None:
                    res = _ingest_one(store, u, cfg.check, i, col)
                    cache[u] = res
                if isinstance(res, MediaDrop):
                    bad.append(MediaDrop(i, col, res.file, res.error))
                    keep[i] = False
                    mapped.append(None)
                else:
                    mapped.append(res)
            out.append(mapped if is_list else mapped[0] if mapped else None)
        new_cols[col] = out
    df = df.with_columns([pl.Series(c, v, dtype=df.schema[c]) for c, v in new_cols.items()])
    kept = df.filter(pl.Series(keep))
    drops = {"unreadable media": int((~keep).sum())} if bad else {}
    return Built(kept.lazy(), cfg.kind, drops=drops, rows_in=df.height, rows_kept=kept.height,
                 info={"media_root": str(store.root), "unique_files": sum(isinstance(r, str) for r in cache.values()),
                       "unreadable": [d.as_dict() for d in bad]},
                 summary=f"{len(cache)} files stored content-addressed" + (f" · {drop_summary(bad)}" if bad else ""))


def _ingest_one(store: MediaStore, uri: str, check: bool, row: int, col: str) -> str | MediaDrop:
    path = store.resolve(uri)
    try:
        if check:
            check_media(store, uri, row=row)
        elif not path.is_file():
            raise MediaError(str(path), "file not found", row=row)
        return store.put_file(path)
    except MediaError as e:
        return MediaDrop(row, col, str(path), str(e))
