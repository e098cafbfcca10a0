"""KTO in the text trainer: the unpaired micro-batch (the loop calls it through `micro.parts` / `micro.micro_loss`,
chosen once in `Trainer.__init__`), the loss batch, and TRL's desirable/undesirable balance check.

A micro-batch of B rows holds B*k examples (k = 1 for an unpaired table, 2 for a pairs table trained unpaired:
chosen desirable, rejected undesirable, kept in one shared-prompt forward). Before its policy forward the
micro-batch's KL samples (row i's prompt with its fixed partner's completions, see `kto_data.py`) run once without
gradient; z0 = max(0, mean(logp_pol - logp_ref)) over them, summed and counted across DDP ranks (the pooled mean),
is then used by every sub-batch of that micro-batch, as TRL uses one z0 per batch. The loss per row is the mean of
its k examples, so the loop's `sum / rows` is KTO's mean over examples.
"""
from __future__ import annotations

import warnings

import torch

from training.data import TrainData
from training.forward import group_logps
from training.logps import SeqOut
from training.losses import UnpairedBatch
from training.transfer import to_device

# spec §3 / TRL: lambda_D * n_D / (lambda_U * n_U) should lie in [1, 4/3] (KTO paper, Eq. 8)
BALANCE_RANGE = (1.0, 4.0 / 3.0)


def kto_balance(data: TrainData, params) -> dict:
    """Counts of desirable/undesirable examples and the weighted ratio; warns (as TRL does) when it is outside
    the recommended range, with the lambda_D range that would fix it."""
    label = data.columns["label"]
    n_d, n_u = int(label.sum()), int((~label).sum())
    ratio = params.lambda_D * n_d / (params.lambda_U * n_u) if n_u else float("inf")
    lo, hi = BALANCE_RANGE
    out = {"desirable": n_d, "undesirable": n_u, "weighted_ratio": ratio, "recommended": [lo, hi],
           "within": lo <= ratio <= hi}
    if not out["within"]:
        fix = "" if not (n_d and n_u) else (f"; loss.lambda_D in [{lo * params.lambda_U * n_u / n_d:.3g}, "
                                            f"{hi * params.lambda_U * n_u / n_d:.3g}] would bring it in range")
        warnings.warn(f"KTO: lambda_D*n_D/(lambda_U*n_U) = {params.lambda_D}*{n_d}/({params.lambda_U}*{n_u}) = "
                      f"{ratio:.3g}, outside the recommended [1, 4/3]{fix}", stacklevel=2)
    return out


def unpaired_batch(out: SeqOut, data: TrainData, idx: torch.Tensor, ref_seq: torch.Tensor, z0: torch.Tensor,
                   device) -> UnpairedBatch:
    """`out` holds rows `idx`'s completions in order (row by row, k per row)."""
    dt = out.sums.dtype
    k = data.columns["label"].shape[1]
    return UnpairedBatch(pol=out.sums, ref=to_device(ref_seq[idx].reshape(-1), device, dt),
                         label=to_device(data.columns["label"][idx].reshape(-1), device),
                         weight=to_device(data.weight[idx].repeat_interleave(k), device, dt), z0=z0.to(dt))


class UnpairedMicro:
    """The loop's micro-batch seam for unpaired (KTO) data; `trainer` is the `loop.Trainer`."""

    def __init__(self, trainer):
        self.t = trainer
        self.z0: dict[tuple[int, ...], torch.Tensor] = {}
        self.k = trainer.s.data.columns["label"].shape[1]

    @torch.no_grad()
    def reference_point(self, idx: tuple[int, ...]) -> torch.Tensor:
        t, s = self.t, self.t.s
        out = group_logps(t.model, [s.data.kl_groups[i] for i in idx], pad_id=s.tokenizer.pad_token_id,
                          device=t.acc.device, token_budget=t.token_budget, layout=t.layout)
        kl = out.sums.double() - s.ref.kl[list(idx)].reshape(-1).to(t.acc.device)
        total = t.acc.reduce(torch.stack([kl.sum(), torch.tensor(float(kl.numel()), device=kl.device,
                                                                  dtype=kl.dtype)]), "sum")
        return torch.clamp(total[0] / total[1], min=0)

    def parts(self, idx: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The micro-batch's z0 first (whole micro-batch), then the usual token-budget sub-batches."""
        z0 = self.reference_point(idx)
        parts = self.t.parts(idx)
        for p in parts:
            self.z0[p] = z0
        return parts

    def micro_loss(self, idx: tuple[int, ...]):
        t, s = self.t, self.t.s
        groups = [s.data.groups[i] for i in idx]
        out = group_logps(t.model, groups, pad_id=s.tokenizer.pad_token_id, device=t.acc.device,
                          token_budget=t.token_budget, layout=t.layout)
        b = unpaired_batch(out, s.data, torch.tensor(idx), s.ref.seq, self.z0.pop(idx), t.acc.device)
        lo = s.spec.fn(b, s.params)
        # step means over the examples that have them: the loop divides "x@sum" by "x@n" (per-example vectors,
        # so a sub-batch without desirable examples contributes nothing instead of a skewed mean)
        d = b.label.to(out.sums.dtype)
        r = lo.chosen_reward.to(d.dtype)
        pol = out.sums.detach().to(d.dtype)
        lo.metrics = {"kto_z0": lo.metrics["kto_z0"], "kto_desirable_frac": d,
                      "reward_desirable@sum": r * d, "reward_desirable@n": d,
                      "reward_undesirable@sum": r * (1 - d), "reward_undesirable@n": 1 - d,
                      "logps_desirable@sum": pol * d, "logps_desirable@n": d,
                      "logps_undesirable@sum": pol * (1 - d), "logps_undesirable@n": 1 - d}
        return (lo.loss * b.weight).sum() / self.k, lo, sum(g.n_tokens for g in groups), out.sums
