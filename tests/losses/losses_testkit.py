"""Shared helpers of tests/losses (a uniquely named module: test folders here have no __init__.py).

Own worked example (different from the spec's §0.5 one): logp_pol = (-4, -6), logp_ref = (-5, -5),
n = (4, 2)  =>  rho_w = 1, rho_l = -1, h = 2; avg_logp_w = -1, avg_logp_l = -3; NLL(chosen) = 4/4 = 1.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from training.losses import PairBatch

SPEC_JSON = Path(__file__).resolve().parents[1] / "data" / "spec" / "reference_values.json"


def sp(x: float) -> float:
    """softplus(x) = -log sigmoid(-x), for writing expected values as formulas of hand-worked numbers."""
    return math.log1p(math.exp(x))


def make_pair(pol_w=-4.0, pol_l=-6.0, ref_w=-5.0, ref_l=-5.0, n_w=4, n_l=2, dtype=torch.float64,
              grad=False, **extra) -> PairBatch:
    def t(v):
        return torch.tensor([v], dtype=dtype) if not isinstance(v, torch.Tensor) else v

    pw = t(pol_w).requires_grad_(grad)
    pl = t(pol_l).requires_grad_(grad)
    nw, nl = torch.tensor([n_w], dtype=dtype), torch.tensor([n_l], dtype=dtype)
    fields = dict(pol_chosen=pw, pol_rejected=pl, ref_chosen=t(ref_w), ref_rejected=t(ref_l),
                  n_chosen=nw, n_rejected=nl, nll_chosen=-(pw.sum() / nw.sum()))
    fields.update(extra)
    return PairBatch(**fields)
