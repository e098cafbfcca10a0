"""Format auto-detection, and the generic jsonl / parquet / hf formats with a column mapping."""
import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_kit import ARENA, DATA, HH, hs2_row

from prefdata.errors import FormatError, IngestError
from prefdata.ingest import FORMATS, detect_format, read_source
from prefdata.ingest.readers import container_of, peek


@pytest.mark.parametrize("path,name", [
    (ARENA, "arena"), (HH, "hh-rlhf"), (DATA / "ultrafeedback_sample.jsonl", "ultrafeedback"),
    (DATA / "nectar_sample.jsonl", "nectar"), (DATA / "helpsteer2_sample.jsonl", "helpsteer2"),
    (DATA / "pick_a_pic_sample.parquet", "pick-a-pic")])
def test_detects_each_bundled_sample(path, name):
    assert detect_format(peek(path, container_of(path))) == name == detect_format(path) == detect_format(str(path))


def test_hh_refines_trl_implicit():
    hh = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    assert detect_format([hh]) == "hh-rlhf"
    assert detect_format([{"chosen": "The sky is blue.", "rejected": "The sky is green."}]) == "trl"
    assert detect_format([{"prompt": "p", "completion": "c", "label": True}]) == "trl"


def test_ambiguous_names_candidates():
    row = {**hs2_row("p", "a"), "chosen": "x", "rejected": "y"}
    with pytest.raises(FormatError, match="ambiguous format, records match helpsteer2, trl .* pass --format"):
        detect_format([row])
    # every peeked record must match: a second record that is only trl resolves it
    assert detect_format([row, {"prompt": "p", "chosen": "x", "rejected": "y"}]) == "trl"


def test_unknown_and_empty():
    with pytest.raises(FormatError, match="unknown format"):
        detect_format([{"question": "q", "answer": "a"}])
    with pytest.raises(FormatError, match="no readable records"):
        detect_format([])


def test_generic_formats_are_never_detected():
    assert {n for n, f in FORMATS.items() if f.matches is None} == {"jsonl", "parquet", "hf"}


MAPPING = {"prompt": "question", "response": "answer", "score": "rating"}
ROWS = [{"question": "Q1", "answer": "A", "rating": 3, "extra": "x"},
        {"question": "Q1", "answer": "B", "rating": 1.5, "extra": "y"},
        {"question": "Q2", "answer": "C", "rating": None, "extra": "z"},
        {"question": "Q2", "answer": "D", "rating": 7, "extra": "w"}]
EXPECTED = [("Q1", "A", 3.0), ("Q1", "B", 1.5), ("Q2", "C", None), ("Q2", "D", 7.0)]


def _got(res):
    return [(r["prompt"], r["response"], r["score"]) for r in res.table.to_pylist()]


def test_mapping_jsonl(jsonl):
    res = read_source(jsonl(ROWS), mapping=MAPPING)
    assert (res.format, res.kind, _got(res), res.drops) == ("jsonl", "responses", EXPECTED, {})
    assert "extra" not in res.table.column_names and res.info["mapping"] == MAPPING


def test_mapping_parquet_and_scores_fields(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    res = read_source(path, mapping={**MAPPING, "scores.judge": "rating"})
    assert (res.format, _got(res)) == ("parquet", EXPECTED)
    assert [r["scores"]["judge"] for r in res.table.to_pylist()] == [3.0, 1.5, None, 7.0]


def test_mapping_hf_folders(tmp_path):
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "saved"))
    assert _got(read_source(tmp_path / "saved", format="hf", mapping=MAPPING)) == EXPECTED
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(IngestError, match=r"several splits \['test', 'train'\]"):
        read_source(tmp_path / "dd", mapping=MAPPING)
    assert _got(read_source(tmp_path / "dd" / "train", mapping=MAPPING)) == EXPECTED
    (tmp_path / "files").mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "files" / "part-0.parquet")
    assert _got(read_source(tmp_path / "files", format="hf", mapping=MAPPING)) == EXPECTED


def test_named_format_reads_parquet_too(tmp_path):
    path = tmp_path / "hs.parquet"
    pq.write_table(pa.Table.from_pylist([hs2_row("p", "a", h=4), hs2_row("p", "b", h=2)]), path)
    res = read_source(path)
    assert res.format == "helpsteer2" and [r["scores"]["helpfulness"] for r in res.table.to_pylist()] == [4.0, 2.0]


def test_mapping_pairs_margin_and_order(jsonl):
    rows = [{"q": "p", "good": "a", "bad": "b", "sg": 5, "sb": 2}, {"q": "p", "good": "c", "bad": "d", "sg": 1, "sb": 3}]
    m = {"prompt": "q", "chosen": "good", "rejected": "bad", "score_chosen": "sg", "score_rejected": "sb"}
    with pytest.raises(IngestError, match=r"in\.jsonl:2 column 'sg': score_chosen 1.0 < score_rejected 3.0"):
        read_source(jsonl(rows), mapping=m)
    res = read_source(jsonl(rows), mapping=m, on_error="drop")
    assert res.kind == "pairs" and res.drops == {"chosen scored below rejected": 1}
    (row,) = res.table.to_pylist()
    assert (row["chosen"], row["rejected"], row["margin"], row["strategy"]) == ("a", "b", 3.0, "given")


def test_mapping_identity_for_canonical_names(jsonl):
    res = read_source(jsonl([{"prompt": "p", "response": "a", "score": 1}, {"prompt": "p", "response": "b", "score": 2}]),
                      format="jsonl")
    assert _got(res) == [("p", "a", 1.0), ("p", "b", 2.0)]


def test_mapping_errors(jsonl, tmp_path):
    path = jsonl(ROWS)
    with pytest.raises(IngestError) as e:
        read_source(path, mapping={**MAPPING, "score": "stars"})
    assert e.value.path == str(path) and e.value.column == "stars" and "mapped column 'stars' (for 'score')" in str(e.value)
    with pytest.raises(FormatError, match="unknown responses column 'rating'"):
        read_source(path, mapping={**MAPPING, "rating": "rating"})
    with pytest.raises(IngestError, match="no source column for responses column 'response'"):
        read_source(path, mapping={"prompt": "question"})
    with pytest.raises(FormatError, match="--map applies to the generic formats"):
        read_source(ARENA, format="arena", mapping=MAPPING)
    with pytest.raises(FormatError, match="--format hf needs a datasets folder"):
        read_source(path, format="hf", mapping=MAPPING)
