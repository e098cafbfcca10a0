"""The CodeDPO example recipe end to end through the real build runner into a real catalog: the bundled code
problems as a prompt-only source (tests carried) -> `generate` with a tiny random causal LM -> `codedpo` in
the sandbox. The random model writes garbage, so every sampled solution must fail every test and the
problem's reference solution must win every pair. Only the model path and sizes of
examples/recipes/synth_codedpo.yaml are swapped."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prefdata.errors import RecipeError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "recipes" / "synth_codedpo.yaml"
PROBLEMS = [json.loads(line) for line in (ROOT / "examples" / "data" / "code_problems.jsonl").read_text().splitlines()]


def _recipe(tmp_path: Path, model: Path) -> Path:
    data = yaml.safe_load(RECIPE.read_text())
    gen = data["steps"][0]["generate"]
    gen["models"][0]["path"] = str(model)
    gen.update(n=2, sampling={"temperature": 1.0, "max_new_tokens": 12})
    data["steps"][1]["codedpo"]["workers"] = 3
    data["source"]["path"] = str((RECIPE.parent / data["source"]["path"]).resolve())
    path = tmp_path / "synth_codedpo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_codedpo_recipe_reference_beats_every_failing_sample(tiny_lm, tmp_path):
    catalog = pytest.importorskip("catalog")
    from prefdata.build import run_recipe
    cat = catalog.Catalog.open(tmp_path / "cat")
    res = run_recipe(_recipe(tmp_path, tiny_lm), cat, progress=False)

    src = cat.read("synth-codedpo-source")                      # the problems, tests carried through ingest
    assert src.num_rows == 10 and src.column("tests").to_pylist() == [p["tests"] for p in PROBLEMS]
    gen, code = res.steps
    assert (gen.rows_in, gen.rows_kept, gen.drops, gen.rows_out) == (10, 10, {}, 20)

    # exact accounting: 20 sampled solutions in, each in a pair as the rejected side, none dropped
    assert (code.rows_in, code.rows_kept, code.drops, code.rows_out) == (20, 20, {}, 20)
    assert code.info["references"] == {"added": 10, "same_code_as_a_candidate": 0, "in_pairs": 10}
    assert (code.info["correctness_pairs"], code.info["efficiency_pairs"], code.info["problems"]) == (20, 0, 10)
    n_tests = sum(len(p["tests"]) for p in PROBLEMS)
    sandbox = code.info["sandbox"]
    assert sandbox["runs"] == 3 * n_tests                       # (2 samples + the reference) x each test
    assert sandbox["status"]["ok"] == n_tests                   # only the references pass, and pass every test
    assert sum(sandbox["status"].values()) - sandbox["status"]["ok"] == 2 * n_tests

    pairs = cat.read("synth-codedpo").to_pylist()
    by_prompt = {p["prompt"]: p for p in PROBLEMS}
    assert res.kind == "pairs" and len(pairs) == 20
    for row in pairs:
        problem = by_prompt[row["prompt"]]
        assert row["chosen"] == problem["reference_solution"] and row["model_chosen"] == "reference"
        assert row["model_rejected"] == "coder" and row["strategy"] == "codedpo_correctness" and row["stage"] == 0
        assert row["pass_rate_chosen"] == 1.0 and row["pass_rate_rejected"] == 0.0 and row["margin"] > 0
    lineage = cat.lineage("synth-codedpo", res.version)
    source_version = cat.versions("synth-codedpo-source")[-1]["version"]
    assert [s["step"] for s in lineage["steps"]] == ["generate", "codedpo"]
    assert lineage["inputs"] == [f"synth-codedpo-source@{source_version}"]


def test_a_prompts_source_only_feeds_generation_steps(tmp_path):
    catalog = pytest.importorskip("catalog")
    from prefdata.build import run_recipe
    recipe = tmp_path / "bad.yaml"
    source = {"path": str(ROOT / "examples" / "data" / "code_problems.jsonl"), "format": "prompts"}
    recipe.write_text(yaml.safe_dump({"name": "bad", "source": source,
                                      "steps": [{"pairs": {"strategy": "best_vs_worst"}}]}))
    with pytest.raises(RecipeError, match="step 'pairs' takes responses, but its input is prompts"):
        run_recipe(recipe, catalog.Catalog.open(tmp_path / "cat"), progress=False)


def test_reference_column_is_one_more_candidate_unless_a_sample_has_its_code():
    import polars as pl

    from builders.base import StepContext
    from builders.codedpo import CodeDPOConfig, build_codedpo
    from prefdata.errors import SchemaError
    ref = "def add(a, b):\n    return a + b"
    frame = pl.LazyFrame({
        "prompt_id": ["add", "add", "one", "one"], "prompt": ["Write add."] * 2 + ["Write one()."] * 2,
        "response_id": ["bad", "good", "o1", "o2"],
        "response": ["def add(a, b):\n    return a - b", f"```python\n{ref}\n```", "x(", "def one(): return 2"],
        "tests": [["assert add(1, 2) == 3", "assert add(2, 2) == 4"]] * 2 + [["assert one() == 1"]] * 2,
        "reference": [ref, ref, "def one():\n    return 1", None]})
    b = build_codedpo(frame, CodeDPOConfig(reference_column="reference", efficiency=False), StepContext(progress=False))
    out = b.frame.collect().select("prompt_id", "chosen_id", "rejected_id", "model_chosen").rows()
    one_ref = out[1][1]
    # add: a sample already has the reference's code, so it stays the candidate (no second copy is added);
    # one: both samples fail, the reference (first non-null value) is added and wins
    assert out == [("add", "good", "bad", None), ("one", one_ref, "o2", "reference")]   # tied samples: the last
    assert b.info["references"] == {"added": 1, "same_code_as_a_candidate": 1, "in_pairs": 1}
    assert b.rows_in == 4 and b.rows_kept == 3 and b.drops == {"solution in no pair": 1}
    with pytest.raises(SchemaError, match="reference column 'ref' missing"):
        build_codedpo(frame, CodeDPOConfig(reference_column="ref"), StepContext(progress=False))
