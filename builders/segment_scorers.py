"""CLIP per-frame scorer for DenseDPO segment labels (`dense_segments: {scorer: clip, clip: {...}}`).

Each frame's score is the cosine similarity between its CLIP image embedding and the embedding of the row's
caption, so a segment whose frames match the prompt better wins. The models are the ones the `score` step's
CLIP scorer loads (builders/scorers/clip.py: open_clip with a local checkpoint, built-in or custom
architecture, or a transformers CLIP-family folder); only the calls differ: frames go through the image tower
in batches of `batch_size` (one model call per batch, not per frame) and each caption is encoded once and
cached, since both clips of a pair (and often many pairs) share it. No weights are ever downloaded."""
from __future__ import annotations

import threading
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from builders.base import StepConfig, StepContext


class ClipFrameSpec(StepConfig, frozen=True):
    family: Literal["open_clip", "hf"] = "open_clip"
    arch: str | None = None                  # open_clip model name (built-in, or the stem of arch_config)
    arch_config: str | None = None           # open_clip: JSON config of a custom architecture
    path: str                                # open_clip: checkpoint file; hf: model folder (relative: recipe dir)
    batch_size: int = Field(32, ge=1)        # frames per image-tower call
    device: str = "auto"

    @model_validator(mode="after")
    def _arch(self):
        if self.family == "open_clip" and not (self.arch or self.arch_config):
            raise ValueError("open_clip needs `arch` (or `arch_config`)")
        return self

    def model_path_fields(self) -> dict[str, str]:
        from builders.scorers.clip import clip_model_paths
        return clip_model_paths(self.family)


class ClipFrameScorer:
    """`scorer(frames [T,H,W,3] uint8, text) -> [T] float64` cosine similarities."""

    def __init__(self, spec: ClipFrameSpec, ctx: StepContext):
        from builders.backends import pick_device
        from builders.scorers.clip import ClipScorer, _HfClip, _OpenClip
        self.spec, self.device = spec, pick_device(spec.device)
        # reuse the score step's loaders (path resolution, custom open_clip architectures, HF processors)
        cfg = ClipScorer(kind="clip", name="dense_segments", family=spec.family, arch=spec.arch,
                         arch_config=spec.arch_config, path=spec.path, device=self.device)
        self._m = (_OpenClip if spec.family == "open_clip" else _HfClip)(cfg, ctx, self.device)
        self._texts: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()        # clips are scored from a thread pool
        self.image_calls = 0                 # image-tower calls made (batches), for reports and tests

    @torch.inference_mode()
    def _text(self, text: str) -> torch.Tensor:
        with self._lock:
            if text in self._texts:
                return self._texts[text]
        m = self._m
        if self.spec.family == "open_clip":
            t = m.model.encode_text(m.tokenizer([text]).to(self.device))
        else:
            enc = m.processor(text=[text], return_tensors="pt", padding=True, truncation=True)
            t = m.model.get_text_features(**{k: v.to(self.device) for k, v in enc.items()})
            t = t if torch.is_tensor(t) else t.pooler_output
        t = F.normalize(t.float(), dim=-1)[0]
        with self._lock:
            self._texts[text] = t
        return t

    @torch.inference_mode()
    def _images(self, frames: np.ndarray) -> torch.Tensor:
        from PIL import Image
        m = self._m
        if self.spec.family == "open_clip":
            pix = torch.stack([m.preprocess(Image.fromarray(f)) for f in frames]).to(self.device)
            e = m.model.encode_image(pix)
        else:
            pix = m.processor(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)
            e = m.model.get_image_features(pixel_values=pix)
            e = e if torch.is_tensor(e) else e.pooler_output
        with self._lock:
            self.image_calls += 1
        return F.normalize(e.float(), dim=-1)

    def __call__(self, frames: np.ndarray, text: str) -> np.ndarray:
        t = self._text(text)
        bs = self.spec.batch_size
        sims = [self._images(frames[s:s + bs]) @ t for s in range(0, len(frames), bs)]
        return torch.cat(sims).double().cpu().numpy()
