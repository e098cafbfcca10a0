"""TDPO's sequential KL(ref ‖ policy): the chunked computation against full-vocabulary logits of both models
(values and gradients, fp64), through both packing layouts, with a frozen reference or LoRA adapters off."""
from __future__ import annotations

import pytest
import torch
from test_logps import _groups
from training_kit import small_llama

from prefdata.errors import RecipeError
from training.forward import group_logps
from training.logps import ADAPTERS_OFF, SequenceLogps
from training.packing import pack_rows
from training.seq_kl import chunked_logps_and_kl


def test_chunked_kl_equals_full_logits_values_and_gradients():
    torch.manual_seed(0)
    N, H, V = 13, 8, 50
    h = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    hr = torch.randn(N, H, dtype=torch.float64)
    head, rhead = torch.nn.Linear(H, V).double(), torch.nn.Linear(H, V).double()
    t = torch.randint(0, V, (N,))
    a, b = torch.randn(N, dtype=torch.float64), torch.randn(N, dtype=torch.float64)
    lp, rlp, kl = chunked_logps_and_kl(h, head, t, hr, rhead, chunk=4)   # 4 chunks, ragged last
    (lp @ a + kl @ b).backward()
    got = [h.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    assert rhead.weight.grad is None    # the reference is never trained
    h.grad = None
    head.zero_grad()
    logq, logr = torch.log_softmax(head(h), -1), torch.log_softmax(rhead(hr), -1)
    lp_n, kl_n = logq.gather(1, t[:, None]).squeeze(1), (logr.exp() * (logr - logq)).sum(-1)
    (lp_n @ a + kl_n @ b).backward()
    torch.testing.assert_close(lp, lp_n, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl, kl_n, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rlp, logr.gather(1, t[:, None]).squeeze(1), rtol=1e-12, atol=1e-12)
    assert (kl_n >= 0).all()
    for g, want in zip(got, (h.grad, head.weight.grad, head.bias.grad), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)


def _naive_kl(pol, ref, groups, pad):
    """Each (prompt, response) as its own row; full logits of both models; KL summed over response positions."""
    p = pack_rows(groups, pad)
    kw = {"input_ids": p.input_ids, "attention_mask": p.attn}
    logq = torch.log_softmax(pol(**kw).logits, -1)[p.src_row, p.src_col]
    logr = torch.log_softmax(ref(**kw).logits, -1)[p.src_row, p.src_col]
    kl_tok = (logr.exp() * (logr - logq)).sum(-1)
    kl = torch.zeros(p.n_seqs, dtype=kl_tok.dtype).index_add(0, p.seq, kl_tok)
    ref_sums = torch.zeros(p.n_seqs, dtype=kl_tok.dtype).index_add(0, p.seq, logr.gather(1, p.targets[:, None])[:, 0])
    return kl, ref_sums


@pytest.mark.parametrize("layout", ["shared", "rows"])
def test_sequence_kl_against_a_frozen_reference(tokenizer, hh_pairs, layout):
    groups = _groups(tokenizer, hh_pairs, 3)
    pad = tokenizer.pad_token_id
    pol = small_llama(len(tokenizer), dtype=torch.float64, seed=0)
    ref = small_llama(len(tokenizer), dtype=torch.float64, seed=1).requires_grad_(False)
    model = SequenceLogps(pol, chunk=16, reference=ref)
    assert not any(p is q for p in model.parameters() for q in ref.parameters())   # not in the module tree
    out = group_logps(model, groups, pad_id=pad, device="cpu", layout=layout, with_kl=True)
    plain = group_logps(model, groups, pad_id=pad, device="cpu", layout=layout)
    kl_n, ref_n = _naive_kl(pol, ref, groups, pad)
    torch.testing.assert_close(out.sums, plain.sums, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.kl, kl_n, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out.ref_sums, ref_n, rtol=1e-8, atol=1e-10)
    assert (out.kl > 0).all()
    # the KL's gradient reaches the policy only
    out.kl.sum().backward()
    assert all(p.grad is None for p in ref.parameters()) and pol.lm_head.weight.grad.abs().sum() > 0


def test_adapters_off_reference_and_self_kl_is_zero(tokenizer, hh_pairs):
    from peft import LoraConfig, get_peft_model

    groups = _groups(tokenizer, hh_pairs, 2)
    pad = tokenizer.pad_token_id
    base = small_llama(len(tokenizer), dtype=torch.float64)
    plain = group_logps(SequenceLogps(base, chunk=16), groups, pad_id=pad, device="cpu").sums.detach()
    lm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model = SequenceLogps(lm, chunk=16, reference=ADAPTERS_OFF)
    out = group_logps(model, groups, pad_id=pad, device="cpu", with_kl=True)
    torch.testing.assert_close(out.kl, torch.zeros_like(out.kl), rtol=0, atol=1e-12)  # LoRA B starts at 0
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    out = group_logps(model, groups, pad_id=pad, device="cpu", with_kl=True)
    torch.testing.assert_close(out.ref_sums, plain, rtol=1e-10, atol=1e-10)   # the reference is the base model
    assert (out.kl > 1e-6).all() and not torch.allclose(out.sums, plain)


def test_kl_without_a_reference_is_a_recipe_error(tokenizer, hh_pairs):
    groups = _groups(tokenizer, hh_pairs, 1)
    with pytest.raises(RecipeError, match="online reference"):
        group_logps(SequenceLogps(small_llama(len(tokenizer))), groups, pad_id=tokenizer.pad_token_id,
                    device="cpu", with_kl=True)
