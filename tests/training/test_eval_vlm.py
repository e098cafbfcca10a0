"""Eval during VLM training (training/vlm_train.py with an `eval:` section) on real MIA-DPO pairs built from the
bundled images, tiny random LLaVA: the split table trains its `train` rows only, the held-out rows get the pair
metrics, worked by hand at step 0 (policy == reference) for the frozen copy and the precomputed reference."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from training.run import train_from_recipe

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"
LN2_F32 = torch.tensor(math.log(2), dtype=torch.float32).item()


@pytest.fixture(scope="module")
def mia(tmp_path_factory):
    """6 MIA-DPO pairs (4 train, 2 test) next to their media, and a tiny LLaVA built for them."""
    from PIL import Image

    from builders.base import StepContext
    from builders.images import MiaDpoConfig, build_mia_dpo
    from training.vlm_tiny import make_tiny_vlm, texts_of_rows

    root = tmp_path_factory.mktemp("vlm_eval")
    captions = pl.read_ndjson(DATA / "images" / "captions.jsonl")
    (root / "src" / "images").mkdir(parents=True)
    for f in captions["file"]:
        with Image.open(DATA / f) as im:
            im.convert("RGB").resize((48, 48)).save(root / "src" / Path(f).with_suffix(".png"))
    ctx = StepContext(base_dir=root / "src", catalog=SimpleNamespace(root=root / "media"), seed=7, progress=False)
    df = captions.select(image=pl.col("file").str.replace(r"\.\w+$", ".png"), response=pl.col("caption_short"))
    cfg = MiaDpoConfig(question_column=None, modes=["sequence", "grid"], cell_size=(32, 32), sequence_images=(2, 3))
    table = build_mia_dpo(df.lazy(), cfg, ctx).frame.collect().head(6).to_arrow()
    table = table.append_column("split", pa.array(["train", "train", "test", "train", "train", "test"]))
    pq.write_table(table, root / "media" / "pairs.parquet")
    return SimpleNamespace(parquet=root / "media" / "pairs.parquet", model=make_tiny_vlm(
        root / "tiny-llava", texts_of_rows(table.to_pylist())))


@pytest.mark.parametrize("source", ["copy", "precompute"])
def test_vlm_split_training_and_eval(tmp_path, mia, source):
    r = {"vlm": {"model": str(mia.model)}, "dataset": str(mia.parquet), "loss": {"name": "dpo_sigmoid", "beta": 0.5},
         "output_dir": str(tmp_path / "run"), "reference": {"source": source}, "eval": {"split": "test"},
         "train": {"batch_size": 2, "lr": 3e-3, "max_steps": 2, "warmup_ratio": 0.0, "seed": 0, "max_length": 256}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    res = train_from_recipe(tmp_path / "r.yaml")
    assert res["rows_by_split"] == {"train": 4, "test": 2} and res["rows_in"] == 4
    assert res["eval_rows"]["rows"] == 2
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    e = [x for x in rows if "eval/loss" in x]
    assert [x["step"] for x in e] == [0, 2] and [x["step"] for x in rows if "loss" in x] == [1, 2]
    zero = e[0]
    assert zero["eval/chosen_logp_shift"] == 0.0 and zero["eval/rejected_logp_shift"] == 0.0
    assert zero["eval/loss"] == LN2_F32 and zero["eval/rows"] == 2 and zero["eval/reward_accuracy"] == 0.0
    assert res["eval"] == e[-1] and e[-1]["eval/loss"] != zero["eval/loss"]   # the policy moved
