"""Lineage records, the log chain, events and the content hash."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Literal

import pyarrow as pa
import pytest
from catalog_kit import REPO, pairs_table, writer_env
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from catalog import Catalog, LineageError, canonical_json, content_hash
from prefdata import __version__
from prefdata.errors import VersionNotFound


class PairsCfg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    strategy: Literal["all_pairs", "best_vs_worst"] = "all_pairs"
    min_margin: float = 0.5


def test_lineage_round_trip(cat: Catalog):
    cat.write("raw", pairs_table(9), message="ingest", lineage={"builder": "ingest", "inputs": ["data/x.jsonl"]})
    cfg = PairsCfg(min_margin=1.0)
    table = pairs_table(6)
    v = cat.write("pairs", table, message="built", lineage={
        "builder": "pairs", "recipe": "examples/recipes/default.yaml", "config": cfg,
        "inputs": ["raw"], "rows_in": 9, "rows_kept": 6, "rows_dropped": {"tie": 2, "null_score": 1},
        "scorer_agreement": {"kendall_tau": 0.61}, "reference_model": "tiny-llama"})
    rec = cat.lineage("pairs", v)
    expected_cfg = {"strategy": "all_pairs", "min_margin": 1.0}
    assert rec["config"] == expected_cfg
    assert rec["config_sha256"] == hashlib.sha256(canonical_json(expected_cfg).encode()).hexdigest()
    assert canonical_json(expected_cfg) == '{"min_margin":1.0,"strategy":"all_pairs"}'
    assert rec["inputs"] == ["raw@1"]                          # a bare name is pinned to the version used
    assert rec["rows_in"] == 9 and rec["rows_kept"] == 6 and rec["rows_dropped"] == {"tie": 2, "null_score": 1}
    assert rec["rows"] == rec["rows_written"] == 6
    assert rec["content_hash"] == content_hash(table) == content_hash(cat.read("pairs", v))
    assert rec["package_version"] == __version__
    assert rec["message"] == "built" and rec["builder"] == "pairs" and rec["recipe"].endswith("default.yaml")
    assert rec["scorer_agreement"] == {"kendall_tau": 0.61} and rec["reference_model"] == "tiny-llama"
    assert rec["ref"] == "pairs@1" and rec["mode"] == "create" and rec["base_version"] == 0
    assert rec["created_at"].endswith("+00:00")
    # the message is Lance's own commit message too
    assert cat.dataset("pairs").read_transaction(v).transaction_properties["lance.commit.message"] == "built"


def test_log_is_newest_first_with_upstream_chain_and_events(cat: Catalog):
    cat.write("raw", pairs_table(9), lineage={"builder": "ingest", "inputs": ["/data/arena.jsonl"]})
    cat.write("ranked", pairs_table(8), lineage={"builder": "rank", "inputs": ["raw@1"]})
    cat.write("pairs", pairs_table(6), lineage={"builder": "pairs", "inputs": ["ranked"]})
    cat.write("raw", pairs_table(12), lineage={"builder": "ingest"})          # later raw version: not upstream
    cat.write("pairs", pairs_table(5), lineage={"builder": "pairs", "inputs": ["ranked@1", "raw@2"]})
    ev = cat.log_event("pairs", 1, "train", {"run": "r1", "checkpoint_dir": "runs/r1", "config_sha256": "ab"})
    log = cat.log("pairs")
    assert [(r["type"], r["ref"]) for r in log] == [("event", "pairs@1"), ("version", "pairs@2"),
                                                    ("version", "pairs@1")]
    assert log[0]["record"] == {"run": "r1", "checkpoint_dir": "runs/r1", "config_sha256": "ab"}
    assert log[0]["event_id"] == ev["event_id"] and log[0]["kind"] == "train"
    chain = log[2]["upstream"]
    assert [u["ref"] for u in chain] == ["ranked@1"]
    assert [u["ref"] for u in chain[0]["upstream"]] == ["raw@1"]
    assert chain[0]["upstream"][0]["upstream"] == [{"ref": "/data/arena.jsonl", "external": True}]
    assert [u["ref"] for u in log[1]["upstream"]] == ["ranked@1", "raw@2"]
    assert cat.events("pairs")[0]["version"] == 1
    with pytest.raises(VersionNotFound):
        cat.log_event("pairs", 9, "train", {})
    with pytest.raises(LineageError):
        cat.log_event("pairs", 1, "", {})
    with pytest.raises(LineageError):
        cat.log_event("pairs", 1, "train", {"x": object()})


def test_bad_lineage_is_refused_before_anything_is_written(cat: Catalog):
    bad = [
        ({"rows_in": 10, "rows_kept": 6, "rows_dropped": {"tie": 3}}, "rows_in"),
        ({"content_hash": "abc"}, "content_hash"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"rows_kept": -1}, "rows_kept"),
        ({"rows_dropped": {"tie": 1.5}}, "rows_dropped.tie"),
        ({"inputs": "raw@1"}, "inputs"),
        ({"config": {"a": float("nan")}}, "config"),
        ({"config": {"a": 1}, "config_sha256": "0" * 64}, "config_sha256"),
        ({"extra": {1, 2}}, None),
    ]
    for lineage, key in bad:
        with pytest.raises(LineageError) as e:
            cat.write("d", pairs_table(1), lineage=lineage)
        assert e.value.key == key
    with pytest.raises(VersionNotFound):       # an input in this catalog must exist at the named version
        cat.write("other", pairs_table(1))
        cat.write("d", pairs_table(1), lineage={"inputs": ["other@7"]})
    assert not cat.exists("d")


_HASH_SCRIPT = """
import sys, json
sys.path.insert(0, sys.argv[1])
from catalog_kit import pairs_table
from catalog import content_hash
print(content_hash(pairs_table(70000)))
"""


def test_content_hash_is_deterministic_across_processes_and_layouts(cat: Catalog):
    t = pairs_table(70_000)                        # spans two hash blocks
    h = content_hash(t)
    out = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, str(REPO / "tests" / "catalog")], env=writer_env(),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == h
    assert content_hash(pa.Table.from_batches(t.to_batches(max_chunksize=999))) == h
    assert content_hash(pa.concat_tables([pairs_table(3, start=-3), t]).slice(3)) == h
    assert content_hash(t.to_batches(max_chunksize=4096), schema=t.schema) == h
    swapped = pa.concat_tables([t.slice(1, 1), t.slice(0, 1), t.slice(2)])
    assert content_hash(swapped) != h                                          # order-sensitive
    assert content_hash(t.rename_columns([*t.column_names[:-1], "j"])) != h   # names are content
    # appended versions hash exactly like the same rows written at once
    cat.write("a", t.slice(0, 65_000))
    cat.write("a", t.slice(65_000, 3_000), mode="append")
    cat.write("a", t.slice(68_000), mode="append")
    cat.write("b", t)
    assert cat.lineage("a")["content_hash"] == cat.lineage("b")["content_hash"] == h
    assert cat.verify("a", 2)["ok"] and cat.verify("a")["ok"]


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=5)),
                               st.one_of(st.none(), st.integers(-2**40, 2**40)),
                               st.one_of(st.none(), st.lists(st.floats(allow_nan=False), max_size=3)),
                               st.one_of(st.none(), st.booleans())), max_size=40),
       cut=st.integers(0, 40))
def test_content_hash_ignores_memory_layout(rows, cut):
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    schema = pa.schema([("s", pa.string()), ("i", pa.int64()), ("l", pa.list_(pa.float64())), ("b", pa.bool_())])
    t = pa.Table.from_arrays([pa.array(list(c), f.type) for c, f in zip(cols, schema, strict=True)], schema=schema)
    cut = min(cut, t.num_rows)
    rechunked = pa.concat_tables([t.slice(0, cut), t.slice(cut)])
    large = t.cast(pa.schema([("s", pa.large_string()), ("i", pa.int64()), ("l", pa.large_list(pa.float64())),
                              ("b", pa.bool_())]))
    assert content_hash(rechunked) == content_hash(t) == content_hash(large)


def test_lineage_json_is_canonical():
    assert canonical_json({"b": [1, {"z": 1, "a": "é"}], "a": 0.1}) == '{"a":0.1,"b":[1,{"a":"é","z":1}]}'
    assert json.loads(canonical_json({"k": PairsCfg()})) == {"k": {"strategy": "all_pairs", "min_margin": 0.5}}
