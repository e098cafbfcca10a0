"""Shared-prompt packing: one row per prompt, `[prompt | response_1 | ... | response_K | pad]`.

Every response attends to the prompt and to its own earlier tokens only (block attention mask), and its position
ids continue from the end of the prompt, so each response sees exactly what it would see in its own sequence
`[prompt | response_k]`; the prompt is encoded once instead of K times. A pair is the K = 2 case (chosen and
rejected in one forward). The first token of every response is predicted from the last prompt position.

`pack_rows` is the other layout: one row per response, `[prompt | response_k | pad]`, right-padded, with a plain
2-D padding mask. The prompt is then encoded K times, but the attention is the ordinary causal one, which the
fused attention kernels handle natively (transformers turns a 2-D mask into its causal mask itself, and drops it
altogether when a sub-batch has no padding, so SDPA can run its flash kernel with `is_causal`); an arbitrary
block mask keeps SDPA on the slower masked kernels. For pairs (K = 2) sharing saves at most a third of the
tokens; for a listwise K it saves up to (K-1)/K of the prompt work, so the layout is a per-run choice
(`LAYOUTS`, picked by the trainer).

`pack_packed` is the padding-free layout: the rows layout's `[prompt | response_k]` sequences back to back in ONE
row with no pad token, position ids restarting at 0 in each, and the segment boundaries for the attention
(attention.py: fused varlen kernels on a GPU, a block-diagonal causal mask for SDPA/eager). Its token budget
counts real tokens.

`split_by_tokens` cuts a batch into length-sorted sub-batches under a padded-token budget, so long and short
rows are not padded to each other (padding-free in effect; results are concatenated back in order).
"""
from __future__ import annotations

import torch

from training.encode import Group
from training.logps import Packed

PROMPT, PAD = 0, -1  # segment ids; responses are 1..K
LAYOUTS = ("shared", "rows", "packed")


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


