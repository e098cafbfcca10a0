"""Spec conformance: run one case of shared/spec/reference_values.json through ``LOSSES``.

``evaluate(case)`` turns the case's `inputs` (scalars = one example, lists = a batch) into the batch type of
the method's loss, resolves the method name and hyperparameters exactly as a recipe would
(``resolve_loss``), and returns the mean per-example loss in float64. Nothing here knows expected values:
it is the same code path training uses, fed from a JSON dict.

Input keys understood (json spelling first):
  pair      logp_pol_chosen/rejected, logp_ref_chosen/rejected, len_chosen/rejected, seqkl_chosen/rejected,
            rm_margin, other_reward_chosen/rejected ([B] or [B, M]), pref_alpha (SmPO), bco_delta,
            nll_chosen (else the token mean -sum(logp_pol_chosen)/sum(len_chosen), spec §0.3),
            per_token_{pol,ref}_{chosen,rejected} ("N x V", "N x V (sum S)", a list of floats, or a list of
            those for a batch) + optional shared_len (checked against min(n_w, n_l))
  unpaired  logratio (or logp_pol + logp_ref), kl_samples (mismatched-pair log-ratios), label/desirable;
            methods kto_desirable / kto_undesirable set the label
  list      implicit_rewards | logratios_in_rank_order (best first) | logp_pol + logp_ref, with
            gain_scores | target_scores | scores (omitted for logratios_in_rank_order); ragged batches padded
  diffusion mse_model_w, mse_ref_w, mse_model_l, mse_ref_l (a "|caption" suffix is ignored: DCPO), alpha;
            segments: [{label, A_model_minus_ref_mse, B_model_minus_ref_mse}] (or a list of those lists)
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from training.losses import DiffusionBatch, ListBatch, PairBatch, UnpairedBatch, resolve_loss

DT = torch.float64
_RUN = re.compile(r"^\s*(\d+)\s*[x×*]\s*([-+0-9.eE]+)\s*(?:\(\s*sum\s*([-+0-9.eE]+)\s*\))?\s*$")


class CaseError(ValueError):
    """The case's inputs cannot be mapped onto the loss's batch."""


def _vec(x: object, key: str) -> Tensor:
    t = torch.as_tensor(x, dtype=DT)
    if t.dim() == 0:
        t = t[None]
    if t.dim() != 1:
        raise CaseError(f"input {key!r} must be a scalar or a flat list, got shape {tuple(t.shape)}")
    return t


def _tokens(x: object, key: str) -> list[float]:
    """One response's per-token log-probs: "20 x -0.5", "15 x -0.77 (sum -11.5)" or a list of floats."""
    if isinstance(x, str):
        m = _RUN.match(x)
        if not m:
            raise CaseError(f"input {key!r}: cannot read {x!r} (expected 'N x value' or 'N x value (sum S)')")
        n = int(m.group(1))
        # the exact sum, when given, beats the rounded per-token value
        value = float(m.group(3)) / n if m.group(3) else float(m.group(2))
        return [value] * n
    if isinstance(x, Sequence) and all(isinstance(v, int | float) for v in x):
        return [float(v) for v in x]
    raise CaseError(f"input {key!r}: expected a string 'N x value' or a list of numbers")


def _token_batch(x: object, key: str) -> tuple[Tensor, Tensor]:
    single = isinstance(x, str) or (isinstance(x, Sequence) and all(isinstance(v, int | float) for v in x))
    rows = [_tokens(x, key)] if single else [_tokens(r, f"{key}[{i}]") for i, r in enumerate(x)]  # type: ignore[union-attr]
    width = max(len(r) for r in rows)
    tok = torch.zeros(len(rows), width, dtype=DT)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        tok[i, : len(r)] = torch.tensor(r, dtype=DT)
        mask[i, : len(r)] = True
    return tok, mask


_PAIR_KEYS = {
    "logp_pol_chosen": "pol_chosen", "logp_pol_rejected": "pol_rejected",
    "logp_ref_chosen": "ref_chosen", "logp_ref_rejected": "ref_rejected",
    "len_chosen": "n_chosen", "len_rejected": "n_rejected",
    "seqkl_chosen": "kl_chosen", "seqkl_rejected": "kl_rejected",
    "rm_margin": "rm_margin", "margin": "rm_margin", "pref_alpha": "pref_alpha",
}
_PAIR_FIELDS = {"pol_chosen", "pol_rejected", "ref_chosen", "ref_rejected", "n_chosen", "n_rejected",
                "kl_chosen", "kl_rejected", "rm_margin", "pref_alpha"}


