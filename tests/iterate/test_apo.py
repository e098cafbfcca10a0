"""APO extrapolation (training/apo.py): s = x_k + α (x_k − x_{k−1}), checked against numbers worked by hand."""
from __future__ import annotations

import pytest
import torch

from training.apo import ExtrapolationError, extrapolate, extrapolate_model


def test_toy_vector_matches_hand_computation():
    # x_k = [1.0, -2.0, 0.5], x_{k-1} = [0.5, -1.0, 0.5], α = 0.3
    # x_k - x_{k-1} = [0.5, -1.0, 0.0] -> s = [1.0 + 0.15, -2.0 - 0.3, 0.5 + 0] = [1.15, -2.3, 0.5]
    cur = {"w": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)}
    prev = {"w": torch.tensor([0.5, -1.0, 0.5], dtype=torch.float64)}
    out = extrapolate(cur, prev, 0.3)
    assert out["w"].tolist() == pytest.approx([1.15, -2.3, 0.5], abs=1e-15)
    assert cur["w"].tolist() == [1.0, -2.0, 0.5]          # inputs untouched


def test_alpha_zero_is_plain_iterative_dpo_and_dtypes_are_kept():
    cur = {"w": torch.tensor([[0.25, 4.0]], dtype=torch.float32), "steps": torch.tensor([3])}
    prev = {"w": torch.tensor([[1.0, 1.0]], dtype=torch.float32), "steps": torch.tensor([1])}
    assert torch.equal(extrapolate(cur, prev, 0.0)["w"], cur["w"])
    out = extrapolate(cur, prev, 1.0)
    # 0.25 + (0.25 - 1) = -0.5 ; 4 + (4 - 1) = 7 ; integer buffers are not weights: taken from x_k
    assert out["w"].dtype == torch.float32 and out["w"].tolist() == [[-0.5, 7.0]]
    assert out["steps"].tolist() == [3]


def test_float32_result_is_the_rounded_float64_value():
    cur = {"w": torch.tensor([0.1], dtype=torch.float32)}
    prev = {"w": torch.tensor([0.3], dtype=torch.float32)}
    want = (torch.tensor([0.1], dtype=torch.float32).double() * 1.5
            - 0.5 * torch.tensor([0.3], dtype=torch.float32).double()).float()
    assert torch.equal(extrapolate(cur, prev, 0.5)["w"], want)


def test_model_in_place_and_mismatches_refused():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    extrapolate_model(a, b, 0.5)
    assert torch.allclose(a.weight, wa + 0.5 * (wa - wb), atol=1e-7)
    with pytest.raises(ExtrapolationError, match="shape"):
        extrapolate({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.1)
    with pytest.raises(ExtrapolationError, match="keys"):
        extrapolate({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, 0.1)
    with pytest.raises(ValueError, match="momentum"):
        extrapolate({"w": torch.zeros(2)}, {"w": torch.zeros(2)}, -0.1)
