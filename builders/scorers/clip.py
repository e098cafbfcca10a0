"""CLIP score between a row's image and its caption: 100 · max(cos(image, text), 0) (the CLIPScore scale
used by torchmetrics). Two model families:
- `open_clip`: any open_clip architecture (`arch`, a built-in name, or a custom one given by
  `arch_config`, a JSON file in open_clip's format) with weights from a local checkpoint file;
- `hf`: a transformers CLIP-family model dir (CLIPModel + its processor), e.g. a PickScore-style
  preference model saved locally.
An unreadable or missing image makes that row unscorable (an accounted drop naming the file)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from builders.base import StepConfig, StepContext
from builders.scorers import Scored, need_columns


class ClipScorer(StepConfig, frozen=True):
    kind: Literal["clip"]
    name: str
    family: Literal["open_clip", "hf"] = "open_clip"
    arch: str | None = None                  # open_clip model name (built-in or the stem of model_config)
    arch_config: str | None = None           # open_clip: JSON config for a custom architecture
    path: str                                # open_clip: checkpoint file; hf: model dir
    caption_column: str = "prompt"
    image_column: str = "images"             # list<string> (first image used) or string
    batch_size: int = Field(16, ge=1)
    device: str = "auto"

    @model_validator(mode="after")
    def _arch(self):
        if self.family == "open_clip" and not (self.arch or self.arch_config):
            raise ValueError("open_clip scorer needs `arch` (or `arch_config`)")
        return self

    def model_path_fields(self) -> dict[str, str]:
        return clip_model_paths(self.family)


def clip_model_paths(family: str) -> dict[str, str]:
    """What a CLIP scorer's `path` and `arch_config` must be (checked when the recipe is parsed)."""
    if family == "hf":
        return {"path": "a transformers CLIP-family model folder (CLIPModel and its processor)"}
    return {"path": "an open_clip checkpoint file", "arch_config": "an open_clip architecture JSON file"}


def _image_paths(df: pl.DataFrame, col: str) -> list[str | None]:
    s = df[col]
    if s.dtype == pl.List(pl.String):
        return [v[0] if v else None for v in s.to_list()]
    return s.to_list()


def _load_image(path: str | None, base: Path):
    from PIL import Image, UnidentifiedImageError
    if not path:
        return None, "no image"
    p = Path(path) if Path(path).is_absolute() else base / path
    try:
        with Image.open(p) as im:
            return im.convert("RGB"), None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return None, f"image unreadable: {path} ({type(e).__name__})"


class _OpenClip:
    def __init__(self, cfg: ClipScorer, ctx: StepContext, device: str):
        import open_clip

        from builders.backends import resolve_path
        arch = cfg.arch
        if cfg.arch_config:
            conf = resolve_path(cfg.arch_config, ctx.base_dir)
            open_clip.add_model_config(conf)
            arch = arch or conf.stem
        ckpt = resolve_path(cfg.path, ctx.base_dir)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(ckpt),
                                                                               device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device = device

    def embed(self, images, texts):
        import torch
        pix = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        tok = self.tokenizer(texts).to(self.device)
        return self.model.encode_image(pix), self.model.encode_text(tok)


class _HfClip:
    def __init__(self, cfg: ClipScorer, ctx: StepContext, device: str):
        from transformers import AutoModel, AutoProcessor

        from builders.backends import resolve_path
        path = resolve_path(cfg.path, ctx.base_dir)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.device = device

    def embed(self, images, texts):
        import torch
        enc = self.processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        img = self.model.get_image_features(pixel_values=enc["pixel_values"])
        txt = self.model.get_text_features(**{k: v for k, v in enc.items() if k != "pixel_values"})
        # transformers 5 returns an output object whose pooler_output is the projected embedding
        return tuple(x if torch.is_tensor(x) else x.pooler_output for x in (img, txt))


def score(df: pl.DataFrame, cfg: ClipScorer, ctx: StepContext) -> Scored:
    import torch

    from builders.backends import pick_device, progress_bar
    need_columns(df, [cfg.caption_column, cfg.image_column], cfg.name)
    device = pick_device(cfg.device)
    model = (_OpenClip if cfg.family == "open_clip" else _HfClip)(cfg, ctx, device)
    paths, captions = _image_paths(df, cfg.image_column), df[cfg.caption_column].to_list()
    values = np.full(df.height, np.nan)
    reasons: list[str | None] = [None] * df.height
    with progress_bar(df.height, f"clip {cfg.name}", ctx.progress) as advance:
        for s in range(0, df.height, cfg.batch_size):
            rows, images, texts = [], [], []
            for i in range(s, min(s + cfg.batch_size, df.height)):
                im, why = _load_image(paths[i], ctx.base_dir)
                if im is None or captions[i] is None:
                    reasons[i] = f"clip {cfg.name}: {why or 'no caption'}"
                    continue
                rows.append(i)
                images.append(im)
                texts.append(captions[i])
            if rows:
                with torch.inference_mode():
                    img, txt = model.embed(images, texts)
                    cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
                values[rows] = (100.0 * cos.clamp(min=0)).double().cpu().numpy()
            advance(min(cfg.batch_size, df.height - s))
    return Scored(values, reasons, {"family": cfg.family})
