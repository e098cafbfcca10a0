"""Length-bias control in `pairs` on a hand-made table: lengths, ratios and counts worked by hand.

Responses (prompt: id score length):  p1: a 3 10, b 2 40, c 1 5 · p2: d 3 30, e 1 10 · p3: f 2 20, g 1 20 ·
p4: h 5 10, i 4 20, j 1 30. all_pairs gives 8 pairs (chosen/rejected length ratio):
  chosen longer  (L): a-c 2, b-c 8, d-e 3
  chosen shorter (S): a-b 0.25, h-i 0.5, h-j 1/3, i-j 2/3
  equal          (E): f-g 1"""
import polars as pl
import pytest
from pydantic import ValidationError

from builders import length_bias
from builders.pairs import PairsConfig, build_pairs
from tests.builders.conftest import check

ROWS = [("p1", "a", 3, 10), ("p1", "b", 2, 40), ("p1", "c", 1, 5), ("p2", "d", 3, 30), ("p2", "e", 1, 10),
        ("p3", "f", 2, 20), ("p3", "g", 1, 20), ("p4", "h", 5, 10), ("p4", "i", 4, 20), ("p4", "j", 1, 30)]


def table(**extra) -> pl.DataFrame:
    df = pl.DataFrame({"prompt_id": [r[0] for r in ROWS], "prompt": [f"prompt {r[0]}" for r in ROWS],
                       "response_id": [r[1] for r in ROWS], "response": [r[1] * r[3] for r in ROWS],
                       "score": [float(r[2]) for r in ROWS]})
    return df.with_columns(**{k: pl.Series(v) for k, v in extra.items()})


def run(ctx, **cfg):
    built = build_pairs(table().lazy(), PairsConfig(strategy="all_pairs", **cfg), ctx)
    out = check(built, 10)
    return built, out, {(c, r) for c, r in zip(out["chosen_id"], out["rejected_id"], strict=True)}


def directions(out: pl.DataFrame) -> tuple[int, int, int]:
    c, r = out["chosen"].str.len_chars(), out["rejected"].str.len_chars()
    return int((c > r).sum()), int((c < r).sum()), int((c == r).sum())


def test_no_control_reports_the_bias(ctx):
    built, out, pairs = run(ctx)
    assert len(pairs) == 8 and directions(out) == (3, 4, 1)
    i = built.info
    assert (i["chosen_longer"], i["chosen_shorter"], i["equal_length"], i["length_ratio_pairs"]) == (3, 4, 1, 8)
    assert i["length_ratio_sum"] == pytest.approx(0.25 + 2 + 8 + 3 + 1 + 0.5 + 1 / 3 + 2 / 3)   # 15.75
    s = length_bias.summarize(length_bias.pairs_counts(out))
    assert s["chosen_longer_share"] == 0.375 and s["mean_length_ratio"] == 1.96875 and s["unit"] == "characters"
    assert "pairs_over_max_ratio" not in i and built.drops == {}


def test_max_ratio_drops_pairs_above_it(ctx):
    built, out, pairs = run(ctx, length_balance={"max_ratio": 2.5})
    # b-c (8) and d-e (3) go; b stays in a-b, c in a-c; d and e are in no other pair
    assert pairs == {("a", "b"), ("a", "c"), ("f", "g"), ("h", "i"), ("h", "j"), ("i", "j")}
    assert built.drops == {"chosen/rejected length ratio above max_ratio": 2}
    assert built.info["pairs_over_max_ratio"] == 2 and built.info["pairs_removed_by_balance"] == 0
    assert built.rows_kept == 8
    # a ratio exactly at max_ratio is kept: 2 (a-c) with max_ratio 2
    _, _, at = run(ctx, length_balance={"max_ratio": 2})
    assert ("a", "c") in at and ("d", "e") not in at


def test_balance_longer_evens_the_classes(ctx):
    built, out, pairs = run(ctx, balance_longer=True)
    # L=3 < S=4: one S pair goes; p4 is the only prompt with a second S pair, so one of its three goes
    assert directions(out) == (3, 3, 1) and built.info["pairs_removed_by_balance"] == 1
    assert {("a", "b"), ("a", "c"), ("b", "c"), ("d", "e"), ("f", "g")} <= pairs
    assert len(pairs & {("h", "i"), ("h", "j"), ("i", "j")}) == 2
    assert built.drops == {}                 # h, i, j are each still in a pair


