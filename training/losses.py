"""Every DPO-family loss: one pure function of tensors per method, registered once in ``LOSSES``.

Conventions (shared/spec/methods.md §0):
- inputs are SUMMED response log-probs; a loss returns PER-EXAMPLE losses (per prompt for listwise) and the
  training loop takes the (weighted) mean;
- arithmetic runs in float32 or wider even for bf16 models (``_f`` upcasts), log-sigmoid is computed as
  ``-softplus(-z)`` with a stable softplus, ``log(1 - exp(a))`` through ``log1mexp``, exponents clamped;
- reference log-probs are detached here as well, so a caller that forgets ``no_grad`` cannot leak gradient
  into the reference.

Only torch, pydantic and the stdlib are imported: GPU machines may have nothing else installed.
"""
from __future__ import annotations

import difflib
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ValidationError
from torch import Tensor

from prefdata.errors import PrefdataError, RecipeError
from training import loss_params as P

# exp() arguments are clamped here (spec §0.2: exp(80) ~ 5.5e34 still fits float32)
_MAX_EXP = 80.0


class LossInputError(PrefdataError):
    """A loss was called without a tensor it needs (e.g. MADPO without the dataset's `margin`)."""


# ---- batches -----------------------------------------------------------------------------------
@dataclass
class PairBatch:
    """One row per (prompt, chosen, rejected). Tensors are [B] unless noted; None = not provided."""

    pol_chosen: Tensor                       # summed response log-probs under the policy (with grad)
    pol_rejected: Tensor
    ref_chosen: Tensor | None = None         # same under the frozen reference (detached)
    ref_rejected: Tensor | None = None
    n_chosen: Tensor | None = None           # response token counts
    n_rejected: Tensor | None = None
    nll_chosen: Tensor | None = None         # scalar: token-mean CE over all chosen tokens of the batch (§0.3)
    tok_pol_chosen: Tensor | None = None     # [B, T] per-token log-probs of response tokens, 0 where masked
    tok_pol_rejected: Tensor | None = None
    tok_ref_chosen: Tensor | None = None
    tok_ref_rejected: Tensor | None = None
    tok_mask_chosen: Tensor | None = None    # [B, T] bool, True on response tokens
    tok_mask_rejected: Tensor | None = None
    kl_chosen: Tensor | None = None          # TDPO sequential KL(ref || policy) summed over response tokens
    kl_rejected: Tensor | None = None
    rm_margin: Tensor | None = None          # MADPO: reward-model margin (dataset `margin` column)
    other_chosen: Tensor | None = None       # MODPO: other objectives' rewards, [B] or [B, M]
    other_rejected: Tensor | None = None
    weight: Tensor | None = None             # per-example dataset weight (applied by the loop, not the loss)
    pref_alpha: Tensor | None = None         # SmPO: per-pair smoothed preference in [0, 1]
    bco_delta: Tensor | None = None          # BCO: scalar running mean of past rewards (RunningMean.value)


@dataclass
class UnpairedBatch:
    """KTO: one row per (prompt, completion, desirable?)."""

    pol: Tensor                              # [B] summed log-probs, policy
    ref: Tensor                              # [B] reference (detached)
    label: Tensor                            # [B] bool, True = desirable
    kl_pol: Tensor | None = None             # [B] log-probs of mismatched (prompt_i, completion_j) pairs
    kl_ref: Tensor | None = None
    z0: Tensor | None = None                 # scalar reference point already averaged across ranks (DDP)
    weight: Tensor | None = None


@dataclass
class ListBatch:
    """Listwise: K responses per prompt. Padded slots are False in `mask`."""

    pol: Tensor                              # [B, K] summed log-probs (diffusion: -MSE of the policy)
    ref: Tensor | None = None                # [B, K] (diffusion: -MSE of the reference)
    scores: Tensor | None = None             # [B, K] higher = better
    mask: Tensor | None = None               # [B, K] bool; None = every slot valid
    n: Tensor | None = None                  # [B, K] token counts
    weight: Tensor | None = None


@dataclass
class DiffusionBatch:
    """Diffusion-DPO family: per-image denoising errors (MSE averaged over C,H,W) at a shared t and noise."""

    mse_pol_w: Tensor | None = None          # [B] winner, policy (with grad)
    mse_pol_l: Tensor | None = None
    mse_ref_w: Tensor | None = None          # [B] reference (detached)
    mse_ref_l: Tensor | None = None
    alpha: Tensor | None = None              # [B] SmPO smoothed preference
    seg_mse_pol_w: Tensor | None = None      # [B, S] DenseDPO: video A per segment
    seg_mse_pol_l: Tensor | None = None      # [B, S] video B
    seg_mse_ref_w: Tensor | None = None
    seg_mse_ref_l: Tensor | None = None
    seg_pref: Tensor | None = None           # [B, S] int8: +1 A better, -1 B better, 0 tie (or padding)
    weight: Tensor | None = None


@dataclass
class LossOut:
    loss: Tensor                             # [B] per example (per prompt for listwise); the loop averages
    chosen_reward: Tensor | None = None      # [B] detached, beta*rho_w or the reference-free analogue
    rejected_reward: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)   # extra detached scalars to log


Need = Literal["ref", "counts", "nll", "token_logps", "seq_kl", "rm_margin", "other_rewards", "unpaired",
               "list", "diffusion", "segments"]


class LossSpec(NamedTuple):
    fn: Callable[..., LossOut]               # fn(batch, params) -> LossOut ; pure
    params: type[BaseModel]                  # frozen pydantic model of hyperparameters
    needs: frozenset[str]
    kind: Literal["pair", "unpaired", "list", "diffusion"]
    doc: str                                 # one line: paper + formula


