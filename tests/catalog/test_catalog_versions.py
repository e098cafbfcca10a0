"""Writing, reading, versions, tags and time travel on a real on-disk Lance catalog."""
from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from catalog_kit import pairs_table

from catalog import Catalog, DatasetExists, InvalidName, TagExists, parse_ref
from prefdata.errors import DatasetNotFound, PrefdataError, SchemaError, VersionNotFound


def test_parse_ref_forms():
    assert parse_ref("name@3") == ("name", 3)
    assert parse_ref("name@best") == ("name", "best")
    assert parse_ref("name") == ("name", None)
    assert parse_ref("arena-curry.v2@rc-1") == ("arena-curry.v2", "rc-1")
    for bad in ["", "@3", "name@", "a@b@c", "sp ace", "../up", ".hidden", "semi;colon", "x@b c"]:
        with pytest.raises(InvalidName):
            parse_ref(bad)


def test_write_read_versions_and_time_travel(cat: Catalog):
    t1, t2 = pairs_table(5), pairs_table(3, start=100)
    assert cat.write("pairs_hh", t1, message="first") == 1
    assert cat.write("pairs_hh", t2, message="replace") == 2          # overwrite: new content, new version
    assert cat.write("pairs_hh", t1, mode="append", message="add") == 3
    assert cat.read("pairs_hh", 1).equals(t1)
    assert cat.read("pairs_hh", 2).equals(t2)
    assert cat.read("pairs_hh").equals(pa.concat_tables([t2, t1]))
    assert cat.read("pairs_hh@1").equals(t1)                          # a ref works where a name does
    assert cat.read("pairs_hh", 3, columns=["i"]).column("i").to_pylist() == list(range(100, 103)) + list(range(5))

    vs = cat.versions("pairs_hh")
    assert [v["version"] for v in vs] == [1, 2, 3]
    assert [v["rows"] for v in vs] == [5, 3, 8]
    assert [v["message"] for v in vs] == ["first", "replace", "add"]
    assert [v["mode"] for v in vs] == ["create", "overwrite", "append"]
    assert all(len(v["content_hash"]) == 64 for v in vs)
    assert vs[0]["content_hash"] != vs[1]["content_hash"]
    assert cat.names() == ["pairs_hh"] and cat.exists("pairs_hh") and not cat.exists("other")


def test_tags_pick_versions_and_do_not_move_silently(cat: Catalog):
    cat.write("d", pairs_table(2))
    cat.write("d", pairs_table(4))
    assert cat.tag("d", 1, "best") == 1
    assert cat.read("d", "best").num_rows == 2
    assert cat.read("d@best").num_rows == 2
    assert cat.tag("d", "best", "stable") == 1                         # a tag can be tagged by tag
    assert cat.tag("d", 1, "best") == 1                                # re-tagging the same version: no-op
    with pytest.raises(TagExists):
        cat.tag("d", 2, "best")
    assert cat.tag("d", 2, "best", force=True) == 2
    assert cat.read("d@best").num_rows == 4
    assert cat.tags("d") == {"best": 2, "stable": 1}
    assert [v["tags"] for v in cat.versions("d")] == [["stable"], ["best"]]
    cat.untag("d", "stable")
    assert cat.tags("d") == {"best": 2}
    for bad in ["3", "with space", "a@b", ""]:
        with pytest.raises(InvalidName):
            cat.tag("d", 1, bad)


def test_missing_datasets_versions_and_tags_are_typed_errors(cat: Catalog):
    with pytest.raises(DatasetNotFound):
        cat.read("nope")
    with pytest.raises(DatasetNotFound):
        cat.versions("nope")
    cat.write("d", pairs_table(2))
    for bad in [0, 2, 99, "missing-tag"]:
        with pytest.raises(VersionNotFound) as e:
            cat.read("d", bad)
        assert "available: 1..1" in str(e.value)
    with pytest.raises(VersionNotFound):
        cat.scan("d", 5)


@pytest.mark.parametrize("bad", ["", "has space", "semi;colon", "../escape", ".hidden", "a/b", "x@1@2", None, 3])
def test_bad_names_are_refused(cat: Catalog, bad):
    with pytest.raises(InvalidName):
        cat.write(bad, pairs_table(1))
    assert not any(Path(cat.root).glob("*.lance"))


