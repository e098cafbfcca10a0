"""One hand-worked number per registered loss, on inputs of our own (not the spec json's).

Unless a line says otherwise the pair is losses_testkit.make_pair():
  logp_pol = (-4, -6), logp_ref = (-5, -5), n = (4, 2)  =>  rho_w = 1, rho_l = -1, h = 2,
  avg_logp_w = -1, avg_logp_l = -3, NLL(chosen) = 4/4 = 1.
sp(x) = softplus(x) = log(1 + e^x) = -log sigmoid(-x); identity used below: sp(z) - sp(-z) = z.
"""
from __future__ import annotations

import math

import pytest
import torch
from losses_testkit import make_pair, sp

from training.losses import ALIASES, LOSSES, DiffusionBatch, ListBatch, UnpairedBatch, resolve_loss


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def pair(**kw):
    return make_pair(**kw)


def ld_pair():
    # chosen 4 tokens: pol -1 each, ref -1.25 each (ratio +0.25/token); rejected 2 tokens: pol -3, ref -2.5
    tok = lambda *v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    m4, m2 = torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    return make_pair(tok_pol_chosen=tok(-1, -1, -1, -1), tok_ref_chosen=tok(-1.25, -1.25, -1.25, -1.25),
                     tok_pol_rejected=tok(-3, -3), tok_ref_rejected=tok(-2.5, -2.5),
                     tok_mask_chosen=m4, tok_mask_rejected=m2)


def kto_batch():
    # two completions: desirable rho = 1, undesirable rho = -1; mismatched-pair log-ratios 0.5, 1.5
    return UnpairedBatch(pol=t(-4, -6), ref=t(-5, -5), label=torch.tensor([True, False]),
                         kl_pol=t(0.5, 1.5), kl_ref=t(0, 0))


def lst(rho, scores, mask=None):
    pol = torch.tensor([rho], dtype=torch.float64)
    return ListBatch(pol=pol, ref=torch.zeros_like(pol), scores=torch.tensor([scores], dtype=torch.float64),
                     mask=None if mask is None else torch.tensor([mask]))


def diff(alpha=None):
    # e_pol_w = .1, e_ref_w = .101, e_pol_l = .2, e_ref_l = .199:
    # (e_w - e_ref_w) - (e_l - e_ref_l) = -0.001 - 0.001 = -0.002
    return DiffusionBatch(mse_pol_w=t(0.1), mse_ref_w=t(0.101), mse_pol_l=t(0.2), mse_ref_l=t(0.199),
                          alpha=None if alpha is None else t(alpha))


def dense():
    # video 1: segment 0 B better, d_A = +0.001, d_B = -0.001; segment 1 tie. video 2: all ties.
    a = torch.tensor([[0.101, 0.3], [0.2, 0.2]], dtype=torch.float64)
    b = torch.tensor([[0.099, 0.3], [0.2, 0.2]], dtype=torch.float64)
    ref = torch.full((2, 2), 0.1, dtype=torch.float64)
    return DiffusionBatch(seg_mse_pol_w=a, seg_mse_pol_l=b, seg_mse_ref_w=ref, seg_mse_ref_l=ref.clone(),
                          seg_pref=torch.tensor([[-1, 0], [0, 0]], dtype=torch.int8))