# ---- numerics ----------------------------------------------------------------------------------
def _f(t: Tensor) -> Tensor:
    """Upcast half precision (and integer counts) to float32; keep float32/float64 as given."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def logsigmoid(z: Tensor) -> Tensor:
    """log sigmoid(z) = -softplus(-z). torch's kernel evaluates min(z,0) - log1p(exp(-|z|)) (no overflow, no
    threshold switch) with an analytic backward. A hand-written max/abs form would get the gradient at
    z = 0 wrong (clamp and abs have zero subgradient there), and z = 0 is exactly DPO's first step, when
    the policy equals the reference."""
    return F.logsigmoid(z)


def softplus(x: Tensor) -> Tensor:
    return -F.logsigmoid(-x)


def log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a < 0 (Maechler 2012); a is clamped to <= -1e-7 (value -inf at 0)."""
    a = torch.clamp(a, max=-1e-7)
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _need(batch: object, loss: str, *names: str) -> list[Tensor]:
    out = []
    for name in names:
        value = getattr(batch, name)
        if value is None:
            raise LossInputError(f"loss {loss!r} needs batch field {name!r}, which was not provided")
        out.append(_f(value))
    return out


def _det(t: Tensor) -> Tensor:
    return t.detach()


def _ratios(b: PairBatch, loss: str) -> tuple[Tensor, Tensor]:
    """rho = logp_pol - logp_ref for chosen and rejected (reference detached)."""
    pw, pl, rw, rl = _need(b, loss, "pol_chosen", "pol_rejected", "ref_chosen", "ref_rejected")
    return pw - rw.detach(), pl - rl.detach()


def _nll(b: PairBatch, loss: str) -> Tensor:
    (nll,) = _need(b, loss, "nll_chosen")
    if nll.dim() != 0:
        raise LossInputError(f"loss {loss!r}: nll_chosen must be a scalar (token mean over the batch), "
                             f"got shape {tuple(nll.shape)}")
    return nll


def _pair_out(loss: Tensor, rw: Tensor, rl: Tensor, **metrics: Tensor) -> LossOut:
    return LossOut(loss=loss, chosen_reward=_det(rw), rejected_reward=_det(rl),
                   metrics={k: _det(v) for k, v in metrics.items()})


# ---- §1 pairwise with a reference model -----------------------------------------------------------
def dpo_sigmoid(b: PairBatch, p: P.DpoParams) -> LossOut:
    """DPO, with cDPO's label smoothing eps: -(1-eps) log s(beta h) - eps log s(-beta h)."""
    rho_w, rho_l = _ratios(b, "dpo_sigmoid")
    z = p.beta * (rho_w - rho_l)  # grows when the chosen log-ratio grows
    eps = p.label_smoothing
    loss = -(1 - eps) * logsigmoid(z) - eps * logsigmoid(-z) if eps else -logsigmoid(z)
    return _pair_out(loss, p.beta * rho_w, p.beta * rho_l)


def robust_dpo(b: PairBatch, p: P.RobustDpoParams) -> LossOut:
    """rDPO: unbiased under label-flip rate eps; may be negative for confident pairs (by design)."""
    rho_w, rho_l = _ratios(b, "robust_dpo")
    z = p.beta * (rho_w - rho_l)
    eps = p.label_smoothing
    loss = (-(1 - eps) * logsigmoid(z) + eps * logsigmoid(-z)) / (1 - 2 * eps)
    return _pair_out(loss, p.beta * rho_w, p.beta * rho_l)


def ipo(b: PairBatch, p: P.IpoParams) -> LossOut:
    """IPO: (h - 1/(2 tau))^2; normalize=True divides each log-ratio by its token count (TRL form)."""
    rho_w, rho_l = _ratios(b, "ipo")
    if p.normalize:
        nw, nl = _need(b, "ipo", "n_chosen", "n_rejected")
        h = rho_w / nw - rho_l / nl
    else:
        h = rho_w - rho_l
    return _pair_out((h - 1 / (2 * p.beta)) ** 2, p.beta * rho_w, p.beta * rho_l, ipo_margin=h.mean())


def hinge(b: PairBatch, p: P.BetaParams) -> LossOut:
    """SLiC-style hinge on the reference log-ratio margin (TRL variant): relu(1 - beta h)."""
    rho_w, rho_l = _ratios(b, "hinge")
    return _pair_out(torch.relu(1 - p.beta * (rho_w - rho_l)), p.beta * rho_w, p.beta * rho_l)


def rpo(b: PairBatch, p: P.RpoParams) -> LossOut:
    """RPO: DPO + alpha * token-mean NLL of the chosen responses (the NLL is a batch scalar)."""
    rho_w, rho_l = _ratios(b, "rpo")
    nll = _nll(b, "rpo")
    dpo = -logsigmoid(p.beta * (rho_w - rho_l))
    return _pair_out(dpo + p.alpha * nll, p.beta * rho_w, p.beta * rho_l, nll=nll)


def ln_dpo(b: PairBatch, p: P.BetaParams) -> LossOut:
    """Length-normalised DPO (TRL sigmoid_norm): -log s(beta (rho_w/n_w - rho_l/n_l))."""
    rho_w, rho_l = _ratios(b, "ln_dpo")
    nw, nl = _need(b, "ln_dpo", "n_chosen", "n_rejected")
    rw, rl = p.beta * rho_w / nw, p.beta * rho_l / nl
    return _pair_out(-logsigmoid(rw - rl), rw, rl)


def _ld_sum(tok: Tensor, mask: Tensor, shared: Tensor, alpha: float) -> Tensor:
    # position of each response token counted over the mask, so left padding and prompt tokens don't count
    pos = torch.cumsum(mask.long(), dim=-1)
    w = torch.where(pos <= shared[:, None], 1.0, alpha).to(tok.dtype) * mask.to(tok.dtype)
    return (tok * w).sum(-1)


