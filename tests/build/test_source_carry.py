"""Recipe sources: extra columns kept with `carry`, prompts tables recognized from the catalog."""
from __future__ import annotations

import json

import pytest

from catalog import Catalog
from prefdata.build import run_recipe, table_kind
from prefdata.errors import PrefdataError, RecipeError


def _recipe(tmp_path, source: str, steps: str) -> object:
    p = tmp_path / "r.yaml"
    p.write_text(f"name: carried\nsource: {source}\nsteps:\n{steps}")
    return p


def test_carry_keeps_a_source_column_through_the_steps(tmp_path):
    rows = [{"id": f"q{i}", "question": f"question {i}", "answer": a, "rating": r, "annotator": f"ann{i % 2}"}
            for i in range(2) for a, r in (("good", 5.0), ("bad", 1.0))]
    src = tmp_path / "src.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = _recipe(tmp_path, "{path: src.jsonl, format: jsonl, mapping: {prompt: question, response: answer, "
                               "score: rating}, carry: [annotator]}",
                     "  - rank: {by: score}\n")
    cat = Catalog.open(tmp_path / "cat")
    res = run_recipe(recipe, cat, progress=False)
    out = cat.read(res.name, res.version)
    assert out.column("annotator").to_pylist() == ["ann0", "ann0", "ann1", "ann1"]
    assert cat.lineage("carried-source")["config"]["carry"] == ["annotator"]


def test_unknown_carry_column_is_a_user_error(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_text(json.dumps({"prompt": "p", "response": "r", "score": 1.0}) + "\n")
    recipe = _recipe(tmp_path, "{path: src.jsonl, format: jsonl, carry: [nope]}", "  - rank: {by: score}\n")
    with pytest.raises(PrefdataError, match="nope"):
        run_recipe(recipe, Catalog.open(tmp_path / "cat"), progress=False)


def test_catalog_prompts_tables_are_prompts_kind(tmp_path):
    assert table_kind(["prompt_id", "prompt", "tests"]) == "prompts"
    assert table_kind(["prompt_id", "prompt", "response_id", "response"]) == "responses"
    recipe = _recipe(tmp_path, "{path: x.jsonl, format: prompts}", "  - pairs: {strategy: all_pairs}\n")
    (tmp_path / "x.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(RecipeError, match="pairs"):
        run_recipe(recipe, Catalog.open(tmp_path / "cat"), progress=False)
