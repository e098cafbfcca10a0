"""Mixture choice (builders/mixture.py): caps and weights give exact per-source counts, worked by hand."""
import polars as pl
import pytest

from builders.mixture import Take, mix, unpair, weighted_counts
from builders.stable_hash import seeded_hash
from prefdata.errors import SchemaError


def source(prefix: str, prompts: int, rows_per_prompt: int = 1) -> pl.DataFrame:
    pids = [f"{prefix}{i}" for i in range(prompts) for _ in range(rows_per_prompt)]
    return pl.DataFrame({"prompt_id": pids, "response": [f"{p}-{j}" for j, p in enumerate(pids)]})


def seeded_first(df: pl.DataFrame, n: int, seed: int = 0) -> set[str]:
    """The first n prompts in the documented order: stable hash of (seed, prompt_id), prompt_id on ties."""
    per = df.select("prompt_id").unique()
    per = per.with_columns(h=pl.Series(seeded_hash(seed, per["prompt_id"]), dtype=pl.UInt64))
    return set(per.sort("h", "prompt_id")["prompt_id"].head(n).to_list())


@pytest.mark.parametrize("available, weights, total, counts", [
    ([10, 100, 100], [0.5, 0.3, 0.2], 20, [10, 6, 4]),   # 10 / 0.5 limits; 0.3 is 3/10 (as written), not the float
    ([5, 100], [2, 1], 7, [5, 2]),                        # floor(5 * 3 / 2) = 7; quotas 4.67, 2.33 -> 4 + 1, 2
    ([5, 5, 4], [1, 1, 1], 12, [4, 4, 4]),
    ([3, 10], [1, 1], 6, [3, 3]),
    ([7, 7], [1, 2], 10, [3, 7]),                         # 7 * 3 / 2 = 10.5 -> 10; quotas 3.33, 6.67 -> 3, 7
    ([4, 4, 4], [1, 1, 1], 12, [4, 4, 4]),
    ([2, 9, 9], [1, 1, 1], 6, [2, 2, 2]),
    ([10, 10, 10], [1, 1, 2], 20, [5, 5, 10]),
    ([3, 3, 10], [1, 1, 1], 9, [3, 3, 3]),
])
def test_weighted_counts(available, weights, total, counts):
    assert weighted_counts(available, weights) == (total, counts)
    assert all(n <= a for n, a in zip(counts, available, strict=True))


def test_weighted_counts_largest_remainder_ties_go_to_the_earlier_entry():
    # T = min(floor(3 * 3), floor(4 * 3), floor(10 * 3)) = 9: quotas exactly 3 each; with 10 total: 3.33 each
    assert weighted_counts([10, 10, 10], [1, 1, 1]) == (30, [10, 10, 10])
    assert weighted_counts([4, 10, 10], [1, 1, 1]) == (12, [4, 4, 4])
    # weights 1, 1 and availability 3, 3 with a third weight 1 available 1: T = 3, one each
    assert weighted_counts([3, 3, 1], [1, 1, 1]) == (3, [1, 1, 1])


def test_caps_and_weights_exact_per_source_counts():
    a = source("a", 10, rows_per_prompt=2)                       # 10 prompts, 20 rows
    b = pl.concat([source("b", 30), source("a", 1)])            # 31 prompts; "a0" is also in A
    m = mix([(Take("A", weight=1), a), (Take("B", weight=2, max_prompts=25), b)], seed=0)
    # B: 30 fresh prompts, max_prompts 25 -> available 25; T = min(10 * 3 / 1, 25 * 3 / 2) = 30 -> A 10, B 20
    assert m.weighted_total == 30
    ta, tb = m.tallies["A"], m.tallies["B"]
    assert (ta["prompts_in"], ta["available_prompts"], ta["prompts_kept"], ta["rows_kept"]) == (10, 10, 10, 20)
    assert (tb["prompts_in"], tb["available_prompts"], tb["prompts_kept"], tb["rows_kept"]) == (31, 25, 20, 20)
    assert tb["drops"] == {"not chosen (max_prompts)": 5, "not chosen (weight)": 5, "prompt also in source A": 1}
    assert ta["drops"] == {} and m.drops_by_source == {"B": tb["drops"]}
    assert m.rows_in == 51 and m.frame.height == 40 == m.rows_in - sum(m.drops.values())
    # B keeps the first 20 of its seeded order (the duplicate a0 is out of the order)
    chosen_b = set(m.frame.filter(pl.col("source") == "B")["prompt_id"].to_list())
    assert chosen_b == seeded_first(source("b", 30), 20)
    # entry by entry, each source's rows in input order, a `source` column
    assert m.frame["source"].to_list() == ["A"] * 20 + ["B"] * 20
    assert m.frame.head(20).equals(a.with_columns(source=pl.lit("A")))