def ld_dpo(b: PairBatch, p: P.LdDpoParams) -> LossOut:
    """LD-DPO: tokens past the shared length l_p = min(n_w, n_l) weighted by alpha (policy AND reference)."""
    tpw, tpl, trw, trl = _need(b, "ld_dpo", "tok_pol_chosen", "tok_pol_rejected", "tok_ref_chosen",
                               "tok_ref_rejected")
    mw, ml = (getattr(b, k) for k in ("tok_mask_chosen", "tok_mask_rejected"))
    if mw is None or ml is None:
        raise LossInputError("loss 'ld_dpo' needs batch fields 'tok_mask_chosen' and 'tok_mask_rejected'")
    mw, ml = mw.bool(), ml.bool()
    shared = torch.minimum(mw.sum(-1), ml.sum(-1))
    rho_w = _ld_sum(tpw, mw, shared, p.alpha) - _ld_sum(trw.detach(), mw, shared, p.alpha)
    rho_l = _ld_sum(tpl, ml, shared, p.alpha) - _ld_sum(trl.detach(), ml, shared, p.alpha)
    return _pair_out(-logsigmoid(p.beta * (rho_w - rho_l)), p.beta * rho_w, p.beta * rho_l,
                     shared_len=shared.float().mean())


def _f_prime(rho: Tensor, p: P.FDpoParams) -> Tensor:
    """f'(u) at u = exp(rho), written in rho so that no exp(rho) is ever formed."""
    if p.divergence == "reverse_kl":
        return rho  # log u + 1; the constant cancels in the difference
    if p.divergence == "forward_kl":
        return -torch.exp(torch.clamp(-rho, max=_MAX_EXP))
    if p.divergence == "js":
        return logsigmoid(rho)  # log(2u/(1+u)) = log 2 + log sigma(rho); log 2 cancels
    return (1 - torch.exp(torch.clamp(-p.alpha * rho, max=_MAX_EXP))) / p.alpha


def f_dpo(b: PairBatch, p: P.FDpoParams) -> LossOut:
    """f-DPO: -log s(beta [f'(u_w) - f'(u_l)]), u = pi/pi_ref; alpha in the paper's parametrisation."""
    rho_w, rho_l = _ratios(b, "f_dpo")
    gw, gl = p.beta * _f_prime(rho_w, p), p.beta * _f_prime(rho_l, p)
    return _pair_out(-logsigmoid(gw - gl), p.beta * rho_w, p.beta * rho_l)


def nca_pair(b: PairBatch, p: P.BetaParams) -> LossOut:
    """NCA: -log s(r_w) - 1/2 log s(-r_w) - 1/2 log s(-r_l), r = beta rho."""
    rho_w, rho_l = _ratios(b, "nca_pair")
    rw, rl = p.beta * rho_w, p.beta * rho_l
    return _pair_out(-logsigmoid(rw) - 0.5 * logsigmoid(-rw) - 0.5 * logsigmoid(-rl), rw, rl)


def bco_pair(b: PairBatch, p: P.BcoParams) -> LossOut:
    """BCO: -log s(r_w - delta) - log s(-(r_l - delta)); delta fixed or the running mean of past rewards.

    In "running_mean" mode delta is ``b.bco_delta`` (the loop's ``RunningMean.value``, updated after each
    step from ``metrics['bco_reward_mean']``); on the very first step, when the window is still empty,
    delta is this batch's own mean reward. Delta is always detached."""
    rho_w, rho_l = _ratios(b, "bco_pair")
    rw, rl = p.beta * rho_w, p.beta * rho_l
    batch_mean = torch.cat([rw, rl]).detach().mean()
    if p.delta != "running_mean":
        delta = torch.as_tensor(float(p.delta), dtype=rw.dtype, device=rw.device)
    elif b.bco_delta is not None:
        delta = _f(b.bco_delta).detach().to(rw.device)
    else:
        delta = batch_mean
    loss = -logsigmoid(rw - delta) - logsigmoid(-(rl - delta))
    return _pair_out(loss, rw, rl, bco_delta=delta, bco_reward_mean=batch_mean)


class RunningMean:
    """BCO's delta: mean of the per-batch reward means over the last `window` batches.

    State lives outside the pure loss. Loop: ``batch.bco_delta = rm.value`` before the loss,
    ``rm.update(out.metrics['bco_reward_mean'])`` after it; ``state_dict`` goes into checkpoints."""

    def __init__(self, window: int = 100):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._values: deque[float] = deque(maxlen=window)

    def update(self, batch_mean: Tensor | float) -> None:
        self._values.append(float(batch_mean))

    @property
    def value(self) -> Tensor | None:
        return torch.tensor(sum(self._values) / len(self._values)) if self._values else None

    def state_dict(self) -> dict:
        return {"window": self.window, "values": list(self._values)}

    def load_state_dict(self, state: dict) -> None:
        self.window = int(state["window"])
        self._values = deque((float(v) for v in state["values"]), maxlen=self.window)


def apo_zero(b: PairBatch, p: P.BetaParams) -> LossOut:
    """APO-zero: (1 - s(r_w)) + s(r_l): raise chosen, lower rejected (chosen better than the model's own)."""
    rho_w, rho_l = _ratios(b, "apo_zero")
    rw, rl = p.beta * rho_w, p.beta * rho_l
    return _pair_out((1 - torch.sigmoid(rw)) + torch.sigmoid(rl), rw, rl)


def apo_down(b: PairBatch, p: P.BetaParams) -> LossOut:
    """APO-down: s(r_w) + (1 - s(r_w - r_l)): lower both, keep the gap (chosen worse than the model's own)."""
    rho_w, rho_l = _ratios(b, "apo_down")
    rw, rl = p.beta * rho_w, p.beta * rho_l
    return _pair_out(torch.sigmoid(rw) + (1 - torch.sigmoid(rw - rl)), rw, rl)