def pack_rows(groups: list[Group], pad_id: int, *, pad_to_multiple: int = 1) -> Packed:
    """One right-padded row per response, `[prompt | response_k]`, and a 2-D padding mask (see module doc)."""
    rows = [(g.prompt_ids, r) for g in groups for r in g.response_ids]
    L = max(len(p) + len(r) for p, r in rows)
    L = -(-L // pad_to_multiple) * pad_to_multiple
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    src_col, targets, seq, tok_pos = [], [], [], []
    for s, (p, r) in enumerate(rows):
        P, m = len(p), len(r)
        ids[s, :P + m] = torch.tensor(p + r)
        mask[s, :P + m] = 1
        src_col.append(torch.arange(P - 1, P + m - 1))  # token j predicted by the position before it
        targets.append(torch.tensor(r))
        seq.append(torch.full((m,), s))
        tok_pos.append(torch.arange(m))
    seq_t = torch.cat(seq)
    return Packed(input_ids=ids, position_ids=torch.arange(L).expand(len(rows), L).contiguous(), attn=mask,
                  src_row=seq_t, src_col=torch.cat(src_col), targets=torch.cat(targets), seq=seq_t,
                  tok_pos=torch.cat(tok_pos), counts=torch.tensor([len(r) for _, r in rows]), n_seqs=len(rows),
                  max_resp=max(len(r) for _, r in rows), n_tokens=int(mask.sum()))


def pack_packed(groups: list[Group], pad_id: int | None = None) -> Packed:
    """Padding-free: every response's `[prompt | response_k]` segment back to back in ONE row `[1, N]`, N = the
    real tokens, position ids restarting at 0 in each segment and the boundaries in `cu_seqlens`, so attention
    stays inside a segment (attention.py: varlen / flex / flash kernels, or a block-diagonal mask). Each segment is
    the rows layout's row without its padding, so the log-probs are the rows layout's. `pad_id` is unused."""
    prompts = [g.prompt_ids for g in groups for _ in g.response_ids]
    resps = [r for g in groups for r in g.response_ids]
    P = torch.tensor([len(x) for x in prompts])
    M = torch.tensor([len(r) for r in resps])
    seg = P + M
    start = seg.cumsum(0) - seg
    N, n_resp = int(seg.sum()), int(M.sum())
    ids = torch.tensor([t for p, r in zip(prompts, resps, strict=True) for part in (p, r) for t in part])
    pos = torch.arange(N) - start.repeat_interleave(seg, output_size=N)
    seq = torch.arange(len(resps)).repeat_interleave(M, output_size=n_resp)
    tok_pos = torch.arange(n_resp) - (M.cumsum(0) - M).repeat_interleave(M, output_size=n_resp)
    # token j of response s is predicted by the position before it: segment start + prompt length - 1 + j
    src_col = (start + P - 1).repeat_interleave(M, output_size=n_resp) + tok_pos
    return Packed(input_ids=ids[None], position_ids=pos[None], attn=None, src_row=torch.zeros_like(src_col),
                  src_col=src_col, targets=ids[src_col + 1], seq=seq, tok_pos=tok_pos, counts=M,
                  n_seqs=len(resps), max_resp=int(M.max()), n_tokens=N,
                  cu_seqlens=torch.cat([torch.zeros(1, dtype=torch.long), seg.cumsum(0)]).to(torch.int32),
                  max_seqlen=int(seg.max()))


def resolve_layout(requested: str, *, device, kind: str, attn_impl: str) -> str:
    """`auto`: rows for pairs (and unpaired rows) on a GPU, where a causal row keeps SDPA on its fused kernels and
    sharing saves at most a third of the tokens; shared for lists (it saves up to (K-1)/K of the prompt work) and
    on a CPU (measured faster there, docs/training.md). Attention that takes no 4-D mask always gets rows."""
    if requested != "auto":
        return requested
    if attn_impl not in ("sdpa", "eager"):
        return "rows"
    return "rows" if torch.device(device).type == "cuda" and kind != "lists" else "shared"


def pack(groups: list[Group], pad_id: int, layout: str = "shared") -> Packed:
    if layout == "shared":
        return pack_groups(groups, pad_id)
    if layout == "rows":
        return pack_rows(groups, pad_id)
    if layout == "packed":
        return pack_packed(groups)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def padded_cost(g: Group, layout: str) -> tuple[int, int]:
    """(rows, longest row) a group occupies in a layout (packed: one row of its real tokens)."""
    if layout == "packed":
        return 1, len(g.prompt_ids) * len(g.response_ids) + sum(len(r) for r in g.response_ids)
    if layout == "rows":
        return len(g.response_ids), len(g.prompt_ids) + max(len(r) for r in g.response_ids)
    return 1, g.n_tokens


def split_by_tokens(groups: list[Group], token_budget: int, layout: str = "shared") -> list[list[int]]:
    """Indices of `groups` in sub-batches: sorted by length, each with rows * max_len <= budget (>= 1 group).
    Packed: groups in order, each sub-batch one row of <= budget REAL tokens (there is no padding to count)."""
    cost = [padded_cost(g, layout) for g in groups]
    if layout == "packed":
        return _fill_in_order([c[1] for c in cost], token_budget)
    order = sorted(range(len(groups)), key=lambda i: cost[i][1], reverse=True)
    parts: list[list[int]] = []
    cur: list[int] = []
    n_rows = 0
    for i in order:
        longest = cost[cur[0]][1] if cur else cost[i][1]
        if cur and (n_rows + cost[i][0]) * longest > token_budget:
            parts.append(cur)
            cur, n_rows = [], 0
        cur.append(i)
        n_rows += cost[i][0]
    if cur:
        parts.append(cur)
    return parts


def _fill_in_order(tokens: list[int], budget: int) -> list[list[int]]:
    """Consecutive runs of indices whose token counts sum to <= budget (a longer single item stands alone)."""
    parts: list[list[int]] = []
    cur: list[int] = []
    n = 0
    for i, t in enumerate(tokens):
        if cur and n + t > budget:
            parts.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += t
    if cur:
        parts.append(cur)
    return parts
