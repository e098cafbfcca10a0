"""diffusers backend: N images per caption from any `DiffusionPipeline` saved locally.

Each request is one image with its own torch.Generator (the row's seed), so an image does not depend on
the batch it was drawn in. Images are written as PNG named by the sha256 of their bytes under
`image_dir`; the returned text is that path relative to the build's base dir (the `images` URI)."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from builders.backends import GenOutput, GenRequest, ModelSpec, pick_device, progress_bar, resolve_path, torch_dtype
from prefdata.errors import PrefdataError


def save_png(image, image_dir: Path, base_dir: Path) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    path = image_dir / f"{hashlib.sha256(data).hexdigest()}.png"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)             # atomic: a killed run never leaves a half-written image
    return os.path.relpath(path, base_dir)


class DiffusersBackend:
    def __init__(self, spec: ModelSpec, base_dir: Path):
        from diffusers import DiffusionPipeline
        self.spec, self.base_dir = spec, base_dir
        self.device = pick_device(spec.device)
        path = resolve_path(spec.path, base_dir)
        try:
            self.pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype(spec.dtype, self.device))
        except (OSError, ValueError) as e:
            raise PrefdataError(f"model {spec.name!r}: cannot load diffusion pipeline {path}: {e}") from None
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.image_dir = base_dir / "generated_images"

    def generate(self, requests: list[GenRequest], *, progress: bool = False) -> list[GenOutput]:
        self.image_dir.mkdir(parents=True, exist_ok=True)
        out: list[GenOutput] = []
        bs = self.spec.batch_size
        with progress_bar(len(requests), f"images {self.spec.name}", progress) as advance:
            for s in range(0, len(requests), bs):
                chunk = requests[s:s + bs]
                # one pipeline call needs one set of step/guidance/size settings: split the chunk by them
                groups: dict[tuple, list[int]] = {}
                for i, r in enumerate(chunk):
                    p = r.params
                    groups.setdefault((p.num_inference_steps, p.guidance_scale, p.height, p.width), []).append(i)
                paths: list[str] = [""] * len(chunk)
                for (steps, guidance, h, w), idx in groups.items():
                    gens = [torch.Generator(device="cpu").manual_seed(int(chunk[i].seed)) for i in idx]
                    kw = {"height": h, "width": w} if h and w else {}
                    images = self.pipe(prompt=[chunk[i].prompt for i in idx], generator=gens,
                                       num_inference_steps=steps, guidance_scale=guidance, **kw).images
                    for i, img in zip(idx, images, strict=True):
                        paths[i] = save_png(img, self.image_dir, self.base_dir)
                out.extend(GenOutput(p, 0, "image") for p in paths)
                advance(len(chunk))
        return out
