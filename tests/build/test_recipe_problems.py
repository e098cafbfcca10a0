"""A recipe reports every problem at once, each with its YAML path, when it is parsed: every missing model
and scorer checkpoint (with what is expected there), bad step configs and a missing source file, before any
data is read, torch is imported or a catalog folder is created."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefdata.errors import RecipeError, RecipeProblems
from prefdata.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[2]
RANKDPO = REPO / "examples" / "recipes" / "synth_rankdpo.yaml"


def test_all_problems_with_yaml_paths(tmp_path):
    (tmp_path / "src.jsonl").write_text('{"prompt": "p"}\n')
    (tmp_path / "rm").mkdir()                           # one scorer path exists: not reported
    data = {"name": "x", "source": {"path": "src.jsonl", "format": "prompts"}, "steps": [
        {"generate": {"models": [{"name": "a", "path": "models/a"},
                                 {"name": "b", "backend": "diffusers", "path": "/nowhere/sd"}]}},
        {"score": {"scorers": [{"kind": "reward_model", "name": "rm", "path": "rm"},
                               {"kind": "clip", "name": "c", "family": "hf", "path": "package:no-such-dist-xyz/clip"}]}},
        {"pairs": {"min_marign": 1}},
    ]}
    with pytest.raises(RecipeProblems) as e:
        parse_recipe(data, file=tmp_path / "r.yaml")
    got = [(p, m.split(";")[0]) for p, m in e.value.problems]
    assert got == [
        ("steps[0].generate.models[0].path",
         f"model path 'models/a' does not exist (looked at {tmp_path / 'models' / 'a'}) "
         "(a relative path is relative to the recipe file's folder)"),
        ("steps[0].generate.models[1].path", "model path '/nowhere/sd' does not exist (looked at /nowhere/sd)"),
        ("steps[1].score.scorers[1].path", "model path 'package:no-such-dist-xyz/clip': package 'no-such-dist-xyz' "
                                           "is not installed"),
        ("steps[2].pairs.min_marign", "unknown field"),
    ]
    # what is expected there, per backend / scorer family
    msgs = dict(e.value.problems)
    assert "expected a transformers model folder (config.json" in msgs["steps[0].generate.models[0].path"]
    assert "expected a diffusers pipeline folder" in msgs["steps[0].generate.models[1].path"]
    assert "expected a transformers CLIP-family model folder" in msgs["steps[1].score.scorers[1].path"]
    assert str(e.value).startswith(f"{tmp_path / 'r.yaml'}: 4 problems (nothing was read or run):\n  steps[0]")
    assert len(str(e.value).splitlines()) == 5


def test_single_problem_reads_as_one_line(tmp_path):
    with pytest.raises(RecipeError) as e:
        parse_recipe({"name": "x", "source": {"dataset": "d"}, "steps": [{"pairs": {"min_marign": 1}}]},
                     file=tmp_path / "r.yaml")
    assert str(e.value) == f"{tmp_path / 'r.yaml'}: steps[0].pairs.min_marign: unknown field"


@pytest.mark.skipif((REPO / "models").exists(), reason="a local models/ folder holds the checkpoints")
def test_bundled_synth_recipe_fails_before_any_work(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cat = tmp_path / "cat"
    proc = subprocess.run([sys.executable, "-m", "prefdata", "build", str(RANKDPO), "--catalog", str(cat)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0] == f"error: {RANKDPO}: 3 problems (nothing was read or run):"
    assert [ln.split(": ")[0].strip() for ln in lines[1:]] == [
        "steps[0].generate.models[0].path", "steps[1].score.scorers[0].path", "steps[1].score.scorers[1].path"]
    assert "looked at " + str(REPO / "models" / "open_clip_vit_b32.bin") in lines[2]
    assert not cat.exists()                             # no catalog folder, nothing ingested
    # parsing alone imports no torch
    code = ("import sys\nfrom prefdata.recipe import load_recipe\ntry:\n    load_recipe(sys.argv[1])\n"
            "except Exception:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(RANKDPO)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_iterate_recipe_checks_every_model_but_the_policy(tmp_path):
    """An iterate recipe's generate models and step models are checked when it is parsed; `path: policy` is the
    round's policy (written by the run) and is not."""
    from prefdata.iterate_recipe import parse_iterate_recipe

    data = {
        "name": "it", "output_dir": "out", "rounds": 1, "policy": {"path": "m"},
        "prompts": {"source": {"path": "p.jsonl", "format": "prompts"}, "per_round": 4, "fresh": True},
        "generate": {"n": 2, "models": [{"name": "policy", "path": "policy"}, {"name": "other", "path": "gone"}]},
        "steps": [{"score": {"scorers": [{"kind": "judge", "name": "j", "model": {"name": "j", "path": "policy"}}],
                             "set_score": "j"}},
                  {"pairs": {"strategy": "best_vs_worst"}}],
        "train": {"loss": {"name": "dpo_sigmoid", "beta": 0.1}, "train": {"batch_size": 2}},
    }
    with pytest.raises(RecipeError) as e:
        parse_iterate_recipe(data, file=tmp_path / "it.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'it.yaml'}: generate.models[1].path: model path 'gone' does not "
                                   f"exist (looked at {tmp_path / 'gone'})")
