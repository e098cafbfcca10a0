"""ingest_to_catalog writes one catalog version with the ingest lineage; real Lance catalog on disk."""
import hashlib

import pytest
from ingest_kit import DATA, HH

from catalog import Catalog
from prefdata.errors import IngestError
from prefdata.ingest import ingest_to_catalog, read_source


def test_ingest_hh_into_catalog(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    info = ingest_to_catalog(cat, HH, name="hh")
    assert (info["name"], info["format"], info["kind"], info["rows_in"], info["rows_kept"], info["drops"]) == (
        "hh", "hh-rlhf", "pairs", 1000, 1000, {})
    assert info["source_sha256"] == hashlib.sha256(HH.read_bytes()).hexdigest()
    back = cat.read("hh", info["version"])
    assert back.num_rows == 1000 and back.column("chosen").to_pylist() == read_source(HH).table["chosen"].to_pylist()
    lin = cat.lineage("hh", info["version"])
    flat = {**lin, **(lin.get("lineage") or {}), **(lin.get("user") or {})}
    assert flat["builder"] == "ingest" and flat["format"] == "hh-rlhf" and flat["source"] == str(HH)
    assert flat["rows_in"] == 1000 and flat["rows_kept"] == 1000
    again = ingest_to_catalog(cat, HH, name="hh", message="second")
    assert again["version"] > info["version"]


def test_pick_a_pic_media_go_under_the_catalog(tmp_path):
    cat = Catalog.open(tmp_path / "cat")
    info = ingest_to_catalog(cat, DATA / "pick_a_pic_sample.parquet", name="pap")
    uris = cat.read("pap")["chosen"].to_pylist()
    assert info["rows_kept"] == 2 and all((tmp_path / "cat" / u).is_file() for u in uris)
    assert cat.lineage("pap")["rows_dropped"] == {"tie (label 0.5)": 1}


def test_bad_input_writes_nothing(tmp_path, jsonl):
    cat = Catalog.open(tmp_path / "cat")
    with pytest.raises(IngestError):
        ingest_to_catalog(cat, jsonl(['{"prompt": "p", "response": "a", "helpfulness": "x"}']), format="helpsteer2",
                          name="bad")
    assert "bad" not in cat.names()
