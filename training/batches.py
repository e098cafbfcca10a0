"""Per-response log-probs + dataset columns -> the loss's batch, building only what `spec.needs` asks for."""
from __future__ import annotations

import torch

from prefdata.errors import SchemaError
from training.data import LIST_REF, PAIR_REF, PAIR_TOK_REF, TrainData, unpaired_ref_columns
from training.logps import SeqOut
from training.losses import ListBatch, LossSpec, PairBatch
from training.transfer import to_device


class RefStore:
    """Reference log-probs per group (float64, CPU): from the dataset, a reference pass, a curriculum refresh,
    or zeros (reference-free). Saved in checkpoints so a resumed curriculum keeps its refreshed reference."""

    def __init__(self, data: TrainData, *, free: bool):
        G = len(data.groups)
        self.kl: torch.Tensor | None = None   # unpaired: reference log-probs of the KL samples
        self.rows = list(data.rows)  # table row of each group, so a saved store can be read against the table
        if data.kind == "pairs":
            cols = [data.columns.get(c) for c in PAIR_REF]
            self.seq = torch.zeros(G, 2, dtype=torch.float64) if free or cols[0] is None else torch.stack(cols, 1)
            toks = [data.columns.get(c) for c in PAIR_TOK_REF]
            self.tok = None if toks[0] is None else toks
        elif data.kind == "unpaired":  # completions [G, k] and their KL samples [G, k] (k = 2 for pairs)
            k = data.columns["label"].shape[1]
            names = unpaired_ref_columns("unpaired" if k == 1 else "pairs")
            cols = [data.columns.get(c) for c in names]
            if not free and any(c is None for c in cols):  # parse-time checks make this unreachable from recipes
                raise SchemaError(f"unpaired training needs reference columns {names}", column=names[0])
            self.seq = torch.zeros(G, k, dtype=torch.float64) if free else torch.stack(cols[:k], 1)
            self.kl = torch.zeros(G, k, dtype=torch.float64) if free else torch.stack(cols[k:], 1)
            self.tok = None
        else:
            K = data.columns["scores"].shape[1]
            ref = data.columns.get(LIST_REF)
            self.seq = torch.zeros(G, K, dtype=torch.float64) if free or ref is None else ref
            self.tok = None

    def state_dict(self) -> dict:
        return {"seq": self.seq, "tok": self.tok, "rows": self.rows, "kl": self.kl}

    def load_state_dict(self, s: dict) -> None:
        self.seq, self.tok, self.kl = s["seq"], s["tok"], s.get("kl")


def _pad_to(t: torch.Tensor, T: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, T - t.shape[1])) if t.shape[1] < T else t[:, :T]


def make_batch(spec: LossSpec, out: SeqOut, data: TrainData, idx: torch.Tensor, ref: RefStore, device,
               bco_delta: torch.Tensor | None = None):
    """`out` holds the responses of groups `idx` in order (pairs: chosen, rejected, chosen, ...)."""
    needs = spec.needs
    dt = out.sums.dtype
    col = {k: to_device(v[idx], device, dt if v.is_floating_point() else None) for k, v in data.columns.items()}
    weight = to_device(data.weight[idx], device, dt)
    if data.kind == "lists":
        K = col["scores"].shape[1]
        mask = col["list_mask"]
        pol = torch.zeros(len(idx), K, dtype=dt, device=device)
        n = torch.zeros(len(idx), K, dtype=dt, device=device)
        pol[mask] = out.sums
        n[mask] = out.counts.to(dt)
        r = to_device(ref.seq[idx], device, dt) if "ref" in needs else None
        return ListBatch(pol=pol, ref=r, scores=col["scores"], mask=mask, n=n, weight=weight)
    pc, pr = out.sums[0::2], out.sums[1::2]
    b = PairBatch(pol_chosen=pc, pol_rejected=pr, weight=weight)
    if "seq_kl" in needs:  # TDPO: the online reference ran beside the policy (logps.SequenceLogps)
        b.kl_chosen, b.kl_rejected = out.kl[0::2], out.kl[1::2]
        b.ref_chosen, b.ref_rejected = out.ref_sums[0::2].detach(), out.ref_sums[1::2].detach()
    elif "ref" in needs:
        r = to_device(ref.seq[idx], device, dt)
        b.ref_chosen, b.ref_rejected = r[:, 0], r[:, 1]
    if "counts" in needs or "nll" in needs:
        b.n_chosen, b.n_rejected = out.counts[0::2].to(dt), out.counts[1::2].to(dt)
    if "nll" in needs:
        b.nll_chosen = -pc.sum() / b.n_chosen.sum()  # token-mean CE over the batch's chosen tokens (spec §0.3)
    if "token_logps" in needs:
        T = out.tokens.shape[1]
        b.tok_pol_chosen, b.tok_pol_rejected = out.tokens[0::2], out.tokens[1::2]
        b.tok_mask_chosen, b.tok_mask_rejected = out.tok_mask[0::2], out.tok_mask[1::2]
        if "ref" in needs and ref.tok is not None:
            b.tok_ref_chosen = to_device(_pad_to(ref.tok[0][idx], T), device, dt)
            b.tok_ref_rejected = to_device(_pad_to(ref.tok[1][idx], T), device, dt)
        elif "ref" in needs:  # reference-free: zeros
            b.tok_ref_chosen = torch.zeros_like(b.tok_pol_chosen)
            b.tok_ref_rejected = torch.zeros_like(b.tok_pol_rejected)
    if "rm_margin" in needs:
        b.rm_margin = col["margin"]
    if "other_rewards" in needs:
        b.other_chosen, b.other_rejected = col["other_chosen"], col["other_rejected"]
    if "pref_alpha" in col:
        b.pref_alpha = col["pref_alpha"]
    b.bco_delta = bco_delta
    return b
