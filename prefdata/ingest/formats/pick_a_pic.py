"""pick-a-pic: yuvalkirstain/pickapic_v2-style rows -> pairs of images for one caption.

Row: {"caption", "jpg_0", "jpg_1" (image bytes) or "image_0_url", "image_1_url", "label_0", "label_1",
"model_0", "model_1", "best_image_uid", ...}. Convention: label (1, 0) -> image 0 is chosen, (0, 1) -> image 1;
(0.5, 0.5) is a tie and is dropped under "tie (label 0.5)" (a tie is no preference); rows without labels are
dropped under "no label"; any other label pair is an error. prompt = caption; chosen/rejected = the image URIs
as text; images = [chosen URI, rejected URI]. Image bytes are written content-addressed to
`<media_dir>/media/<sha256>.<ext>` and the column holds the URI `media/<sha256>.<ext>`, relative to media_dir
(the catalog directory when ingesting into a catalog), the same rule the media builders resolve."""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from prefdata.errors import IngestError
from prefdata.ingest.formats.base import Format, Plan, Record, has
from prefdata.ingest.problems import Problems
from prefdata.media_files import put_media_bytes

_META = [("caption", pa.string()), ("label_0", pa.float64()), ("label_1", pa.float64()),
         ("model_0", pa.string()), ("model_1", pa.string())]
BYTES_SCHEMA = pa.schema([*_META, ("jpg_0", pa.binary()), ("jpg_1", pa.binary())])
URL_SCHEMA = pa.schema([*_META, ("image_0_url", pa.string()), ("image_1_url", pa.string())])
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
          (b"BM", ".bmp"))


def image_ext(data: bytes) -> str | None:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return None


def _labels(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    l0, l1 = pl.col("label_0"), pl.col("label_1")
    df = p.reject(df, l0.is_null() | l1.is_null(), reason="no label", always_drop=True, message="")
    df = p.reject(df, (l0 == 0.5) & (l1 == 0.5), reason="tie (label 0.5)", always_drop=True, message="")
    valid = ((l0 == 1) & (l1 == 0)) | ((l0 == 0) & (l1 == 1))
    return p.reject(df, ~valid, reason="invalid label", column="label_0",
                    message=lambda r: f"labels ({r['label_0']}, {r['label_1']}) are not (1, 0), (0, 1) or (0.5, 0.5)")


def _uris_from_bytes(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    if p.media_dir is None:
        raise IngestError(p.path, "pick-a-pic rows hold image bytes (jpg_0/jpg_1): pass media_dir to store them")
    for k in (0, 1):
        col = f"jpg_{k}"
        df = p.reject(df, pl.col(col).is_null(), reason="missing image", column=col, message="missing image bytes")
        exts = [image_ext(b) for b in df[col].to_list()]
        df = df.with_columns(pl.Series(f"_ext_{k}", exts, dtype=pl.String))
        df = p.reject(df, pl.col(f"_ext_{k}").is_null(), reason="unrecognized image bytes", column=col,
                      message="bytes are not a PNG, JPEG, GIF, BMP or WebP image")
    p.info["media_dir"] = str(p.media_dir)
    for k in (0, 1):
        uris = [put_media_bytes(p.media_dir, b, e) for b, e in zip(df[f"jpg_{k}"].to_list(), df[f"_ext_{k}"].to_list(),
                                                              strict=True)]
        df = df.with_columns(pl.Series(f"_uri_{k}", uris, dtype=pl.String))
    return df


def transform(df: pl.DataFrame, p: Problems) -> pl.DataFrame:
    df = _labels(df, p)
    if "jpg_0" in df.columns:
        df = _uris_from_bytes(df, p)
    else:
        for k in (0, 1):
            df = p.reject(df, pl.col(f"image_{k}_url").is_null(), reason="missing image", column=f"image_{k}_url",
                          message="missing image URL")
            df = df.with_columns(pl.col(f"image_{k}_url").alias(f"_uri_{k}"))
    first = pl.col("label_0") == 1
    chosen = pl.when(first).then(pl.col("_uri_0")).otherwise(pl.col("_uri_1"))
    rejected = pl.when(first).then(pl.col("_uri_1")).otherwise(pl.col("_uri_0"))
    return df.select(
        pl.col("caption").alias("prompt"), chosen.alias("chosen"), rejected.alias("rejected"),
        pl.concat_list(chosen, rejected).alias("images"),
        pl.when(first).then(pl.col("model_0")).otherwise(pl.col("model_1")).alias("model_chosen"),
        pl.when(first).then(pl.col("model_1")).otherwise(pl.col("model_0")).alias("model_rejected"), "_row")


def plan(first: Record, mapping, path: str = "") -> Plan:
    with_bytes = "jpg_0" in first
    return Plan(kind="pairs", schema=BYTES_SCHEMA if with_bytes else URL_SCHEMA,
                required=("caption", "label_0", "label_1", *(("jpg_0", "jpg_1") if with_bytes else
                                                             ("image_0_url", "image_1_url"))),
                transform=transform, strategy="human", origin={"prompt": "caption"})


FORMAT = Format(
    name="pick-a-pic", summary="Pick-a-Pic rows: caption, jpg_0/jpg_1 or image_0_url/image_1_url, label_0, label_1",
    matches=lambda r: has(r, "caption", "label_0", "label_1") and (has(r, "jpg_0", "jpg_1")
                                                                   or has(r, "image_0_url", "image_1_url")),
    plan=plan)
