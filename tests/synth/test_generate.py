"""Generation: batched left-padded decoding matches transformers' own greedy decoding, per-row seeds make
outputs independent of batching, and a SIGKILLed run resumes with no duplicate and no missing rows."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from builders.backends import GenRequest, ModelSpec, SamplingSpec, load_backend
from builders.base import StepContext
from builders.generate import GenerateConfig, build_generate
from prefdata.schema import validate

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["hello world", "the cat sat on the mat and then", "a", "what is two plus two?",
           "Write a haiku about autumn.", "Name three primes."]


def test_greedy_batched_left_padding_matches_transformers_generate(tiny_lm):
    be = load_backend(ModelSpec(name="tiny", path=str(tiny_lm), batch_size=4, device="cpu"), tiny_lm)
    greedy = SamplingSpec(temperature=0, max_new_tokens=6)
    outs = be.generate([GenRequest(str(i), p, None, greedy, 0) for i, p in enumerate(PROMPTS)])
    for p, o in zip(PROMPTS, outs, strict=True):
        enc = be.tokenizer([p], return_tensors="pt")
        ref = be.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                max_new_tokens=6, do_sample=False, pad_token_id=be.tokenizer.pad_token_id)
        assert o.text == be.tokenizer.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        assert o.n_tokens <= 6 and o.finish_reason in ("stop", "length")


def test_sampling_is_per_row_seeded_and_batch_independent(tiny_lm):
    spec = ModelSpec(name="tiny", path=str(tiny_lm), batch_size=6, device="cpu")
    be = load_backend(spec, tiny_lm)
    s = SamplingSpec(temperature=1.0, top_k=40, top_p=0.9, max_new_tokens=6)
    reqs = [GenRequest(str(i), p, None, s, 1000 + i) for i, p in enumerate(PROMPTS)]
    batched = [o.text for o in be.generate(reqs)]
    be.spec = spec.model_copy(update={"batch_size": 1})
    single = [o.text for o in be.generate(list(reversed(reqs)))][::-1]
    be.spec = spec                                  # the backend is cached: leave it as loaded
    assert batched == single
    other_seed = be.generate([GenRequest("x", PROMPTS[1], None, s, 7)])[0].text
    assert len({batched[1], other_seed}) == 2        # another seed draws another sample


def test_chat_template_is_applied_when_the_tokenizer_has_one(tiny_chat_lm):
    from builders.backends.transformers_backend import render_prompt
    be = load_backend(ModelSpec(name="c", path=str(tiny_chat_lm), system_prompt="be brief"), tiny_chat_lm)
    text, templated = render_prompt(be.tokenizer, GenRequest("k", "hi there", None, SamplingSpec(), 0), be.spec)
    assert templated and text == "<system> be brief <user> hi there <assistant>"
    never = be.spec.model_copy(update={"chat_template": "never"})
    assert render_prompt(be.tokenizer, GenRequest("k", "hi there", None, SamplingSpec(), 0), never) == \
        ("hi there", False)


def _cfg(model_dir: Path, **kw) -> GenerateConfig:
    base = {"models": [{"name": "tiny-a", "path": str(model_dir), "batch_size": 4, "device": "cpu"}],
            "n": 2, "sampling": {"temperature": 0.9, "max_new_tokens": 5}, "seed": 3, "shard_size": 2}
    base.update(kw)
    return GenerateConfig.model_validate(base)


def test_generate_step_output_contract_and_accounting(tiny_lm, tmp_path):
    frame = pl.LazyFrame({"prompt": PROMPTS[:3] + [PROMPTS[0], "   "], "tests": [["t1"], ["t2"], [], ["t1"], []],
                          "temperature": [0.0, None, 0.5, 0.0, 0.0], "seed": [9, 9, 9, 9, 9]})
    cfg = _cfg(tiny_lm, row_params=["temperature"], models=[
        {"name": "tiny-a", "path": str(tiny_lm), "device": "cpu"},
        {"name": "tiny-b", "path": str(tiny_lm), "device": "cpu", "batch_size": 1}])
    built = build_generate(frame, cfg, StepContext(base_dir=tmp_path, work_dir=tmp_path / "w", progress=False))
    out = built.frame.collect()
    validate(out.to_arrow(), "responses")
    assert out.height == 3 * 2 * 2                                   # prompts x models x n
    assert built.rows_in == 5 and built.rows_kept == 3
    assert built.drops == {"empty prompt": 1, "further row of an already generated prompt": 1}
    assert built.rows_in == built.rows_kept + sum(built.drops.values())
    assert out["response_id"].n_unique() == out.height
    assert set(out["model"]) == {"tiny-a", "tiny-b"}
    # an input `seed` column not named in row_params neither overrides nor clashes with the generated seeds
    assert "seed_right" not in out.columns and 9 not in set(out["seed"])
    assert out.filter(pl.col("prompt") == PROMPTS[0])["tests"].to_list() == [["t1"]] * 4   # carried column
    temps = dict(zip(out["prompt"], out["gen_params"].struct.field("temperature"), strict=True))
    assert temps[PROMPTS[0]] == 0.0 and temps[PROMPTS[1]] == 0.9 and temps[PROMPTS[2]] == 0.5
    # greedy rows: both samples of one model are the same text, still two distinct rows
    g = out.filter((pl.col("prompt") == PROMPTS[0]) & (pl.col("model") == "tiny-a"))
    assert g["response"].n_unique() == 1 and g.height == 2


_CHILD = r'''
import sys, polars as pl
from pathlib import Path
from builders.base import StepContext
from builders.generate import GenerateConfig, build_generate
cfg = GenerateConfig.model_validate_json(Path(sys.argv[1]).read_text())
frame = pl.read_parquet(sys.argv[2]).lazy()
b = build_generate(frame, cfg, StepContext(base_dir=Path(sys.argv[3]), work_dir=Path(sys.argv[3]) / "work",
                                           progress=False))
b.frame.collect().write_parquet(sys.argv[4])
print("resumed", b.info["shards_resumed"], "of", b.info["shards"])
'''


def test_sigkilled_generation_resumes_without_duplicates_or_gaps(tiny_lm, tmp_path):
    prompts = [f"question number {i}: what follows {i}?" for i in range(16)]
    pl.DataFrame({"prompt": prompts}).write_parquet(tmp_path / "prompts.parquet")
    cfg = _cfg(tiny_lm, shard_size=1, sampling={"temperature": 0.9, "max_new_tokens": 12},
               models=[{"name": "tiny-a", "path": str(tiny_lm), "batch_size": 2, "device": "cpu"}])
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "child.py").write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "cfg.json"), str(tmp_path / "prompts.parquet"),
            str(tmp_path), str(tmp_path / "out.parquet")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    manifest = None
    while time.monotonic() < deadline:
        found = list((tmp_path / "work").glob("generate-*/manifest.json"))
        if found and len(json.loads(found[0].read_text())["shards"]) >= 2:
            manifest = found[0]
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.005)
    assert manifest is not None, "child never committed 2 shards"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(json.loads(manifest.read_text())["shards"])
    assert done_at_kill < 16, "the run finished before it was killed; nothing was resumed"
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    n_resumed = int(res.stdout.split()[1])
    assert n_resumed >= done_at_kill
    resumed = pl.read_parquet(tmp_path / "out.parquet")
    assert resumed.height == 16 * 2 and resumed["response_id"].n_unique() == 32
    assert set(resumed["prompt"]) == set(prompts)
    fresh = build_generate(pl.LazyFrame({"prompt": prompts}), cfg,
                           StepContext(base_dir=tmp_path, work_dir=tmp_path / "fresh", progress=False))
    cols = ["response_id", "response", "seed", "sample_index"]
    assert resumed.select(cols).sort("response_id").equals(fresh.frame.collect().select(cols).sort("response_id"))


def test_changed_config_does_not_reuse_shards(tiny_lm, tmp_path):
    ctx = StepContext(base_dir=tmp_path, work_dir=tmp_path / "w", progress=False)
    frame = pl.LazyFrame({"prompt": PROMPTS[:2]})
    a = build_generate(frame, _cfg(tiny_lm), ctx)
    b = build_generate(frame, _cfg(tiny_lm, seed=4), ctx)
    again = build_generate(frame, _cfg(tiny_lm), ctx)
    assert a.info["shards_resumed"] == 0 and b.info["shards_resumed"] == 0 and again.info["shards_resumed"] == 1
    assert not a.frame.collect()["seed"].equals(b.frame.collect()["seed"])


@pytest.mark.parametrize("bad", [{"n": 0}, {"row_params": ["colour"]}, {"prompt_template": "no slot"},
                                 {"models": []}, {"unknown": 1}])
def test_config_errors_at_parse_time(tiny_lm, bad):
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        _cfg(tiny_lm, **bad)
