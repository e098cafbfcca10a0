"""Properties every loss must have: gradient sign, per-example shape, float32+ arithmetic for bf16 inputs,
no gradient into the reference, stable numerics at extreme inputs, recipe-time validation errors."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from losses_testkit import make_pair
from pydantic import ValidationError

from prefdata.errors import RecipeError
from training.losses import (
    ALIASES,
    LOSSES,
    DiffusionBatch,
    ListBatch,
    LossInputError,
    PairBatch,
    RunningMean,
    UnpairedBatch,
    log1mexp,
    logsigmoid,
    resolve_loss,
)

ALLOWED_NEEDS = {"ref", "counts", "nll", "token_logps", "seq_kl", "rm_margin", "other_rewards", "unpaired",
                 "list", "diffusion", "segments"}
# hyperparameters needed where a default leaves the batch short (SmPO alpha) or sits on a flat spot
EXTRA_HP = {"smpo_smoothed_dpo": {"alpha": 0.9}, "smpo_diffusion": {"alpha": 0.9}}
CANONICAL = sorted(set(LOSSES) - set(ALIASES))


def _pair_batch(b: int, dtype=torch.float64, grad=True, seed=0) -> PairBatch:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    t = 6
    tok = {k: r(b, t, scale=0.2, shift=-1.0) for k in ("pc", "pr", "rc", "rr")}
    mask_c = torch.ones(b, t, dtype=torch.bool)
    mask_r = torch.ones(b, t, dtype=torch.bool)
    mask_r[:, -2:] = False  # rejected shorter: l_p = 4, chosen has a tail
    for k, m in (("pc", mask_c), ("rc", mask_c), ("pr", mask_r), ("rr", mask_r)):
        tok[k] = tok[k] * m
    pc, pr = tok["pc"].clone().requires_grad_(grad), tok["pr"].clone().requires_grad_(grad)
    pol_c, pol_r = pc.sum(-1), pr.sum(-1)
    n_c, n_r = mask_c.sum(-1).to(dtype), mask_r.sum(-1).to(dtype)
    return PairBatch(pol_chosen=pol_c, pol_rejected=pol_r, ref_chosen=tok["rc"].sum(-1),
                     ref_rejected=tok["rr"].sum(-1), n_chosen=n_c, n_rejected=n_r,
                     nll_chosen=-pol_c.sum() / n_c.sum(), tok_pol_chosen=pc, tok_pol_rejected=pr,
                     tok_ref_chosen=tok["rc"], tok_ref_rejected=tok["rr"], tok_mask_chosen=mask_c,
                     tok_mask_rejected=mask_r, kl_chosen=r(b).abs(), kl_rejected=r(b).abs(),
                     rm_margin=r(b).abs() * 2, other_chosen=r(b), other_rejected=r(b), pref_alpha=r(b).sigmoid())


def _any_batch(name: str, b: int = 3, dtype=torch.float64):
    kind = LOSSES[name].kind
    g = torch.Generator().manual_seed(1)
    if kind == "pair":
        return _pair_batch(b, dtype)
    if kind == "unpaired":
        return UnpairedBatch(pol=torch.randn(b, generator=g).to(dtype).requires_grad_(),
                             ref=torch.randn(b, generator=g).to(dtype),
                             label=torch.tensor([True, False, True][:b]),
                             kl_pol=torch.randn(b, generator=g).to(dtype), kl_ref=torch.zeros(b, dtype=dtype))
    if kind == "list":
        return ListBatch(pol=torch.randn(b, 4, generator=g).to(dtype).requires_grad_(),
                         ref=torch.randn(b, 4, generator=g).to(dtype),
                         scores=torch.rand(b, 4, generator=g).to(dtype))
    seg = torch.rand(b, 3, generator=g).to(dtype) * 1e-4 + 0.1  # beta_T * gap stays O(1): no saturation
    return DiffusionBatch(mse_pol_w=(torch.rand(b, generator=g) * 0.01 + 0.1).to(dtype).requires_grad_(),
                          mse_pol_l=(torch.rand(b, generator=g) * 0.01 + 0.1).to(dtype),
                          mse_ref_w=torch.full((b,), 0.105, dtype=dtype), mse_ref_l=torch.full((b,), 0.105, dtype=dtype),
                          alpha=torch.full((b,), 0.8, dtype=dtype), seg_mse_pol_w=seg.clone().requires_grad_(),
                          seg_mse_pol_l=seg.flip(-1), seg_mse_ref_w=torch.full_like(seg, 0.105),
                          seg_mse_ref_l=torch.full_like(seg, 0.105),
                          seg_pref=torch.tensor([[1, -1, 0]] * b, dtype=torch.int8))


@pytest.mark.parametrize("name", CANONICAL)
def test_registry_entry_is_well_formed(name):
    spec = LOSSES[name]
    assert spec.needs <= ALLOWED_NEEDS
    assert spec.kind in ("pair", "unpaired", "list", "diffusion")
    assert spec.doc and "\n" not in spec.doc
    params = resolve_loss(name, EXTRA_HP.get(name, {}))[1]
    with pytest.raises(ValidationError):  # frozen: hyperparameters cannot change mid-training
        params.beta = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", CANONICAL)
def test_per_example_shape_and_finite(name):
    spec, params = resolve_loss(name, EXTRA_HP.get(name, {}))
    out = spec.fn(_any_batch(name, b=3), params)
    assert out.loss.shape == (3,)
    assert torch.isfinite(out.loss).all()
    for r in (out.chosen_reward, out.rejected_reward):
        assert r is None or (r.shape == (3,) and not r.requires_grad)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


@pytest.mark.parametrize("name", CANONICAL)
def test_bf16_inputs_are_computed_in_float32(name):
    spec, params = resolve_loss(name, EXTRA_HP.get(name, {}))
    low = _any_batch(name, dtype=torch.bfloat16)
    # the very same bf16-rounded values in float64: only float32-vs-float64 arithmetic may differ
    wide = dataclasses.replace(low, **{f.name: getattr(low, f.name).detach().double()
                                       for f in dataclasses.fields(low)
                                       if isinstance(getattr(low, f.name), torch.Tensor)
                                       and getattr(low, f.name).is_floating_point()})
    lo, hi = spec.fn(low, params).loss, spec.fn(wide, params).loss
    assert lo.dtype == torch.float32
    torch.testing.assert_close(lo.double(), hi, rtol=1e-5, atol=1e-4)


PAIR_LOSSES = [n for n in CANONICAL if LOSSES[n].kind == "pair"]


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_gradient_sign(name):
    """Raising the chosen log-prob lowers the loss, raising the rejected one raises it. APO-down is the
    documented exception on the chosen side (its chosen gradient is beta [s'(r_w) - s'(beta h)], either sign;
    see test_apo_down_pushes_chosen_down)."""
    spec, params = resolve_loss(name, EXTRA_HP.get(name, {}))
    b = _pair_batch(3)
    spec.fn(b, params).loss.sum().backward()
    g_chosen = b.tok_pol_chosen.grad.sum(-1)
    g_rejected = b.tok_pol_rejected.grad.sum(-1)
    if name != "apo_down":
        assert (g_chosen < 0).all(), g_chosen
    assert (g_rejected > 0).all() or name in ("ld_dpo",) and (g_rejected >= 0).all(), g_rejected


def test_apo_down_pushes_chosen_down():
    # hand-worked pair: r_w = 0.5, beta h = 1: d/d logp_w = 0.5 [s'(0.5) - s'(1)] = 0.5 (0.2350037 - 0.1966119)
    b = make_pair(grad=True)
    spec, params = resolve_loss("apo_down", {"beta": 0.5})
    spec.fn(b, params).loss.sum().backward()
    assert b.pol_chosen.grad.item() == pytest.approx(0.5 * (0.2350037122015945 - 0.19661193324148185), rel=1e-9)


def test_gradient_at_zero_margin_is_exact():
    # policy == reference (the first DPO step): d/d logp_w of sp(-beta h) at h = 0 is -beta * s(0) = -beta/2.
    # (A max/abs softplus has zero subgradient here and silently stalls training; this guards against it.)
    for name, expected in (("dpo_sigmoid", -0.05), ("nca_pair", None), ("densedpo_segment_mean", None)):
        if name == "densedpo_segment_mean":
            seg = torch.full((1, 1), 0.1, dtype=torch.float64, requires_grad=True)
            b = DiffusionBatch(seg_mse_pol_w=seg, seg_mse_pol_l=seg.detach().clone(), seg_mse_ref_w=seg.detach(),
                               seg_mse_ref_l=seg.detach(), seg_pref=torch.tensor([[1]], dtype=torch.int8))
            spec, params = resolve_loss(name, {"beta_T": 1000})
            spec.fn(b, params).loss.sum().backward()
            assert seg.grad.item() == pytest.approx(500.0)  # beta_T * s(0)
            continue
        b = make_pair(-5.0, -5.0, -5.0, -5.0, grad=True)
        spec, params = resolve_loss(name, {"beta": 0.1})
        spec.fn(b, params).loss.sum().backward()
        if expected is not None:
            assert b.pol_chosen.grad.item() == pytest.approx(expected, rel=1e-12)
        else:  # NCA at r = 0: d/dr_w [sp(-r) + sp(r)/2] = -1/2 + 1/4 -> times beta
            assert b.pol_chosen.grad.item() == pytest.approx(-0.025, rel=1e-12)


def test_dpo_gradient_value():
    # d/d logp_w of sp(-beta h) = -beta * s(-beta h); standard point beta h = 0.15: -0.1 * s(-0.15)
    b = make_pair(-10.0, -12.0, -11.0, -11.5, grad=True)
    spec, params = resolve_loss("dpo_sigmoid", {"beta": 0.1})
    spec.fn(b, params).loss.sum().backward()
    assert b.pol_chosen.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.15)), rel=1e-12)


def test_other_kinds_gradient_sign():
    kto_spec, kto_p = resolve_loss("kto", {})
    ub = _any_batch("kto")
    kto_spec.fn(ub, kto_p).loss.sum().backward()
    assert (ub.pol.grad[ub.label] < 0).all() and (ub.pol.grad[~ub.label] > 0).all()
    for name in ("plackett_luce_dpo", "rankdpo_dcg_pairwise"):
        spec, p = resolve_loss(name, {})
        lb = _any_batch(name)
        spec.fn(lb, p).loss.sum().backward()
        best = lb.scores.argmax(-1)
        assert (lb.pol.grad.gather(-1, best[:, None]) < 0).all(), name
    # ListNet: d/d r = beta (softmax(beta r) - softmax(s)): moves model probabilities toward the target
    spec, p = resolve_loss("listnet_dpo", {"beta": 2.0})
    lb = _any_batch("listnet_dpo")
    spec.fn(lb, p).loss.sum().backward()
    rho = (lb.pol - lb.ref).detach()
    torch.testing.assert_close(lb.pol.grad, 2.0 * (torch.softmax(2.0 * rho, -1) - torch.softmax(lb.scores, -1)))
    for name in ("diffusion_dpo_paper_form", "diffusion_dpo_diffusers_form", "dcpo", "smpo_diffusion"):
        spec, p = resolve_loss(name, EXTRA_HP.get(name, {}))
        db = _any_batch(name)
        spec.fn(db, p).loss.sum().backward()
        assert (db.mse_pol_w.grad > 0).all(), name  # more error on the winner = worse
    spec, p = resolve_loss("densedpo_segment_mean", {})
    db = _any_batch("densedpo_segment_mean")
    spec.fn(db, p).loss.sum().backward()
    g = db.seg_mse_pol_w.grad
    assert (g[:, 0] > 0).all() and (g[:, 1] < 0).all() and (g[:, 2] == 0).all()  # A wins, B wins, tie


@pytest.mark.parametrize("name", [n for n in PAIR_LOSSES if "ref" in LOSSES[n].needs])
def test_no_gradient_reaches_the_reference(name):
    spec, params = resolve_loss(name, EXTRA_HP.get(name, {}))
    b = _pair_batch(2)
    for k in ("ref_chosen", "ref_rejected", "tok_ref_chosen", "tok_ref_rejected"):
        setattr(b, k, getattr(b, k).clone().requires_grad_())
    out = spec.fn(b, params)
    refs = [b.ref_chosen, b.ref_rejected, b.tok_ref_chosen, b.tok_ref_rejected]
    grads = torch.autograd.grad(out.loss.sum(), refs, allow_unused=True)
    assert all(g is None for g in grads)


def test_tdpo2_stops_gradient_through_chosen_kl_but_tdpo1_does_not():
    for name, expect_grad in (("tdpo1", True), ("tdpo2", False)):
        spec, params = resolve_loss(name, {})
        b = make_pair(kl_chosen=torch.tensor([0.3], dtype=torch.float64, requires_grad=True),
                      kl_rejected=torch.tensor([0.5], dtype=torch.float64, requires_grad=True))
        (g_w, g_l) = torch.autograd.grad(spec.fn(b, params).loss.sum(), [b.kl_chosen, b.kl_rejected],
                                         allow_unused=True)
        assert (g_w is not None and g_w.abs().item() > 0) is expect_grad, name
        assert g_l.item() > 0  # a larger rejected KL is penalised


def test_extreme_inputs_stay_finite():
    # DPO h = -1e4 must give 1000 (spec §0.2), and every pair loss must stay finite with finite gradients
    huge = make_pair(-10010.0, -10.0, -10.0, -10.0, grad=True)
    spec, params = resolve_loss("dpo_sigmoid", {"beta": 0.1})
    assert spec.fn(huge, params).loss.item() == pytest.approx(1000.0)
    for name in ("fdpo_forward_kl", "fdpo_alpha", "madpo", "orpo", "asft", "simpo", "nca_pair", "bco_pair"):
        b = make_pair(-5000.0, -1.0, -1.0, -1.0, n_w=1, n_l=1, grad=True, rm_margin=torch.tensor([1e6]))
        spec, params = resolve_loss(name, {})
        loss = spec.fn(b, params).loss
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(b.pol_chosen.grad).all(), name
    # ORPO at a certain response (avg logp = 0 exactly) is clamped, not -inf/nan
    b = make_pair(0.0, -12.0, -1.0, -1.0, n_w=20, n_l=15, grad=True)
    spec, params = resolve_loss("orpo", {})
    assert torch.isfinite(spec.fn(b, params).loss).all()


def test_numeric_primitives():
    z = torch.tensor([-1e4, 0.0, 1e4], dtype=torch.float32)
    torch.testing.assert_close(logsigmoid(z), torch.tensor([-1e4, -0.6931471805599453, 0.0]))
    a = torch.tensor([-1e-6, -0.5, -50.0], dtype=torch.float64)
    expected = torch.tensor([-13.815511057964233, -0.9327521295671886, -1.9287498479639178e-22], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(a), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name,hp,path,message", [
    ("robust_dpo", {"label_smoothing": 0.5}, "loss.label_smoothing", "must be < 0.5"),
    ("cdpo_label_smoothing", {"label_smoothing": -0.1}, "loss.label_smoothing", "must be >= 0"),
    ("madpo", {"c_min": 1.0}, "loss.c_min", "must be < 1"),
    ("madpo", {"c_max": 0.9}, "loss.c_max", "must be > 1"),
    ("dpo_sigmoid", {"beta": 0}, "loss.beta", "must be > 0"),
    ("dpo_sigmoid", {"beta": float("inf")}, "loss.beta", "finite"),
    ("dpo_sigmoid", {"bta": 0.1}, "loss.bta", "unknown hyperparameter for loss 'dpo_sigmoid' (known: beta"),
    ("orpo", {"lambda": "big"}, "loss.lambda", "must be a number"),
    ("ipo_unnormalized", {"normalize": True}, "loss.normalize", "must be one of"),
    ("rankdpo_dcg_pairwise", {"log_base": 1}, "loss.log_base", "must be 'e' or a number > 1"),
    ("fdpo_alpha", {"alpha": 1.0}, "loss.alpha", "must be < 1"),
    ("modpo", {"w_k": 0.0}, "loss.w_k", "must be > 0"),
    ("modpo", {"w_other": [-0.5]}, "loss.w_other", ">= 0"),
    ("kto", {"lambda_U": -1}, "loss.lambda_U", "must be > 0"),
])
def test_bad_hyperparameter_names_the_path(name, hp, path, message):
    with pytest.raises(RecipeError) as exc:
        resolve_loss(name, hp)
    assert exc.value.path == path
    assert message in str(exc.value)
    assert str(exc.value).startswith(f"{path}: ")


def test_unknown_loss_lists_close_matches_and_where_is_used():
    with pytest.raises(RecipeError, match=r"unknown loss 'simpoo'; did you mean simpo") as exc:
        resolve_loss("simpoo", {}, where="train.yaml:loss")
    assert exc.value.path == "train.yaml:loss.name"
    with pytest.raises(RecipeError, match="known: .*dpo_sigmoid"):
        resolve_loss("zzzzzz", {})
    with pytest.raises(RecipeError, match="conflicting loss names"):
        resolve_loss("dpo", {"name": "ipo"})


def test_recipe_keys_and_python_names_both_work():
    assert resolve_loss("orpo", {"lambda": 0.2})[1].lam == 0.2
    assert resolve_loss("ipo", {"beta(tau)": 0.3})[1].beta == 0.3
    assert resolve_loss("ipo", {"tau": 0.3, "normalize": False})[1].normalize is False
    assert resolve_loss("dpo", {"name": "dpo", "beta": 0.2})[1].beta == 0.2
    assert resolve_loss("rankdpo_dcg_pairwise", {"positions": "rewards"})[1].positions == "by implicit_rewards"


def test_missing_batch_input_is_a_typed_error():
    spec, params = resolve_loss("madpo", {})
    with pytest.raises(LossInputError, match="rm_margin"):
        spec.fn(make_pair(), params)
    spec, params = resolve_loss("modpo", {"w_other": [0.2, 0.3]})
    with pytest.raises(LossInputError, match="w_other has 2"):
        spec.fn(make_pair(other_chosen=torch.tensor([1.0]), other_rejected=torch.tensor([0.0])), params)
    spec, params = resolve_loss("kto", {})
    with pytest.raises(LossInputError, match="kl_pol"):
        spec.fn(UnpairedBatch(pol=torch.zeros(2), ref=torch.zeros(2), label=torch.tensor([True, False])), params)


def test_kto_z0_from_the_loop_overrides_the_batch_estimate():
    # z0 given (already averaged across ranks) = 0.5; desirable rho = 1: 1 - s(0.1 * 0.5)
    spec, params = resolve_loss("kto", {})
    b = UnpairedBatch(pol=torch.tensor([1.0]), ref=torch.tensor([0.0]), label=torch.tensor([True]),
                      z0=torch.tensor(0.5))
    assert spec.fn(b, params).loss.item() == pytest.approx(1 - 1 / (1 + torch.exp(torch.tensor(-0.05)).item()))


def test_running_mean_window_and_state():
    rm = RunningMean(window=2)
    assert rm.value is None
    for v in (1.0, 2.0, 4.0):
        rm.update(torch.tensor(v))
    assert rm.value.item() == 3.0  # the last two batches
    clone = RunningMean()
    clone.load_state_dict(rm.state_dict())
    assert clone.value.item() == 3.0 and clone.window == 2


def test_training_losses_import_only_torch_and_pydantic():
    code = ("import sys, training.losses, training.spec_cases; "
            "bad = [m for m in ('polars', 'duckdb', 'lance', 'pyarrow', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
