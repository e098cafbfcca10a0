"""A custom tiny open_clip architecture with random weights, shared by the synth and multimodal tests."""
from __future__ import annotations

import json
from pathlib import Path


def make_tiny_open_clip(path: Path, name: str, *, seed: int, patch_size: int = 16) -> tuple[Path, Path]:
    """Register architecture `name` (32-px images, 1-layer towers) and save random weights:
    returns (architecture JSON, checkpoint)."""
    import open_clip
    import torch

    conf = path / f"{name}.json"
    conf.write_text(json.dumps({"embed_dim": 16,
                                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": patch_size,
                                               "head_width": 16},
                                "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2,
                                             "layers": 1}}))
    open_clip.add_model_config(conf)
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(name).state_dict(), path / "tiny.pt")
    return conf, path / "tiny.pt"