def sppo_hard(b: PairBatch, p: P.BetaParams) -> LossOut:
    """SPPO (hard labels): (rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2 on UNSCALED log-ratios."""
    rho_w, rho_l = _ratios(b, "sppo_hard")
    target = 1 / (2 * p.beta)
    return _pair_out((rho_w - target) ** 2 + (rho_l + target) ** 2, p.beta * rho_w, p.beta * rho_l)


def tdpo1(b: PairBatch, p: P.BetaParams) -> LossOut:
    """TDPO1: -log s(beta h - beta (D_l - D_w)), D = sequential KL(ref || policy)."""
    rho_w, rho_l = _ratios(b, "tdpo1")
    dw, dl = _need(b, "tdpo1", "kl_chosen", "kl_rejected")
    delta = dl - dw
    return _pair_out(-logsigmoid(p.beta * (rho_w - rho_l) - p.beta * delta), p.beta * rho_w, p.beta * rho_l,
                     seq_kl_gap=delta.mean())


def tdpo2(b: PairBatch, p: P.Tdpo2Params) -> LossOut:
    """TDPO2: -log s(beta h - alpha beta (D_l - sg[D_w])): no gradient through the chosen KL."""
    rho_w, rho_l = _ratios(b, "tdpo2")
    dw, dl = _need(b, "tdpo2", "kl_chosen", "kl_rejected")
    delta = dl - dw.detach()
    z = p.beta * (rho_w - rho_l) - p.alpha * p.beta * delta
    return _pair_out(-logsigmoid(z), p.beta * rho_w, p.beta * rho_l, seq_kl_gap=delta.mean())


def madpo_weight(margin: Tensor, p: P.MadpoParams) -> Tensor:
    """c(|m|) = c_min + (c_max - c_min) / (1 + K exp(lambda (|m| - tau))), K = (c_max-1)/(1-c_min); c(tau)=1."""
    k = (p.c_max - 1) / (1 - p.c_min)
    e = torch.exp(torch.clamp(p.lam * (margin.abs() - p.tau), max=_MAX_EXP))
    return p.c_min + (p.c_max - p.c_min) / (1 + k * e)


def madpo(b: PairBatch, p: P.MadpoParams) -> LossOut:
    """MADPO: -c(|m|) log s(beta h), c from the reward-model margin (hard pairs up-weighted), detached."""
    rho_w, rho_l = _ratios(b, "madpo")
    (m,) = _need(b, "madpo", "rm_margin")
    c = madpo_weight(m.detach(), p)
    return _pair_out(-c * logsigmoid(p.beta * (rho_w - rho_l)), p.beta * rho_w, p.beta * rho_l,
                     madpo_weight=c.mean())


def modpo(b: PairBatch, p: P.ModpoParams) -> LossOut:
    """MODPO: -log s((beta/w_k) h - (1/w_k) w_other . (r_other(y_w) - r_other(y_l)))."""
    rho_w, rho_l = _ratios(b, "modpo")
    oc, orj = _need(b, "modpo", "other_chosen", "other_rejected")
    d = (oc - orj).detach()
    if d.dim() == 1:
        d = d[:, None]
    if d.shape[-1] != len(p.w_other):
        raise LossInputError(f"loss 'modpo': {d.shape[-1]} other-objective reward(s) per pair but "
                             f"w_other has {len(p.w_other)} weight(s)")
    w = torch.tensor(p.w_other, dtype=d.dtype, device=d.device)
    shift = (d * w).sum(-1) / p.w_k
    rw, rl = p.beta * rho_w / p.w_k, p.beta * rho_l / p.w_k
    return _pair_out(-logsigmoid(rw - rl - shift), rw, rl, modpo_shift=shift.mean())


def smpo_smoothed_dpo(b: PairBatch, p: P.SmpoParams) -> LossOut:
    """SmPO: -log s((2 alpha - gamma) beta h); alpha from params or per pair (b.pref_alpha)."""
    rho_w, rho_l = _ratios(b, "smpo_smoothed_dpo")
    if p.alpha is not None:
        alpha = torch.as_tensor(p.alpha, dtype=rho_w.dtype, device=rho_w.device)
    else:
        (alpha,) = _need(b, "smpo_smoothed_dpo (alpha not set in params)", "pref_alpha")
    scale = (2 * alpha.detach() - p.gamma)
    return _pair_out(-logsigmoid(scale * p.beta * (rho_w - rho_l)), p.beta * rho_w, p.beta * rho_l,
                     smpo_scale=scale.mean())


# ---- §2 reference-free pairwise -----------------------------------------------------------------
def simpo(b: PairBatch, p: P.SimpoParams) -> LossOut:
    """SimPO: -log s(beta avg_logp_w - beta avg_logp_l - gamma) (+ alpha_nll NLL, CPO-trainer style)."""
    pw, pl, nw, nl = _need(b, "simpo", "pol_chosen", "pol_rejected", "n_chosen", "n_rejected")
    rw, rl = p.beta * pw / nw, p.beta * pl / nl
    loss = -logsigmoid(rw - rl - p.gamma)
    if p.alpha_nll:
        loss = loss + p.alpha_nll * _nll(b, "simpo")
    return _pair_out(loss, rw, rl)


def cpo(b: PairBatch, p: P.CpoParams) -> LossOut:
    """CPO: -log s(beta (logp_w - logp_l)) on summed policy log-probs + alpha * token-mean NLL."""
    pw, pl = _need(b, "cpo", "pol_chosen", "pol_rejected")
    nll = _nll(b, "cpo")
    return _pair_out(-logsigmoid(p.beta * (pw - pl)) + p.alpha_nll * nll, p.beta * pw, p.beta * pl, nll=nll)