def test_balance_longer_largest_margin_order(ctx):
    # inside p4 the pairs rank by margin: h-j 4, i-j 3, h-i 1, so h-i (last) goes
    _, out, pairs = run(ctx, balance_longer=True, select="largest_margin")
    assert pairs == {("a", "b"), ("a", "c"), ("b", "c"), ("d", "e"), ("f", "g"), ("h", "j"), ("i", "j")}


def test_balance_longer_with_a_cap(ctx):
    # minority L first: p1 takes a-c (largest L margin), p2 d-e, p3 f-g, p4 h-j (S, largest margin);
    # kept L=2 > S=1: one of a-c / d-e goes (both rank 1 in their prompt; the seeded key decides)
    built, out, pairs = run(ctx, balance_longer=True, max_pairs_per_prompt=1, select="largest_margin")
    assert directions(out) == (1, 1, 1) and len(pairs) == 3
    assert {("f", "g"), ("h", "j")} <= pairs and len(pairs & {("a", "c"), ("d", "e")}) == 1
    # the dropped L pair's two responses: not selected (balance_longer); b and i: not selected by the cap
    assert built.drops == {"not selected (balance_longer)": 2, "not selected (max_pairs_per_prompt)": 2}
    assert built.info["pairs_removed_by_balance"] == 1


def test_both_options_and_seed_stability(ctx):
    built, out, pairs = run(ctx, balance_longer=True, length_balance={"max_ratio": 2.5})
    # eligible: L {a-c}, S {a-b, h-i, h-j, i-j}, E {f-g}: S is cut to 1 (a-b and p4's first pair both rank 1 in
    # their prompt; the seeded key orders them), the same on every run
    assert directions(out) == (1, 1, 1)
    assert ("a", "c") in pairs and ("f", "g") in pairs
    assert built.info["pairs_over_max_ratio"] == 2 and built.info["pairs_removed_by_balance"] == 3
    again = run(ctx, balance_longer=True, length_balance={"max_ratio": 2.5})[2]
    assert again == pairs


def test_drops_by_source(ctx):
    src = ["A"] * 5 + ["B"] * 5                     # p1, p2 from A; p3, p4 from B
    built = build_pairs(table(source=src).lazy(), PairsConfig(length_balance={"max_ratio": 2.5}), ctx)
    check(built, 10)
    assert built.drops_by_source == {"A": {"chosen/rejected length ratio above max_ratio": 2}}
    out = built.frame.collect()
    assert out["source"].to_list() == ["A", "A", "B", "B", "B", "B"]      # one per prompt: a single column


def test_config_errors_and_hash_stability():
    with pytest.raises(ValidationError, match="greater than 0"):
        PairsConfig(length_balance={"max_ratio": 0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        PairsConfig(length_balance={"max_ratio": 2, "min": 1})
    # at their defaults the new options are not in the dumped config (earlier recipes keep their config hash)
    assert "balance_longer" not in PairsConfig().model_dump() and "length_balance" not in PairsConfig().model_dump()
    assert PairsConfig(balance_longer=True).model_dump()["balance_longer"] is True
    assert PairsConfig(length_balance={"max_ratio": 2}).model_dump()["length_balance"] == {"max_ratio": 2.0}


def test_ratio_edge_cases():
    df = pl.DataFrame({"c": [0, 5, 0, 4], "r": [0, 0, 3, 2]})
    assert df.select(length_bias.ratio(pl.col("c"), pl.col("r")))["c"].to_list() == [1.0, float("inf"), 0.0, 2.0]
    cnt = length_bias.counts(df["c"].to_numpy(), df["r"].to_numpy())
    assert cnt == {"pairs": 4, "chosen_longer": 2, "chosen_shorter": 1, "equal_length": 1, "length_ratio_sum": 2.0,
                   "length_ratio_pairs": 2}
    halves = length_bias.add(length_bias.counts([0, 5], [0, 0]), length_bias.counts([0, 4], [3, 2]))
    assert halves == cnt
