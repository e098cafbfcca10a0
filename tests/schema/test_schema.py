"""The canonical contracts: validation names the column, the expected type and the first offending row."""
import math

import pyarrow as pa
import pytest

from prefdata.errors import SchemaError
from prefdata.schema import conform, schema, validate


def responses(**over):
    cols = {
        "prompt_id": ["p1", "p1", "p2"],
        "prompt": ["a", "a", "b"],
        "response_id": ["r1", "r2", "r3"],
        "response": ["x", "y", "z"],
        "score": [1.0, 2.0, None],
    }
    cols.update(over)
    return pa.table(cols)


def pairs(**over):
    cols = {
        "prompt_id": ["p1"], "prompt": ["a"], "chosen": ["x"], "rejected": ["y"],
        "chosen_id": ["r1"], "rejected_id": ["r2"], "score_chosen": [2.0], "score_rejected": [1.0],
        "margin": [1.0], "weight": [1.0], "stage": pa.array([0], pa.int32()), "strategy": ["all_pairs"],
    }
    cols.update(over)
    return pa.table(cols)


def test_valid_tables_pass_and_extra_columns_are_carried():
    t = responses(judge=["j1", "j2", "j3"])
    assert validate(t, "responses") is t
    validate(pairs(), "pairs")


def test_missing_column_names_it_and_the_type():
    t = responses().drop(["response"])
    with pytest.raises(SchemaError, match=r"missing column 'response' \(expected string\)") as e:
        validate(t, "responses")
    assert e.value.column == "response"


def test_mistyped_column():
    with pytest.raises(SchemaError, match=r"column 'score' has type string, expected double"):
        validate(responses(score=["1", "2", "3"]), "responses")


def test_null_in_required_column_names_first_row():
    with pytest.raises(SchemaError, match=r"first offending row 1") as e:
        validate(responses(response=["x", None, None]), "responses")
    assert e.value.row == 1


def test_nan_and_inf_scores_name_the_row():
    with pytest.raises(SchemaError, match=r"NaN or inf.*first offending row 2"):
        validate(responses(score=[1.0, 2.0, math.inf]), "responses")
    with pytest.raises(SchemaError, match=r"row 0"):
        validate(responses(score=[math.nan, 2.0, 1.0]), "responses")


def test_score_struct_fields_must_be_float64():
    good = responses(scores=pa.array([{"a": 1.0}, {"a": 2.0}, {"a": None}], pa.struct([("a", pa.float64())])))
    validate(good, "responses")
    bad = responses(scores=pa.array([{"a": 1}, {"a": 2}, {"a": 3}], pa.struct([("a", pa.int64())])))
    with pytest.raises(SchemaError, match=r"'scores'.*struct<...float64>"):
        validate(bad, "responses")


def test_negative_margin_is_rejected():
    with pytest.raises(SchemaError, match=r"'margin' must be >= 0.*row 0"):
        validate(pairs(margin=[-0.5]), "pairs")


def test_lists_lengths_must_agree():
    t = pa.table({
        "prompt_id": ["p"], "prompt": ["a"], "responses": [["x", "y"]], "response_ids": [["1", "2"]],
        "scores": [[1.0]], "ranks": pa.array([[1, 2]], pa.list_(pa.int32())),
    })
    with pytest.raises(SchemaError, match=r"'scores' list length differs"):
        validate(t, "lists")


def test_conform_casts_and_defaults():
    t = pairs().drop(["weight", "stage"])
    t = t.set_column(t.column_names.index("prompt"), "prompt", t.column("prompt").cast(pa.large_string()))
    out = conform(t, "pairs")
    assert out.column("weight").to_pylist() == [1.0]
    assert out.column("stage").type == pa.int32()
    assert out.column("prompt").type == pa.string()
    validate(out, "pairs")


def test_unknown_kind_and_schema_listing():
    with pytest.raises(SchemaError, match="unknown table kind"):
        validate(responses(), "triples")
    assert schema("lists", required_only=True).names == ["prompt_id", "prompt", "responses", "response_ids",
                                                          "scores", "ranks"]


def test_prompts_kind_for_generation_sources():
    t = pa.table({"prompt_id": ["p1"], "prompt": ["Write fizzbuzz"], "tests": [["assert f(3) == 'Fizz'"]]})
    validate(t, "prompts")
    with pytest.raises(SchemaError, match="missing column 'prompt'"):
        validate(t.drop(["prompt"]), "prompts")
