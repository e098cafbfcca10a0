"""Shared-prompt packing: one row per prompt, `[prompt | response_1 | ... | response_K | pad]`.

Every response attends to the prompt and to its own earlier tokens only (block attention mask), and its position
ids continue from the end of the prompt, so each response sees exactly what it would see in its own sequence
`[prompt | response_k]`; the prompt is encoded once instead of K times. A pair is the K = 2 case (chosen and
rejected in one forward). The first token of every response is predicted from the last prompt position.

`split_by_tokens` cuts a batch into length-sorted sub-batches under a padded-token budget, so long and short
rows are not padded to each other (padding-free in effect; results are concatenated back in order).
"""
from __future__ import annotations

import torch

from training.encode import Group
from training.logps import Packed

PROMPT, PAD = 0, -1  # segment ids; responses are 1..K


def pack_groups(groups: list[Group], pad_id: int, *, pad_to_multiple: int = 1) -> Packed:
    lengths = [g.n_tokens for g in groups]
    L = max(lengths)
    L = -(-L // pad_to_multiple) * pad_to_multiple
    G = len(groups)
    ids = torch.full((G, L), pad_id, dtype=torch.long)
    pos = torch.zeros((G, L), dtype=torch.long)
    seg = torch.full((G, L), PAD, dtype=torch.long)
    src_row, src_col, targets, seq, tok_pos = [], [], [], [], []
    s = 0
    max_resp = 0
    for r, g in enumerate(groups):
        P = len(g.prompt_ids)
        ids[r, :P] = torch.tensor(g.prompt_ids)
        pos[r, :P] = torch.arange(P)
        seg[r, :P] = PROMPT
        start = P
        for k, resp in enumerate(g.response_ids):
            m = len(resp)
            ids[r, start:start + m] = torch.tensor(resp)
            pos[r, start:start + m] = torch.arange(P, P + m)
            seg[r, start:start + m] = k + 1
            # token j of the response is predicted by the hidden state before it: the last prompt position for
            # j = 0, otherwise the response's own previous position
            cols = torch.arange(start - 1, start + m - 1)
            cols[0] = P - 1
            src_row.append(torch.full((m,), r))
            src_col.append(cols)
            targets.append(torch.tensor(resp))
            seq.append(torch.full((m,), s))
            tok_pos.append(torch.arange(m))
            max_resp = max(max_resp, m)
            start += m
            s += 1
    q = seg[:, :, None]
    k = seg[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    attn = causal & (k != PAD) & ((k == PROMPT) | (k == q))
    attn |= torch.eye(L, dtype=torch.bool)  # pad queries attend to themselves (no all-masked softmax rows)
    return Packed(input_ids=ids, position_ids=pos, attn=attn[:, None], src_row=torch.cat(src_row),
                  src_col=torch.cat(src_col), targets=torch.cat(targets), seq=torch.cat(seq),
                  tok_pos=torch.cat(tok_pos), counts=torch.tensor([len(r) for g in groups for r in g.response_ids]),
                  n_seqs=s, max_resp=max_resp, n_tokens=sum(lengths))


def split_by_tokens(groups: list[Group], token_budget: int) -> list[list[int]]:
    """Indices of `groups` in sub-batches: sorted by length, each with rows * max_len <= budget (>= 1 row)."""
    order = sorted(range(len(groups)), key=lambda i: groups[i].n_tokens, reverse=True)
    parts: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = groups[cur[0]].n_tokens if cur else groups[i].n_tokens
        if cur and (len(cur) + 1) * longest > token_budget:
            parts.append(cur)
            cur = []
        cur.append(i)
    if cur:
        parts.append(cur)
    return parts
