"""Curry-DPO's reference refresh: at the start of each curriculum stage the reference becomes the current policy.

Every reference field the loss reads is rewritten for the stage's rows: the summed log-probs (`RefStore.seq`)
and, for a loss that reads per-token reference log-probs (`token_logps` in its needs, e.g. LD-DPO), the
per-token values (`RefStore.tok`). Refreshing only the sums would leave such a loss on the stage-0 reference.
"""
from __future__ import annotations

import torch

from training.forward import group_logps


@torch.no_grad()
def refresh_reference(model, s, stage: int, *, device, token_budget: int, layout: str) -> None:
    """Overwrite `s.ref` (a RunSetup's RefStore) for the rows of `stage` with `model`'s log-probs."""
    rows = (s.data.stage == stage).nonzero().flatten().tolist()
    with_tokens = "token_logps" in s.spec.needs and s.ref.tok is not None
    was_training = model.training
    model.eval()
    bs = s.recipe.reference.batch_size
    for i in range(0, len(rows), bs):
        part = rows[i:i + bs]
        out = group_logps(model, [s.data.groups[j] for j in part], pad_id=s.tokenizer.pad_token_id, device=device,
                          token_budget=token_budget, layout=layout, with_tokens=with_tokens)
        if s.data.kind == "pairs":
            s.ref.seq[part] = out.sums.double().cpu().view(-1, 2)
        else:
            mask = s.data.columns["list_mask"][part]
            vals = torch.zeros(len(part), s.ref.seq.shape[1], dtype=torch.float64)
            vals[mask] = out.sums.double().cpu()
            s.ref.seq[part] = vals
        if with_tokens:  # pairs only (recipe check): responses alternate chosen, rejected
            tokens = (out.tokens * out.tok_mask).double().cpu()
            for side, store in enumerate(s.ref.tok):
                new = tokens[side::2]
                width = min(store.shape[1], new.shape[1])  # same tokenization: no count exceeds the store's width
                store[part] = 0.0
                store[part, :width] = new[:, :width]
    model.train(was_training)
