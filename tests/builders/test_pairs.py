import polars as pl
import pytest
from pydantic import ValidationError

from builders.pairs import PairsConfig, build_pairs
from prefdata.errors import SchemaError
from tests.builders.conftest import check, pair_ids, responses

SPEC = {"p": [0.9, 0.7, 0.7, 0.2]}       # methods.md §6(a) worked example, min_margin 0.1, tie_eps 0


def ids(*pairs):
    return [(f"p:{c}", f"p:{r}") for c, r in pairs]


@pytest.mark.parametrize("strategy, expected, drops", [
    ("best_vs_worst", ids((0, 3)), {"not selected (best_vs_worst)": 2}),
    ("best_vs_all", ids((0, 1), (0, 2), (0, 3)), {}),
    ("all_pairs", ids((0, 1), (0, 2), (0, 3), (1, 3), (2, 3)), {}),      # the 1-2 tie is skipped
    ("adjacent", ids((0, 1), (2, 3)), {}),                              # (1, 2) is a tie
])
def test_spec_worked_example(ctx, strategy, expected, drops):
    built = build_pairs(responses(SPEC).lazy(), PairsConfig(strategy=strategy, min_margin=0.1), ctx)
    out = check(built, 4)
    assert pair_ids(out) == expected
    assert built.drops == drops
    assert (out["strategy"] == strategy).all()
    assert out["weight"].to_list() == [1.0] * len(expected)
    assert out["stage"].to_list() == [0] * len(expected)


def test_spec_margins_and_scores(ctx):
    out = check(build_pairs(responses(SPEC).lazy(), PairsConfig(strategy="all_pairs", min_margin=0.1), ctx), 4)
    assert out["margin"].to_list() == [0.2, 0.2, 0.7, 0.5, 0.5]      # rounded: 0.9 - 0.7 is exactly 0.2
    assert out["score_chosen"].to_list() == [0.9, 0.9, 0.9, 0.7, 0.7]
    assert out["score_rejected"].to_list() == [0.7, 0.7, 0.2, 0.2, 0.2]
    assert out["chosen"][0] == "answer 0 to p" and out["rejected"][0] == "answer 1 to p"
    assert out["prompt"].to_list() == ["prompt p"] * 5


def test_curry_anchors_ordered_by_gap(ctx):
    df = responses({"p": [4, 1, 3, 2]})
    best = pair_ids(check(build_pairs(df.lazy(), PairsConfig(strategy="curry"), ctx), 4))
    assert best == ids((0, 1), (0, 3), (0, 2))                           # R1-R4, R1-R3, R1-R2
    worst = pair_ids(check(build_pairs(df.lazy(), PairsConfig(strategy="curry", curry_anchor="worst"), ctx), 4))
    assert worst == ids((0, 1), (2, 1), (3, 1))                          # R1-R4, R2-R4, R3-R4
    both = check(build_pairs(df.lazy(), PairsConfig(strategy="curry", curry_anchor="both"), ctx), 4)
    # R1-R4 once; equal gaps ordered by chosen score (R1-R3 before R2-R4, R1-R2 before R3-R4)
    assert pair_ids(both) == ids((0, 1), (0, 3), (2, 1), (0, 2), (3, 1))
    assert both["margin"].to_list() == [3.0, 2.0, 2.0, 1.0, 1.0]


def test_min_margin_is_strict_and_reported(ctx):
    df = responses({"p": [0.9, 0.7, 0.5]})
    built = build_pairs(df.lazy(), PairsConfig(strategy="all_pairs", min_margin=0.2), ctx)
    out = check(built, 3)
    assert pair_ids(out) == ids((0, 2))                 # gaps of exactly 0.2 do not pass
    assert built.drops == {"below min_margin": 1}


def test_tie_eps_makes_close_scores_one_rank(ctx):
    df = responses({"p": [1.0, 0.95, 0.5]})
    built = build_pairs(df.lazy(), PairsConfig(strategy="all_pairs", tie_eps=0.1), ctx)
    assert pair_ids(check(built, 3)) == ids((0, 2), (1, 2))


def test_drop_reasons_cover_every_response(ctx):
    df = responses({"tied": [5, 5, 5], "single": [3], "nulls": [None, 2, float("nan")], "ok": [9, 1, 1]})
    built = build_pairs(df.lazy(), PairsConfig(strategy="best_vs_all"), ctx)
    out = check(built, 10)
    assert pair_ids(out) == [("ok:0", "ok:1"), ("ok:0", "ok:2")]
    assert built.drops == {"tied with every other response": 3, "prompt has < 2 responses": 2,
                           "score is null": 1, "score is NaN": 1}
    assert built.info["prompts_without_pair"] == 3 and built.info["prompts_all_tied"] == 1


