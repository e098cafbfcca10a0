"""A table with a `split` column (the `split` builder step) exports to hf as a DatasetDict (train / test, the
column left out) and publishes with exactly those splits; without the column both behave as before."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog import Catalog, ExportError
from prefdata.errors import PrefdataError
from prefdata.publish import publish

REPO = Path(__file__).resolve().parents[2]
# prompt -> (rows, split, curriculum stage of its rows)
PROMPTS = {"a": (2, "train", 0), "b": (2, "train", 1), "c": (2, "train", 0), "d": (2, "train", 1),
           "e": (1, "test", 0), "f": (2, "test", 1)}


def held_out_pairs(split: bool = True) -> pa.Table:
    rows = []
    for pid, (n, side, stage) in PROMPTS.items():
        for i in range(n):
            rows.append({"prompt_id": pid, "prompt": f"prompt {pid}", "chosen": f"good {pid}{i}",
                         "rejected": f"bad {pid}{i}", "chosen_id": f"{pid}:c{i}", "rejected_id": f"{pid}:r{i}",
                         "score_chosen": 2.0, "score_rejected": 1.0, "margin": 1.0, "weight": 1.0, "stage": stage,
                         "strategy": "all_pairs", "split": side})
    t = pa.Table.from_pylist(rows).cast(pa.schema([
        ("prompt_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
        ("chosen_id", pa.string()), ("rejected_id", pa.string()), ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()), ("margin", pa.float64()), ("weight", pa.float64()),
        ("stage", pa.int32()), ("strategy", pa.string()), ("split", pa.string())]))
    return t if split else t.drop_columns(["split"])


@pytest.fixture
def splitcat(cat: Catalog) -> Catalog:
    cat.write("held", held_out_pairs(), message="with split", lineage={"builder": "split"})
    cat.write("plain", held_out_pairs(split=False), message="no split")
    return cat


def test_hf_export_is_a_datasetdict_without_prompt_overlap(splitcat: Catalog, tmp_path: Path):
    info = splitcat.export("held", "hf", tmp_path / "hf")
    assert info["splits"] == {"train": 8, "test": 3} and info["rows"] == 11
    dd = datasets.load_from_disk(str(tmp_path / "hf"))
    assert isinstance(dd, datasets.DatasetDict) and list(dd) == ["train", "test"]
    assert (dd["train"].num_rows, dd["test"].num_rows) == (8, 3)
    assert "split" not in dd["train"].column_names and "split" not in dd["test"].column_names
    assert set(dd["train"]["prompt_id"]) == {"a", "b", "c", "d"} and set(dd["test"]["prompt_id"]) == {"e", "f"}
    assert not set(dd["train"]["prompt_id"]) & set(dd["test"]["prompt_id"])
    table = splitcat.read("held")
    assert dd["test"].to_list() == [{k: v for k, v in r.items() if k != "split"}
                                    for r in table.to_pylist() if r["split"] == "test"]
    assert dd["train"].features["stage"] == datasets.Value("int32")
    lineage = json.loads((tmp_path / "hf" / "prefdata_lineage.json").read_text())
    assert lineage["ref"] == "held@1" and lineage["builder"] == "split"


def test_hf_export_without_split_column_is_unchanged(splitcat: Catalog, tmp_path: Path):
    info = splitcat.export("plain", "hf", tmp_path / "hf")
    assert "splits" not in info and info["rows"] == 11
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert isinstance(ds, datasets.Dataset) and ds.to_list() == splitcat.read("plain").to_pylist()
    # parquet keeps the column: the split is data there
    exported = splitcat.export("held", "parquet", tmp_path / "pq")
    assert "splits" not in exported and pq.read_table(exported["paths"][0]).column("split").to_pylist().count("test") == 3


@pytest.mark.parametrize(("values", "needle"), [
    ([None] + ["train"] * 10, r"column 'split' is null in 1 row\(s\)"),
    (["my split"] + ["train"] * 10, "column 'split' holds 'my split', not a valid split name"),
])
def test_bad_split_values_fail_before_anything_is_written(cat: Catalog, tmp_path: Path, values, needle):
    t = held_out_pairs()
    cat.write("bad", t.set_column(t.schema.get_field_index("split"), "split", pa.array(values, pa.string())))
    with pytest.raises(ExportError, match=needle):
        cat.export("bad", "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not any(tmp_path.glob(".hf*"))


def test_cli_export_to_hf_writes_both_splits(splitcat: Catalog, tmp_path: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO), PREFDATA_CATALOG=str(splitcat.root), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "prefdata", "export", "held@1", str(tmp_path / "out"), "--to", "hf",
                           "--json"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["splits"] == {"train": 8, "test": 3}
    dd = datasets.load_from_disk(str(tmp_path / "out"))
    assert {s: d.num_rows for s, d in dd.items()} == {"train": 8, "test": 3}


def test_publish_uses_the_split_column(splitcat: Catalog, tmp_path: Path):
    out = tmp_path / "pub"
    plan = publish(splitcat, "held", "me/held", dry_run=out, stage_configs=True)
    assert plan["splits"] == {"train": 8, "test": 3}
    assert sorted(plan["paths"]) == ["README.md", "data/test-00000-of-00001.parquet",
                                     "data/train-00000-of-00001.parquet", "stage_0/train-00000-of-00001.parquet",
                                     "stage_1/train-00000-of-00001.parquet"]
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {s: d.num_rows for s, d in ds.items()} == {"train": 8, "test": 3}
    assert "split" not in ds["train"].column_names
    assert set(ds["train"]["prompt_id"]) == {"a", "b", "c", "d"} and set(ds["test"]["prompt_id"]) == {"e", "f"}
    # stage configs hold train rows only (a, c: stage 0; b, d: stage 1), never a held-out prompt
    stage1 = datasets.load_dataset(str(out), "stage_1", cache_dir=str(tmp_path / "cache"))
    assert sorted(stage1["train"]["prompt_id"]) == ["b", "b", "d", "d"]
    with pytest.raises(PrefdataError, match="has a 'split' column .* test_size=0.2 would override it"):
        publish(splitcat, "held", "me/held", dry_run=tmp_path / "pub2", test_size=0.2)
    # without the column, the hash split by prompt still applies
    plain = publish(splitcat, "plain", "me/plain", dry_run=tmp_path / "pub3")
    assert plain["splits"] == {"train": 11}
