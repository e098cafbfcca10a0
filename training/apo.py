"""Accelerated Preference Optimization (APO): Nesterov-style extrapolation of the policy between rounds.

APO (He, Yuan, Gu 2024) reads iterative preference optimization as a proximal point method — each round
solves "improve the preferences while staying close to the reference (the round's starting policy)" — and
accelerates it with Nesterov's momentum: after round k's training, the next round starts from the trained
policy pushed further along the direction the last round moved it. Here the extrapolation is made on the
weights (the paper's practical form), tensor by tensor:

    x_k      the weights after round k's training (x_{-1} = the starting model, before any round)
    s_{k+1}  = x_k + α (x_k − x_{k−1})            the next round's starting weights

Round k+1 then generates with s_{k+1}, trains from it and (reference: previous_round) uses it as its
reference. α = 0 gives s_{k+1} = x_k: plain iterative DPO. Note x_{k−1} is the previous *trained* weights, not
the previous extrapolated start s_k (the Nesterov sequence: the momentum term is the difference of two
proximal-step results).

Pure torch on state dicts: the arithmetic is done in float64 and cast back to x_k's dtype, so a float32 model
gets the correctly rounded result; integer / bool buffers (none in a Llama, but e.g. position ids in other
architectures) are not weights and are taken from x_k unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch


class ExtrapolationError(ValueError):
    """The two state dicts do not describe the same architecture (a key or a shape differs)."""


def extrapolate(current: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """s = x_k + α (x_k − x_{k−1}) for every floating-point tensor of `current` (x_k); `previous` is x_{k−1}.
    Returns new tensors (the inputs are not modified). α must be finite and >= 0."""
    alpha = float(alpha)
    if not (alpha >= 0.0 and alpha != float("inf")):
        raise ValueError(f"momentum must be a finite number >= 0, got {alpha!r}")
    if set(current) != set(previous):
        only_cur, only_prev = sorted(set(current) - set(previous)), sorted(set(previous) - set(current))
        raise ExtrapolationError(f"state dicts differ in keys: only in the current weights {only_cur[:3]}, only "
                                 f"in the previous {only_prev[:3]}")
    out: dict[str, torch.Tensor] = {}
    for key, cur in current.items():
        prev = previous[key]
        if cur.shape != prev.shape:
            raise ExtrapolationError(f"{key}: shape {tuple(cur.shape)} vs previous {tuple(prev.shape)}")
        if not cur.is_floating_point() or alpha == 0.0:
            out[key] = cur.detach().clone()
            continue
        c = cur.detach().to(torch.float64)
        p = prev.detach().to(device=cur.device, dtype=torch.float64)
        out[key] = (c + alpha * (c - p)).to(cur.dtype)
    return out


def extrapolate_model(current: torch.nn.Module, previous: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """Apply `extrapolate` to `current`'s weights in place (tied weights stay tied: a shared tensor appears
    once in the state dict's storage and is written once per name with the same value)."""
    new = extrapolate(current.state_dict(), previous.state_dict(), alpha)
    with torch.no_grad():
        current.load_state_dict(new, strict=True)
    return current
