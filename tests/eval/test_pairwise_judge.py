"""Pairwise judge: the verdict combination by hand for every case, and the judge end to end through the real
transformers backend with a tiny Llama whose weights are set by hand so its verdicts are known.

The hand-wired judge: attention and MLP outputs are zeroed, so the logits at a position depend only on that
position's token (a bigram model); the lm_head maps the prompt's last word to a verdict token and the verdict token
to EOS. With the test rubric "... A: {a} B: {b}", the last word is the last word of response B:
  'good' -> "Winner:B", 'bad' -> "Winner:A", 'meh' -> "Winner:tie", anything else -> no verdict (unparsable).
A judge that looks only at the second response is maximally position-biased, which is what the both-orders
combination has to catch."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from builders.base import StepContext
from builders.scorers.judge import PairwiseJudge, combine_orders, judge_pairwise, parse_verdict

VOCAB = ["[PAD]", "[UNK]", "[EOS]", "good", "bad", "meh", "Winner:A", "Winner:B", "Winner:tie"]
NEXT = {"good": "Winner:B", "bad": "Winner:A", "meh": "Winner:tie",
        "Winner:A": "[EOS]", "Winner:B": "[EOS]", "Winner:tie": "[EOS]"}
RUBRIC = "Request: {prompt} A: {a} B: {b}"


@pytest.fixture(scope="module")
def verdict_lm(tmp_path_factory) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("verdict_lm")
    ids = {t: i for i, t in enumerate(VOCAB)}
    tk = Tokenizer(models.WordLevel(ids, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()       # no post-processor: nothing appended to the prompt
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                            eos_token="[EOS]").save_pretrained(path)
    hidden = 16
    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      pad_token_id=ids["[PAD]"], eos_token_id=ids["[EOS]"], bos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:               # the residual stream keeps just the token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(len(VOCAB), hidden))   # token i -> unit vector e_i
        model.lm_head.weight.zero_()
        for src, dst in NEXT.items():                  # logit of dst = 10 * 4 after the final RMSNorm of e_src
            model.lm_head.weight[ids[dst], ids[src]] = 10.0
    model.save_pretrained(path)
    return path


def judge_cfg(path: Path, **kw) -> PairwiseJudge:
    return PairwiseJudge.model_validate({"kind": "pairwise_judge", "name": "pj",
                                         "model": {"name": "verdict", "path": str(path), "device": "cpu"},
                                         "rubric": RUBRIC, "sampling": {"temperature": 0.0, "max_new_tokens": 4},
                                         **kw})


def test_combine_orders_every_case():
    nan = float("nan")
    # (verdict with the model shown as A, verdict with the model shown as B) -> (preference for the model, consistent)
    expected = {
        ("A", "B"): (1.0, True),      # model picked in both orders
        ("B", "A"): (0.0, True),      # baseline picked in both orders
        ("tie", "tie"): (0.5, True),
        ("A", "A"): (0.5, False),     # always the first shown: position bias -> tie
        ("B", "B"): (0.5, False),     # always the second shown
        ("A", "tie"): (0.5, False),   # a win in one order, a tie in the other
        ("tie", "B"): (0.5, False),
        ("B", "tie"): (0.5, False),
        ("tie", "A"): (0.5, False),
        ("A", None): (nan, False), ("B", None): (nan, False), ("tie", None): (nan, False),
        (None, "A"): (nan, False), (None, "B"): (nan, False), (None, "tie"): (nan, False),
        (None, None): (nan, False),
    }
    assert len(expected) == 16
    for (ab, ba), (pref, consistent) in expected.items():
        got_pref, got_consistent = combine_orders(ab, ba)
        assert got_consistent is consistent, (ab, ba)
        assert (math.isnan(got_pref) and math.isnan(pref)) or got_pref == pref, (ab, ba)


def test_parse_verdict_default_pattern():
    pat = PairwiseJudge.model_fields["pattern"].default
    assert parse_verdict("Winner: A", pat) == "A"
    assert parse_verdict("after thinking...\nwinner: b", pat) == "B"
    assert parse_verdict("Winner: **Tie**", pat) == "tie"
    assert parse_verdict("Winner:B", pat) == "B"
    assert parse_verdict("Winner: Alice", pat) is None              # not a verdict word
    assert parse_verdict("A is better", pat) is None
    assert parse_verdict("", pat) is None


def test_config_checks(tmp_path):
    with pytest.raises(ValidationError, match=r"rubric must contain \{b\}"):
        judge_cfg(tmp_path, rubric="{prompt} {a}")
    with pytest.raises(ValidationError, match="placeholder other than"):
        judge_cfg(tmp_path, rubric="{prompt} {a} {b} {score}")
    with pytest.raises(ValidationError, match="capture group"):
        judge_cfg(tmp_path, pattern="Winner: [AB]")
    with pytest.raises(ValidationError, match="Extra inputs"):
        judge_cfg(tmp_path, min_score=1)


def test_judge_pairwise_through_the_transformers_backend(verdict_lm, tmp_path):
    model_texts = ["x good", "bad", "good", "meh", "good", "bad"]
    baseline_texts = ["y bad", "good", "good", "meh", "zzz", "meh"]
    prompts = [f"q{i}" for i in range(6)]
    res = judge_pairwise(prompts, model_texts, baseline_texts, judge_cfg(verdict_lm),
                         StepContext(base_dir=tmp_path, progress=False))
    # raw judgments: (model as A -> decided by the baseline's last word, model as B -> by the model's last word)
    assert res.texts == [("Winner:A", "Winner:B"), ("Winner:B", "Winner:A"), ("Winner:B", "Winner:B"),
                         ("Winner:tie", "Winner:tie"), ("", "Winner:B"), ("Winner:tie", "Winner:A")]
    # row 0 model both orders; 1 baseline both; 2 second-shown both (bias) -> tie; 3 tie both;
    # 4 unparsable with the model as A; 5 tie vs baseline -> tie
    assert res.pref[[0, 1, 2, 3, 5]].tolist() == [1.0, 0.0, 0.5, 0.5, 0.5] and math.isnan(res.pref[4])
    assert res.consistent.tolist() == [True, True, False, True, False, False]
    assert res.reasons == [None, None, None, None, "pairwise_judge pj: unparsable judgment (model as A)", None]
    # consistency over the 5 rows parsed in both orders: rows 0, 1, 3 agree -> 3/5.
    # decisive verdicts (A or B) over all parsed judgments: A in r0, r1 (model as B), r5 (model as B) = 3 of 8
    assert res.info == {"judged": 6, "judgments": 12, "unparsable": 1, "position_consistency": 0.6,
                        "first_position_rate": 0.375}


def test_judge_pairwise_bad_input(verdict_lm, tmp_path):
    ctx = StepContext(base_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="2 prompts, 1 model and 2 baseline"):
        judge_pairwise(["a", "b"], ["x"], ["y", "z"], judge_cfg(verdict_lm), ctx)
    with pytest.raises(ValueError, match="baseline response at row 1 is not a string"):
        judge_pairwise(["a", "b"], ["x", "y"], ["y", None], judge_cfg(verdict_lm), ctx)
    empty = judge_pairwise([], [], [], judge_cfg(verdict_lm), ctx)
    assert empty.pref.size == 0 and empty.info["position_consistency"] is None
    assert np.asarray(empty.consistent).dtype == bool
