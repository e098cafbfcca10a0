"""The rounds recipe: every problem is one line naming the file and the YAML path, found while parsing (or, for
the prompt pools, before any model is loaded)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from prefdata.errors import RecipeError
from prefdata.iterate_recipe import load_iterate_recipe, parse_iterate_recipe, resolve_policy

BASE = {
    "name": "it", "output_dir": "out", "rounds": 2, "policy": {"path": "m"},
    "prompts": {"source": {"path": "p.jsonl", "format": "prompts"}, "per_round": 4, "fresh": True,
                "eval_prompts": {"holdout": 2}},
    "generate": {"n": 2, "sampling": {"max_new_tokens": 4}},
    "steps": [{"score": {"scorers": [{"kind": "rules", "name": "short", "rule": "length", "max": 20}],
                         "set_score": "short"}},
              {"pairs": {"strategy": "best_vs_worst"}}],
    "train": {"loss": {"name": "dpo_sigmoid", "beta": 0.1}, "train": {"batch_size": 2}},
    "eval": {"scorers": [{"kind": "rules", "name": "short", "rule": "length", "max": 20}]},
    "stop": {"min_gain": 0.01, "metric": "short"},
}


def _with(path: str, value):
    data = copy.deepcopy(BASE)
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[k] if not k.isdigit() else node[int(k)]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


_DELETE = object()


def _error(data, tmp_path: Path) -> str:
    f = tmp_path / "rounds.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as e:
        load_iterate_recipe(f)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{f}: ")
    return msg.removeprefix(f"{f}: ")


def test_valid_recipe_defaults_and_placeholders():
    r = parse_iterate_recipe(copy.deepcopy(BASE))
    assert r.generate["models"] == [{"name": "policy", "path": "policy"}]
    assert r.train.reference == "previous_round" and r.train.momentum == 0.0
    assert r.eval.against == ["initial", "previous"]
    gen = r.generate_config("/runs/x/round-001/policy", 1)
    assert gen.models[0].path == "/runs/x/round-001/policy" and gen.seed == 1     # seed offset by the round
    assert r.output_dir.is_absolute()
    assert len(r.config_sha256()) == 64
    assert r.config_sha256() == parse_iterate_recipe(copy.deepcopy(BASE)).config_sha256()


def test_self_rewarding_judge_resolves_to_the_round_policy():
    judge = {"kind": "judge", "name": "self", "model": {"name": "self", "path": "policy", "gguf_file": "x.gguf"}}
    data = _with("steps", [{"score": {"scorers": [judge], "set_score": "self"}}, {"pairs": {}}])
    r = parse_iterate_recipe(data)
    steps = r.build_steps("/p/round-1")
    assert steps[0].config.scorers[0].model.path == "/p/round-1"
    assert steps[0].config.scorers[0].model.gguf_file is None        # the round's policy is a plain folder
    assert resolve_policy({"a": [{"path": "policy"}, {"path": "other"}]}, "/x") == \
        {"a": [{"path": "/x"}, {"path": "other"}]}


@pytest.mark.parametrize("path,value,expected", [
    ("colour", 1, "colour: unknown key"),
    ("rounds", 0, "rounds: Input should be greater than or equal to 1"),
    ("prompts.per_round", _DELETE, "prompts: fresh: true needs per_round"),
    ("prompts.source", {"path": "a", "dataset": "b"}, "prompts.source: give exactly one of"),
    ("generate.models", [{"name": "other", "path": "some/model"}],
     "generate.models: at least one model must be the current policy"),
    ("generate.n", 0, "generate.n: Input should be greater than or equal to 1"),
    ("steps", [{"score": {"scorers": [{"kind": "rules", "name": "s", "rule": "length", "max": 3}]}}],
     "steps: the steps must turn the samples into training data (pairs or lists); they end in responses"),
    ("steps", [{"pairz": {}}], "steps[0].pairz: unknown step 'pairz'"),
    ("train.loss", {"name": "dpo_sigmoidd"}, "train.loss.name: unknown loss 'dpo_sigmoidd'"),
    ("train.train", {"batch_size": 0}, "train.train.batch_size: Input should be greater than or equal to 1"),
    ("train.reference", "previous", "train.reference: Input should be 'previous_round', 'initial' or 'free'"),
    ("train.momentum", -0.5, "train.momentum: Input should be greater than or equal to 0"),
    ("eval.model", "x", "eval.model: model is set by each round"),
    ("eval.scorers", [], "eval.scorers: List should have at least 1 item"),
    ("eval.against", ["latest"], "eval.against.0: Input should be 'initial' or 'previous'"),
    ("stop.metric", "long", "stop.metric: metric 'long' is neither win_rate nor an eval scorer (short)"),
    ("prompts.eval_prompts", _DELETE, "prompts.eval_prompts: eval needs held-out prompts"),
    ("name", "bad name", "name: 'bad name' is not a valid dataset name"),
])
def test_bad_recipes_name_file_and_yaml_path(tmp_path, path, value, expected):
    assert _error(_with(path, value), tmp_path).startswith(expected)


def test_stop_without_eval_is_refused(tmp_path):
    data = _with("eval", _DELETE)
    assert _error(data, tmp_path).startswith("stop: stop needs an eval section")


def test_eval_prompts_overlapping_the_pool_fail_before_any_model_loads(tmp_path, monkeypatch):
    from catalog import Catalog
    from prefdata.iterate import iterate

    monkeypatch.chdir(tmp_path)
    prompts = [{"prompt": f"Question number {i}?"} for i in range(6)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (tmp_path / "e.jsonl").write_text(json.dumps({"prompt": "question  number 3?"}) + "\n"
                                      + json.dumps({"prompt": "Question number 3?"}) + "\n")
    data = _with("prompts.eval_prompts", {"path": "e.jsonl", "format": "prompts"})
    data["policy"] = {"path": "model", "make_tiny_model": True}
    f = tmp_path / "rounds.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=r"prompts.eval_prompts: 1 held-out evaluation prompt\(s\) are also in the "
                                          r"training pool \(e.g. 'Question number 3\?'\)"):
        iterate(f, catalog=Catalog.open(tmp_path / "cat"), progress=False)
    assert not (tmp_path / "model").exists() and not (tmp_path / "out").exists()
    data = _with("prompts.per_round", 5)
    f.write_text(yaml.safe_dump(data))      # 6 prompts - 2 held out = 4 < 5
    with pytest.raises(RecipeError, match="prompts.per_round: per_round 5 exceeds the 4 training prompts"):
        iterate(f, catalog=Catalog.open(tmp_path / "cat"), progress=False)
