"""Malformed inputs across every ingest format and the recipe parser: each one is a typed error that
names the file and the row or column (or, with on_error="drop", an accounted drop). Never another
exception, never a silently shorter table."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefdata.errors import FormatError, IngestError, PrefdataError, RecipeError, SchemaError
from prefdata.ingest import read_source

ARENA = {"question_id": "q1", "prompt": "What is 2+2?", "completions": [
    {"model": "m1", "answer_id": "a1", "response": "4", "score": 9, "judgment": "good"},
    {"model": "m2", "answer_id": "a2", "response": "5", "score": 2, "judgment": "bad"}]}
HH = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
UF = {"source": "s", "instruction": "Name a colour.", "models": ["a", "b"], "completions": [
    {"model": "a", "response": "red", "overall_score": 7.0, "annotations": {
        k: {"Rating": "4", "Rationale": "ok"} for k in ("helpfulness", "honesty", "instruction_following",
                                                       "truthfulness")}},
    {"model": "b", "response": "blue", "overall_score": 5.0, "annotations": {
        k: {"Rating": "3", "Rationale": "ok"} for k in ("helpfulness", "honesty", "instruction_following",
                                                       "truthfulness")}}],
      "correct_answers": [], "incorrect_answers": []}
NECTAR = {"prompt": "\n\nHuman: Capital of France?\n\nAssistant:", "answers": [
    {"answer": "Paris", "model": "a", "rank": 1.0}, {"answer": "Lyon", "model": "b", "rank": 2.0}],
    "turns": 1, "num_responses": 2, "good_natured": True, "source": ["x"]}
HS = [{"prompt": "Say hi", "response": "hi", "helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 1,
       "verbosity": 1},
      {"prompt": "Say hi", "response": "hello there", "helpfulness": 3, "correctness": 4, "coherence": 4,
       "complexity": 1, "verbosity": 2}]
TRL = {"prompt": "Say hi", "chosen": "hi", "rejected": "no"}


def _bad(d: dict, path: str, value) -> dict:
    """A deep copy of d with the value at dotted `path` replaced (or deleted when value is ...)."""
    d = json.loads(json.dumps(d))
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = int(keys[-1]) if isinstance(node, list) else keys[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return d


def _lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


# (id, format, file suffix, content bytes | callable(path), what the message must name)
CASES = [
    ("arena-missing-prompt", "arena", _lines(_bad(ARENA, "prompt", ...)), "prompt"),
    ("arena-completions-not-list", "arena", _lines(_bad(ARENA, "completions", "x")), "completions"),
    ("arena-score-text", "arena", _lines(_bad(ARENA, "completions.0.score", "abc")), "score"),
    ("arena-score-nan", "arena", _lines(ARENA, b'{"question_id":"q2","prompt":"p","completions":[{"model":"m",'
                                        b'"answer_id":"b1","response":"r","score":NaN,"judgment":"j"}]}'), "score"),
    ("arena-score-inf", "arena", _lines(ARENA, b'{"question_id":"q2","prompt":"p","completions":[{"model":"m",'
                                        b'"answer_id":"b1","response":"r","score":Infinity,"judgment":"j"}]}'),
     "score"),
    ("arena-dup-answer-id", "arena", _lines(_bad(ARENA, "completions.1.answer_id", "a1")), "a1"),
    ("arena-missing-response", "arena", _lines(_bad(ARENA, "completions.0.response", ...)), "response"),
    ("arena-bad-utf8", "arena", _lines(ARENA, b'{"question_id": "q\xff\xfe", "prompt": "x"}'), ":2"),
    ("arena-truncated-json", "arena", _lines(ARENA, b'{"question_id": "q3", "prompt": '), ":2"),
    ("hh-missing-rejected", "hh-rlhf", _lines(HH, _bad(HH, "rejected", ...)), "rejected"),
    ("hh-chosen-number", "hh-rlhf", _lines(_bad(HH, "chosen", 42)), "chosen"),
    ("hh-bad-utf8", "hh-rlhf", _lines(HH, b'{"chosen": "\xc3\x28", "rejected": "x"}'), ":2"),
    ("uf-rating-text", "ultrafeedback", _lines(_bad(UF, "completions.0.annotations.honesty.Rating", "great")),
     "honesty"),
    ("uf-overall-text", "ultrafeedback", _lines(_bad(UF, "completions.1.overall_score", "high")),
     "overall_score"),
    ("uf-missing-completions", "ultrafeedback", _lines(_bad(UF, "completions", ...)), "completions"),
    ("nectar-rank-text", "nectar", _lines(_bad(NECTAR, "answers.0.rank", "first")), "rank"),
    ("nectar-missing-answers", "nectar", _lines(_bad(NECTAR, "answers", ...)), "answers"),
    ("nectar-answer-missing-text", "nectar", _lines(_bad(NECTAR, "answers.1.answer", ...)), "answer"),
    ("helpsteer-attr-text", "helpsteer2", _lines(HS[0], _bad(HS[1], "helpfulness", "high")), "helpfulness"),
    ("helpsteer-missing-response", "helpsteer2", _lines(_bad(HS[0], "response", ...), HS[1]), "response"),
    ("trl-missing-rejected", "trl", _lines(TRL, _bad(TRL, "rejected", ...)), "rejected"),
    ("trl-chosen-wrong-type", "trl", _lines(_bad(TRL, "chosen", {"role": "x"})), "chosen"),
    ("jsonl-mapped-column-missing", "jsonl", _lines({"question": "q", "answer": "a"}), "rating"),
    ("jsonl-score-text", "jsonl", _lines({"question": "q", "answer": "a", "rating": 1.0},
                                         {"question": "q", "answer": "b", "rating": "ten"}), "rating"),
    ("parquet-score-string", "parquet", lambda p: pq.write_table(
        pa.table({"question": ["q", "q"], "answer": ["a", "b"], "rating": ["1", "x"]}), p), "rating"),
    ("parquet-garbage", "parquet", b"PAR1 this is not parquet", "parquet"),
    ("pick-a-pic-bad-label", "pick-a-pic", lambda p: pq.write_table(pa.table({
        "caption": ["a cat"], "jpg_0": [b"\x89PNG"], "jpg_1": [b"\x89PNG"], "label_0": [2.0], "label_1": [0.0]}), p),
     "label"),
    ("pick-a-pic-missing-caption", "pick-a-pic", lambda p: pq.write_table(pa.table({
        "jpg_0": [b"x"], "jpg_1": [b"y"], "label_0": [1.0], "label_1": [0.0]}), p), "caption"),
]
MAPPING = {"prompt": "question", "response": "answer", "score": "rating"}


def _write(tmp_path: Path, case_id: str, fmt: str, content) -> Path:
    suffix = ".parquet" if fmt in ("parquet", "pick-a-pic") else ".jsonl"
    path = tmp_path / f"{case_id}{suffix}"
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("case_id,fmt,content,names", CASES, ids=[c[0] for c in CASES])
def test_malformed_ingest_is_a_typed_error_or_accounted_drop(tmp_path, case_id, fmt, content, names):
    path = _write(tmp_path, case_id, fmt, content)
    mapping = MAPPING if fmt in ("jsonl", "parquet") else None
    with pytest.raises(PrefdataError) as err:
        read_source(path, format=fmt, mapping=mapping, media_dir=tmp_path / "media")
    msg = str(err.value)
    assert path.name in msg, msg                     # names the file
    assert names in msg, msg                         # and the row (":N") or the column
    assert isinstance(err.value, IngestError | SchemaError | FormatError)
    # the lenient mode either still refuses (structural damage) or accounts for every input row
    try:
        res = read_source(path, format=fmt, mapping=mapping, on_error="drop", media_dir=tmp_path / "media")
    except PrefdataError:
        return
    assert res.rows_in == res.table.num_rows + sum(res.drops.values()) or \
        res.rows_in == _kept_units(res) + sum(res.drops.values()), (res.rows_in, res.table.num_rows, res.drops)
    assert sum(res.drops.values()) >= 1, res.drops


def _kept_units(res) -> int:
    # formats that count source rows (a prompt with K completions is one source row) report rows_kept in info
    return int(res.info.get("rows_kept", res.table.num_rows))


def test_unknown_and_undetectable_formats(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(_lines({"foo": 1, "bar": 2}))
    with pytest.raises(FormatError) as e:
        read_source(p)
    assert "x.jsonl" in str(e.value) and "arena" in str(e.value)   # lists the known formats
    with pytest.raises(FormatError, match="nope"):
        read_source(p, format="nope")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(PrefdataError, match="empty.jsonl"):
        read_source(empty, format="arena")


RECIPE = "name: r\nsource: {path: data.jsonl, format: arena}\nsteps:\n"
RECIPES = [
    ("unknown-step", RECIPE + "  - rnk: {by: score}\n", "steps[0]"),
    ("wrong-type", RECIPE + "  - rank: {by: score}\n  - pairs: {min_margin: lots}\n", "steps[1].pairs.min_margin"),
    ("unknown-field", RECIPE + "  - pairs: {strategy: all_pairs, margin_min: 1}\n", "steps[0].pairs.margin_min"),
    ("bad-strategy", RECIPE + "  - pairs: {strategy: everything}\n", "steps[0].pairs.strategy"),
    ("negative-margin", RECIPE + "  - pairs: {min_margin: -1}\n", "steps[0].pairs.min_margin"),
    ("kind-mismatch", RECIPE + "  - curriculum: {stages: 3, by: margin}\n", "steps[0]"),
    ("steps-not-list", "name: r\nsource: {path: data.jsonl, format: arena}\nsteps: {rank: {}}\n", "steps"),
    ("two-keys-in-step", RECIPE + "  - {rank: {}, pairs: {}}\n", "steps[0]"),
    ("bad-yaml", "name: r\nsteps: [rank: {by: score\n", "r.yaml"),
    ("no-source", "name: r\nsteps:\n  - rank: {}\n", "source"),
]


@pytest.mark.parametrize("case_id,text,names", RECIPES, ids=[c[0] for c in RECIPES])
def test_malformed_recipes_name_the_yaml_path(tmp_path, case_id, text, names):
    from prefdata.recipe import load_recipe

    (tmp_path / "data.jsonl").write_bytes(_lines(ARENA))
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "r.yaml" in str(e.value) and names in str(e.value), str(e.value)


def test_case_count():
    assert len(CASES) + len(RECIPES) + 3 >= 30