CASES = [
    # beta h = 0.5 * 2 = 1 -> sp(-1) = 0.3132616875
    ("dpo_sigmoid", {"beta": 0.5}, pair, [0.31326168751822286]),
    # (1-eps) sp(-1) + eps sp(1) = sp(-1) + eps * 1 = 0.3132616875 + 0.2
    ("cdpo_label_smoothing", {"beta": 0.5, "label_smoothing": 0.2}, pair, [0.51326168751822286]),
    # (0.8 sp(-1) - 0.2 sp(1)) / 0.6 = (0.2506093500 - 0.2626523375) / 0.6 = -0.0200716458
    ("robust_dpo", {"beta": 0.5, "label_smoothing": 0.2}, pair, [-0.02007164581511049]),
    # normalize: rho_w/n_w - rho_l/n_l = 1/4 + 1/2 = 0.75; 1/(2*0.5) = 1 -> (0.75 - 1)^2 = 0.0625
    ("ipo", {"beta": 0.5}, pair, [0.0625]),
    # (h - 1/(2 tau))^2 = (2 - 1)^2 = 1
    ("ipo_unnormalized", {"beta(tau)": 0.5}, pair, [1.0]),
    ("ipo_trl_length_normalized", {"beta(tau)": 0.5}, pair, [0.0625]),
    # relu(1 - 0.25 * 2) = 0.5
    ("hinge", {"beta": 0.25}, pair, [0.5]),
    # sp(-1) + 0.5 * NLL(=1) = 0.8132616875
    ("rpo", {"beta": 0.5, "alpha": 0.5}, pair, [0.81326168751822286]),
    # 0.5 * (1/4 + 1/2) = 0.375 -> sp(-0.375) = 0.5231232641
    ("ln_dpo", {"beta": 0.5}, pair, [0.52312326413984]),
    # l_p = min(4, 2) = 2: rho_w = 2*0.25 + 0.5*2*0.25 = 0.75; rho_l = 2*(-0.5) = -1; h = 1.75
    # beta h = 0.875 -> sp(-0.875) = 0.3484445810
    ("ld_dpo", {"beta": 0.5, "alpha": 0.5}, ld_pair, [0.3484445810050557]),
    # default divergence reverse KL = DPO
    ("fdpo", {"beta": 0.5}, pair, [0.31326168751822286]),
    ("fdpo_reverse_kl", {"beta": 0.5}, pair, [0.31326168751822286]),
    # f'(u) = -exp(-rho): -e^-1 + e^1 = 2 sinh 1 = 2.3504023873; x0.5 = 1.1752011936 -> sp(-1.1752) = 0.2690777
    ("fdpo_forward_kl", {"beta": 0.5}, pair, [0.26907771988202195]),
    # log s(1) - log s(-1) = 1; x0.5 -> sp(-0.5) = 0.4740769842
    ("fdpo_js", {"beta": 0.5}, pair, [0.4740769841801067]),
    # (1 - e^-0.5)/0.5 - (1 - e^0.5)/0.5 = 2 (e^0.5 - e^-0.5) = 4 sinh 0.5 = 2.0843812; x0.5 = 1.0421906
    # sp(-1.0421906) = 0.3020887
    ("fdpo_alpha", {"beta": 0.5, "alpha": 0.5}, pair, [0.30208873215374477]),
    # r_w = 0.5, r_l = -0.5: sp(-0.5) + 0.5 sp(0.5) + 0.5 sp(-0.5) = 1.5*0.4740770 + 0.5*0.9740770 = 1.1981540
    ("nca_pair", {"beta": 0.5}, pair, [1.1981539683602134]),
    # delta = 0.1: sp(-(0.5 - 0.1)) + sp(-0.5 - 0.1) = sp(-0.4) + sp(-0.6) = 0.5130153 + 0.4374879
    ("bco_pair", {"beta": 0.5, "delta": 0.1}, pair, [0.9505032028858382]),
    # (1 - s(0.5)) + s(-0.5) = 2 s(-0.5) = 2 * 0.3775406688 = 0.7550813376
    ("apo_zero", {"beta": 0.5}, pair, [0.7550813375962908]),
    # s(0.5) + 1 - s(1) = 0.6224593312 + 0.2689414214 = 0.8914007526
    ("apo_down", {"beta": 0.5}, pair, [0.8914007525718496]),
    # 1/(2*0.25) = 2: (1 - 2)^2 + (-1 + 2)^2 = 2
    ("sppo_hard", {"beta": 0.25}, pair, [2.0]),
    # D_w = 0.4, D_l = 1.0: 0.5*2 - 0.5*(1.0 - 0.4) = 0.7 -> sp(-0.7) = 0.4031860489
    ("tdpo1", {"beta": 0.5}, lambda: make_pair(kl_chosen=t(0.4), kl_rejected=t(1.0)), [0.4031860488854579]),
    # 1 - 0.5*0.5*0.6 = 0.85 -> sp(-0.85) = 0.3558650684
    ("tdpo2", {"beta": 0.5, "alpha": 0.5}, lambda: make_pair(kl_chosen=t(0.4), kl_rejected=t(1.0)),
     [0.35586506844219584]),
    # |m| = 0: K = (2-1)/(1-0.5) = 2, e^(1*(0-2)) = 0.1353352832; c = 0.5 + 1.5/(1 + 0.2706705665) = 1.6804790632
    # L = c * sp(-1) = 1.6804790632 * 0.3132616875 = 0.5264297072
    ("madpo", {"beta": 0.5}, lambda: make_pair(rm_margin=t(0.0)), [0.5264297071903559]),
    # w_k = 0.5, w_other = (0.25, 0.25), dr_other = (1, -2): w.dr = 0.25 - 0.5 = -0.25
    # logit = (0.5/0.5)*2 - (-0.25)/0.5 = 2.5 -> sp(-2.5) = 0.0788897343
    ("modpo", {"beta": 0.5, "w_k": 0.5, "w_other": [0.25, 0.25]},
     lambda: make_pair(other_chosen=torch.tensor([[2.0, 0.0]], dtype=torch.float64),
                       other_rejected=torch.tensor([[1.0, 2.0]], dtype=torch.float64)), [0.07888973429254963]),
    # per-pair alpha 0.75 from the batch: (2*0.75 - 1) * 0.5 * 2 = 0.5 -> sp(-0.5)
    ("smpo_smoothed_dpo", {"beta": 0.5}, lambda: make_pair(pref_alpha=t(0.75)), [0.4740769841801067]),
    # 1*(-1) - 1*(-3) - 0.5 = 1.5 -> sp(-1.5) = 0.2014132780; + 0.1 * NLL(1)
    ("simpo", {"beta": 1.0, "gamma": 0.5, "alpha_nll": 0.1}, pair, [0.3014132779827524]),
    # 0.5 * (-4 + 6) = 1 -> sp(-1) + 1 * NLL(1) = 1.3132616875
    ("cpo", {"beta": 0.5, "alpha_nll": 1.0}, pair, [1.3132616875182228]),
    # log odds_w = -1 - log(1 - e^-1) = -0.5413248546; log odds_l = -3 - log(1 - e^-3) = -2.9489308191
    # diff 2.4076059644 -> sp(-2.4076) = 0.0862057446; NLL 1 + 0.5 * 0.0862057 = 1.0431028723
    ("orpo", {"lambda": 0.5}, pair, [1.043102872313929]),
    # 1 + 0.5 * (-(-1) - log(1 - e^-3)) = 1 + 0.5 * (1 + 0.0510691809) = 1.5255345905
    ("asft", {"lambda": 0.5}, pair, [1.5255345904713509]),
    # z0 = max(0, (0.5+1.5)/2) = 1; desirable: 1 - s(0.5*(1-1)) = 0.5
    # undesirable, lambda_U = 2: 2 * (1 - s(0.5*(1-(-1)))) = 2 * 0.2689414214 = 0.5378828427
    ("kto", {"beta": 0.5, "lambda_U": 2.0}, kto_batch, [0.5, 0.5378828427399902]),
    # r = (1, 0, -1) ranked by scores (3, 2, 1), beta 1:
    # -(1 - lse(1,0,-1)) - (0 - lse(0,-1)) = 0.4076059644 + 0.3132616875 = 0.7208676520
    ("plackett_luce_dpo", {"beta": 1.0}, lambda: lst([1.0, 0.0, -1.0], [3.0, 2.0, 1.0]), [0.7208676519626032]),
    # K = 2, s = (1, 0), r = (1, 0): |G| = 2^1 - 1 = 1, |D| = 1 - 1/log2(3) = 0.3690702;
    # 0.3690702 * sp(-1) = 0.1156155682
    ("rankdpo_dcg_pairwise", {"beta": 1.0}, lambda: lst([1.0, 0.0], [1.0, 0.0]), [0.11561556820897158]),
    # uniform target (s equal): -0.5 [(1 - lse(1,0)) + (0 - lse(1,0))] = 0.5 * (0.3132617 + 1.3132617)
    ("listnet_dpo", {"beta": 1.0}, lambda: lst([1.0, 0.0], [0.0, 0.0]), [0.8132616875182228]),
    # -beta_T * (-0.002) = 2 -> sp(-2) = 0.1269280110
    ("diffusion_dpo_paper_form", {"beta_T": 1000}, diff, [0.1269280110429725]),
    # 0.5 * 1000 * 0.002 = 1 -> sp(-1)
    ("diffusion_dpo_diffusers_form", {"beta_dpo": 1000}, diff, [0.31326168751822286]),
    ("dcpo", {"beta_dpo": 1000}, diff, [0.31326168751822286]),
    # h = 1000 * 0.002 = 2, target 1/(2*0.1) = 5 -> (2 - 5)^2 = 9
    ("diffusion_ipo", {"beta": 0.1, "t_scale": 1000}, diff, [9.0]),
    # alpha 0.75: (2*0.75 - 1) * 2 = 1 -> sp(-1)
    ("smpo_diffusion", {"beta_T": 1000}, lambda: diff(alpha=0.75), [0.31326168751822286]),
    # video 1: B wins segment 0: -log s(-1000 * (d_B - d_A)) = -log s(-1000 * (-0.002)) = sp(-2); tie skipped
    # video 2: all ties -> 0
    ("densedpo_segment_mean", {"beta_T": 1000}, dense, [0.1269280110429725, 0.0]),
]


