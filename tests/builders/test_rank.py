import math

import polars as pl
import pytest
from pydantic import ValidationError

from builders.rank import RankConfig, build_rank
from prefdata.errors import SchemaError
from tests.builders.conftest import check, responses


def aspects(a, b, pid="p"):
    df = responses({pid: [None] * len(a)})
    return df.with_columns(pl.struct(pl.Series("a", a, pl.Float64), pl.Series("b", b, pl.Float64)).alias("scores"))


def test_mean_of_score_keeps_it_and_ranks_with_shared_ties(ctx):
    df = responses({"p": [0.9, 0.7, 0.7, 0.2], "q": [3, 5]})
    out = check(build_rank(df.lazy(), RankConfig(by="score"), ctx), 6)
    assert out["score"].to_list() == [0.9, 0.7, 0.7, 0.2, 3.0, 5.0]
    assert out["rank"].dtype == pl.Int32
    assert out["rank"].to_list() == [1, 2, 2, 4, 2, 1]     # competition ranks: ties share, next skips


def test_mean_of_two_aspects(ctx):
    built = build_rank(aspects([3, 1, 2, 2], [1, 2, 3, 3]).lazy(), RankConfig(by=["a", "b"]), ctx)
    out = check(built, 4)
    assert out["score"].to_list() == [2.0, 1.5, 2.5, 2.5]
    assert out["rank"].to_list() == [3, 4, 1, 1]
    assert out["score_input"].null_count() == 4           # the source's own (empty) score is kept aside


def test_weighted_mean(ctx):
    cfg = RankConfig(by=["a", "b"], aggregate="weighted_mean", weights={"a": 3, "b": 1})
    out = check(build_rank(aspects([3, 1, 2, 2], [1, 2, 3, 3]).lazy(), cfg, ctx), 4)
    assert out["score"].to_list() == [2.5, 1.25, 2.25, 2.25]   # (3a + b) / 4
    assert out["rank"].to_list() == [1, 4, 2, 2]


def test_zscore_mean(ctx):
    # a: mean 2.5, population std sqrt(1.25); b: mean 2, std sqrt(2); score = (z_a + z_b) / 2
    out = check(build_rank(aspects([1, 2, 3, 4], [4, 2, 2, 0]).lazy(), RankConfig(by=["a", "b"],
                                                                             aggregate="zscore_mean"), ctx), 4)
    expected = [0.036286387937, -0.22360679775, 0.22360679775, -0.036286387937]
    assert out["score"].to_list() == pytest.approx(expected, abs=1e-11)
    assert out["rank"].to_list() == [2, 4, 1, 3]


def test_zscore_of_a_constant_scorer_is_zero(ctx):
    out = check(build_rank(aspects([1, 2, 3, 4], [5, 5, 5, 5]).lazy(),
                           RankConfig(by=["a", "b"], aggregate="zscore_mean"), ctx), 4)
    sd = math.sqrt(1.25)
    assert out["score"].to_list() == pytest.approx([(x - 2.5) / sd / 2 for x in (1, 2, 3, 4)])


def test_borda_counts_beaten_responses_ties_half(ctx):
    # a=[3,1,2,2] -> points [3,0,1.5,1.5]; b=[1,2,3,3] -> [0,1,2.5,2.5]; mean -> [1.5,0.5,2,2]
    out = check(build_rank(aspects([3, 1, 2, 2], [1, 2, 3, 3]).lazy(), RankConfig(by=["a", "b"], aggregate="borda"),
                           ctx), 4)
    assert out["score"].to_list() == [1.5, 0.5, 2.0, 2.0]
    assert out["rank"].to_list() == [3, 4, 1, 1]


def test_borda_is_per_prompt(ctx):
    df = pl.concat([aspects([1, 2], [1, 2], "p"), aspects([10, 30, 20], [10, 30, 20], "q")])
    out = check(build_rank(df.lazy(), RankConfig(by=["a", "b"], aggregate="borda"), ctx), 5)
    assert out["score"].to_list() == [0.0, 1.0, 0.0, 2.0, 1.0]


def test_nectar_rank_lower_is_better(ctx):
    df = responses({"p": [None, None, None]}).with_columns(rank=pl.Series([2, 1, 3], dtype=pl.Int32))
    out = check(build_rank(df.lazy(), RankConfig(by="rank"), ctx), 3)
    assert out["score"].to_list() == [-2.0, -1.0, -3.0]
    assert out["rank"].to_list() == [2, 1, 3]


def test_missing_values_are_dropped_with_the_criterion_named(ctx):
    df = aspects([1.0, None, float("nan"), 2.0, None], [1.0, 1.0, 1.0, None, None])
    built = build_rank(df.lazy(), RankConfig(by=["a", "b"]), ctx)
    out = check(built, 5)
    # one reason per row: the first missing criterion in `by` order
    assert built.drops == {"scores.a is null": 2, "scores.a is NaN": 1, "scores.b is null": 1}
    assert out["response_id"].to_list() == ["p:0"]
    assert built.info["prompts_lt2"] == 1
    assert "prompts with < 2 scored responses" in built.summary


def test_missing_error_names_column_and_row(ctx):
    df = responses({"p": [1, 2, None]})
    with pytest.raises(SchemaError, match=r"score is null in 1 row.*first offending row 2"):
        build_rank(df.lazy(), RankConfig(by="score", missing="error"), ctx)


def test_unknown_criterion_is_a_schema_error(ctx):
    with pytest.raises(SchemaError, match=r"scores\.honesty.*available: score, rank, scores\.a, scores\.b"):
        build_rank(aspects([1], [2]).lazy(), RankConfig(by=["a", "honesty"]), ctx)
    with pytest.raises(SchemaError, match="no column 'rank'"):
        build_rank(responses({"p": [1, 2]}).lazy(), RankConfig(by="rank"), ctx)


@pytest.mark.parametrize("kwargs, msg", [
    ({"aggregate": "weighted_mean"}, "needs weights"),
    ({"by": ["a", "b"], "aggregate": "weighted_mean", "weights": {"a": 1}}, "must equal by"),
    ({"weights": {"score": 1}}, "only used by aggregate weighted_mean"),
    ({"by": ["a", "a"]}, "twice"),
    ({"by": []}, "at least one"),
    ({"aggregate": "median"}, "Input should be"),
    ({"bye": "score"}, "Extra inputs are not permitted"),
])
def test_config_is_validated(kwargs, msg):
    with pytest.raises(ValidationError, match=msg):
        RankConfig(**kwargs)


def test_interleaved_prompts_rank_within_their_prompt(ctx):
    df = responses({"p": [1, 3, 2], "q": [5, 5]}).sample(fraction=1.0, shuffle=True, seed=5)
    out = check(build_rank(df.lazy(), RankConfig(), ctx), 5)
    got = dict(zip(out["response_id"].to_list(), out["rank"].to_list(), strict=True))
    assert got == {"p:0": 3, "p:1": 1, "p:2": 2, "q:0": 1, "q:1": 1}