def _log_odds(avg_logp: Tensor) -> Tensor:
    return avg_logp - log1mexp(avg_logp)


def orpo(b: PairBatch, p: P.OddsParams) -> LossOut:
    """ORPO: NLL(y_w) - lambda log s(log odds(y_w) - log odds(y_l)), odds of the length-averaged log-prob."""
    pw, pl, nw, nl = _need(b, "orpo", "pol_chosen", "pol_rejected", "n_chosen", "n_rejected")
    nll = _nll(b, "orpo")
    aw, al = pw / nw, pl / nl
    ratio = _log_odds(aw) - _log_odds(al)
    return _pair_out(nll - p.lam * logsigmoid(ratio), p.lam * aw, p.lam * al, log_odds_ratio=ratio.mean(),
                     nll=nll)


def asft(b: PairBatch, p: P.OddsParams) -> LossOut:
    """ASFT (spec form, unverified): NLL(y_w) + lambda [-log P_w - log(1 - P_l)], P = exp(avg_logp)."""
    pw, pl, nw, nl = _need(b, "asft", "pol_chosen", "pol_rejected", "n_chosen", "n_rejected")
    nll = _nll(b, "asft")
    aw, al = pw / nw, pl / nl
    return _pair_out(nll + p.lam * (-aw - log1mexp(al)), p.lam * aw, p.lam * al, nll=nll)


# ---- §3 unpaired --------------------------------------------------------------------------------
def kto(b: UnpairedBatch, p: P.KtoParams) -> LossOut:
    """KTO: desirable lambda_D (1 - s(beta (rho - z0))), undesirable lambda_U (1 - s(beta (z0 - rho)));
    z0 = max(0, mean log-ratio of mismatched pairs), detached (or b.z0, already averaged across ranks)."""
    pol, ref, label = _f(b.pol), _f(b.ref), b.label.bool()
    rho = pol - ref.detach()
    if b.z0 is not None:
        z0 = _f(b.z0).detach()
    else:
        kp, kr = _need(b, "kto (z0 not given)", "kl_pol", "kl_ref")
        if kp.numel() == 0:
            raise LossInputError("loss 'kto': no mismatched pairs to estimate z0 (batch size must be > 1)")
        z0 = torch.clamp((kp - kr).detach().mean(), min=0)
    r = p.beta * rho
    desirable = p.lambda_D * (1 - torch.sigmoid(p.beta * (rho - z0)))
    undesirable = p.lambda_U * (1 - torch.sigmoid(p.beta * (z0 - rho)))
    loss = torch.where(label, desirable, undesirable)
    metrics = {"kto_z0": z0, "kto_desirable_frac": label.float().mean()}
    if label.any():
        metrics["reward_desirable"] = r[label].mean()
    if (~label).any():
        metrics["reward_undesirable"] = r[~label].mean()
    return LossOut(loss=loss, chosen_reward=_det(r), metrics={k: _det(v) for k, v in metrics.items()})


# ---- §4 listwise --------------------------------------------------------------------------------
def _list_inputs(b: ListBatch, loss: str) -> tuple[Tensor, Tensor, Tensor]:
    """(rho [B,K] with padding zeroed, scores [B,K], valid [B,K])."""
    pol, ref, scores = _need(b, loss, "pol", "ref", "scores")
    if pol.dim() != 2 or pol.shape != scores.shape or pol.shape != ref.shape:
        raise LossInputError(f"loss {loss!r}: pol, ref and scores must share one [B, K] shape, got "
                             f"{tuple(pol.shape)}, {tuple(ref.shape)}, {tuple(scores.shape)}")
    valid = torch.ones_like(pol, dtype=torch.bool) if b.mask is None else b.mask.bool()
    rho = torch.where(valid, pol - ref.detach(), torch.zeros_like(pol))
    return rho, torch.where(valid, scores, torch.zeros_like(scores)), valid


def plackett_luce_dpo(b: ListBatch, p: P.PlackettLuceParams) -> LossOut:
    """Plackett-Luce: -sum_k [beta r_(k) - logsumexp_{j>=k} beta r_(j)] over the score ranking.

    Written without sorting: item i competes with itself and every strictly worse item, so tied items
    never compare with each other (their internal terms are skipped) and the worst item adds 0."""
    rho, s, valid = _list_inputs(b, "plackett_luce_dpo")
    r = p.beta * rho
    eye = torch.eye(r.shape[-1], dtype=torch.bool, device=r.device)
    arena = ((s[:, None, :] < s[:, :, None]) & valid[:, None, :]) | eye  # [B, i, j]
    lse = torch.logsumexp(r[:, None, :].expand_as(arena).masked_fill(~arena, float("-inf")), dim=-1)
    loss = -torch.where(valid, r - lse, torch.zeros_like(r)).sum(-1)
    return LossOut(loss=loss, metrics={"list_size": _det(valid.sum(-1).float().mean())})


def _competition_positions(values: Tensor, valid: Tensor) -> Tensor:
    # 1-based position = 1 + number of valid items strictly better (ties share a position)
    better = (values[:, None, :] > values[:, :, None]) & valid[:, None, :]
    return 1 + better.sum(-1).to(values.dtype)


