"""Shared fixtures for the multimodal tests: the bundled real media and a build context whose media store
is a temporary catalog directory."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from builders.base import StepContext

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (DATA / "images" / "captions.jsonl").is_file(), "bundled sample media missing under examples/data"
    return DATA


@pytest.fixture()
def ctx(tmp_path, data_dir) -> StepContext:
    # a stand-in catalog object with a `root`: media land under tmp_path/catalog/media
    return StepContext(base_dir=data_dir, catalog=SimpleNamespace(root=tmp_path / "catalog"), seed=7,
                       progress=False)


@pytest.fixture(scope="session")
def captions(data_dir) -> pl.DataFrame:
    return pl.read_ndjson(data_dir / "images" / "captions.jsonl")


@pytest.fixture(scope="session")
def carphone(data_dir) -> tuple[np.ndarray, np.ndarray, float]:
    from builders.media import read_video
    p, fps = read_video(data_dir / "video" / "carphone_pristine.mp4", max_frames=40)
    d, _ = read_video(data_dir / "video" / "carphone_distorted.mp4", max_frames=40)
    return p, d, fps


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core runner extra threads only
    contend (measured: a tiny UNet step 0.34 s with 1 thread vs 2.3 s with 2 under load)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
