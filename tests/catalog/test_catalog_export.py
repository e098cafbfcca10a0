"""Exports load back unchanged, and pairs exports are in TRL's DPOTrainer format."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from catalog_kit import pairs_table
from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_extract_prompt

from catalog import Catalog, ExportError


@pytest.fixture
def expcat(cat: Catalog) -> Catalog:
    t = pairs_table(40)
    # nested and nullable columns ride along as extra columns
    t = t.append_column("scores_chosen", pa.array([{"helpfulness": float(i), "honesty": None} for i in range(40)]))
    t = t.append_column("images", pa.array([[f"img/{i}.png"] if i % 2 else None for i in range(40)],
                                           pa.list_(pa.string())))
    cat.write("pairs", t, message="v1", lineage={"builder": "pairs"})
    cat.write("pairs", t.slice(0, 10), message="v2")
    return cat


def test_parquet_single_file_and_shards_load_back(expcat: Catalog, tmp_path: Path):
    one = expcat.export("pairs@1", "parquet", tmp_path / "pq")
    assert one["ref"] == "pairs@1" and one["rows"] == 40 and len(one["paths"]) == 1
    assert pq.read_table(one["paths"][0]).equals(expcat.read("pairs", 1))
    shards = expcat.export("pairs@1", "parquet", tmp_path / "shards", shard_rows=15)
    assert [Path(p).name for p in shards["paths"]] == [f"pairs-v1-0000{i}-of-00003.parquet" for i in range(3)]
    assert [pq.read_metadata(p).num_rows for p in shards["paths"]] == [15, 15, 10]
    assert pa.concat_tables([pq.read_table(p) for p in shards["paths"]]).equals(expcat.read("pairs", 1))
    lineage = json.loads(Path(one["lineage_path"]).read_text())
    assert lineage["ref"] == "pairs@1" and lineage["builder"] == "pairs"
    with pytest.raises(ExportError):                      # never clobbers without being asked
        expcat.export("pairs@1", "parquet", tmp_path / "pq")
    assert expcat.export("pairs@1", "parquet", tmp_path / "pq", overwrite=True)["rows"] == 40


def test_jsonl_is_utf8_one_object_per_line(expcat: Catalog, tmp_path: Path):
    out = expcat.export("pairs", "jsonl", tmp_path / "j")      # latest = version 2
    assert out["ref"] == "pairs@2" and out["rows"] == 10
    raw = Path(out["paths"][0]).read_bytes()
    assert "ünïcode ✓".encode() in raw                          # UTF-8, not \u escapes
    lines = raw.decode("utf-8").splitlines()
    assert len(lines) == 10
    rows = [json.loads(line) for line in lines]
    assert rows == expcat.read("pairs", 2).to_pylist()
    assert out["nan_written_as_null"] == {}


def test_jsonl_counts_nan_written_as_null(cat: Catalog, tmp_path: Path):
    cat.write("f", pa.table({"x": [1.0, float("nan"), None]}))
    out = cat.export("f", "jsonl", tmp_path)
    assert out["nan_written_as_null"] == {"x": 1}
    assert pl.read_ndjson(out["paths"][0])["x"].to_list() == [1.0, None, None]


def test_hf_export_loads_back_and_is_trl_dpo_format(expcat: Catalog, tmp_path: Path):
    out = expcat.export("pairs@1", "hf", tmp_path / "hf")
    assert out["trl_dpo_columns"] is True
    ds = datasets.load_from_disk(out["paths"][0])
    assert ds.num_rows == 40
    assert ds.to_list() == expcat.read("pairs", 1).to_pylist()
    assert json.loads((tmp_path / "hf" / "prefdata_lineage.json").read_text())["ref"] == "pairs@1"
    row = ds[0]
    # TRL's own data utilities accept the rows as-is: standard (non-conversational) preference format
    assert not is_conversational(row)
    assert maybe_extract_prompt(row) == row
    assert maybe_apply_chat_template(row, processing_class=None) == row
    assert all(isinstance(row[k], str) for k in ("prompt", "chosen", "rejected"))
    with pytest.raises(ExportError):
        expcat.export("pairs@1", "hf", tmp_path / "hf")
    assert expcat.export("pairs@2", "hf", tmp_path / "hf", overwrite=True)["rows"] == 10
    assert datasets.load_from_disk(str(tmp_path / "hf")).num_rows == 10


def test_export_errors_are_typed(expcat: Catalog, tmp_path: Path):
    with pytest.raises(ExportError):
        expcat.export("pairs", "csv", tmp_path)
    with pytest.raises(ExportError):
        expcat.export("pairs", "parquet", tmp_path, shard_rows=0)
    with pytest.raises(ExportError):
        expcat.export("pairs", "jsonl", tmp_path, shard_rows=5)
