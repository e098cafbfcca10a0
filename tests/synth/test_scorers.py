"""Every scorer kind through the `score` step: exact values (rules, code tests) or values equal to a direct
forward pass of the same tiny model (reward models, CLIP); unscorable rows are accounted drops."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from builders.base import StepContext
from builders.score import ScoreConfig, build_score
from builders.scorers.judge import parse_judgment
from prefdata.schema import validate

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "examples" / "data" / "images"


def _resp(responses, **cols) -> pl.LazyFrame:
    n = len(responses)
    return pl.LazyFrame({"prompt_id": [f"p{i // 2}" for i in range(n)], "prompt": cols.pop("prompt", ["q"] * n),
                         "response_id": [f"r{i}" for i in range(n)], "response": responses, **cols})


def _run(frame, scorers, tmp_path, **kw):
    b = build_score(frame, ScoreConfig.model_validate({"scorers": scorers, **kw}),
                    StepContext(base_dir=tmp_path, progress=False))
    out = b.frame.collect()
    validate(out.to_arrow(), "responses")
    assert b.rows_in == b.rows_kept + sum(b.drops.values())
    return b, out


def test_rule_verifiers_exact_values(tmp_path):
    responses = ["The answer is 42.", "#### 1,234", "I think \\boxed{3.5}", "no number here",
                 '```json\n{"name": "a", "age": 3}\n```', '{"name": 5}', "Paris", "  paris  "]
    refs = ["42", "1234", "3.5", "7", "x", "x", "Paris", "Paris"]
    schema = {"type": "object", "required": ["name", "age"], "properties": {"name": {"type": "string"},
                                                                        "age": {"type": "integer"}}}
    scorers = [{"kind": "rules", "name": "math", "rule": "numeric", "reference_column": "ref"},
               {"kind": "rules", "name": "json", "rule": "json_schema", "schema": schema},
               {"kind": "rules", "name": "exact", "rule": "exact", "reference_column": "ref"},
               {"kind": "rules", "name": "exact_raw", "rule": "exact", "reference_column": "ref", "normalize": False},
               {"kind": "rules", "name": "digits", "rule": "regex", "pattern": r"\d"},
               {"kind": "rules", "name": "no_digits", "rule": "regex", "pattern": r"\d", "forbid": True},
               {"kind": "rules", "name": "short", "rule": "length", "unit": "words", "max": 3},
               {"kind": "rules", "name": "fmt", "rule": "format", "must_match": ["^[A-Z]"],
                "must_not_match": ["answer"]}]
    b, out = _run(_resp(responses, ref=refs), scorers, tmp_path, set_score="math")
    s = out["scores"].struct.unnest()
    assert s["math"].to_list() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert s["json"].to_list() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert s["exact"].to_list() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert s["exact_raw"].to_list() == [0, 0, 0, 0, 0, 0, 1, 0]
    assert s["digits"].to_list() == [1, 1, 1, 0, 1, 1, 0, 0]
    assert s["no_digits"].to_list() == [0, 0, 0, 1, 0, 0, 1, 1]
    assert s["short"].to_list() == [0, 1, 1, 1, 0, 1, 1, 1]
    assert s["fmt"].to_list() == [0, 0, 1, 0, 0, 0, 1, 0]
    assert out["score"].to_list() == s["math"].to_list() and b.drops == {}


@pytest.mark.parametrize("bad", [{"rule": "numeric"}, {"rule": "regex", "pattern": "("},
                                 {"rule": "length"}, {"rule": "json_schema", "schema": {"type": 5}}])
def test_rule_config_errors_at_parse_time(bad):
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        ScoreConfig.model_validate({"scorers": [{"kind": "rules", "name": "r", **bad}]})


def test_reward_model_batched_equals_direct_forward(tiny_reward_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    prompts = ["What is 2+2?", "Name a colour.", "Say hi", "Explain gravity in one long sentence please."]
    responses = ["4", "Blue, like the sky on a clear day.", "hi", "Masses attract each other."]
    spec = {"kind": "reward_model", "name": "rm", "path": str(tiny_reward_model), "batch_size": 3, "device": "cpu"}
    _, out = _run(_resp(responses, prompt=prompts), [spec], tmp_path)
    tok = AutoTokenizer.from_pretrained(tiny_reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    with torch.no_grad():
        ref = [model(**tok(p, r, return_tensors="pt")).logits[0, 0].item() for p, r in zip(prompts, responses,
                                                                                           strict=True)]
    got = out["scores"].struct.field("rm").to_numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    _, one = _run(_resp(responses, prompt=prompts), [{**spec, "batch_size": 1}], tmp_path)
    np.testing.assert_allclose(one["scores"].struct.field("rm").to_numpy(), got, rtol=1e-5, atol=1e-5)


def test_reward_model_applies_chat_template(tiny_chat_reward_model, tmp_path):
    from builders.scorers.reward_model import RewardModel, RewardModelScorer
    cfg = RewardModelScorer(kind="reward_model", name="rm", path=str(tiny_chat_reward_model), device="cpu")
    rm = RewardModel(cfg, StepContext(base_dir=tmp_path))
    assert rm.templated and rm.texts(["hi"], ["hello"]) == ["<user> hi <assistant> hello "]
    vals = rm(["hi", "a longer prompt"], ["hello", "x"])
    direct = rm.score_batch(rm.texts(["hi"], ["hello"]))
    assert vals.shape == (2,) and np.isfinite(vals).all() and math.isclose(vals[0], direct[0], abs_tol=1e-5)


def _image_rows(tmp_path: Path) -> pl.LazyFrame:
    shutil.copy(IMAGES / "chelsea.png", tmp_path / "chelsea.png")
    shutil.copy(IMAGES / "camera.png", tmp_path / "camera.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return _resp(["a", "b", "c", "d"], prompt=["a cat", "a cameraman", "a cat", "a horse"],
                 images=[["chelsea.png"], ["camera.png"], ["broken.png"], ["missing.png"]])


def test_open_clip_score_matches_manual_cosine(tiny_open_clip, tmp_path):
    import open_clip
    from PIL import Image
    conf, ckpt = tiny_open_clip
    spec = {"kind": "clip", "name": "oc", "family": "open_clip", "arch_config": str(conf), "path": str(ckpt),
            "device": "cpu", "batch_size": 2}
    b, out = _run(_image_rows(tmp_path), [spec], tmp_path)
    assert out.height == 2
    assert b.drops == {"clip oc: image unreadable: broken.png (UnidentifiedImageError)": 1,
                       "clip oc: image unreadable: missing.png (FileNotFoundError)": 1}
    model, _, pre = open_clip.create_model_and_transforms("tiny-clip-synth", pretrained=str(ckpt))
    tok = open_clip.get_tokenizer("tiny-clip-synth")
    with torch.no_grad():
        im = model.encode_image(pre(Image.open(IMAGES / "chelsea.png").convert("RGB"))[None])
        tx = model.encode_text(tok(["a cat"]))
    want = 100 * max(torch.nn.functional.cosine_similarity(im, tx).item(), 0.0)
    got = out["scores"].struct.field("oc").to_list()
    assert math.isclose(got[0], want, abs_tol=1e-4) and all(0 <= v <= 100 for v in got)


def test_hf_clip_family_score(tiny_hf_clip, tmp_path):
    from PIL import Image
    from transformers import AutoModel, AutoProcessor
    spec = {"kind": "clip", "name": "hf", "family": "hf", "path": str(tiny_hf_clip), "device": "cpu"}
    b, out = _run(_image_rows(tmp_path), [spec], tmp_path, on_unscorable="keep")
    assert out.height == 4 and b.drops == {}
    vals = out["scores"].struct.field("hf").to_list()
    assert vals[2] is None and vals[3] is None
    model, proc = AutoModel.from_pretrained(tiny_hf_clip), AutoProcessor.from_pretrained(tiny_hf_clip)
    enc = proc(text=["a cameraman"], images=[Image.open(IMAGES / "camera.png").convert("RGB")], return_tensors="pt",
               padding=True)
    with torch.no_grad():
        o = model(**enc)
    want = 100 * max(torch.nn.functional.cosine_similarity(o.image_embeds, o.text_embeds).item(), 0.0)
    assert math.isclose(vals[1], want, abs_tol=1e-4)


def test_code_tests_scorer_fraction_passed_and_hazards_reported(tmp_path):
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    responses = ["```python\ndef add(a, b):\n    return a + b\n```",
                 "def add(a, b):\n    return 3",
                 "def add(a, b):\n    while True:\n        pass",
                 "import os\ndef add(a, b):\n    open('/tmp/x-escape', 'w')\n    return a + b",
                 "def add(a, b): return a + b"]
    spec = {"kind": "code_tests", "name": "unit", "limits": {"wall_s": 5, "cpu_s": 1}}
    frame = _resp(responses, tests=[tests] * 4 + [[]])
    b, out = _run(frame, [spec], tmp_path)
    assert out["scores"].struct.field("unit").to_list() == [1.0, 0.5, 0.0, 0.0]
    assert b.drops == {"code_tests unit: row has no tests": 1}
    ev = b.info["unit"]["events"]
    assert ev.get("cpu_limit") == 2 and ev.get("write_denied") == 2
    assert {c["row"] for c in b.info["unit"]["contained_cases"]} == {2, 3}


def test_judge_parsing():
    pat = r"(?i)score\s*[:=]?\s*(-?\d+(?:\.\d+)?)"
    assert parse_judgment("Reasoning... Score: 7", pat, 1, 10) == 7.0
    assert parse_judgment("score=8.5 overall", pat, 1, 10) == 8.5
    assert parse_judgment("Score: 11", pat, 1, 10) is None          # out of scale
    assert parse_judgment("I'd give it a seven", pat, 1, 10) is None


def test_judge_through_a_generation_backend_unparsable_become_drops(tiny_lm, tmp_path):
    spec = {"kind": "judge", "name": "j", "model": {"name": "tiny", "path": str(tiny_lm), "device": "cpu"},
            "sampling": {"temperature": 0.0, "max_new_tokens": 4}}
    frame = _resp(["yes", "no", "maybe"], prompt=["a", "b", "c"])
    b, out = _run(frame, [spec], tmp_path, on_unscorable="keep")
    texts = out["judgment_j"].to_list()
    parsed = [parse_judgment(t, r"(?i)score\s*[:=]?\s*(-?\d+(?:\.\d+)?)", 1, 10) for t in texts]
    got = out["scores"].struct.field("j").to_list()
    assert got == parsed and b.info["j"]["judged"] == 3
    b2, out2 = _run(frame, [spec], tmp_path)
    n_bad = sum(p is None for p in parsed)
    assert out2.height == 3 - n_bad and b2.drops.get("judge j: unparsable judgment", 0) == n_bad


def test_move_set_score_leaves_only_other_objectives_in_scores(tmp_path):
    scorers = [{"kind": "rules", "name": "short", "rule": "length", "max": 3},
               {"kind": "rules", "name": "digits", "rule": "regex", "pattern": r"\d"}]
    _, out = _run(_resp(["abc", "a 1 long answer"]), scorers, tmp_path, set_score="short", move_set_score=True)
    assert out["score"].to_list() == [1.0, 0.0]
    assert [f.name for f in out.schema["scores"].fields] == ["digits"]
    assert out["scores"].struct.field("digits").to_list() == [0.0, 1.0]
