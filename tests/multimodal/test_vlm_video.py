"""PaMi-VDPO video pairs in the VLM trainer: uniform frame sampling, the chosen side sees the chosen clip's frames
and the rejected side the rejected clip's (same response), 2 steps of a tiny random LLaVA through `prefdata train`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from prefdata.cli import app
from training.diffusion_data import MediaPaths
from training.vlm import collate_pairs
from training.vlm_tiny import make_tiny_vlm, texts_of_rows
from training.vlm_train import load_vlm
from training.vlm_video import load_frame, sample_frame_indices, video_pair_row

VIDEO = Path(__file__).resolve().parents[2] / "examples" / "data" / "video"


def test_frame_sampling_indices():
    assert sample_frame_indices(10, 4) == [1, 3, 6, 8]        # floor((i + 1/2) * 10 / 4)
    assert sample_frame_indices(96, 8) == [6, 18, 30, 42, 54, 66, 78, 90]
    assert sample_frame_indices(5, 1) == [2]
    assert sample_frame_indices(3, 4) == [0, 1, 1, 2]          # a short clip repeats frames
    with pytest.raises(ValueError):
        sample_frame_indices(0, 2)


@pytest.fixture(scope="module")
def pami(tmp_path_factory):
    d = tmp_path_factory.mktemp("pami")
    resp = "A man talks on a phone while riding in a car."
    rows = [{"prompt": "Describe what happens in the clip.", "chosen": resp, "rejected": resp,
             "video_chosen": "carphone_pristine.mp4", "video_rejected": "carphone_distorted.mp4"},
            {"prompt": "What is the man doing?", "chosen": resp, "rejected": resp,
             "video_chosen": "carphone_pristine.mp4", "video_rejected": "carphone_distorted.mp4"}]
    path = d / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    model = make_tiny_vlm(d / "tiny-llava", texts_of_rows(rows))
    return path, model, rows


def test_frames_and_sides(pami):
    import av

    path, model, rows = pami
    paths = MediaPaths(VIDEO, VIDEO)
    with av.open(str(VIDEO / "carphone_pristine.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    row = video_pair_row(rows[0], 3)
    assert row["prompt"] == "<image><image><image>\nDescribe what happens in the clip."
    assert row["images"] == [f"carphone_pristine.mp4#frame={i}/3" for i in range(3)]
    idx = sample_frame_indices(len(frames), 3)
    assert np.array_equal(np.asarray(load_frame(paths, row["images"][1])), frames[idx[1]])
    _, proc = load_vlm(str(model))
    b = collate_pairs(proc, [row], paths, max_length=512)
    k = b.pixel_values.shape[0] // 2
    assert k == 3 and not torch.equal(b.pixel_values[:k], b.pixel_values[k:])   # the rejected side's own frames
    assert torch.equal(b.input_ids[0], b.input_ids[1])                          # same prompt and response


def test_video_pairs_train_through_prefdata_train(tmp_path, pami):
    path, model, _ = pami
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "vlm": {"model": str(model), "num_frames": 2, "media_root": str(VIDEO)}, "dataset": str(path),
        "loss": {"name": "dpo_sigmoid", "beta": 0.5}, "output_dir": str(tmp_path / "run"),
        "train": {"batch_size": 2, "lr": 3e-3, "max_steps": 2, "warmup_ratio": 0.0, "seed": 0, "max_length": 512}}))
    res = CliRunner().invoke(app, ["train", str(recipe), "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    m = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in m] == [1, 2]
    assert m[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)   # policy == reference (a frozen copy)
    # same response on both sides: the log-prob gap comes from the frames alone, and training widens it
    assert m[1]["logps_chosen"] != m[1]["logps_rejected"] and m[1]["loss"] < m[0]["loss"]