def test_tied_with_best_and_adjacent_ties(ctx):
    df = responses({"p": [5, 5, 3]})
    built = build_pairs(df.lazy(), PairsConfig(strategy="best_vs_all"), ctx)
    assert pair_ids(check(built, 3)) == ids((0, 2))
    assert built.drops == {"tied with its candidate partners": 1}     # its only candidate is the tied best


def test_argmax_ties_index_or_seeded(ctx):
    df = responses({"p": [2, 9, 9, 9, 0]})
    out = check(build_pairs(df.lazy(), PairsConfig(strategy="best_vs_worst"), ctx), 5)
    assert pair_ids(out) == ids((1, 4))                   # lowest index among the tied best
    picks = set()
    for seed in range(12):
        o = build_pairs(df.lazy(), PairsConfig(strategy="best_vs_worst", tie_break="seeded", seed=seed), ctx)
        got = pair_ids(o.frame.collect())
        again = pair_ids(build_pairs(df.lazy(), PairsConfig(strategy="best_vs_worst", tie_break="seeded",
                                                            seed=seed), ctx).frame.collect())
        assert got == again and got[0][1] == "p:4" and got[0][0] in ("p:1", "p:2", "p:3")
        picks.add(got[0][0])
    assert len(picks) > 1                                # the seed really chooses among the tied


def test_max_pairs_per_prompt_is_seeded_and_order_independent(ctx):
    df = responses({"p": [6, 5, 4, 3, 2, 1], "q": [2, 1]})
    cfg = PairsConfig(strategy="all_pairs", max_pairs_per_prompt=3, seed=1)
    built = build_pairs(df.lazy(), cfg, ctx)
    out = check(built, 8)
    assert out.group_by("prompt_id").len().sort("prompt_id")["len"].to_list() == [3, 1]
    assert pair_ids(build_pairs(df.lazy(), cfg, ctx).frame.collect()) == pair_ids(out)
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=3)
    assert sorted(pair_ids(build_pairs(shuffled.lazy(), cfg, ctx).frame.collect())) == sorted(pair_ids(out))
    kept = {i for pair in pair_ids(out) for i in pair}
    assert built.drops.get("not selected (max_pairs_per_prompt)", 0) == 8 - len(kept)
    subsets = {tuple(pair_ids(build_pairs(df.lazy(), cfg.model_copy(update={"seed": s}), ctx).frame.collect()))
               for s in range(6)}
    assert len(subsets) > 1


def test_max_pairs_largest_margin(ctx):
    df = responses({"p": [6, 5, 4, 1]})
    out = check(build_pairs(df.lazy(), PairsConfig(strategy="all_pairs", max_pairs_per_prompt=2,
                                                   select="largest_margin"), ctx), 4)
    assert pair_ids(out) == ids((0, 3), (1, 3))            # margins 5 and 4, listed in (chosen, rejected) order


def test_carries_model_scores_struct_and_messages(ctx):
    df = responses({"p": [2, 1]}, model=["m-a", "m-b"])
    df = df.with_columns(scores=pl.struct(pl.Series("help", [4.0, 2.0]), pl.Series("honest", [5.0, 1.0])),
                         messages=pl.Series([[{"role": "user", "content": "hi"}]] * 2))
    out = check(build_pairs(df.lazy(), PairsConfig(), ctx), 2)
    row = out.row(0, named=True)
    assert (row["model_chosen"], row["model_rejected"]) == ("m-a", "m-b")
    assert row["scores_chosen"] == {"help": 4.0, "honest": 5.0}
    assert row["scores_rejected"] == {"help": 2.0, "honest": 1.0}
    assert row["messages"] == [{"role": "user", "content": "hi"}]


def test_duplicate_texts_dropped_before_pairing(ctx):
    df = responses({"p": [3, 1, 2]}).with_columns(response=pl.Series(["same", "same", "other"]))
    built = build_pairs(df.lazy(), PairsConfig(), ctx)
    assert pair_ids(check(built, 3)) == ids((0, 2))
    assert built.drops == {"duplicate response text": 1}


def test_missing_score_column_is_a_schema_error(ctx):
    with pytest.raises(SchemaError, match="no column 'score'.*rank step"):
        build_pairs(responses({"p": [1]}).drop("score").lazy(), PairsConfig(), ctx)


def test_negative_margin_is_rejected_at_parse_time():
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        PairsConfig(min_margin=-1)
    with pytest.raises(ValidationError, match="Input should be"):
        PairsConfig(strategy="random")


@pytest.mark.parametrize("strategy", ["best_vs_worst", "best_vs_all", "all_pairs", "adjacent", "curry"])
def test_interleaved_prompts_give_the_same_pairs(ctx, strategy):
    # distinct scores: with ties, `tie_break: index` rightly depends on the input order
    df = responses({"p": [3, 1, 2, 2.5, 5], "q": [1, 4, 4.5], "r": [7]})
    mixed = df.sample(fraction=1.0, shuffle=True, seed=11)
    cfg = PairsConfig(strategy=strategy)
    a = build_pairs(df.lazy(), cfg, ctx)
    b = build_pairs(mixed.lazy(), cfg, ctx)
    assert sorted(pair_ids(check(a, 9))) == sorted(pair_ids(check(b, 9)))
    assert a.drops == b.drops