def test_max_rows_is_a_prefix_of_whole_prompts():
    b = source("b", 12, rows_per_prompt=3)                       # 36 rows
    m = mix([(Take("B", max_rows=10), b)], seed=3)
    t = m.tallies["B"]
    assert (t["prompts_kept"], t["rows_kept"]) == (3, 9)         # 3 prompts = 9 rows <= 10; a 4th would be 12
    assert t["drops"] == {"not chosen (max_rows)": 27} and t["prompt_drops"] == {"not chosen (max_rows)": 9}
    assert set(m.frame["prompt_id"].unique().to_list()) == seeded_first(b, 3, seed=3)
    assert m.weighted_total is None
    # max_prompts and max_rows together: the shorter prefix, named by the cap that cut first
    m2 = mix([(Take("B", max_rows=10, max_prompts=2), b)], seed=3)
    assert m2.tallies["B"]["prompt_drops"] == {"not chosen (max_prompts)": 10}


def test_seed_changes_the_choice_not_the_counts():
    a, b = source("a", 40), source("b", 40)
    runs = [mix([(Take("A", weight=3), a), (Take("B", weight=1), b)], seed=s) for s in (0, 1)]
    for m in runs:
        # T = min(40 * 4 / 3, 40 * 4 / 1) = 53 -> quotas 39.75, 13.25 -> 39 + 1, 13
        assert (m.weighted_total, m.tallies["A"]["prompts_kept"], m.tallies["B"]["prompts_kept"]) == (53, 40, 13)
    chosen = [set(m.frame.filter(pl.col("source") == "B")["prompt_id"]) for m in runs]
    assert chosen[0] != chosen[1]
    again = mix([(Take("A", weight=3), a), (Take("B", weight=1), b)], seed=0)
    assert again.frame.equals(runs[0].frame)


def test_unweighted_entry_takes_everything_available():
    m = mix([(Take("A"), source("a", 5)), (Take("B", weight=1), source("b", 7)), (Take("C", weight=1),
                                                                                 source("c", 3))], seed=0)
    assert [m.tallies[n]["prompts_kept"] for n in "ABC"] == [5, 3, 3] and m.weighted_total == 6


def test_errors_name_the_source():
    with pytest.raises(SchemaError, match="'B' already has a column 'source'"):
        mix([(Take("A"), source("a", 2)), (Take("B"), source("b", 2).with_columns(source=pl.lit("x")))], seed=0)
    with pytest.raises(SchemaError, match="'B' has no prompt left"):
        mix([(Take("A", weight=1), source("a", 2)), (Take("B", weight=1), source("a", 2))], seed=0)
    with pytest.raises(SchemaError, match="no column 'prompt_id'"):
        mix([(Take("A"), pl.DataFrame({"x": [1]}))], seed=0)
    structs = source("a", 1).with_columns(scores=pl.struct(x=pl.lit(1.0)))
    with pytest.raises(SchemaError, match=r"'A' and 'B' disagree on column 'scores': Struct.* vs String"):
        mix([(Take("A"), structs), (Take("B"), source("b", 1).with_columns(scores=pl.lit("text")))], seed=0)


def test_compatible_columns_are_unified():
    a = source("a", 1).with_columns(scores=pl.struct(x=pl.lit(1.0)), n=pl.lit(1, pl.Int32))
    b = source("b", 1).with_columns(scores=pl.struct(y=pl.lit(2.0)), n=pl.lit(2.5))
    m = mix([(Take("A"), a), (Take("B"), b)], seed=0)
    assert m.frame["scores"].to_list() == [{"x": 1.0, "y": None}, {"x": None, "y": 2.0}]
    assert m.frame["n"].to_list() == [1.0, 2.5]


def test_unpair():
    pairs = pl.DataFrame({"prompt_id": ["p", "q"], "prompt": ["P", "Q"], "chosen": ["c1", "c2"], "rejected": ["r1", "r2"],
                          "chosen_id": ["i1", "i2"], "rejected_id": ["j1", "j2"], "score_chosen": [None, 3.0],
                          "score_rejected": [None, 1.0], "margin": [None, 2.0], "weight": [1.0, 1.0],
                          "model_chosen": ["x", "y"], "model_rejected": ["z", "w"], "lang": ["en", "de"]})
    out, binary = unpair(pairs)
    assert binary == 1
    assert out.columns == ["prompt_id", "prompt", "response_id", "response", "score", "lang", "model"]
    assert out.rows() == [("p", "P", "i1", "c1", 1.0, "en", "x"), ("p", "P", "j1", "r1", 0.0, "en", "z"),
                          ("q", "Q", "i2", "c2", 3.0, "de", "y"), ("q", "Q", "j2", "r2", 1.0, "de", "w")]
    with pytest.raises(SchemaError, match="no column 'chosen'"):
        unpair(pl.DataFrame({"prompt_id": ["p"], "response": ["x"]}))
