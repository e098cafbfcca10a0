"""Prompt-only sources (format `prompts`) and carried columns (`carry`), on the bundled real data and on
hand-made files in each container (JSON Lines, parquet, a datasets folder)."""
import hashlib
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_kit import EXAMPLES, REPO

from prefdata.errors import FormatError, IngestError
from prefdata.ingest import detect_format, ingest_to_catalog, read_source
from prefdata.schema import validate

CODE = EXAMPLES / "code_problems.jsonl"
CAPTIONS = EXAMPLES / "images" / "captions.jsonl"


def sha(text: str) -> str:   # the documented rule, written out independently of prefdata.ingest.ids
    return hashlib.sha256(" ".join(unicodedata.normalize("NFC", text).split()).encode()).hexdigest()


def test_code_problems_are_detected_as_prompts_with_every_column_carried():
    res = read_source(CODE)
    assert res.format == "prompts" and res.kind == "prompts"
    t = validate(res.table, "prompts")
    assert t.column_names == ["prompt_id", "prompt", "task_id", "entry_point", "reference_solution", "tests"]
    assert t.schema.field("tests").type == pa.list_(pa.string())
    rows = t.to_pylist()
    assert len(rows) == 10 and res.rows_in == 10 and res.drops == {}
    fizz = rows[0]
    assert fizz["task_id"] == "fizzbuzz" and fizz["prompt_id"] == sha(fizz["prompt"])
    assert fizz["tests"][0] == "assert fizzbuzz(1) == ['1']" and len(fizz["tests"]) == 5
    assert res.info["carried"] == ["task_id", "entry_point", "reference_solution", "tests"]


def test_captions_with_a_mapped_prompt_keep_the_other_columns():
    res = read_source(CAPTIONS, format="prompts", mapping={"prompt": "caption_short"})
    rows = res.table.to_pylist()
    assert len(rows) == 12 and rows[0]["prompt"] == "Color image of the astronaut Eileen Collins."
    assert rows[0]["file"] == "images/astronaut.png" and rows[0]["original_size"] == [512, 512]
    assert "caption_short" not in res.table.column_names          # it became `prompt`
    horse = next(r for r in rows if r["file"] == "images/horse.png")
    assert horse["caption_long"] is None                          # a key absent from a record is null


def test_duplicates_are_an_accounted_drop_and_empty_prompt_an_error(jsonl):
    rows = [{"prompt": "Sort a list.", "answer": "sorted(x)"}, {"prompt": "  Sort a\u00a0list. ", "answer": "x"},
            {"prompt": "Reverse a list.", "answer": "x[::-1]"}, {"prompt": "   ", "answer": "?"}]
    path = jsonl(rows)
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert (e.value.path, e.value.row, e.value.column) == (str(path), 4, "prompt")
    assert "empty or missing prompt" in str(e.value)
    res = read_source(path, on_error="drop")
    assert res.table.column("answer").to_pylist() == ["sorted(x)", "x[::-1]"]    # first of the duplicates kept
    assert res.drops == {"empty prompt": 1, "duplicate prompt": 1} and res.rows_in == 4


def test_mapped_id_column_and_null_ids_fall_back_to_the_hash(jsonl):
    path = jsonl([{"q": "a?", "id": "p1", "level": 1}, {"q": "b?", "id": None, "level": 2},
                  {"q": "c?", "id": "p1", "level": 3}])
    res = read_source(path, format="prompts", mapping={"prompt": "q", "prompt_id": "id"})
    assert res.table.select(["prompt_id", "prompt", "level"]).to_pylist() == [
        {"prompt_id": "p1", "prompt": "a?", "level": 1}, {"prompt_id": sha("b?"), "prompt": "b?", "level": 2}]
    assert res.drops == {"duplicate prompt_id": 1}


def test_conversational_prompts_go_to_messages(jsonl):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    res = read_source(jsonl([{"prompt": [{"role": "user", "content": "Name a prime."}], "level": "easy"},
                             {"prompt": turns, "level": "hard"}]))
    assert res.format == "prompts" and res.info["prompt_form"] == "conversational"
    rows = validate(res.table, "prompts").to_pylist()
    assert rows[0]["prompt"] == "Name a prime." and rows[0]["messages"][0]["content"] == "Name a prime."
    assert rows[1]["prompt"] == "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant:" and rows[1]["messages"] == turns