def test_large_prompts_use_the_join_path(ctx):
    df = responses({"big": list(range(40)), "small": [1, 0]})
    out = check(build_pairs(df.lazy(), PairsConfig(min_margin=10), ctx), 42)
    assert out.height == sum(1 for i in range(40) for j in range(40) if i - j > 10) + 0
    assert out.filter(pl.col("prompt_id") == "big")["margin"].min() == 11.0


def test_an_unscored_copy_does_not_shadow_a_scored_one(ctx):
    df = responses({"p": [None, 1, 3, 3]}).with_columns(response=pl.Series(["dup", "dup", "x", "dup"]))
    built = build_pairs(df.lazy(), PairsConfig(), ctx)
    assert pair_ids(check(built, 4)) == ids((2, 1))
    assert built.drops == {"score is null": 1, "duplicate response text": 1}


SEEDED = [PairsConfig(strategy="all_pairs", max_pairs_per_prompt=2, seed=5),
          PairsConfig(strategy="best_vs_all", tie_break="seeded", seed=5),
          PairsConfig(strategy="adjacent", tie_break="seeded", max_pairs_per_prompt=1, seed=5)]


@pytest.mark.parametrize("cfg", SEEDED, ids=["max_pairs_random", "tie_break_seeded", "both"])
def test_seeded_choice_is_local_to_the_prompt(ctx, cfg):
    # each draw is a hash of (seed, prompt, ids): another prompt's presence cannot move it
    base = {f"p{i}": [5, 5, 3, 3, 1, 0][: 3 + i % 4] for i in range(8)}
    alone = check(build_pairs(responses(base).lazy(), cfg, ctx), sum(len(v) for v in base.values()))
    more = {**base, "extra": [9, 9, 8, 7, 1], "zz": [4, 4, 4, 0]}
    with_extra = build_pairs(responses(more).lazy(), cfg, ctx).frame.collect()
    assert pair_ids(with_extra.filter(~pl.col("prompt_id").is_in(["extra", "zz"]))) == pair_ids(alone)
    # two partitions of whole prompts, concatenated in order == one run over everything
    first, second = responses({k: more[k] for k in list(more)[:5]}), responses({k: more[k] for k in list(more)[5:]})
    parts = [build_pairs(p.lazy(), cfg, ctx).frame.collect() for p in (first, second)]
    assert pl.concat(parts).equals(with_extra)


def test_seeded_keys_are_a_stable_hash():
    # pinned values: the same in every process and polars version (a salted or library hash would drift)
    from builders.pairs import seeded_keys
    from builders.stable_hash import hash_strings
    assert hash_strings(pl.Series(["", "a", "ab", "ba"])).tolist() == [
        16294208416658607535, 13613737148421273017, 11154095557799433372, 16327267165160486406]
    keys = seeded_keys(pl.DataFrame({"p": ["x", "x", "y"], "r": ["1", "2", "1"]}), ["p", "r"], 7).to_list()
    assert len(set(keys)) == 3 and all(0.0 <= k < 1.0 for k in keys)
    # a row's key depends on its own values only, not on the other rows or their order
    single = [seeded_keys(pl.DataFrame({"p": [p], "r": [r]}), ["p", "r"], 7).item() for p, r in
              [("x", "1"), ("x", "2"), ("y", "1")]]
    assert keys == single
    assert seeded_keys(pl.DataFrame({"p": ["x"], "r": ["1"]}), ["p", "r"], 8).item() != keys[0]


def test_media_is_prompt_level_only_when_one_per_prompt(ctx):
    same = responses({"p": [2, 1], "q": [3, 0]}).with_columns(
        images=pl.Series([["a.png"], ["a.png"], ["b.png"], ["b.png"]]))
    out = check(build_pairs(same.lazy(), PairsConfig(), ctx), 4)
    assert "images" in out.columns and "images_chosen" not in out.columns
    assert dict(zip(out["prompt_id"], out["images"].to_list(), strict=True)) == {"p": ["a.png"], "q": ["b.png"]}
    # a response with its own image: both sides are kept (nothing merged away)
    differ = same.with_columns(images=pl.Series([["a.png"], ["a2.png"], ["b.png"], ["b.png"]]))
    out = check(build_pairs(differ.lazy(), PairsConfig(), ctx), 4)
    assert "images" not in out.columns
    assert out.filter(pl.col("prompt_id") == "p").row(0, named=True)["images_rejected"] == ["a2.png"]
