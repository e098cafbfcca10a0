"""Chunked log-probs vs a naive full-logits computation, and shared-prompt packing vs separate forwards."""
from __future__ import annotations

import torch
from training_kit import small_llama

from training.encode import encode_groups
from training.forward import group_logps
from training.logps import SequenceLogps
from training.packing import pack_groups


def naive_logps(lm, groups, pad_id):
    """Oracle: each (prompt, response) as its own right-padded row, full-vocabulary logits, log_softmax, gather."""
    rows = [(g.prompt_ids, r) for g in groups for r in g.response_ids]
    L = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), L), pad_id)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    lab = torch.zeros((len(rows), L), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        mask[i, :len(p) + len(r)] = 1
        lab[i, len(p):len(p) + len(r)] = True
    logits = lm(input_ids=ids, attention_mask=mask).logits.float() if lm.dtype != torch.float64 else \
        lm(input_ids=ids, attention_mask=mask).logits
    lp = torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None]).squeeze(2)
    m = lab[:, 1:]
    return (lp * m).sum(1), m.sum(1)


def _groups(tokenizer, table, n, max_length=96):
    # the n rows with the shortest prompts, so the tiny context keeps every one of them
    lens = [len(p) for p in table.column("prompt").to_pylist()]
    t = table.take(sorted(range(len(lens)), key=lens.__getitem__)[:n])
    return encode_groups(tokenizer, t.column("prompt").to_pylist(),
                         [[c, r] for c, r in zip(t.column("chosen").to_pylist(), t.column("rejected").to_pylist(), strict=True)],
                         max_length=max_length).groups


def test_chunked_gradients_equal_naive_fp64(tokenizer, hh_pairs):
    groups = _groups(tokenizer, hh_pairs, 4)
    lm = small_llama(len(tokenizer), dtype=torch.float64)
    pad = tokenizer.pad_token_id
    # naive: full logits for every position
    sums_n, counts_n = naive_logps(lm, groups, pad)
    w = torch.linspace(0.5, 1.5, len(sums_n), dtype=torch.float64)
    (sums_n * w).sum().backward()
    grads_n = {k: p.grad.clone() for k, p in lm.named_parameters()}
    lm.zero_grad()
    # chunked: chunk of 7 positions so many chunks (and a ragged last one) are exercised
    model = SequenceLogps(lm, chunk=7)
    # same layout as the oracle (one row per response) so only the chunked head differs
    from training.encode import Group
    separate = [Group(row=g.row, prompt_ids=g.prompt_ids, response_ids=[r]) for g in groups for r in g.response_ids]
    out = model(pack_groups(separate, pad))
    assert out.sums.dtype == torch.float64
    torch.testing.assert_close(out.sums, sums_n, rtol=1e-10, atol=1e-10)
    assert out.counts.tolist() == counts_n.tolist()
    (out.sums * w).sum().backward()
    for k, p in lm.named_parameters():
        torch.testing.assert_close(p.grad, grads_n[k], rtol=1e-6, atol=1e-10, msg=k)


def test_shared_prompt_listwise_equals_separate_forwards(tokenizer, arena_lists):
    t = arena_lists.slice(0, 3)
    enc = encode_groups(tokenizer, t.column("prompt").to_pylist(), t.column("responses").to_pylist(),
                        max_length=80)
    groups = enc.groups
    assert all(len(g.response_ids) == 4 for g in groups)
    lm = small_llama(len(tokenizer), dtype=torch.float64)
    model = SequenceLogps(lm, chunk=64)
    pad = tokenizer.pad_token_id
    shared = model(pack_groups(groups, pad), with_tokens=True)
    # K separate forwards: one row per (prompt, response), each with its own copy of the prompt
    from training.encode import Group
    separate = [Group(row=g.row, prompt_ids=g.prompt_ids, response_ids=[r]) for g in groups for r in g.response_ids]
    sep = model(pack_groups(separate, pad), with_tokens=True)
    torch.testing.assert_close(shared.sums, sep.sums, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(shared.tokens, sep.tokens, rtol=1e-10, atol=1e-10)
    assert torch.equal(shared.counts, sep.counts)
    # and both equal the naive full-logits oracle
    sums_n, counts_n = naive_logps(lm, groups, pad)
    torch.testing.assert_close(shared.sums, sums_n, rtol=1e-10, atol=1e-10)
    # gradients agree too, to ~1e-8 relative: the prompt's gradient is accumulated once instead of per copy, and
    # Llama's RMSNorm rounds to float32 even in an fp64 model, so the two sums round differently there
    # (test_layouts.py shows agreement to 1e-12 once the norm computes in fp64)
    w = torch.linspace(0.5, 1.5, len(sums_n), dtype=torch.float64)
    grads = []
    for out in (lambda: model(pack_groups(groups, pad)), lambda: model(pack_groups(separate, pad))):
        lm.zero_grad()
        (out().sums * w).sum().backward()
        grads.append({k: p.grad.clone() for k, p in lm.named_parameters()})
    for k, g in grads[1].items():
        torch.testing.assert_close(grads[0][k], g, rtol=0, atol=1e-6 * float(g.abs().max()), msg=k)
    # the packed row is shorter than K copies of the prompt: the prompt is encoded once
    packed = pack_groups(groups, pad)
    assert packed.n_tokens == sum(len(g.prompt_ids) + sum(map(len, g.response_ids)) for g in groups)


def test_sub_batches_reassemble_in_order(tokenizer, hh_pairs):
    groups = _groups(tokenizer, hh_pairs, 6)
    lm = small_llama(len(tokenizer), dtype=torch.float64)
    model = SequenceLogps(lm, chunk=32)
    pad = tokenizer.pad_token_id
    whole = model(pack_groups(groups, pad), with_tokens=True)
    split = group_logps(model, groups, pad_id=pad, device="cpu", token_budget=1, with_tokens=True)  # 1 row each
    torch.testing.assert_close(split.sums, whole.sums, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(split.tokens, whole.tokens[:, :split.tokens.shape[1]], rtol=1e-10, atol=1e-10)


def test_truncation_and_drops_are_counted(tokenizer, hh_pairs):
    t = hh_pairs.slice(0, 20)
    enc = encode_groups(tokenizer, t.column("prompt").to_pylist(),
                        [[c, r] for c, r in zip(t.column("chosen").to_pylist(), t.column("rejected").to_pylist(), strict=True)],
                        max_length=40)
    assert enc.rows_in == 20
    assert sum(enc.dropped.values()) > 0  # some HH prompts are longer than 40 tokens
    for g in enc.groups:
        assert all(len(g.prompt_ids) + len(r) <= 40 for r in g.response_ids)