def _pair_batch(inputs: dict) -> PairBatch:
    f: dict[str, Tensor] = {}
    tokens: dict[str, tuple[Tensor, Tensor]] = {}
    shared_len = None
    other: dict[str, object] = {}
    for key, value in inputs.items():
        if key in _PAIR_KEYS or key in _PAIR_FIELDS:
            f[_PAIR_KEYS.get(key, key)] = _vec(value, key)
        elif key.startswith("per_token_"):
            tokens[key.removeprefix("per_token_")] = _token_batch(value, key)
        elif key == "shared_len":
            shared_len = _vec(value, key)
        elif key in ("other_reward_chosen", "other_reward_rejected", "other_chosen", "other_rejected"):
            other["chosen" if key.endswith("chosen") else "rejected"] = value
        elif key in ("nll_chosen", "bco_delta"):
            f[key] = torch.as_tensor(value, dtype=DT).reshape(())
        else:
            raise CaseError(f"unknown pair input {key!r}")
    if tokens:
        need = {"pol_chosen", "pol_rejected", "ref_chosen", "ref_rejected"}
        if set(tokens) != need:
            raise CaseError(f"per-token inputs must be exactly per_token_{{{', '.join(sorted(need))}}}")
        for k, (tok, mask) in tokens.items():
            f[f"tok_{k}"] = tok
            f.setdefault(k, tok.sum(-1))
            side = k.split("_")[1]
            if f"tok_mask_{side}" in f and not torch.equal(f[f"tok_mask_{side}"], mask):
                raise CaseError(f"policy and reference per-token inputs of the {side} side differ in length")
            f[f"tok_mask_{side}"] = mask
        n_w, n_l = f["tok_mask_chosen"].sum(-1), f["tok_mask_rejected"].sum(-1)
        f.setdefault("n_chosen", n_w.to(DT))
        f.setdefault("n_rejected", n_l.to(DT))
        if shared_len is not None and not torch.equal(shared_len.to(torch.long), torch.minimum(n_w, n_l)):
            raise CaseError(f"shared_len {shared_len.tolist()} differs from min(n_chosen, n_rejected) "
                            f"{torch.minimum(n_w, n_l).tolist()} (spec §1.10)")
    if "pol_chosen" not in f or "pol_rejected" not in f:
        raise CaseError("pair inputs need logp_pol_chosen and logp_pol_rejected")
    batch = f["pol_chosen"].shape[0]
    if other:
        if set(other) != {"chosen", "rejected"}:
            raise CaseError("other_reward_chosen and other_reward_rejected come together")
        for side, value in other.items():
            t = torch.as_tensor(value, dtype=DT)
            # a flat list for a single pair holds that pair's M objectives; for a batch, one per pair
            t = t.reshape(1, -1) if t.dim() <= 1 and batch == 1 else t
            f[f"other_{side}"] = t
    if "nll_chosen" not in f and "n_chosen" in f:
        # spec §0.3: token-mean cross-entropy over all chosen tokens of the batch
        f["nll_chosen"] = -f["pol_chosen"].sum() / f["n_chosen"].sum()
    for k, v in f.items():
        if k in _PAIR_FIELDS and v.shape[0] != batch:
            raise CaseError(f"input for {k!r} has {v.shape[0]} values but the batch has {batch}")
    return PairBatch(**f)


def _unpaired_batch(inputs: dict, label: bool | None) -> UnpairedBatch:
    known = {"logratio", "logp_pol", "logp_ref", "kl_samples", "label", "desirable"}
    unknown = set(inputs) - known
    if unknown:
        raise CaseError(f"unknown unpaired input(s) {sorted(unknown)}")
    if "logratio" in inputs:
        pol = _vec(inputs["logratio"], "logratio")
        ref = torch.zeros_like(pol)
    else:
        pol, ref = _vec(inputs["logp_pol"], "logp_pol"), _vec(inputs["logp_ref"], "logp_ref")
    given = inputs.get("label", inputs.get("desirable"))
    if given is None and label is None:
        raise CaseError("kto case needs a label (method kto_desirable / kto_undesirable, or inputs.label)")
    lab = torch.as_tensor(given if given is not None else label).bool().reshape(-1).expand(pol.shape[0])
    if "kl_samples" not in inputs:
        raise CaseError("kto case needs kl_samples (log-ratios of mismatched pairs)")
    kl = _vec(inputs["kl_samples"], "kl_samples")
    return UnpairedBatch(pol=pol, ref=ref, label=lab, kl_pol=kl, kl_ref=torch.zeros_like(kl))


def _ragged(rows: object, key: str) -> tuple[Tensor, Tensor]:
    if not isinstance(rows, Sequence) or not rows:
        raise CaseError(f"input {key!r} must be a non-empty list")
    nested = [list(r) for r in rows] if isinstance(rows[0], Sequence) else [list(rows)]
    width = max(len(r) for r in nested)
    out = torch.zeros(len(nested), width, dtype=DT)
    mask = torch.zeros(len(nested), width, dtype=torch.bool)
    for i, r in enumerate(nested):
        out[i, : len(r)] = torch.tensor(r, dtype=DT)
        mask[i, : len(r)] = True
    return out, mask


