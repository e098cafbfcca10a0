"""`decontaminate`: a hand-made benchmark (JSON Lines, parquet and a datasets folder) with exact matched item ids,
normalization, the short-text rule, the tie-break, flag mode, n-gram size; benchmark file errors; recipe errors
naming the YAML path; partitioned = in-memory; the bundled example through the real CLI with its lineage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from builders.base import StepContext
from builders.decontaminate import DecontaminateConfig, build_decontaminate
from catalog import Catalog
from prefdata.build import run_recipe
from prefdata.errors import RecipeError, SchemaError
from prefdata.recipe import parse_recipe
from tests.builders.conftest import check

REPO = Path(__file__).resolve().parents[2]
M1 = "Compute the sum of all integers from one to one hundred and explain the trick that young Gauss used."
M2 = "What is the derivative of the natural logarithm of x squared plus one with respect to x?"
M3 = "Prove that the square root of two is irrational"                        # 9 words: shorter than 13
LIST_TUPLE = "Explain the difference between a list and a tuple in Python with two short examples."
PALINDROME = ("Write a Python function that checks whether a string is a palindrome, ignoring spaces, punctuation "
              "and letter case.")
PROMPTS = {
    # 15 words of M1 in a row, other case and punctuation: 3 shared 13-grams
    "p_m1": "Please: COMPUTE the sum of all integers from one to one hundred, and explain the trick! Thanks",
    # only 12 words of M2 in a row: no 13-gram in common (a 12-gram would match)
    "p_12": "Tell me what is the derivative of the natural logarithm of x squared plus seven",
    "p_m3": "Prove that the square root of two is irrational.",                    # equal to M3 once normalized
    "p_in": "Can you prove that the square root of two is irrational using only elementary arguments",
    # all of the palindrome item (6 shared 13-grams) and 15 words of M1 (3): the palindrome item is named
    "p_two": PALINDROME + " Then compute the sum of all integers from one to one hundred and explain the trick.",
    # the same text is item m4 of mathq and item 102 of codeq: the benchmark listed first is named
    "p_tie": LIST_TUPLE,
    "p_clean": "Recommend three novels about lighthouses and say why each is worth reading.",
}


def responses(prompts: dict[str, str] = PROMPTS) -> pl.DataFrame:
    rows = [{"prompt_id": p, "prompt": t, "response_id": f"{p}:{i}", "response": f"answer {i}", "score": float(i)}
            for p, t in prompts.items() for i in range(2)]
    return pl.DataFrame(rows)


@pytest.fixture
def bench(tmp_path) -> Path:
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "m1", "prompt": M1}, {"id": "m2", "prompt": M2}, {"id": "m3", "prompt": M3},
        {"id": "m4", "prompt": LIST_TUPLE}]))
    pl.DataFrame({"qid": [101, 102], "question": [PALINDROME, LIST_TUPLE]}).write_parquet(tmp_path / "code.parquet")
    return tmp_path


def cfg(**kw) -> DecontaminateConfig:
    benchmarks = [{"name": "mathq", "path": "math.jsonl"},
                  {"name": "codeq", "path": "code.parquet", "text": "question", "id": "qid"}]
    return DecontaminateConfig(benchmarks=kw.pop("benchmarks", benchmarks), **kw)


def test_matched_items_are_exactly_the_hand_worked_ones(bench):
    built = build_decontaminate(responses().lazy(), cfg(), StepContext(base_dir=bench))
    out = check(built, 14)
    assert built.drops == {"13-gram overlap with codeq item 101": 2, "13-gram overlap with mathq item m1": 2,
                           "13-gram overlap with mathq item m3": 2, "13-gram overlap with mathq item m4": 2}
    assert out["prompt_id"].unique(maintain_order=True).to_list() == ["p_12", "p_in", "p_clean"]
    assert built.rows_kept == 6 and out.columns == responses().columns
    assert built.info["benchmarks"] == {"mathq": {"items": 4, "items_matched": 3, "prompts": 3, "rows": 6},
                                        "codeq": {"items": 2, "items_matched": 1, "prompts": 1, "rows": 2}}
    assert (built.info["prompts_matched"], built.info["rows_matched"]) == (4, 8)
    assert built.summary == "2 benchmarks (6 items) · dropped 4 prompts (8 rows): mathq 3, codeq 1"


def test_ngram_size_is_configurable(bench):
    built = build_decontaminate(responses().lazy(), cfg(ngram=12), StepContext(base_dir=bench))
    check(built, 14)
    # the 12 words p_12 shares with m2 now match; p_in still does not (m3 is a 9-word item)
    assert built.drops == {f"12-gram overlap with {item}": 2 for item in (
        "codeq item 101", "mathq item m1", "mathq item m2", "mathq item m3", "mathq item m4")}


def test_flag_names_benchmark_and_item_and_drops_nothing(bench):
    df = responses().with_columns(pl.lit("old").alias("contamination"))
    built = build_decontaminate(df.lazy(), cfg(action="flag"), StepContext(base_dir=bench))
    out = check(built, 14)
    assert built.drops == {} and out.height == 14 and out.columns == df.columns
    flags = dict(out.select("prompt_id", "contamination").unique().iter_rows())
    assert flags == {"p_m1": "mathq:m1", "p_12": None, "p_m3": "mathq:m3", "p_in": None, "p_two": "codeq:101",
                     "p_tie": "mathq:m4", "p_clean": None}


def test_datasets_folder_and_row_number_ids(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"prompt": ["nothing to see here", M2]}).save_to_disk(str(tmp_path / "hf"))
    c = DecontaminateConfig(benchmarks=[{"name": "hfq", "path": "hf", "id": None}], ngram=12)
    built = build_decontaminate(responses().lazy(), c, StepContext(base_dir=tmp_path))
    check(built, 14)
    assert built.drops == {"12-gram overlap with hfq item 2": 2}


@pytest.mark.parametrize(("rows", "message", "column", "row"), [
    ([{"id": "a", "text": "x"}], "has no column 'prompt'", "prompt", None),
    ([{"id": "a", "prompt": "x"}, {"id": None, "prompt": "y"}], "column 'id' is null", "id", 2),
    ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "item id 'a' appears more than once", "id", 2),
])
def test_bad_benchmark_file_names_file_column_and_row(tmp_path, rows, message, column, row):
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = DecontaminateConfig(benchmarks=[{"name": f"bad{len(rows)}{column}", "path": "b.jsonl"}])
    with pytest.raises(SchemaError, match=message) as e:
        build_decontaminate(responses().lazy(), c, StepContext(base_dir=tmp_path))
    assert e.value.column == column and e.value.row == row and str(tmp_path / "b.jsonl") in str(e.value)


@pytest.mark.parametrize(("step", "where", "message"), [
    ({"benchmarks": [{"name": "b", "path": "missing.jsonl"}]}, "steps[0].decontaminate.benchmarks[0].path",
     "file not found"),
    ({"benchmarks": []}, "steps[0].decontaminate.benchmarks", "at least 1 item"),
    ({"benchmarks": [{"name": "a b", "path": "math.jsonl"}]}, "steps[0].decontaminate.benchmarks[0].name",
     "not a benchmark name"),
    ({"benchmarks": [{"name": "b", "path": "math.jsonl"}] * 2}, "steps[0].decontaminate", "must differ"),
    ({"benchmarks": [{"name": "b", "path": "math.jsonl"}], "ngram": 0}, "steps[0].decontaminate.ngram", "greater"),
    ({"benchmarks": [{"name": "b", "path": "math.jsonl", "column": "t"}]},
     "steps[0].decontaminate.benchmarks[0].column", "unknown field"),
])
def test_bad_configs_name_the_yaml_path(bench, step, where, message):
    with pytest.raises(RecipeError) as e:
        parse_recipe({"name": "x", "source": {"dataset": "d"}, "steps": [{"decontaminate": step}]}, file="r.yaml",
                     base_dir=bench)
    assert str(e.value).startswith(f"r.yaml: {where}: ") and message in str(e.value)


def test_partitioned_build_equals_in_memory(bench):
    recipe = bench / "r.yaml"
    recipe.write_text("name: out\nsource: {dataset: src}\nsteps:\n  - decontaminate:\n      benchmarks:\n"
                      "        - {name: mathq, path: math.jsonl}\n"
                      "        - {name: codeq, path: code.parquet, text: question, id: qid}\n  - rank: {}\n")
    src = responses().sample(fraction=1.0, shuffle=True, seed=1)
    got = {}
    for parts in (1, 3):
        cat = Catalog.open(bench / f"c{parts}")
        cat.write("src", src.to_arrow())
        res = run_recipe(recipe, cat, progress=False, partitions=parts)
        step = res.steps[0]
        got[parts] = (res.content_hash, step.drops, step.rows_in, step.rows_kept, step.summary,
                      {k: v for k, v in step.info.items() if k != "partitions"})
    assert got[1] == got[3]
    assert got[1][1]["13-gram overlap with mathq item m4"] == 2


def test_bundled_example_drops_the_overlapping_arena_prompts(tmp_path):
    catalog = tmp_path / "cat"
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "prefdata", "build", "examples/recipes/arena_hygiene.yaml",
                           "--catalog", str(catalog), "--json"], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lineage = Catalog.open(catalog).lineage("arena-hygiene")
    step = next(s for s in lineage["steps"] if s["step"] == "decontaminate")
    # five benchmark items quote arena prompts (hb-013 equals a 9-word prompt); hb-014 paraphrases one: no match
    assert step["drops"] == {f"13-gram overlap with hygiene-bench item hb-0{i}": 7 for i in ("03", "05", "08", "11",
                                                                                              "13")}
    assert step["info"]["benchmarks"] == {"hygiene-bench": {"items": 24, "items_matched": 5, "prompts": 5,
                                                            "rows": 35}}
    assert lineage["rows_dropped"]["decontaminate: 13-gram overlap with hygiene-bench item hb-003"] == 7
    near = next(s for s in lineage["steps"] if s["step"] == "near_dedup")
    assert near["drops"] == {} and near["info"]["clusters"] == 0
