"""Bad input: each case is an IngestError/FormatError naming file, row and column, or an accounted drop
(rows_in == rows_kept + sum(drops))."""

import pytest
from ingest_kit import arena_row, hs2_row

from prefdata.errors import FormatError, IngestError
from prefdata.ingest import read_source


def _accounted(res):
    assert res.rows_in == res.rows_kept + sum(res.drops.values())
    return res


def test_missing_column_names_file_row_and_column(jsonl):
    path = jsonl([{"prompt": "p", "response": "a"}])
    with pytest.raises(IngestError) as e:
        read_source(path, format="helpsteer2")
    assert (e.value.path, e.value.row, e.value.column) == (str(path), 1, "helpfulness")
    assert str(e.value).startswith(f"{path}:1 column 'helpfulness': missing column")


def test_mistyped_column(jsonl):
    path = jsonl([hs2_row("p", "a"), hs2_row("p", "b"), hs2_row("p", "c", h="abc")])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert (e.value.row, e.value.column) == (3, "helpfulness")
    assert "expected a number, got string 'abc'" in str(e.value)
    res = _accounted(read_source(path, on_error="drop"))
    assert (res.rows_kept, res.drops) == (2, {"mistyped helpfulness": 1})


def test_mistyped_nested_value_names_list_position(jsonl):
    path = jsonl([arena_row("q1", "p", [("m", "a1", "r1", 3)]),
                  arena_row("q2", "p2", [("m", "b1", "r1", 3), ("m", "b2", "r2", 4), ("m", "b3", "r3", "ten")])])
    with pytest.raises(IngestError, match=r"in\.jsonl:2 column 'completions\[3\]\.score': expected a number"):
        read_source(path, format="arena")