@pytest.mark.parametrize("name,hp,make,expected", CASES, ids=[c[0] for c in CASES])
def test_hand_worked(name, hp, make, expected):
    spec, params = resolve_loss(name, hp)
    out = spec.fn(make(), params)
    assert out.loss.shape == (len(expected),)
    torch.testing.assert_close(out.loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_every_registered_loss_has_a_hand_worked_case():
    canonical = set(LOSSES) - set(ALIASES)
    assert canonical == {c[0] for c in CASES}


def test_aliases_point_at_the_same_spec():
    for alias, target in ALIASES.items():
        assert LOSSES[alias] is LOSSES[target]
    assert LOSSES["tpo_tree"].fn is LOSSES["listnet_dpo"].fn


def test_plackett_luce_ties_skip_internal_terms():
    # scores (2, 2, 1), r = (1, 0, -1): tied items 0 and 1 each compete only with item 2:
    # -(1 - lse(1, -1)) - (0 - lse(0, -1)) = sp(-2) + sp(-1) = 0.1269280 + 0.3132617 = 0.4401897
    spec, params = resolve_loss("plackett_luce_dpo", {"beta": 1.0})
    out = spec.fn(lst([1.0, 0.0, -1.0], [2.0, 2.0, 1.0]), params)
    assert out.loss.item() == pytest.approx(0.44018969856119533, rel=1e-12)


def test_list_padding_is_ignored():
    # a padded third slot with garbage values must not change the K=2 RankDPO / ListNet / PL values above
    for name, expected in [("rankdpo_dcg_pairwise", 0.11561556820897158), ("listnet_dpo", 0.8132616875182228),
                           ("plackett_luce_dpo", sp(-1))]:
        spec, params = resolve_loss(name, {"beta": 1.0})
        scores = [1.0, 0.0, 99.0] if name != "listnet_dpo" else [0.0, 0.0, 99.0]
        out = spec.fn(lst([1.0, 0.0, float("nan")], scores, mask=[True, True, False]), params)
        assert out.loss.item() == pytest.approx(expected, rel=1e-12), name


def test_bco_running_mean_mode():
    # no delta yet: this batch's mean reward (0.5 + -0.5)/2 = 0 -> sp(-0.5) + sp(-0.5) = 0.9481539684
    spec, params = resolve_loss("bco_pair", {"beta": 0.5})
    out = spec.fn(make_pair(), params)
    assert out.loss.item() == pytest.approx(2 * sp(-0.5), rel=1e-12)
    assert out.metrics["bco_reward_mean"].item() == 0.0
    # with the loop's running mean delta = 0.1 the value equals the fixed-delta case
    out = spec.fn(make_pair(bco_delta=torch.tensor(0.1, dtype=torch.float64)), params)
    assert out.loss.item() == pytest.approx(sp(-0.4) + sp(-0.6), rel=1e-12)
