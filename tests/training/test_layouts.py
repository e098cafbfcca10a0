"""The two packing layouts (shared prompt with a block mask; one causal row per response) against each other and
against the naive full-logits oracle, under both attention implementations that take a block mask."""
from __future__ import annotations

import pytest
import torch
from test_logps import _groups, naive_logps
from training_kit import small_llama

from prefdata.errors import RecipeError
from training.encode import encode_groups
from training.forward import group_logps
from training.logps import SequenceLogps
from training.packing import pack, pack_rows, split_by_tokens


def _lists(tokenizer, arena_lists, n=3):
    t = arena_lists.slice(0, n)
    return encode_groups(tokenizer, t.column("prompt").to_pylist(), t.column("responses").to_pylist(),
                         max_length=80).groups


def _grads(lm, model, packed, w):
    lm.zero_grad()
    out = model(packed)
    (out.sums * w).sum().backward()
    return out.sums.detach(), {k: p.grad.clone() for k, p in lm.named_parameters()}


def _fp64_norms(lm):
    """Llama's RMSNorm upcasts to float32 (not float64) before normalizing, so even an fp64 model rounds there to
    ~1e-7 relative; the prompt's gradient is summed over K responses before that rounding in the shared layout and
    after it in the rows layout, which is what leaves the two gradients ~1e-8 apart. Normalizing in the input dtype
    removes that floor and shows the layouts agree to fp64 rounding."""
    for m in lm.modules():
        if type(m).__name__.endswith("RMSNorm"):
            eps, weight = m.variance_epsilon, m.weight
            m.forward = lambda x, eps=eps, weight=weight: weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_rows_layout_equals_shared_and_oracle(tokenizer, arena_lists, attn):
    groups = _lists(tokenizer, arena_lists)
    lm = small_llama(len(tokenizer), dtype=torch.float64)
    lm.config._attn_implementation = attn
    pad = tokenizer.pad_token_id
    model = SequenceLogps(lm, chunk=64)
    shared, rows = model(pack(groups, pad, "shared"), True), model(pack(groups, pad, "rows"), True)
    oracle, counts = naive_logps(lm, groups, pad)
    # eager attention takes its softmax in float32 even for an fp64 model: 1e-7 there, exact-order under SDPA
    tol = 1e-10 if attn == "sdpa" else 1e-6
    torch.testing.assert_close(shared.sums, oracle, rtol=tol, atol=tol)
    torch.testing.assert_close(rows.sums, oracle, rtol=tol, atol=tol)
    torch.testing.assert_close(rows.tokens, shared.tokens, rtol=tol, atol=tol)
    assert rows.counts.tolist() == shared.counts.tolist() == counts.tolist()


def test_eager_attention_gets_an_additive_block_mask(tokenizer, arena_lists):
    """A boolean block mask ADDED to eager attention scores (0/1) would let responses see each other; the shared
    layout must give eager attention the same answer as separate rows (it did not before this test)."""
    groups = _lists(tokenizer, arena_lists, 2)
    lm = small_llama(len(tokenizer), dtype=torch.float64)
    lm.config._attn_implementation = "eager"
    model = SequenceLogps(lm, chunk=64)
    shared = model(pack(groups, tokenizer.pad_token_id, "shared")).sums
    oracle, _ = naive_logps(lm, groups, tokenizer.pad_token_id)
    assert (shared - oracle).abs().max() < 1e-6


def test_layout_gradients_agree_to_fp64_rounding_once_norms_are_fp64(tokenizer, arena_lists):
    groups = _lists(tokenizer, arena_lists)
    lm = small_llama(len(tokenizer), dtype=torch.float64)
    model = SequenceLogps(lm, chunk=64)
    pad = tokenizer.pad_token_id
    w = torch.linspace(0.5, 1.5, sum(len(g.response_ids) for g in groups), dtype=torch.float64)

    def worst(a, b):
        return max(float((a[k] - g).abs().max() / g.abs().max()) for k, g in b.items())

    _, g_shared = _grads(lm, model, pack(groups, pad, "shared"), w)
    _, g_rows = _grads(lm, model, pack(groups, pad, "rows"), w)
    assert worst(g_rows, g_shared) < 1e-6          # the model's own fp32 norm is the floor here (~1e-8)
    _fp64_norms(lm)
    _, g_shared = _grads(lm, model, pack(groups, pad, "shared"), w)
    _, g_rows = _grads(lm, model, pack(groups, pad, "rows"), w)
    assert worst(g_rows, g_shared) < 1e-12


def test_rows_layout_is_causal_rows_with_a_padding_mask(tokenizer, hh_pairs):
    groups = _groups(tokenizer, hh_pairs, 3)
    p = pack_rows(groups, tokenizer.pad_token_id)
    assert p.attn.shape == p.input_ids.shape and p.attn.dim() == 2     # transformers builds the causal mask
    assert p.n_seqs == 6 and p.input_ids.shape[0] == 6
    for s, (g, r) in enumerate([(grp, r) for grp in groups for r in grp.response_ids]):
        n = len(g.prompt_ids) + len(r)
        assert p.input_ids[s, :n].tolist() == g.prompt_ids + r and int(p.attn[s].sum()) == n
    # each target is predicted by the position just before it in its own row
    assert torch.equal(p.input_ids[p.src_row, p.src_col + 1], p.targets)


def test_rows_budget_counts_every_response_row(tokenizer, hh_pairs):
    groups = _groups(tokenizer, hh_pairs, 6)
    longest = max(len(g.prompt_ids) + max(map(len, g.response_ids)) for g in groups)
    parts = split_by_tokens(groups, 2 * longest, "rows")     # one pair (2 rows) per sub-batch at most
    assert all(len(x) == 1 for x in parts) and sorted(i for x in parts for i in x) == list(range(6))
    lm = small_llama(len(tokenizer), dtype=torch.float64)
    model = SequenceLogps(lm, chunk=32)
    whole = group_logps(model, groups, pad_id=tokenizer.pad_token_id, device="cpu", token_budget=1 << 20, layout="rows")
    split = group_logps(model, groups, pad_id=tokenizer.pad_token_id, device="cpu", token_budget=1, layout="rows")
    torch.testing.assert_close(split.sums, whole.sums, rtol=1e-10, atol=1e-10)


def test_flash_attention_refuses_the_shared_layout(tokenizer, hh_pairs):
    groups = _groups(tokenizer, hh_pairs, 2)
    lm = small_llama(len(tokenizer))
    lm.config._attn_implementation = "flash_attention_2"
    with pytest.raises(RecipeError, match="train.layout: rows"):
        SequenceLogps(lm)(pack(groups, tokenizer.pad_token_id, "shared"))