def test_detection_needs_no_answer_columns():
    assert detect_format([{"prompt": "p", "tests": ["assert 1"]}, {"prompt": "q"}]) == "prompts"
    assert detect_format([{"prompt": "p", "answer": "42"}]) == "prompts"              # a reference answer
    for answered in ({"prompt": "p", "response": "r"}, {"prompt": "p", "completions": "x"}):
        with pytest.raises(FormatError, match="unknown format"):     # answers present: not a prompt-only file
            detect_format([answered])


def test_parquet_and_datasets_folder_keep_the_file_types(tmp_path):
    table = pa.table({"question": ["What is 2+2?", "What is 3*3?"], "answer": [4, 9],
                      "image": pa.array([{"bytes": b"\x89PNG", "path": "a.png"}, None],
                                        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    pq.write_table(table, tmp_path / "math.parquet")
    res = read_source(tmp_path / "math.parquet", format="prompts", mapping={"prompt": "question"})
    assert res.table.schema.field("answer").type == pa.int64()
    assert res.table.column("image").to_pylist()[0] == {"bytes": b"\x89PNG", "path": "a.png"}
    datasets = pytest.importorskip("datasets")
    datasets.Dataset(table).save_to_disk(str(tmp_path / "hf"))
    res_hf = read_source(tmp_path / "hf", format="prompts", mapping={"prompt": "question"})
    assert res_hf.table.to_pylist() == res.table.to_pylist()


def test_mistyped_carried_value_names_line_and_column(jsonl):
    path = jsonl([{"prompt": "a", "tests": ["assert 1"]}, {"prompt": "b", "tests": "assert 2"}])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert (e.value.row, e.value.column) == (2, "tests") and "expected a list" in str(e.value)
    res = read_source(path, on_error="drop")
    assert res.drops == {"mistyped tests": 1} and res.table.column("prompt").to_pylist() == ["a"]


def test_carry_keeps_extra_columns_on_responses_and_pairs(jsonl):
    rows = [{"question": "q1", "answer": "a", "rating": 2, "source": "web", "tags": ["x"]},
            {"question": "q1", "answer": "b", "rating": 1, "source": "book", "tags": []}]
    m = {"prompt": "question", "response": "answer", "score": "rating"}
    res = read_source(jsonl(rows), mapping=m, carry=["source", "tags", "question"])
    assert res.table.select(["response", "source", "tags", "question"]).to_pylist() == [
        {"response": "a", "source": "web", "tags": ["x"], "question": "q1"},
        {"response": "b", "source": "book", "tags": [], "question": "q1"}]
    assert "source" not in read_source(jsonl(rows, "b.jsonl"), mapping=m).table.column_names   # opt-in
    pairs = read_source(jsonl([{"prompt": "p", "chosen": "c", "rejected": "r", "judge": "gpt"}], "p.jsonl"),
                        format="trl", carry=["judge"])
    assert pairs.kind == "pairs" and pairs.table.column("judge").to_pylist() == ["gpt"]


def test_carry_errors_name_the_column(jsonl):
    path = jsonl([{"question": "q", "answer": "a", "prompt": "other"}])
    m = {"prompt": "question", "response": "answer"}
    with pytest.raises(IngestError) as e:
        read_source(path, mapping=m, carry=["sorce"])
    assert e.value.column == "sorce" and "carry names column(s) ['sorce']" in str(e.value)
    with pytest.raises(IngestError, match="cannot carry column 'prompt'.*comes from source column 'question'"):
        read_source(path, mapping=m, carry=["prompt"])
    # carried by `prompts` without being named: left out and listed, never silently lost
    res = read_source(path, format="prompts", mapping={"prompt": "question"})
    assert res.table.column_names == ["prompt_id", "prompt", "answer"]
    assert set(res.info["not_carried"]) == {"prompt"}


def test_leading_null_line_is_named_not_a_crash(jsonl):
    path = jsonl(["null", {"prompt": "a"}])
    with pytest.raises(IngestError) as e:
        read_source(path, format="prompts")
    assert e.value.row == 1 and "expected a JSON object" in str(e.value)


def test_prompts_into_the_catalog(tmp_path):
    catalog = pytest.importorskip("catalog")
    cat = catalog.Catalog.open(tmp_path / "cat")
    info = ingest_to_catalog(cat, CODE, name="code-problems")
    assert info["kind"] == "prompts" and info["rows_kept"] == 10
    back = cat.read("code-problems")
    assert back.column("tests").to_pylist() == read_source(CODE).table.column("tests").to_pylist()
    assert str(CODE.relative_to(REPO)) in info["source"]
