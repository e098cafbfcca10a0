"""`split` step: deterministic by prompt (or near-duplicate cluster), exact counts, largest-remainder
stratification, no leak across the split, row accounting unchanged; recipe parse errors; the same column in
partitioned and in-memory builds; the bundled arena_split recipe through the real CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from builders.base import StepContext
from builders.lists import ListsConfig, build_lists
from builders.pairs import PairsConfig, build_pairs
from builders.split import SplitConfig, build_split, target_test_prompts
from builders.stable_hash import seeded_hash
from catalog import Catalog
from prefdata.build import run_recipe
from prefdata.errors import RecipeError, SchemaError
from prefdata.recipe import load_recipe, parse_recipe
from tests.builders.conftest import check, responses

REPO = Path(__file__).resolve().parents[2]
P10 = [f"p{i}" for i in range(10)]


def table(sizes: dict[str, int], **prompt_cols: dict) -> pl.DataFrame:
    """{prompt_id: rows} -> a responses table; prompt_cols: {column: {prompt_id: value}} (one value a prompt)."""
    df = responses({p: list(range(n)) for p, n in sizes.items()})
    return df.with_columns(**{c: pl.Series(c, [vals[p] for p in df["prompt_id"]]) for c, vals in prompt_cols.items()})


def sides(out: pl.DataFrame) -> dict[str, set[str]]:
    per = out.group_by("prompt_id").agg(pl.col("split").unique())
    assert per["split"].list.len().max() == 1                  # no prompt on both sides
    return {s: set(per.filter(pl.col("split").list.first() == s)["prompt_id"]) for s in ("train", "test")}


def hash_order(ids: list[str], seed: int) -> list[str]:
    """The reference ranking: by the stable hash of (seed, prompt_id), ids breaking ties."""
    h = seeded_hash(seed, pl.Series(ids))
    return [p for _, p in sorted(zip(h.tolist(), ids, strict=True))]


SIZES = {p: 1 + i % 3 for i, p in enumerate(P10)}               # 1,2,3,1,2,3,1,2,3,1 rows = 19


def test_count_takes_exactly_the_first_prompts_in_hash_order(ctx):
    df = table(SIZES)
    built = build_split(df.lazy(), SplitConfig(test=3), ctx)
    out = check(built, 19)
    assert built.drops == {} and built.rows_kept == 19 and out.height == 19 and built.kind == "responses"
    assert out.drop("split").equals(df)                           # input rows and order unchanged
    assert out["split"].dtype == pl.String and set(out["split"]) == {"train", "test"}
    assert hash_order(P10, 0) == ["p1", "p4", "p3", "p7", "p0", "p5", "p9", "p6", "p8", "p2"]
    assert sides(out)["test"] == {"p1", "p4", "p3"}
    # p1: 2 rows, p4: 2, p3: 1
    assert built.info == {"seed": 0, "unit": "prompt", "target_test_prompts": 3,
                          "train": {"prompts": 7, "rows": 14}, "test": {"prompts": 3, "rows": 5}}
    assert built.summary == "train 7 prompts (14 rows) · test 3 prompts (5 rows)"


def test_seed_from_step_or_recipe_and_row_order_independence(ctx):
    df = table(SIZES)
    a = build_split(df.lazy(), SplitConfig(test=3), ctx).frame.collect()
    again = build_split(df.lazy(), SplitConfig(test=3), ctx).frame.collect()
    assert a.equals(again)
    for seed in (1, 2, 3):
        shuffled = df.sample(fraction=1.0, shuffle=True, seed=seed)
        out = build_split(shuffled.lazy(), SplitConfig(test=3), ctx).frame.collect()
        assert out.drop("split").equals(shuffled)                  # rows stay where they were
        assert sides(out) == sides(a)
    # the step's seed wins over the recipe's; None takes the recipe's (ctx.seed)
    seven = sides(build_split(df.lazy(), SplitConfig(test=3, seed=7), ctx).frame.collect())["test"]
    assert seven == {"p9", "p5", "p6"} == set(hash_order(P10, 7)[:3])
    from_ctx = build_split(df.lazy(), SplitConfig(test=3), StepContext(seed=7)).frame.collect()
    assert sides(from_ctx)["test"] == seven


@pytest.mark.parametrize(("test", "n", "expected"), [
    (0.25, 10, 3),      # 2.5 rounds half up
    (0.1, 195, 20),     # 19.5 -> 20 (the bundled arena_split recipe)
    (0.5, 7, 4),        # 3.5 -> 4
    (0.04, 10, 1),      # 0.4 -> 0, at least one test prompt
    (0.99, 10, 9),      # 9.9 -> 10, at least one train prompt
    (0.5, 2, 1),
    (4, 10, 4),
    (9, 10, 9),
])
def test_target_count_rounding(test, n, expected):
    assert target_test_prompts(test, n) == expected


def test_fraction_gives_rounded_count_and_too_few_prompts_fail(ctx):
    out = build_split(table(SIZES).lazy(), SplitConfig(test=0.25), ctx).frame.collect()
    assert sides(out)["test"] == {"p1", "p4", "p3"}
    with pytest.raises(SchemaError, match="test: 10 asks for 10 test prompts, but the input has 10"):
        build_split(table(SIZES).lazy(), SplitConfig(test=10), ctx)
    with pytest.raises(SchemaError, match="needs at least 2 prompts .* the input has 1") as e:
        build_split(table({"only": 3}).lazy(), SplitConfig(test=0.5), ctx)
    assert e.value.column == "prompt_id"


def test_stratified_largest_remainder(ctx):
    # 12 prompts: A 6, B 3, C 1, null 2; test 0.25 -> T = 3. Quotas 3*n_s/12: A 1.5, B 0.75, C 0.25, null 0.5.
    # floors 1,0,0,0 leave 2: remainders (3*n_s mod 12) B 9, A 6, null 6, C 3 -> B, then A (larger than null)
    ids = [f"s{i:02d}" for i in range(12)]
    stratum = {p: "A" if i < 6 else "B" if i < 9 else "C" if i == 9 else None for i, p in enumerate(ids)}
    df = table(dict.fromkeys(ids, 2), lang=stratum)
    built = build_split(df.lazy(), SplitConfig(test=0.25, stratify_by="lang"), ctx)
    out = check(built, 24)
    test = sides(out)["test"]
    assert test == set(hash_order(ids[:6], 0)[:2]) | set(hash_order(ids[6:9], 0)[:1])
    assert test == {"s02", "s03", "s07"}
    assert built.info["strata"] == {
        "A": {"train": {"prompts": 4, "rows": 8}, "test": {"prompts": 2, "rows": 4}, "target_test_prompts": 2},
        "B": {"train": {"prompts": 2, "rows": 4}, "test": {"prompts": 1, "rows": 2}, "target_test_prompts": 1},
        "C": {"train": {"prompts": 1, "rows": 2}, "test": {"prompts": 0, "rows": 0}, "target_test_prompts": 0},
        "null": {"train": {"prompts": 2, "rows": 4}, "test": {"prompts": 0, "rows": 0}, "target_test_prompts": 0}}
    assert built.info["stratify_by"] == "lang" and built.info["test"] == {"prompts": 3, "rows": 6}
    assert built.summary == "train 9 prompts (18 rows) · test 3 prompts (6 rows) · 4 strata by lang"


def test_stratified_same_fraction_in_every_stratum(ctx):
    # X: 20 prompts, Y: 10 prompts (integer stratum), test 0.3 -> 9 = 6 of X + 3 of Y
    ids = [f"x{i:02d}" for i in range(20)] + [f"y{i}" for i in range(10)]
    df = table(dict.fromkeys(ids, 1), tier={p: 1 if p[0] == "x" else 2 for p in ids})
    out = build_split(df.lazy(), SplitConfig(test=0.3, stratify_by="tier"), ctx).frame.collect()
    test = sides(out)["test"]
    assert test == set(hash_order(ids[:20], 0)[:6]) | set(hash_order(ids[20:], 0)[:3])
    shares = out.group_by("tier").agg((pl.col("split") == "test").mean().alias("share")).sort("tier")
    assert shares["share"].to_list() == [0.3, 0.3]


def test_stratify_column_missing_or_varying_within_a_prompt(ctx):
    df = table(SIZES, lang={p: "en" for p in P10})
    with pytest.raises(SchemaError, match="stratify_by column 'langue' is not in the input") as e:
        build_split(df.lazy(), SplitConfig(test=2, stratify_by="langue"), ctx)
    assert e.value.column == "langue"
    varying = df.with_columns(lang=pl.when(pl.col("response_id") == "p2:1").then(pl.lit("fr")).otherwise("lang"))
    with pytest.raises(SchemaError, match="stratify_by column 'lang' differs within prompt 'p2'") as e:
        build_split(varying.lazy(), SplitConfig(test=2, stratify_by="lang"), ctx)
    assert e.value.column == "lang"


def reference_cluster_split(cluster: dict[str, str | None], seed: int, target: int) -> set[str]:
    """Plain-Python reference: units (cluster or lone prompt) in hash order, the prefix whose prompt total is
    closest to the target (ties: shorter)."""
    units: dict[tuple[str, str], list[str]] = {}
    for p, c in cluster.items():
        units.setdefault(("prompt", p) if c is None else ("cluster", c), []).append(p)
    keys = list(units)
    h = seeded_hash(seed, pl.Series([k for k, _ in keys]), pl.Series([u for _, u in keys])).tolist()
    order = [k for _, k in sorted(zip(h, keys, strict=True))]
    totals = [0]
    for k in order:
        totals.append(totals[-1] + len(units[k]))
    best = min(range(len(totals)), key=lambda i: (abs(totals[i] - target), i))
    return {p for k in order[:best] for p in units[k]}


def test_clusters_never_straddle_the_split(ctx):
    cluster = {"p0": "c1", "p1": "c1", "p2": "c1", "p3": "c2", "p4": "c2",
               "p5": None, "p6": None, "p7": None, "p8": None, "p9": None}
    df = table(SIZES, cluster_id=cluster)
    for seed in range(6):
        built = build_split(df.lazy(), SplitConfig(test=3, seed=seed), ctx)
        out = check(built, 19)
        test = sides(out)["test"]
        assert test == reference_cluster_split(cluster, seed, 3)
        for members in ({"p0", "p1", "p2"}, {"p3", "p4"}):
            assert members <= test or not members & test
        assert built.info["unit"] == "cluster"
        assert built.info["test"]["prompts"] == len(test)
        assert built.info["train"]["units"] + built.info["test"]["units"] == 7
    seed0 = build_split(df.lazy(), SplitConfig(test=3, seed=0), ctx)
    assert sides(seed0.frame.collect())["test"] == {"p5", "p6", "p7"}
    assert seed0.summary == ("train 7 prompts (13 rows) · test 3 prompts (6 rows) · clusters kept whole "
                             "(4 train / 3 test units)")


def test_clusters_larger_than_the_target_still_give_two_sides(ctx):
    # two clusters of 5: the closest prefix to 1 test prompt is empty, so the first cluster in hash order
    # goes to test (at least one unit on each side)
    cluster = {p: "a" if int(p[1]) < 5 else "b" for p in P10}
    out = build_split(table(SIZES, cluster_id=cluster).lazy(), SplitConfig(test=1), ctx).frame.collect()
    s = sides(out)
    assert {frozenset(s["train"]), frozenset(s["test"])} == {frozenset(P10[:5]), frozenset(P10[5:])}
    with pytest.raises(SchemaError, match="all 10 prompts are in one near-duplicate cluster"):
        build_split(table(SIZES, cluster_id=dict.fromkeys(P10, "z")).lazy(), SplitConfig(test=1), ctx)
    varying = table(SIZES, cluster_id=cluster).with_columns(
        cluster_id=pl.when(pl.col("response_id") == "p2:2").then(pl.lit("b")).otherwise("cluster_id"))
    with pytest.raises(SchemaError, match="column 'cluster_id' differs within prompt 'p2'"):
        build_split(varying.lazy(), SplitConfig(test=1), ctx)
    strata = table(SIZES, cluster_id=cluster, lang={p: p for p in P10})
    with pytest.raises(SchemaError, match="stratify_by column 'lang' differs within cluster 'a'"):
        build_split(strata.lazy(), SplitConfig(test=1, stratify_by="lang"), ctx)


def test_pairs_and_lists_keep_their_kind_and_an_old_split_is_replaced(ctx):
    df = responses({p: [3, 2, 1] for p in P10})
    pairs = build_pairs(df.lazy(), PairsConfig(strategy="best_vs_worst"), ctx).frame.collect()
    built = build_split(pairs.with_columns(split=pl.lit("old")).lazy(), SplitConfig(test=2), ctx)
    out = check(built, 10)
    assert built.kind == "pairs" and out.columns == pairs.columns + ["split"]
    assert sides(out)["test"] == {"p1", "p4"}
    lists = build_lists(df.lazy(), ListsConfig(k=3), ctx).frame.collect()
    built = build_split(lists.lazy(), SplitConfig(test=0.2), ctx)
    out = check(built, 10)
    assert built.kind == "lists" and sides(out)["test"] == {"p1", "p4"}


def test_prompts_table_splits_before_generation(ctx, tmp_path):
    """A split on prompts (before `generate`): the kind stays prompts and generate carries the column."""
    prompts = pl.DataFrame({"prompt_id": P10, "prompt": [f"q{i}" for i in range(10)]})
    built = build_split(prompts.lazy(), SplitConfig(test=2), ctx)
    out = check(built, 10)
    assert built.kind == "prompts" and out.columns == ["prompt_id", "prompt", "split"]
    assert sides(out)["test"] == {"p1", "p4"}          # the same hash order as on responses
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(3)))
    recipe = parse_recipe({"name": "x", "source": {"path": str(src), "format": "prompts"},
                           "steps": [{"split": {"test": 1}}]})
    assert recipe.kinds == ("prompts",)


def _recipe(step: object) -> dict:
    return {"name": "x", "source": {"dataset": "d"}, "steps": [{"rank": {}}, {"pairs": {}}, {"split": step}]}


@pytest.mark.parametrize(("step", "needle"), [
    ({"test": 1.5}, "steps[2].split.test: Value error, test must be a fraction in (0, 1) or a whole number of "
                    "prompts >= 1: 1.5 is neither"),
    ({"test": 0}, "steps[2].split.test: Value error, test must be a fraction in (0, 1) or a whole number of "
                  "prompts >= 1, got 0"),
    ({"test": -3}, "steps[2].split.test: Value error"),
    ({"test": True}, "steps[2].split.test: Value error"),
    ({"test": "10%"}, "steps[2].split.test: Value error"),
    ({"seed": 1}, "steps[2].split.test: Field required"),
    ({"test": 0.1, "stratify": "lang"}, "steps[2].split.stratify: unknown field"),
    ({"test": 0.1, "stratify_by": " "}, "steps[2].split.stratify_by: Value error, stratify_by must name a column"),
])
def test_recipe_parse_errors_name_the_yaml_path(step, needle):
    with pytest.raises(RecipeError) as e:
        parse_recipe(_recipe(step), file="r.yaml")
    assert str(e.value).startswith(f"r.yaml: {needle}"), str(e.value)


def test_recipe_parse_accepts_counts_and_fractions():
    steps = parse_recipe(_recipe({"test": 20.0, "stratify_by": "lang"}), file="r.yaml").steps
    assert steps[2].config == SplitConfig(test=20, stratify_by="lang") and isinstance(steps[2].config.test, int)
    assert parse_recipe(_recipe({"test": 0.1}), file="r.yaml").kinds == (None, "pairs", "pairs")
    with pytest.raises(RecipeError, match=r"steps\[1\]\.curriculum: step 'curriculum' takes pairs, but its input "
                                          "is prompts"):    # a split on prompts keeps the prompts kind
        parse_recipe({"name": "x", "source": {"path": str(REPO / "pyproject.toml"), "format": "prompts"},
                      "steps": [{"split": {"test": 1}}, {"curriculum": {}}]}, file="r.yaml")


# ------------------------------------------------------------------------- builds (catalog, partitions, CLI)

@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    """The bundled Arena responses, each prompt's rows scattered, with near-duplicate clusters (first hex digit
    of the prompt id: 16 clusters spread over every partition), as a catalog dataset."""
    cat = Catalog.open(tmp_path_factory.mktemp("cat"))
    run_recipe(None, cat, progress=False)
    src = (pl.from_arrow(cat.read("arena-curry-source")).sample(fraction=1.0, shuffle=True, seed=4)
           .with_columns(cluster_id=pl.col("prompt_id").str.slice(0, 1)))
    cat.write("arena-shuffled", src.to_arrow(), message="shuffled")
    cat.write("arena-plain", src.drop("cluster_id").to_arrow(), message="shuffled, no clusters")
    return cat


@pytest.mark.parametrize(("source", "steps"), [
    ("arena-plain", "  - rank: {by: score}\n  - pairs: {min_margin: 1}\n  - split: {test: 0.1}\n"
                    "  - curriculum: {stages: 3}\n"),
    ("arena-plain", "  - split: {test: 17, seed: 3}\n  - dedup: {}\n  - rank: {by: score}\n"),
    # on responses: a later pairs step carries response columns as X_chosen / X_rejected
    ("arena-shuffled", "  - dedup: {}\n  - rank: {by: score}\n  - split: {test: 0.2}\n"),
], ids=["pairs_then_curriculum", "split_first_count", "clusters"])
def test_partitioned_build_gives_the_in_memory_split(shuffled, tmp_path, source, steps):
    r = tmp_path / "r.yaml"
    r.write_text(f"name: out\nseed: 5\nsource: {{dataset: {source}}}\nsteps:\n{steps}")
    cats = {parts: Catalog.open(tmp_path / f"p{parts}") for parts in (1, 2, 3)}
    for cat in cats.values():
        cat.write(source, shuffled.read(source))
    mem_cat = cats[1]
    mem = run_recipe(r, mem_cat, progress=False, partitions=1)
    split_at = next(i for i, s in enumerate(mem.steps) if s.step == "split")
    for parts in (2, 3):
        part = run_recipe(r, cats[parts], progress=False, partitions=parts)
        assert part.lineage["partitions"] == parts and mem.lineage["partitions"] == 1
        assert part.content_hash == mem.content_hash and part.rows == mem.rows
        got = pl.from_arrow(cats[parts].read("out"))
        assert got.select("prompt_id", "split").equals(pl.from_arrow(mem_cat.read("out")).select("prompt_id", "split"))
        p_step, m_step = part.steps[split_at], mem.steps[split_at]
        assert (p_step.rows_in, p_step.rows_kept, p_step.rows_out, p_step.summary) == \
            (m_step.rows_in, m_step.rows_kept, m_step.rows_out, m_step.summary)
        assert {k: v for k, v in p_step.info.items() if k != "partitions"} == m_step.info
    out = pl.from_arrow(mem_cat.read("out"))
    per = out.group_by("prompt_id").agg(pl.col("split").n_unique())
    assert per["split"].max() == 1
    info = mem.steps[split_at].info
    if source == "arena-shuffled":
        assert info["unit"] == "cluster" and info["train"]["units"] + info["test"]["units"] == 16
        assert out.group_by("cluster_id").agg(pl.col("split").n_unique())["split"].max() == 1
    elif "test: 17" in steps:
        assert info["test"]["prompts"] == 17 and info["train"]["prompts"] == 183


def test_missing_stratify_column_fails_the_build_and_writes_nothing(shuffled, tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("name: bad\nsource: {dataset: arena-plain}\nsteps:\n  - rank: {}\n  - pairs: {}\n"
                 "  - split: {test: 0.1, stratify_by: language}\n")
    assert load_recipe(r).steps[2].config.stratify_by == "language"     # columns are only known at build time
    before = shuffled.names()
    for parts in (1, 2):
        with pytest.raises(SchemaError, match="stratify_by column 'language' is not in the input") as e:
            run_recipe(r, shuffled, progress=False, partitions=parts)
        assert e.value.column == "language"
    assert shuffled.names() == before


def test_cli_builds_the_bundled_arena_split_recipe(tmp_path):
    catalog = tmp_path / "cat"
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "prefdata", "build", "examples/recipes/arena_split.yaml",
                           "--catalog", str(catalog), "--json"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["name"], result["rows"]) == ("arena-split", 2328)
    out = pl.from_arrow(Catalog.open(catalog).read("arena-split"))
    per = out.group_by("split").agg(pl.col("prompt_id").n_unique().alias("prompts"), pl.len().alias("rows"))
    assert dict(per.select("split", "prompts").iter_rows()) == {"test": 20, "train": 175}
    assert dict(per.select("split", "rows").iter_rows()) == {"test": 232, "train": 2096}
    assert not set(out.filter(pl.col("split") == "test")["prompt_id"]) & \
        set(out.filter(pl.col("split") == "train")["prompt_id"])
    lineage = Catalog.open(catalog).lineage("arena-split")
    split_step = next(s for s in lineage["steps"] if s["step"] == "split")
    assert split_step["rows_in"] == split_step["rows_kept"] == split_step["rows_out"] == 2328
    assert split_step["info"]["train"] == {"prompts": 175, "rows": 2096}
    assert "split       test 10 % of prompts · train 175 prompts (2,096 rows) · test 20 prompts (232 rows)" \
        in proc.stderr                                 # progress goes to stderr under --json


def test_ray_engine_runs_split_on_the_driver(ctx):
    # an exact count needs every prompt: engine="ray" hands the whole table to the unchanged step
    from prefdata.engine_ray import run_step

    df = table(SIZES)
    built = run_step("split", build_split, df.lazy(), SplitConfig(test=3), ctx)
    assert built.info["engine"].startswith("ray (step needs the whole table")
    assert built.frame.collect().equals(build_split(df.lazy(), SplitConfig(test=3), ctx).frame.collect())