def test_bool_is_not_a_number(jsonl):
    with pytest.raises(IngestError, match="expected a number, got boolean"):
        read_source(jsonl([hs2_row("p", "a", h=True), hs2_row("p", "b")]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_scores(jsonl, bad):
    path = jsonl([hs2_row("p", "a"), hs2_row("p", "b"), hs2_row("p", "c", h=bad)])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert (e.value.row, e.value.column) == (3, "helpfulness") and "finite" in str(e.value)
    res = _accounted(read_source(path, on_error="drop"))
    assert (res.rows_kept, res.drops) == (2, {"NaN/inf score": 1})


def test_nonfinite_nested_score_names_completion(jsonl):
    path = jsonl([arena_row("q", "p", [("m", "a", "r1", 1), ("m", "b", "r2", float("nan"))])])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert (e.value.row, e.value.column) == (1, "completions[2].score")


def test_ultrafeedback_rating_not_a_number(jsonl):
    comp = {"model": "m", "response": "r", "overall_score": 5.0, "annotations": {
        a: {"Rating": "3", "Rationale": "x"} for a in ("helpfulness", "honesty", "instruction_following", "truthfulness")}}
    bad = {**comp, "response": "r2", "annotations": {**comp["annotations"], "honesty": {"Rating": "five"}}}
    path = jsonl([{"instruction": "i", "completions": [comp, bad]}])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert (e.value.row, e.value.column) == (1, "completions[2].annotations.honesty.Rating")
    res = _accounted(read_source(path, on_error="drop"))
    assert res.drops == {"mistyped rating": 1, "prompt has fewer than 2 responses": 1}


def test_empty_responses_are_kept(jsonl):
    res = read_source(jsonl([hs2_row("p", ""), hs2_row("p", "b")]))
    assert res.table["response"].to_pylist() == ["", "b"] and res.drops == {}


def test_null_response(jsonl):
    path = jsonl([hs2_row("p", "a"), hs2_row("p", None), hs2_row("p", "c")])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert (e.value.row, e.value.column) == (2, "response")


def test_duplicate_response_ids_name_both_rows(jsonl):
    path = jsonl([arena_row("q", "p", [("m1", "a1", "r1", 1), ("m2", "a2", "r2", 2)]),
                  arena_row("q", "p", [("m3", "a1", "r3", 3)])])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert (e.value.row, e.value.column) == (2, "completions[1].answer_id")
    assert "first seen at row 1 (completions[1].answer_id)" in str(e.value)
    res = _accounted(read_source(path, on_error="drop"))
    assert (res.rows_kept, res.drops) == (2, {"duplicate response_id": 1})


def test_duplicate_derived_ids_same_text_same_prompt(jsonl):
    # no ids in the source: the derived id is sha256(prompt_id + response), so equal text collides
    path = jsonl([hs2_row("p", "same"), hs2_row(" p ", "same"), hs2_row("p", "other")])
    with pytest.raises(IngestError, match="duplicate response_id .* first seen at row 1"):
        read_source(path)


def test_prompt_with_one_response_is_an_accounted_drop(jsonl):
    res = _accounted(read_source(jsonl([hs2_row("p", "a"), hs2_row("p", "b"), hs2_row("q", "c")])))
    assert (res.rows_kept, res.drops) == (2, {"prompt has fewer than 2 responses": 1})


def test_bad_utf8_line(jsonl):
    path = jsonl([hs2_row("p", "a"), b'{"prompt": "p", "response": "\xff\xfe"}', hs2_row("p", "c"),
                  b'{"prompt": "\xc3"}', hs2_row("p", "d")])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert str(e.value).startswith(f"{path}:2: invalid UTF-8") and e.value.row == 2
    res = _accounted(read_source(path, on_error="drop"))
    assert (res.rows_kept, res.drops) == (3, {"bad utf-8": 2})


def test_invalid_json_and_non_object_lines(jsonl):
    path = jsonl([hs2_row("p", "a"), '{"prompt": "p", ', hs2_row("p", "c"), "[1, 2]", "", hs2_row("p", "e")])
    with pytest.raises(IngestError, match=r"in\.jsonl:2: invalid JSON"):
        read_source(path, format="helpsteer2")
    res = _accounted(read_source(path, format="helpsteer2", on_error="drop"))
    assert (res.rows_kept, res.drops) == (3, {"invalid json": 2})   # the blank line 5 is not a record


def test_blank_lines_keep_line_numbers(jsonl):
    path = jsonl(["", hs2_row("p", "a"), "", hs2_row("p", "b", h="x")])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert e.value.row == 4


def test_unknown_format_lists_known_ones(jsonl):
    with pytest.raises(FormatError, match=r"unknown format \(first record has keys \['foo'\]\); known formats: arena"):
        read_source(jsonl([{"foo": 1}]))
    with pytest.raises(FormatError, match="unknown format 'nope'; known formats: arena, hh-rlhf"):
        read_source(jsonl([{"foo": 1}], "b.jsonl"), format="nope")


def test_missing_file_and_empty_file(tmp_path, jsonl):
    with pytest.raises(IngestError, match="no such file"):
        read_source(tmp_path / "absent.jsonl")
    with pytest.raises(FormatError, match="no readable records"):
        read_source(jsonl([]))


def test_nectar_fractional_rank(jsonl):
    path = jsonl([{"prompt": "\n\nHuman: q\n\nAssistant:", "answers": [
        {"answer": "a", "model": "m", "rank": 1}, {"answer": "b", "model": "m", "rank": 1.5}]}])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert e.value.column == "answers[2].rank" and "rank 1.5 is not a whole number" in str(e.value)


def test_pick_a_pic_bad_labels_and_missing_media_dir(jsonl, tmp_path):
    base = {"caption": "c", "image_0_url": "a.png", "image_1_url": "b.png"}
    with pytest.raises(IngestError, match=r"in\.jsonl:2 column 'label_0': labels \(1.0, 1.0\)"):
        read_source(jsonl([{**base, "label_0": 1, "label_1": 0}, {**base, "label_0": 1, "label_1": 1}]))
    from ingest_kit import DATA
    with pytest.raises(IngestError, match="pass media_dir"):
        read_source(DATA / "pick_a_pic_sample.parquet")


def test_hh_without_shared_prefix(jsonl):
    path = jsonl([{"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}])
    with pytest.raises(IngestError, match="share no dialogue prefix"):
        read_source(path)
    assert read_source(path, on_error="drop").drops == {"no shared dialogue prefix": 1}


def test_identical_chosen_and_rejected_dropped(jsonl):
    res = _accounted(read_source(jsonl([{"prompt": "p", "chosen": "x", "rejected": "x"},
                                        {"prompt": "p", "chosen": "x", "rejected": "y"}])))
    assert (res.rows_kept, res.drops) == (1, {"chosen equals rejected": 1})


def test_trl_conversational_completion_must_be_one_message(jsonl):
    user, a = {"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}
    path = jsonl([{"prompt": [user], "chosen": [a, a], "rejected": [a]}])
    with pytest.raises(IngestError, match=r"column 'chosen': expected exactly one message, got 2"):
        read_source(path)


def test_form_change_midway_is_mistyped(jsonl):
    path = jsonl([{"prompt": "p", "chosen": "a", "rejected": "b"},
                  {"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "c"}])
    with pytest.raises(IngestError) as e:
        read_source(path)
    assert (e.value.row, e.value.column) == (2, "chosen") and "expected a string, got list" in str(e.value)


def test_duplicate_pair_names_both_rows(jsonl):
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = jsonl([row, {"prompt": "p", "chosen": "a", "rejected": "c"}, row])
    with pytest.raises(IngestError, match=r"in\.jsonl:3: duplicate pair .* first seen at row 1"):
        read_source(path)
    assert _accounted(read_source(path, on_error="drop")).drops == {"duplicate pair": 1}


def test_crlf_bom_and_json_array_containers(tmp_path):
    import json
    rows = [hs2_row("p", "a"), hs2_row("p", "b", h="x")]
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in rows))
    with pytest.raises(IngestError) as e:
        read_source(crlf)
    assert (e.value.row, e.value.column) == (2, "helpfulness")
    arr = tmp_path / "rows.json"
    arr.write_text(json.dumps([hs2_row("p", "a"), hs2_row("p", "b")]))
    res = read_source(arr)
    assert (res.format, res.info["container"], res.rows_kept) == ("helpsteer2", "json", 2)