def _list_batch(inputs: dict) -> ListBatch:
    known = {"implicit_rewards", "logratios_in_rank_order", "logratios", "logp_pol", "logp_ref",
             "gain_scores", "target_scores", "scores"}
    unknown = set(inputs) - known
    if unknown:
        raise CaseError(f"unknown list input(s) {sorted(unknown)}")
    if "logp_pol" in inputs:
        pol, mask = _ragged(inputs["logp_pol"], "logp_pol")
        ref, _ = _ragged(inputs["logp_ref"], "logp_ref")
    else:
        key = next((k for k in ("implicit_rewards", "logratios_in_rank_order", "logratios") if k in inputs), None)
        if key is None:
            raise CaseError("list case needs implicit_rewards, logratios_in_rank_order or logp_pol/logp_ref")
        pol, mask = _ragged(inputs[key], key)
        ref = torch.zeros_like(pol)
    score_key = next((k for k in ("gain_scores", "target_scores", "scores") if k in inputs), None)
    if score_key is not None:
        scores, smask = _ragged(inputs[score_key], score_key)
        if not torch.equal(smask, mask):
            raise CaseError(f"{score_key!r} and the rewards differ in length")
    elif "logratios_in_rank_order" in inputs:
        # best first: strictly decreasing stand-in scores K-1 .. 0
        scores = (mask.shape[-1] - 1 - torch.arange(mask.shape[-1], dtype=DT)).expand_as(pol).clone()
    else:
        raise CaseError("list case needs gain_scores / target_scores / scores")
    return ListBatch(pol=pol, ref=ref, scores=scores, mask=mask)


_DIFF_KEYS = {"mse_model_w": "mse_pol_w", "mse_model_l": "mse_pol_l", "mse_ref_w": "mse_ref_w",
              "mse_ref_l": "mse_ref_l", "mse_pol_w": "mse_pol_w", "mse_pol_l": "mse_pol_l", "alpha": "alpha"}


def _segments(inputs: object) -> dict[str, Tensor]:
    videos = inputs if inputs and isinstance(inputs[0], Sequence) else [inputs]  # type: ignore[index]
    width = max(len(v) for v in videos)
    a = torch.zeros(len(videos), width, dtype=DT)
    b = torch.zeros(len(videos), width, dtype=DT)
    pref = torch.zeros(len(videos), width, dtype=torch.int8)  # padding = tie = contributes nothing
    for i, video in enumerate(videos):
        for j, seg in enumerate(video):
            label = int(seg["label"])
            if label not in (-1, 0, 1):
                raise CaseError(f"segments[{i}][{j}].label must be +1, -1 or 0, got {label}")
            pref[i, j] = label
            a[i, j] = float(seg["A_model_minus_ref_mse"])
            b[i, j] = float(seg["B_model_minus_ref_mse"])
    zeros = torch.zeros_like(a)
    return {"seg_mse_pol_w": a, "seg_mse_pol_l": b, "seg_mse_ref_w": zeros, "seg_mse_ref_l": zeros.clone(),
            "seg_pref": pref}


def _diffusion_batch(inputs: dict) -> DiffusionBatch:
    f: dict[str, Tensor] = {}
    for key, value in inputs.items():
        base = key.split("|", 1)[0]  # DCPO spells the conditioning caption after '|'
        if key == "segments":
            f.update(_segments(value))
        elif base in _DIFF_KEYS:
            f[_DIFF_KEYS[base]] = _vec(value, key)
        else:
            raise CaseError(f"unknown diffusion input {key!r}")
    return DiffusionBatch(**f)


def build_batch(kind: str, inputs: dict, label: bool | None = None) -> object:
    if kind == "pair":
        return _pair_batch(inputs)
    if kind == "unpaired":
        return _unpaired_batch(inputs, label)
    if kind == "list":
        return _list_batch(inputs)
    return _diffusion_batch(inputs)


def evaluate(case: dict) -> float:
    """The loss of one reference case, computed through LOSSES in float64 (batch mean)."""
    method = case["method"]
    label = None
    name = method
    if method in ("kto_desirable", "kto_undesirable"):
        name, label = "kto", method == "kto_desirable"
    spec, params = resolve_loss(name, case.get("hyperparams") or {}, where=f"{method}.hyperparams")
    batch = build_batch(spec.kind, case.get("inputs") or {}, label)
    out = spec.fn(batch, params)
    return float(out.loss.to(DT).mean())