def test_create_mode_refuses_existing_and_unknown_mode(cat: Catalog):
    assert cat.write("d", pairs_table(1), mode="create") == 1
    with pytest.raises(DatasetExists):
        cat.write("d", pairs_table(1), mode="create")
    with pytest.raises(PrefdataError, match="write mode"):
        cat.write("d", pairs_table(1), mode="upsert")
    assert [v["version"] for v in cat.versions("d")] == [1]


def test_append_schema_mismatch_names_the_column(cat: Catalog):
    cat.write("d", pairs_table(3))
    with pytest.raises(SchemaError) as e:
        cat.write("d", pairs_table(1).drop_columns(["margin"]), mode="append")
    assert e.value.column == "margin"
    with pytest.raises(SchemaError) as e:
        cat.write("d", pairs_table(1).append_column("extra", pa.array([1])), mode="append")
    assert e.value.column == "extra"
    t = pairs_table(1)
    with pytest.raises(SchemaError) as e:
        cat.write("d", t.set_column(t.schema.get_field_index("stage"), "stage", pa.array(["0"])), mode="append")
    assert e.value.column == "stage" and "int32" in str(e.value)
    # reordered columns and string/large_string are the same schema
    reordered = t.select(list(reversed(t.column_names))).cast(
        pa.schema([pa.field(f.name, pa.large_string() if f.type == pa.string() else f.type)
                   for f in reversed(list(t.schema))]))
    assert cat.write("d", reordered, mode="append") == 2
    assert cat.read("d").num_rows == 4 and cat.read("d").schema == cat.read("d", 1).schema
    assert cat.verify("d")["ok"]


def _data_files(cat: Catalog, name: str) -> dict[str, tuple[int, int]]:
    data = Path(cat.uri(name)) / "data"
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in data.iterdir()}


def test_append_does_not_rewrite_existing_data_files(cat: Catalog):
    cat.write("d", pairs_table(100))
    cat.write("d", pairs_table(50, start=100), mode="append")
    before = _data_files(cat, "d")
    v1_files = {f.path for frag in cat.dataset("d", 2).get_fragments() for f in frag.data_files()}
    cat.write("d", pairs_table(10, start=150), mode="append")
    after = _data_files(cat, "d")
    assert all(after[name] == stat for name, stat in before.items())   # same files, untouched
    new = set(after) - set(before)
    assert len(new) == 1
    v3_files = {f.path for frag in cat.dataset("d", 3).get_fragments() for f in frag.data_files()}
    assert v1_files < v3_files and v3_files - v1_files == {n for n in new}
    assert cat.read("d").column("i").to_pylist() == list(range(160))


def test_overwrite_keeps_older_versions_readable(cat: Catalog):
    cat.write("d", pairs_table(4))
    cat.write("d", pa.table({"other": ["schema"]}))                    # overwrite may change the schema
    assert cat.read("d").column_names == ["other"]
    assert cat.read("d", 1).equals(pairs_table(4))


def test_empty_table_is_a_recorded_version(cat: Catalog):
    cat.write("d", pairs_table(0), lineage={"rows_in": 7, "rows_kept": 0, "rows_dropped": {"tie": 7}})
    assert cat.read("d").num_rows == 0
    rec = cat.lineage("d")
    assert rec["rows"] == 0 and rec["rows_dropped"] == {"tie": 7}
    assert cat.write("d", pairs_table(2), mode="append") == 2


def test_scan_is_lazy_polars_over_a_version(cat: Catalog):
    cat.write("d", pairs_table(30))
    cat.write("d", pairs_table(6))
    lf = cat.scan("d", 1)
    assert isinstance(lf, pl.LazyFrame)
    out = lf.filter(pl.col("stage") == 1).select(pl.len()).collect().item()
    assert out == 10
    assert cat.scan("d").select(pl.len()).collect().item() == 6


def test_polars_frames_are_accepted_and_non_tables_refused(cat: Catalog):
    df = pl.DataFrame({"a": [1, 2], "s": ["x", None]})
    cat.write("d", df)
    cat.write("d", df.lazy(), mode="append")
    assert cat.read("d").num_rows == 4
    with pytest.raises(SchemaError):
        cat.write("d", [{"a": 1}])


def test_catalog_opens_from_env_and_reopens(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PREFDATA_CATALOG", str(tmp_path / "envcat"))
    cat = Catalog.open()
    cat.write("d", pairs_table(2))
    assert (tmp_path / "envcat" / "catalog.json").exists()
    assert Catalog.open(tmp_path / "envcat").read("d").num_rows == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrefdataError):
        Catalog.open(tmp_path / "file")
    assert os.listdir(tmp_path / "envcat")  # sanity: the catalog is a real directory
