import polars as pl
import pytest
from pydantic import ValidationError

from builders.filter import DedupConfig, FilterConfig, build_dedup, build_filter
from tests.builders.conftest import check, responses


def texts(*ts, pid="p", scores=None):
    return responses({pid: scores or [1.0] * len(ts)}).with_columns(response=pl.Series(list(ts)))


def test_dedup_exact_vs_normalized(ctx):
    df = texts("Yes.", "yes.", " Yes.  ", "No", "Yes.")
    exact = build_dedup(df.lazy(), DedupConfig(mode="exact"), ctx)
    assert check(exact, 5)["response_id"].to_list() == ["p:0", "p:1", "p:2", "p:3"]
    assert exact.drops == {"duplicate response (exact)": 1}
    norm = build_dedup(df.lazy(), DedupConfig(mode="normalized"), ctx)
    assert check(norm, 5)["response_id"].to_list() == ["p:0", "p:3"]
    assert norm.drops == {"duplicate response (normalized text)": 3}


def test_dedup_is_within_a_prompt_and_unicode_aware(ctx):
    df = pl.concat([texts("ｆｕｌｌ", "full", pid="a"), texts("full", pid="b")])   # NFKC folds full-width
    built = build_dedup(df.lazy(), DedupConfig(), ctx)
    assert check(built, 3)["response_id"].to_list() == ["a:0", "b:0"]


def test_dedup_keep_best_score(ctx):
    df = texts("x", "X", "x ", scores=[1, 3, 3])
    out = check(build_dedup(df.lazy(), DedupConfig(keep="best_score"), ctx), 3)
    assert out["response_id"].to_list() == ["p:1"]                   # best score, first among equals


def test_filter_responses_each_reason(ctx):
    df = texts("", "   ", "short", "one two three four five six", "a " * 50, "just right here")
    cfg = FilterConfig(min_chars=6, max_chars=60, max_tokens=5)
    built = build_filter(df.lazy(), cfg, ctx)
    out = check(built, 6)
    assert out["response"].to_list() == ["just right here"]
    assert built.drops == {"empty response": 2, "shorter than 6 chars": 1, "more than 5 tokens": 1,
                           "longer than 60 chars": 1}


def test_filter_pairs_checks_both_sides(ctx):
    n = 4
    df = pl.DataFrame({"prompt_id": ["p"] * n, "prompt": ["q", "q", "q", "a long prompt here"],
                       "chosen": ["fine", "", "same", "fine"], "rejected": ["ok", "ok", "same", "ok"],
                       "chosen_id": list("abcd"), "rejected_id": list("efgh"),
                       "score_chosen": [None] * n, "score_rejected": [None] * n, "margin": [None] * n,
                       "weight": [1.0] * n, "stage": pl.Series([0] * n, dtype=pl.Int32), "strategy": ["human"] * n},
                      schema_overrides={"score_chosen": pl.Float64, "score_rejected": pl.Float64,
                                        "margin": pl.Float64})
    built = build_filter(df.lazy(), FilterConfig(max_prompt_tokens=3), ctx)
    out = check(built, 4)
    assert built.kind == "pairs"
    assert out["chosen_id"].to_list() == ["a"]
    assert built.drops == {"empty response": 1, "chosen equals rejected": 1, "prompt more than 3 tokens": 1}


def test_filter_bounds_validated():
    with pytest.raises(ValidationError, match="larger than max_chars"):
        FilterConfig(min_chars=10, max_chars=5)
