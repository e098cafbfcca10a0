"""Hyperparameters of every loss: one frozen pydantic model per loss family.

Recipe keys equal the keys of shared/spec/reference_values.json (`beta(tau)`, `lambda`, `lambda_D`, ...);
where such a key is not a Python identifier, a field alias maps it. Ranges are enforced here, so a bad
recipe fails when it is parsed (``resolve_loss``), never mid-training.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator


class LossParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


PositiveBeta = Field(0.1, gt=0.0, description="inverse temperature of the implicit reward")


# ---- pairwise with reference -------------------------------------------------------------------
class DpoParams(LossParams):
    beta: float = PositiveBeta
    # cDPO (§1.2): assumed label-flip rate; 0 = plain DPO
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)


class CdpoParams(DpoParams):
    label_smoothing: float = Field(0.1, ge=0.0, lt=0.5)


class RobustDpoParams(LossParams):
    beta: float = PositiveBeta
    # eps >= 0.5 would divide by 1 - 2 eps <= 0
    label_smoothing: float = Field(0.1, ge=0.0, lt=0.5)


class IpoParams(LossParams):
    # TRL passes IPO's tau as `beta`; the spec json spells it `beta(tau)`
    beta: float = Field(0.1, gt=0.0, validation_alias=AliasChoices("beta(tau)", "beta", "tau"))
    normalize: bool = True  # TRL form: each log-ratio divided by its own token count


class IpoUnnormalizedParams(IpoParams):
    normalize: Literal[False] = False


class IpoNormalizedParams(IpoParams):
    normalize: Literal[True] = True


class BetaParams(LossParams):
    """Losses whose only knob is beta (hinge, LN-DPO, NCA, APO, SPPO-hard, TDPO1)."""

    beta: float = PositiveBeta


class RpoParams(LossParams):
    beta: float = PositiveBeta
    alpha: float = Field(1.0, ge=0.0, description="weight of the token-mean NLL on chosen")


class LdDpoParams(LossParams):
    beta: float = PositiveBeta
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of tokens past the shared length")


FDivergence = Literal["reverse_kl", "forward_kl", "js", "alpha"]


class FDpoParams(LossParams):
    beta: float = PositiveBeta
    divergence: FDivergence = "reverse_kl"
    # paper parametrisation f'(u) = (1 - u^-alpha)/alpha; TRL-2026 `f_alpha_divergence_coef` a = 1 - alpha
    alpha: float = Field(0.5, gt=0.0, lt=1.0)


class FDpoReverseKlParams(FDpoParams):
    divergence: Literal["reverse_kl"] = "reverse_kl"


class FDpoForwardKlParams(FDpoParams):
    divergence: Literal["forward_kl"] = "forward_kl"


class FDpoJsParams(FDpoParams):
    divergence: Literal["js"] = "js"


class FDpoAlphaParams(FDpoParams):
    divergence: Literal["alpha"] = "alpha"


class BcoParams(LossParams):
    beta: float = PositiveBeta
    # a number = fixed delta (0 = TRL-2026); "running_mean" = the loop's RunningMean of past rewards,
    # passed in as PairBatch.bco_delta (see losses.RunningMean)
    delta: float | Literal["running_mean"] = "running_mean"
    delta_window: int = Field(100, ge=1, description="batches the running mean spans")


class Tdpo2Params(LossParams):
    beta: float = PositiveBeta
    alpha: float = Field(0.5, ge=0.0, description="TDPO2 weight of the sequential-KL gap")


class MadpoParams(LossParams):
    beta: float = PositiveBeta
    # c(tau) = 1 requires c_min < 1 < c_max (else K = (c_max-1)/(1-c_min) <= 0)
    c_max: float = Field(2.0, gt=1.0)
    c_min: float = Field(0.5, ge=0.0, lt=1.0)
    lam: float = Field(1.0, gt=0.0, alias="lambda")
    tau: float = Field(2.0, ge=0.0)


class ModpoParams(LossParams):
    beta: float = PositiveBeta
    w_k: float = Field(0.5, gt=0.0, le=1.0, description="weight of the objective the labels describe")
    w_other: tuple[float, ...] = Field((0.5,), min_length=1)

    @field_validator("w_other")
    @classmethod
    def _nonnegative(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(w < 0 or not math.isfinite(w) for w in v):
            raise ValueError("weights must be finite and >= 0")
        return v


class SmpoParams(LossParams):
    beta: float = PositiveBeta
    # smoothed preference alpha in [0,1]; None = per pair from the batch (PairBatch.pref_alpha)
    alpha: float | None = Field(None, ge=0.0, le=1.0)
    gamma: float = Field(1.0, ge=0.0, description="sensitivity; logit scaled by (2 alpha - gamma)")


# ---- reference-free pairwise -------------------------------------------------------------------
class SimpoParams(LossParams):
    beta: float = Field(2.0, gt=0.0)
    gamma: float = Field(1.0, ge=0.0, description="target reward margin")
    alpha_nll: float = Field(0.0, ge=0.0, description="CPO-style NLL weight; 0 = pure SimPO")


class CpoParams(LossParams):
    beta: float = PositiveBeta
    alpha_nll: float = Field(1.0, ge=0.0)


class OddsParams(LossParams):
    """ORPO / ASFT: lambda weights the odds term against the chosen NLL."""

    lam: float = Field(0.1, ge=0.0, alias="lambda")


# ---- unpaired ----------------------------------------------------------------------------------
class KtoParams(LossParams):
    beta: float = PositiveBeta
    lambda_D: float = Field(1.0, gt=0.0)
    lambda_U: float = Field(1.0, gt=0.0)


# ---- listwise ----------------------------------------------------------------------------------
class PlackettLuceParams(LossParams):
    beta: float = PositiveBeta


class RankDpoParams(LossParams):
    beta: float = Field(1.0, gt=0.0)
    # discount base of 1/log(1+position): 2 (IR convention) or e
    log_base: float | Literal["e"] = 2.0
    gain: Literal["2^s-1", "s"] = "2^s-1"
    # position source: ground-truth score order, or the model's current implicit rewards (LambdaLoss)
    positions: Literal["by gain_scores", "by implicit_rewards"] = "by gain_scores"

    @field_validator("log_base")
    @classmethod
    def _base(cls, v: float | str) -> float | str:
        if v != "e" and not v > 1.0:
            raise ValueError("must be 'e' or a number > 1")
        return v

    @field_validator("positions", mode="before")
    @classmethod
    def _positions(cls, v: object) -> object:
        short = {"scores": "by gain_scores", "gain_scores": "by gain_scores",
                 "rewards": "by implicit_rewards", "implicit_rewards": "by implicit_rewards"}
        return short.get(v, v) if isinstance(v, str) else v

    @property
    def log_base_value(self) -> float:
        return math.e if self.log_base == "e" else float(self.log_base)


class ListNetParams(LossParams):
    beta: float = Field(1.0, gt=0.0)


# ---- diffusion ---------------------------------------------------------------------------------
class DiffusionPaperParams(LossParams):
    beta_T: float = Field(5000.0, gt=0.0, description="beta * T * omega(lambda_t) folded")


class DiffusionScriptParams(LossParams):
    beta_dpo: float = Field(2500.0, gt=0.0)
    # the original release/diffusers scale; "-beta_dpo" drops the 0.5 (then beta_dpo == paper beta_T)
    scale: Literal["-0.5*beta_dpo", "-beta_dpo"] = "-0.5*beta_dpo"

    @property
    def factor(self) -> float:
        return 0.5 * self.beta_dpo if self.scale == "-0.5*beta_dpo" else self.beta_dpo


class DiffusionIpoParams(LossParams):
    beta: float = Field(0.1, gt=0.0, description="IPO tau: the target margin is 1/(2 beta)")
    t_scale: float = Field(1000.0, gt=0.0, description="T * omega(lambda_t) folded: diffusion log-ratio per unit MSE")


class SmpoDiffusionParams(LossParams):
    beta_T: float = Field(5000.0, gt=0.0)
    alpha: float | None = Field(None, ge=0.0, le=1.0)
    gamma: float = Field(1.0, ge=0.0)


class DenseDpoParams(LossParams):
    beta_T: float = Field(5000.0, gt=0.0)
    reduction: Literal["mean over non-tie segments"] = "mean over non-tie segments"

    @field_validator("reduction", mode="before")
    @classmethod
    def _reduction(cls, v: object) -> object:
        return "mean over non-tie segments" if v in ("mean", "mean_non_tie") else v
