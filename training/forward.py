"""Run a list of `Group`s through `SequenceLogps` in length-sorted sub-batches and return per-response results
in the original order (group by group, response by response). All sub-batch graphs stay alive until the caller
runs one backward on the full-batch loss, so losses that normalize over the batch stay exact."""
from __future__ import annotations

import torch

from training.encode import Group
from training.logps import SeqOut
from training.packing import pack, split_by_tokens
from training.transfer import to_device


def group_logps(model, groups: list[Group], *, pad_id: int, device, token_budget: int = 4096,
                with_tokens: bool = False, layout: str = "shared", with_kl: bool = False) -> SeqOut:
    n_resp = [len(g.response_ids) for g in groups]
    first = [0]
    for n in n_resp[:-1]:
        first.append(first[-1] + n)
    S = sum(n_resp)
    sums, counts, index, toks, masks, kls, refs = [], [], [], [], [], [], []
    for part in split_by_tokens(groups, token_budget, layout):
        packed = pack([groups[i] for i in part], pad_id, layout).to(device)
        out = model(packed, with_tokens, with_kl)
        sums.append(out.sums)
        if with_kl:
            kls.append(out.kl)
            refs.append(out.ref_sums)
        counts.append(out.counts)
        index.append(to_device(torch.tensor([first[i] + k for i in part for k in range(n_resp[i])]), device))
        if with_tokens:
            toks.append(out.tokens)
            masks.append(out.tok_mask)
    index_t = torch.cat(index)
    inv = torch.empty_like(index_t)
    inv[index_t] = torch.arange(S, device=device)
    res = SeqOut(sums=torch.cat(sums)[inv], counts=torch.cat(counts)[inv], tokens=None, tok_mask=None)
    if with_kl:
        res.kl, res.ref_sums = torch.cat(kls)[inv], torch.cat(refs)[inv]
    if with_tokens:
        T = max(t.shape[1] for t in toks)
        res.tokens = torch.cat([torch.nn.functional.pad(t, (0, T - t.shape[1])) for t in toks])[inv]
        res.tok_mask = torch.cat([torch.nn.functional.pad(m, (0, T - m.shape[1])) for m in masks])[inv]
    return res
