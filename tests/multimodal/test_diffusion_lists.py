"""Listwise diffusion training (RankDPO / Syn-Pic): ranked image lists per caption, per-image rewards
r = -(e - e_ref) from the denoising errors, the registry's listwise losses; a tiny random UNet trains on real
images through `prefdata train`."""
from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from prefdata.cli import app
from training.diffusion_lists import list_batch
from training.losses import LOSSES

# per-image errors of a 3-image list: policy [0.10, 0.30, 0.20], reference 0.20 each -> rho = [0.1, -0.1, 0.0];
# scores [2, 0, 1]: image 0 best, then image 2, then image 1
E_POL, E_REF = torch.tensor([0.10, 0.30, 0.20], dtype=torch.float64), torch.tensor([0.20] * 3, dtype=torch.float64)


def _batch():
    def errors(x, noise, t, cond, reference):   # the denoiser's per-image MSE, here given per image index
        return (E_REF if reference else E_POL)[x.flatten(1)[:, 0].long()]

    x = torch.arange(3.0)[None, :, None, None, None].expand(1, 3, 1, 2, 2)   # pixel value = image index
    mask = torch.ones(1, 3, dtype=torch.bool)
    return list_batch(errors, x, mask, torch.tensor([[2.0, 0.0, 1.0]]), torch.zeros(1, 4, 8), torch.tensor([5]),
                      torch.zeros(1, 1, 2, 2))


def test_rewards_are_error_improvements():
    b = _batch()
    assert torch.allclose(b.pol - b.ref, torch.tensor([[0.1, -0.1, 0.0]], dtype=torch.float64))


def test_listwise_losses_on_hand_worked_errors():
    b = _batch()
    # Plackett-Luce, beta 10 -> r = [1, -1, 0]: -(1 - log(e + 1 + 1/e)) - (0 - log(1 + 1/e)) = 0.720868
    pl = LOSSES["plackett_luce_dpo"]
    assert float(pl.fn(b, pl.params(beta=10.0)).loss) == pytest.approx(0.720868, abs=1e-6)
    # RankDPO, beta 10, gains 2^s-1 = [3, 0, 1], discounts 1/log2(1+pos) = [1, 1/2, 1/log2(3)]:
    # 2(1 - 0.630930) sp(-1) + 3(1 - 1/2) sp(-2) + 1(0.630930 - 1/2) sp(-1) = 0.462638
    rk = LOSSES["rankdpo"]
    assert float(rk.fn(b, rk.params(beta=10.0)).loss) == pytest.approx(0.462638, abs=1e-6)


@pytest.fixture()
def image_lists(tmp_path):
    from pathlib import Path

    imgs = Path(__file__).resolve().parents[2] / "examples" / "data" / "images"
    rows = [{"prompt": "an astronaut", "responses": [str(imgs / f) for f in ("astronaut.png", "camera.png", "cell.png")],
             "scores": [0.9, 0.2, 0.5]},
            {"prompt": "a cat", "responses": [str(imgs / f) for f in ("chelsea.png", "coffee.png", "coins.png")],
             "scores": [0.8, 0.4, 0.1]},
            {"prompt": "one image only", "responses": [str(imgs / "horse.png")], "scores": [1.0]}]
    path = tmp_path / "lists.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_trains_on_image_lists_through_prefdata_train(tmp_path, image_lists):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "denoiser": {"kind": "unet2d", "config": {
            "sample_size": 8, "in_channels": 3, "out_channels": 3, "layers_per_block": 1, "block_out_channels": [8, 16],
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 16,
            "attention_head_dim": 4, "norm_num_groups": 4}},
        "text_encoder": {"path": str(tmp_path / "te"), "make_tiny": True, "make_tiny_hidden": 16},
        "dataset": str(image_lists), "loss": {"name": "plackett_luce_dpo", "beta": 1000.0},
        "output_dir": str(tmp_path / "run"), "data": {"resolution": 8},
        "train": {"batch_size": 2, "lr": 1e-3, "max_steps": 2, "seed": 0}}))
    res = CliRunner().invoke(app, ["train", str(recipe), "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["rows_dropped"] == {"fewer than 2 images, or nulls, or scores not one per image": 1}
    m = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # step 1: policy == reference, every reward 0: each 3-image list gives log 3 + log 2 = log 6
    assert m[0]["loss"] == pytest.approx(math.log(6), abs=1e-6)
    assert math.isfinite(m[1]["loss"]) and m[1]["loss"] != m[0]["loss"]


def test_list_loss_needs_an_image_denoiser(tmp_path, image_lists):
    from prefdata.errors import RecipeError
    from training.diffusion import DiffusionRecipe

    with pytest.raises(Exception, match="image denoiser") as e:
        DiffusionRecipe.model_validate({"denoiser": {"kind": "unet3d", "config": {}}, "text_encoder": {"path": "x"},
                                        "dataset": str(image_lists), "loss": {"name": "rankdpo"},
                                        "output_dir": str(tmp_path)})
    assert not isinstance(e.value, RecipeError) or "loss" in str(e.value)
