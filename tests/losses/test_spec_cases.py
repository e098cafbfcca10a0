"""Every public case of the spec json through training.spec_cases.evaluate, plus cases of the same
format that are NOT in the json (batches, ragged lists, other values) to show evaluate is general."""
from __future__ import annotations

import json
import math

import pytest
from losses_testkit import SPEC_JSON

from prefdata.errors import RecipeError
from training.losses import LOSSES
from training.spec_cases import CaseError, evaluate

CASES = json.loads(SPEC_JSON.read_text())


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['method']}" for i, c in enumerate(CASES)])
def test_reference_case(case):
    got = evaluate(case)
    assert math.isclose(got, case["expected_loss"], rel_tol=1e-6, abs_tol=1e-12), (got, case["note"])


def test_every_json_method_is_registered():
    methods = {c["method"] for c in CASES} - {"kto_desirable", "kto_undesirable"} | {"kto"}
    assert methods <= set(LOSSES), methods - set(LOSSES)


STD = {"logp_pol_chosen": -10.0, "logp_pol_rejected": -12.0, "logp_ref_chosen": -11.0, "logp_ref_rejected": -11.5}


def test_batch_is_the_mean_of_examples():
    # example 1: h = 1.5 -> softplus(-0.15) = 0.6209570478; example 2: policy == reference -> ln 2
    case = {"method": "dpo_sigmoid", "hyperparams": {"beta": 0.1},
            "inputs": {"logp_pol_chosen": [-10.0, -11.0], "logp_pol_rejected": [-12.0, -11.5],
                       "logp_ref_chosen": [-11.0, -11.0], "logp_ref_rejected": [-11.5, -11.5]}}
    assert evaluate(case) == pytest.approx((0.6209570478 + math.log(2)) / 2, rel=1e-9)


def test_rpo_batch_uses_token_mean_nll_over_the_batch():
    # DPO part: (0.6209570478 + ln 2)/2; NLL = (10 + 11) / (20 + 30) = 0.42 (token mean, not mean of means)
    case = {"method": "rpo", "hyperparams": {"beta": 0.1, "alpha": 1.0},
            "inputs": {"logp_pol_chosen": [-10.0, -11.0], "logp_pol_rejected": [-12.0, -11.5],
                       "logp_ref_chosen": [-11.0, -11.0], "logp_ref_rejected": [-11.5, -11.5],
                       "len_chosen": [20, 30], "len_rejected": [15, 15]}}
    assert evaluate(case) == pytest.approx((0.6209570478 + math.log(2)) / 2 + 0.42, rel=1e-9)


def test_ld_dpo_accepts_token_lists_and_other_values():
    # chosen 3 tokens, rejected 2: l_p = 2. alpha = 0.5:
    # rho_w = (-1+2) + (-1+2) + 0.5*(-3+2) = 1.5 ; rho_l = (-3+2) + (-3+2) = -2 ; beta*h = 0.35
    case = {"method": "ld_dpo", "hyperparams": {"beta": 0.1, "alpha": 0.5},
            "inputs": {"per_token_pol_chosen": [-1.0, -1.0, -3.0], "per_token_ref_chosen": "3 x -2",
                       "per_token_pol_rejected": "2 x -3", "per_token_ref_rejected": [-2.0, -2.0],
                       "shared_len": 2}}
    assert evaluate(case) == pytest.approx(math.log1p(math.exp(-0.35)), rel=1e-12)


def test_ld_dpo_inconsistent_shared_len_is_an_error():
    case = {"method": "ld_dpo", "hyperparams": {"beta": 0.1, "alpha": 0.5},
            "inputs": {"per_token_pol_chosen": "3 x -1", "per_token_ref_chosen": "3 x -2",
                       "per_token_pol_rejected": "2 x -3", "per_token_ref_rejected": "2 x -2", "shared_len": 3}}
    with pytest.raises(CaseError, match="shared_len"):
        evaluate(case)


def test_kto_batch_with_mixed_labels():
    # z0 = max(0, mean(0.5, 1.5)) = 1; beta = 0.5
    # desirable rho=1: 1 - s(0.5*(1-1)) = 0.5 ; undesirable rho=-1, lambda_U=2: 2*(1 - s(0.5*2)) = 0.5378828427
    case = {"method": "kto", "hyperparams": {"beta": 0.5, "lambda_D": 1.0, "lambda_U": 2.0},
            "inputs": {"logratio": [1.0, -1.0], "label": [True, False], "kl_samples": [0.5, 1.5]}}
    assert evaluate(case) == pytest.approx((0.5 + 0.5378828427399902) / 2, rel=1e-12)


def test_ragged_list_batch_pads_with_mask():
    # prompt 1 = spec PL example (1.654066991); prompt 2 has K=2 and equals DPO on h=1.5 (0.6209570478)
    case = {"method": "plackett_luce_dpo", "hyperparams": {"beta": 0.1},
            "inputs": {"logratios_in_rank_order": [[1.0, -0.5, -1.0], [1.0, -0.5]]}}
    assert evaluate(case) == pytest.approx((1.654066991 + 0.6209570478) / 2, rel=1e-9)


def test_rankdpo_positions_by_rewards_option():
    # rewards already in score order -> same positions as by gain_scores -> same value as the json case
    case = {"method": "rankdpo_dcg_pairwise",
            "hyperparams": {"beta": 1.0, "log_base": 2, "gain": "2^s-1", "positions": "by implicit_rewards"},
            "inputs": {"gain_scores": [0.9, 0.5, 0.1], "implicit_rewards": [0.2, 0.1, -0.3]}}
    assert evaluate(case) == pytest.approx(0.3187422391, rel=1e-9)


def test_densedpo_batch_of_videos():
    # video 1 = the json case (0.1641706445); video 2: one segment, B better, d_A = 1e-4, d_B = -1e-4:
    # -log s(-5000 * (-2e-4)) = softplus(-1) = 0.3132616875
    seg1 = [{"label": 1, "A_model_minus_ref_mse": -0.0002, "B_model_minus_ref_mse": 0.0001},
            {"label": -1, "A_model_minus_ref_mse": 0.0001, "B_model_minus_ref_mse": -0.0003},
            {"label": 0, "A_model_minus_ref_mse": 0.0, "B_model_minus_ref_mse": 0.0}]
    seg2 = [{"label": -1, "A_model_minus_ref_mse": 0.0001, "B_model_minus_ref_mse": -0.0001}]
    case = {"method": "densedpo_segment_mean", "hyperparams": {"beta_T": 5000}, "inputs": {"segments": [seg1, seg2]}}
    assert evaluate(case) == pytest.approx((0.1641706445 + 0.31326168751822286) / 2, rel=1e-8)


def test_unknown_method_and_unknown_input_are_errors():
    with pytest.raises(RecipeError, match="did you mean"):
        evaluate({"method": "dpo_sigmoidd", "inputs": STD, "hyperparams": {"beta": 0.1}})
    with pytest.raises(CaseError, match="unknown pair input"):
        evaluate({"method": "dpo_sigmoid", "inputs": {**STD, "logp_typo": 1.0}, "hyperparams": {"beta": 0.1}})
    with pytest.raises(RecipeError, match="label_smoothing: must be < 0.5"):
        evaluate({"method": "robust_dpo", "inputs": STD, "hyperparams": {"beta": 0.1, "label_smoothing": 0.5}})
