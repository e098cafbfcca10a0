"""Lance storage settings of catalog writes: text columns are written lz4-compressed (field metadata only: the
values, the content hash and the exported files are unchanged), appends keep the dataset's setting."""
import pyarrow as pa
import pyarrow.parquet as pq

from catalog import Catalog, content_hash
from catalog.writer import COMPRESSION, COMPRESSION_KEY

TABLE = pa.table({"prompt": ["a", "b"], "chosen": ["x", None], "margin": [1.0, 2.0]})


def test_text_columns_are_lz4_and_nothing_else_changes(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    cat.write("pairs", TABLE)
    ds = cat.dataset("pairs")
    assert {f.name: (f.metadata or {}).get(COMPRESSION_KEY) for f in ds.schema} == \
        {"prompt": COMPRESSION, "chosen": COMPRESSION, "margin": None}
    assert ds.to_table().equals(TABLE)
    assert cat.verify("pairs")["ok"] and cat.versions("pairs")[-1]["content_hash"] == content_hash(TABLE)
    cat.write("pairs", TABLE.slice(0, 1), mode="append")
    assert cat.read("pairs").column("prompt").to_pylist() == ["a", "b", "a"] and cat.verify("pairs")["ok"]
    cat.write_batches("streamed", TABLE.to_batches(), schema=TABLE.schema)
    assert cat.dataset("streamed").schema.field("prompt").metadata == {COMPRESSION_KEY: COMPRESSION}
    cat.export("pairs", to="parquet", out_dir=tmp_path / "out")
    (exported,) = (tmp_path / "out").glob("*.parquet")
    assert all(f.metadata is None for f in pq.read_schema(exported))


def test_staged_write_is_invisible_until_committed_and_discard_leaves_nothing(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    staged = cat.stage("src", TABLE, message="ingest", lineage={"builder": "ingest"})
    assert cat.names() == []                                   # files written, nothing committed
    cat.write("src", TABLE.slice(0, 1))                       # another writer commits meanwhile
    assert staged.commit() == 2
    assert cat.read("src").equals(TABLE) and cat.verify("src")["ok"]
    assert cat.lineage("src", 2)["builder"] == "ingest" and cat.lineage("src", 2)["content_hash"] == content_hash(TABLE)
    cat.stage("other", TABLE).discard()
    assert cat.names() == ["src"] and not (tmp_path / "cat" / "other.lance").exists()
