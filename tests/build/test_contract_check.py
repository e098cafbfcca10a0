"""The runner's contract check (prefdata.build.check_contract) on bad step outputs."""
import polars as pl
import pytest

from prefdata.build import check_contract
from prefdata.errors import SchemaError


def pairs(**over):
    base = {"prompt_id": ["p", "p"], "prompt": ["x", "x"], "chosen": ["a", "b"], "rejected": ["c", "d"],
            "chosen_id": ["1", "2"], "rejected_id": ["3", "4"], "score_chosen": [2.0, 3.0],
            "score_rejected": [1.0, 1.0], "margin": [1.0, 2.0], "weight": [1.0, 1.0],
            "stage": pl.Series([0, 0], dtype=pl.Int32), "strategy": ["s", "s"]}
    base.update(over)
    return pl.DataFrame(base)


def test_good_table_passes_and_inexact_types_are_conformed():
    assert check_contract(pairs(), "pairs", "w").height == 2
    fixed = check_contract(pairs(stage=pl.Series([0, 1], dtype=pl.Int64)), "pairs", "w")
    assert fixed["stage"].dtype == pl.Int32


@pytest.mark.parametrize("over, match", [
    ({"chosen": ["a", None]}, r"w: column 'chosen' must not be null.*first offending row 1"),
    ({"score_chosen": [2.0, float("nan")]}, r"w: column 'score_chosen' holds NaN or inf.*row 1"),
    ({"margin": [-1.0, 2.0]}, r"w: column 'margin' must be >= 0.*row 0"),
    ({"stage": ["a", "b"]}, r"w: .*stage"),
])
def test_bad_values_name_column_and_row(over, match):
    with pytest.raises(SchemaError, match=match):
        check_contract(pairs(**over), "pairs", "w")


def test_missing_column_and_list_lengths():
    with pytest.raises(SchemaError, match="missing column 'strategy'"):
        check_contract(pairs().drop("strategy"), "pairs", "w")
    lists = pl.DataFrame({"prompt_id": ["p"], "prompt": ["x"], "responses": [["a", "b"]], "response_ids": [["1"]],
                          "scores": [[1.0, 0.0]], "ranks": pl.Series([[1, 2]], dtype=pl.List(pl.Int32))})
    with pytest.raises(SchemaError, match="'response_ids' list length differs.*row 0"):
        check_contract(lists, "lists", "w")
