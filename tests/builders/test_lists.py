import polars as pl
import pytest
from pydantic import ValidationError

from builders.lists import ListsConfig, build_lists
from tests.builders.conftest import check, responses


def test_top_k_sorted_best_first_with_shared_ranks(ctx):
    df = responses({"p": [0.2, 0.9, 0.7, 0.7, 0.5], "q": [1, 2, 3, 4]}, model=list("abcdefghi"))
    built = build_lists(df.lazy(), ListsConfig(k=4), ctx)
    out = check(built, 9)
    assert out["prompt_id"].to_list() == ["p", "q"]                  # prompts in input order
    p = out.row(0, named=True)
    assert p["response_ids"] == ["p:1", "p:2", "p:3", "p:4"]
    assert p["scores"] == [0.9, 0.7, 0.7, 0.5]
    assert p["ranks"] == [1, 2, 2, 4]
    assert p["responses"][0] == "answer 1 to p" and p["models"] == ["b", "c", "d", "e"]
    assert out.row(1, named=True)["ranks"] == [1, 2, 3, 4]
    assert built.drops == {"beyond top-4": 1}


def test_prompts_with_fewer_than_k_are_dropped(ctx):
    df = responses({"short": [3, 2, 1], "nulls": [3, None, 2, 1], "ok": [1, 2, 3, 4]})
    built = build_lists(df.lazy(), ListsConfig(k=4), ctx)
    out = check(built, 11)
    assert out["prompt_id"].to_list() == ["ok"]
    assert built.drops == {"prompt has < 4 responses": 6, "score is null": 1}


def test_cut_inside_a_tie_is_reported_and_deterministic(ctx):
    df = responses({"p": [3, 2, 2, 1]})
    built = build_lists(df.lazy(), ListsConfig(k=2), ctx)
    out = check(built, 4)
    assert out["response_ids"].to_list() == [["p:0", "p:1"]]          # input position breaks the tie
    assert built.info["lists_cut_inside_tie"] == 1


def test_all_tied_lists_dropped_unless_asked(ctx):
    df = responses({"t": [2, 2, 2], "p": [3, 2, 1]})
    built = build_lists(df.lazy(), ListsConfig(), ctx)
    out = check(built, 6)
    assert out["prompt_id"].to_list() == ["p"]
    assert built.drops == {"all responses tied": 3}
    keep = check(build_lists(df.lazy(), ListsConfig(drop_all_tied=False), ctx), 6)
    assert keep.filter(pl.col("prompt_id") == "t")["ranks"].to_list() == [[1, 1, 1]]


def test_k_must_be_at_least_two():
    with pytest.raises(ValidationError):
        ListsConfig(k=1)