def rankdpo_dcg_pairwise(b: ListBatch, p: P.RankDpoParams) -> LossOut:
    """RankDPO: sum_{s_i > s_j} |G_i - G_j| |D_i - D_j| softplus(-beta (r_i - r_j)), D = 1/log_base(1+pos)."""
    rho, s, valid = _list_inputs(b, "rankdpo_dcg_pairwise")
    r = p.beta * rho
    gain = torch.pow(2.0, s) - 1 if p.gain == "2^s-1" else s
    by = s if p.positions == "by gain_scores" else r.detach()
    pos = _competition_positions(by, valid)
    disc = math.log(p.log_base_value) / torch.log1p(pos)
    pairs = (s[:, :, None] > s[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    w = (gain[:, :, None] - gain[:, None, :]).abs() * (disc[:, :, None] - disc[:, None, :]).abs()
    per_pair = w * softplus(-(r[:, :, None] - r[:, None, :]))
    loss = torch.where(pairs, per_pair, torch.zeros_like(per_pair)).sum((-1, -2))
    return LossOut(loss=loss, metrics={"ranked_pairs": _det(pairs.sum((-1, -2)).float().mean())})


def listnet_dpo(b: ListBatch, p: P.ListNetParams) -> LossOut:
    """ListNet (TPO-style list loss): -sum_i softmax(s)_i log softmax(beta r)_i."""
    rho, s, valid = _list_inputs(b, "listnet_dpo")
    neg = torch.tensor(float("-inf"), dtype=rho.dtype, device=rho.device)
    target = torch.softmax(torch.where(valid, s, neg), dim=-1)
    logq = torch.log_softmax(torch.where(valid, p.beta * rho, neg), dim=-1)
    loss = -torch.where(valid, target * logq, torch.zeros_like(logq)).sum(-1)
    return LossOut(loss=loss)


# ---- §5 diffusion -------------------------------------------------------------------------------
def _diffusion_rewards(b: DiffusionBatch, loss: str, scale: float) -> tuple[Tensor, Tensor]:
    """Implicit rewards -scale * (e_pol - e_ref) for winner and loser; lower error on the winner = larger."""
    pw, pl, rw, rl = _need(b, loss, "mse_pol_w", "mse_pol_l", "mse_ref_w", "mse_ref_l")
    return -scale * (pw - rw.detach()), -scale * (pl - rl.detach())


def diffusion_dpo_paper_form(b: DiffusionBatch, p: P.DiffusionPaperParams) -> LossOut:
    """Diffusion-DPO (paper): -log s(-beta_T [(e_w - e_ref_w) - (e_l - e_ref_l)])."""
    gw, gl = _diffusion_rewards(b, "diffusion_dpo_paper_form", p.beta_T)
    return _pair_out(-logsigmoid(gw - gl), gw, gl)


def diffusion_dpo_script_form(b: DiffusionBatch, p: P.DiffusionScriptParams) -> LossOut:
    """Diffusion-DPO (release script / diffusers): inside = -0.5 beta_dpo [(e_w - e_l) - (e_ref_w - e_ref_l)].

    Also DCPO: the same loss with the loser's errors computed under its own caption c_l."""
    gw, gl = _diffusion_rewards(b, "diffusion_dpo_diffusers_form", p.factor)
    return _pair_out(-logsigmoid(gw - gl), gw, gl)


def diffusion_ipo(b: DiffusionBatch, p: P.DiffusionIpoParams) -> LossOut:
    """Diffusion-DPO's IPO variant: (h - 1/(2 beta))^2 with h = -t_scale [(e_w - e_ref_w) - (e_l - e_ref_l)],
    the diffusion log-ratio margin (ELBO form). Squared loss: it also pulls back margins beyond the target,
    which is IPO's guard against the over-fitting DPO shows on deterministic preferences."""
    gw, gl = _diffusion_rewards(b, "diffusion_ipo", p.t_scale)
    return _pair_out((gw - gl - 1.0 / (2.0 * p.beta)) ** 2, gw, gl)


def smpo_diffusion(b: DiffusionBatch, p: P.SmpoDiffusionParams) -> LossOut:
    """SmPO-Diffusion: Diffusion-DPO (paper form) logit scaled by (2 alpha - gamma)."""
    gw, gl = _diffusion_rewards(b, "smpo_diffusion", p.beta_T)
    if p.alpha is not None:
        alpha = torch.as_tensor(p.alpha, dtype=gw.dtype, device=gw.device)
    else:
        (alpha,) = _need(b, "smpo_diffusion (alpha not set in params)", "alpha")
    scale = 2 * alpha.detach() - p.gamma
    return _pair_out(-logsigmoid(scale * (gw - gl)), gw, gl, smpo_scale=scale.mean())


def densedpo_segment_mean(b: DiffusionBatch, p: P.DenseDpoParams) -> LossOut:
    """DenseDPO: mean over non-tie segments of -log s(-beta_T [(e^win_s - e_ref^win_s) - (lose likewise)]).

    A video pair whose segments are all ties has loss 0 (no gradient); `all_tie_pairs` counts them."""
    aw, bw, ar, br = _need(b, "densedpo_segment_mean", "seg_mse_pol_w", "seg_mse_pol_l", "seg_mse_ref_w",
                           "seg_mse_ref_l")
    if b.seg_pref is None:
        raise LossInputError("loss 'densedpo_segment_mean' needs batch field 'seg_pref'")
    label = b.seg_pref.to(aw.dtype)
    # d_A - d_B, signed so that the segment's winner comes first
    gap = label * ((aw - ar.detach()) - (bw - br.detach()))
    per_seg = softplus(p.beta_T * gap)  # = -log s(-beta_T gap)
    live = b.seg_pref != 0
    count = live.sum(-1)
    loss = torch.where(live, per_seg, torch.zeros_like(per_seg)).sum(-1) / count.clamp(min=1).to(aw.dtype)
    metrics = {"non_tie_segments": count.float().mean(), "all_tie_pairs": (count == 0).float().sum()}
    return LossOut(loss=loss, metrics={k: _det(v) for k, v in metrics.items()})


# ---- registry -----------------------------------------------------------------------------------
_REF = frozenset({"ref"})
_DIFF = frozenset({"diffusion"})


def _spec(fn: Callable[..., LossOut], params: type[BaseModel], needs: set[str], kind: str, doc: str) -> LossSpec:
    return LossSpec(fn, params, frozenset(needs), kind, doc)  # type: ignore[arg-type]


LOSSES: dict[str, LossSpec] = {
    "dpo_sigmoid": _spec(dpo_sigmoid, P.DpoParams, {"ref"}, "pair",
                         "DPO (Rafailov+ 2023): -log s(beta h); label_smoothing eps gives cDPO"),
    "cdpo_label_smoothing": _spec(dpo_sigmoid, P.CdpoParams, {"ref"}, "pair",
                                  "cDPO: -(1-eps) log s(beta h) - eps log s(-beta h)"),
    "robust_dpo": _spec(robust_dpo, P.RobustDpoParams, {"ref"}, "pair",
                        "rDPO (Chowdhury+ 2024): [-(1-eps) log s(bh) + eps log s(-bh)] / (1-2eps)"),
    "ipo": _spec(ipo, P.IpoParams, {"ref", "counts"}, "pair",
                 "IPO (Azar+ 2023): (h - 1/(2 tau))^2; normalize=True: per-token log-ratios (TRL)"),
    "ipo_unnormalized": _spec(ipo, P.IpoUnnormalizedParams, {"ref"}, "pair",
                              "IPO paper form on summed log-ratios: (h - 1/(2 tau))^2"),
    "ipo_trl_length_normalized": _spec(ipo, P.IpoNormalizedParams, {"ref", "counts"}, "pair",
                                       "IPO TRL form: (rho_w/n_w - rho_l/n_l - 1/(2 tau))^2"),
    "hinge": _spec(hinge, P.BetaParams, {"ref"}, "pair", "SLiC-style hinge (TRL): relu(1 - beta h)"),
    "rpo": _spec(rpo, P.RpoParams, {"ref", "nll"}, "pair",
                 "RPO (Pang+ 2024): DPO + alpha * token-mean NLL(chosen)"),
    "ln_dpo": _spec(ln_dpo, P.BetaParams, {"ref", "counts"}, "pair",
                    "LN-DPO: -log s(beta (rho_w/n_w - rho_l/n_l))"),
    "ld_dpo": _spec(ld_dpo, P.LdDpoParams, {"ref", "token_logps"}, "pair",
                    "LD-DPO (Liu+ 2024): DPO with tokens past min(n_w, n_l) weighted by alpha"),
    "fdpo": _spec(f_dpo, P.FDpoParams, {"ref"}, "pair",
                  "f-DPO (Wang+ 2023): -log s(beta [f'(u_w) - f'(u_l)]), divergence selectable"),
    "fdpo_reverse_kl": _spec(f_dpo, P.FDpoReverseKlParams, {"ref"}, "pair", "f-DPO reverse KL (= DPO)"),
    "fdpo_forward_kl": _spec(f_dpo, P.FDpoForwardKlParams, {"ref"}, "pair", "f-DPO forward KL: f'(u) = -1/u"),
    "fdpo_js": _spec(f_dpo, P.FDpoJsParams, {"ref"}, "pair", "f-DPO Jensen-Shannon: f'(u) = log(2u/(1+u))"),
    "fdpo_alpha": _spec(f_dpo, P.FDpoAlphaParams, {"ref"}, "pair",
                        "f-DPO alpha-divergence: f'(u) = (1 - u^-alpha)/alpha (paper alpha)"),
    "nca_pair": _spec(nca_pair, P.BetaParams, {"ref"}, "pair",
                      "NCA (Chen+ 2024): -log s(r_w) - 1/2 log s(-r_w) - 1/2 log s(-r_l)"),
    "bco_pair": _spec(bco_pair, P.BcoParams, {"ref"}, "pair",
                      "BCO (Jung+ 2024): -log s(r_w - delta) - log s(-(r_l - delta))"),
    "apo_zero": _spec(apo_zero, P.BetaParams, {"ref"}, "pair", "APO-zero (D'Oosterlinck+ 2024): 1 - s(r_w) + s(r_l)"),
    "apo_down": _spec(apo_down, P.BetaParams, {"ref"}, "pair", "APO-down: s(r_w) + 1 - s(r_w - r_l)"),
    "sppo_hard": _spec(sppo_hard, P.BetaParams, {"ref"}, "pair",
                       "SPPO hard (Wu+ 2024): (rho_w - 1/(2b))^2 + (rho_l + 1/(2b))^2"),
    "tdpo1": _spec(tdpo1, P.BetaParams, {"ref", "seq_kl"}, "pair",
                   "TDPO1 (Zeng+ 2024): -log s(beta h - beta (D_l - D_w))"),
    "tdpo2": _spec(tdpo2, P.Tdpo2Params, {"ref", "seq_kl"}, "pair",
                   "TDPO2: -log s(beta h - alpha beta (D_l - sg[D_w]))"),
    "madpo": _spec(madpo, P.MadpoParams, {"ref", "rm_margin"}, "pair",
                   "MADPO: -c(|m|) log s(beta h), c from the reward-model margin"),
    "modpo": _spec(modpo, P.ModpoParams, {"ref", "other_rewards"}, "pair",
                   "MODPO (Zhou+ 2023): -log s((beta/w_k) h - w_other.dr_other / w_k)"),
    "smpo_smoothed_dpo": _spec(smpo_smoothed_dpo, P.SmpoParams, {"ref"}, "pair",
                               "SmPO: -log s((2 alpha - gamma) beta h), smoothed preference alpha"),
    "simpo": _spec(simpo, P.SimpoParams, {"counts", "nll"}, "pair",
                   "SimPO (Meng+ 2024): -log s(beta avg_w - beta avg_l - gamma), reference-free"),
    "cpo": _spec(cpo, P.CpoParams, {"nll"}, "pair",
                 "CPO (Xu+ 2024): -log s(beta (logp_w - logp_l)) + alpha NLL(chosen)"),
    "orpo": _spec(orpo, P.OddsParams, {"counts", "nll"}, "pair",
                  "ORPO (Hong+ 2024): NLL - lambda log s(log odds_w - log odds_l)"),
    "asft": _spec(asft, P.OddsParams, {"counts", "nll"}, "pair",
                  "ASFT (spec form, unverified): NLL + lambda [-log P_w - log(1 - P_l)]"),
    "kto": _spec(kto, P.KtoParams, {"ref", "unpaired"}, "unpaired",
                 "KTO (Ethayarajh+ 2024): lambda_y (1 - s(beta (+/-(rho - z0))))"),
    "plackett_luce_dpo": _spec(plackett_luce_dpo, P.PlackettLuceParams, {"ref", "list"}, "list",
                               "Plackett-Luce DPO: -sum_k [beta r_k - logsumexp_{j>=k} beta r_j]"),
    "rankdpo_dcg_pairwise": _spec(rankdpo_dcg_pairwise, P.RankDpoParams, {"ref", "list"}, "list",
                                  "RankDPO (Karthik+ 2024): DCG-weighted pairwise -log s(beta (r_i - r_j))"),
    "listnet_dpo": _spec(listnet_dpo, P.ListNetParams, {"ref", "list"}, "list",
                         "ListNet over implicit rewards: -sum softmax(s) log softmax(beta r)"),
    "diffusion_dpo_paper_form": _spec(diffusion_dpo_paper_form, P.DiffusionPaperParams, _DIFF, "diffusion",
                                      "Diffusion-DPO (Wallace+ 2023): -log s(-beta_T [(e_w-e_rw) - (e_l-e_rl)])"),
    "diffusion_dpo_diffusers_form": _spec(diffusion_dpo_script_form, P.DiffusionScriptParams, _DIFF, "diffusion",
                                          "Diffusion-DPO script: -log s(-0.5 beta_dpo [(e_w-e_l) - (e_rw-e_rl)])"),
    "dcpo": _spec(diffusion_dpo_script_form, P.DiffusionScriptParams, _DIFF, "diffusion",
                  "DCPO (dual captions): Diffusion-DPO script form, loser errors under caption c_l"),
    "diffusion_ipo": _spec(diffusion_ipo, P.DiffusionIpoParams, _DIFF, "diffusion",
                           "Diffusion-IPO: (-t_scale [(e_w-e_rw) - (e_l-e_rl)] - 1/(2 beta))^2"),
    "smpo_diffusion": _spec(smpo_diffusion, P.SmpoDiffusionParams, _DIFF, "diffusion",
                            "SmPO-Diffusion: Diffusion-DPO logit scaled by (2 alpha - gamma)"),
    "densedpo_segment_mean": _spec(densedpo_segment_mean, P.DenseDpoParams, {"diffusion", "segments"},
                                   "diffusion", "DenseDPO: Diffusion-DPO per segment, mean over non-tie segments"),
}

# recipe-facing aliases: the same LossSpec object under a second name
ALIASES: dict[str, str] = {
    "dpo": "dpo_sigmoid",
    "sigmoid": "dpo_sigmoid",
    "cdpo": "cdpo_label_smoothing",
    "rdpo": "robust_dpo",
    "tpo_tree": "listnet_dpo",
    "rankdpo": "rankdpo_dcg_pairwise",
    "diffusion_dpo": "diffusion_dpo_diffusers_form",
}
for _alias, _target in ALIASES.items():
    LOSSES[_alias] = LOSSES[_target]


# ---- recipe-time validation ---------------------------------------------------------------------
def _explain(err: dict, params: type[BaseModel], name: str) -> str:
    ctx = err.get("ctx") or {}
    kind = err["type"]
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        op = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}[kind]
        return f"must be {bounds[kind]} {ctx[op]}"
    if kind == "extra_forbidden":
        known = sorted(f.alias or k for k, f in params.model_fields.items())
        return f"unknown hyperparameter for loss {name!r} (known: {', '.join(known)})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type"):
        return f"must be a number, got {err.get('input')!r}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return err["msg"]


def resolve_loss(name: str, hyperparams: dict, *, where: str = "loss") -> tuple[LossSpec, BaseModel]:
    """Look up `name` and validate its hyperparameters; RecipeError (naming `where`) on any problem."""
    hp = dict(hyperparams or {})
    if "name" in hp:
        given = hp.pop("name")
        if given != name:
            raise RecipeError(f"conflicting loss names {name!r} and {given!r}", path=f"{where}.name")
    if not isinstance(name, str) or name not in LOSSES:
        close = difflib.get_close_matches(str(name), LOSSES, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(LOSSES))}"
        raise RecipeError(f"unknown loss {name!r}{hint}", path=f"{where}.name")
    spec = LOSSES[name]
    try:
        params = spec.params(**hp)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            problems.append((f"{where}.{loc}" if loc else where, _explain(err, spec.params, name)))
        path, message = problems[0]
        extra = "".join(f"; {p}: {m}" for p, m in problems[1:])
        raise RecipeError(message + extra, path=path) from None
    except TypeError as exc:  # non-string keys
        raise RecipeError(f"bad hyperparameters: {exc}", path=where) from None
    return spec, params


def compute_loss(name: str, batch: object, params: BaseModel) -> LossOut:
    """Convenience for callers holding a name: LOSSES[name].fn(batch, params)."""
    return LOSSES[name].fn(batch, params)
