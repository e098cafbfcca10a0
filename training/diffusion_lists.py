"""Listwise diffusion training (RankDPO / Syn-Pic, spec §4.2): ranked lists of generated images per caption.

A lists table (`prompt`, `responses` = K image URIs, `scores`, as the `lists` step writes after `generate` +
`score` + `ensemble`) trains with the registry's listwise losses (`rankdpo_dcg_pairwise` with its DCG weights,
`plackett_luce_dpo`, `listnet_dpo`). Each image's diffusion "reward" is its denoising improvement over the
reference, r_k = -(e_k - e_ref,k) (e = MSE of the noise prediction, averaged over C,H,W), which the loss scales
by its beta, as Diffusion-DPO scales the error gap by beta_T: `ListBatch(pol = -e, ref = -e_ref)`. All K images
of a caption share one timestep and one noise draw, as a pair's winner and loser do.
"""
from __future__ import annotations

from pathlib import Path

import torch

from prefdata.errors import SchemaError
from training.diffusion_data import MediaPaths, image_tensor, require_columns
from training.losses import ListBatch

LIST_COLUMNS = ["prompt", "responses", "scores"]


class ListData:
    """Rows of a lists table of images; pixels decoded per batch. Rows with fewer than 2 images, a null or a
    score count that differs from the image count are dropped and counted."""

    def __init__(self, recipe, ds):
        require_columns(ds.table.column_names, LIST_COLUMNS, f"listwise loss {recipe.loss.get('name')!r}")
        self.ref = ds.ref
        if recipe.data.media_root:
            root = Path(recipe.data.media_root)
        elif ds.name is not None:
            from training.data import open_catalog
            root = Path(open_catalog(recipe.catalog).root)
        else:
            root = Path(ds.path).parent
        self.paths = MediaPaths(root, Path(recipe.data.base_dir) if recipe.data.base_dir else root)
        self.rows, self.dropped = [], 0
        for r in ds.table.select(LIST_COLUMNS).to_pylist():
            imgs, scores = r["responses"], r["scores"]
            ok = (r["prompt"] is not None and imgs is not None and scores is not None and len(imgs) >= 2
                  and len(imgs) == len(scores) and all(x is not None for x in [*imgs, *scores]))
            if ok:
                self.rows.append(r)
            else:
                self.dropped += 1
        self.drop_reason = "fewer than 2 images, or nulls, or scores not one per image"
        if not self.rows:
            raise SchemaError(f"dataset {ds.ref} has no usable image lists ({self.dropped} rows lack 2+ images "
                              "with scores)", column="responses")
        self.resolution = recipe.data.resolution

    def __len__(self):
        return len(self.rows)

    def batch(self, idx: list[int]) -> dict:
        rows = [self.rows[i] for i in idx]
        K = max(len(r["responses"]) for r in rows)
        x0 = image_tensor(self.paths.resolve(rows[0]["responses"][0]), self.resolution)
        x = torch.zeros(len(rows), K, *x0.shape)
        mask = torch.zeros(len(rows), K, dtype=torch.bool)
        scores = torch.zeros(len(rows), K, dtype=torch.float64)
        for i, r in enumerate(rows):
            k = len(r["responses"])
            x[i, :k] = torch.stack([image_tensor(self.paths.resolve(u), self.resolution) for u in r["responses"]])
            mask[i, :k] = True
            scores[i, :k] = torch.tensor(r["scores"], dtype=torch.float64)
        return {"x": x, "mask": mask, "scores": scores, "c": [r["prompt"] for r in rows]}


def list_batch(errors, x: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, cond: torch.Tensor,
               t: torch.Tensor, noise: torch.Tensor) -> ListBatch:
    """`errors(x, noise, t, cond, reference: bool)` -> per-image MSE. x [B,K,...], cond [B,L,D], t [B],
    noise [B,...] (one per list, shared by its K images). Padded slots are not forwarded."""
    B, K = mask.shape
    b_idx = mask.nonzero()[:, 0]
    flat = x[mask]
    e_pol = errors(flat, noise[b_idx], t[b_idx], cond[b_idx], False)
    with torch.no_grad():
        e_ref = errors(flat, noise[b_idx], t[b_idx], cond[b_idx], True)
    pol = torch.zeros(B, K, dtype=e_pol.dtype, device=e_pol.device).masked_scatter(mask.to(e_pol.device), -e_pol)
    ref = torch.zeros(B, K, dtype=e_pol.dtype, device=e_pol.device).masked_scatter(mask.to(e_pol.device), -e_ref)
    dev = e_pol.device
    return ListBatch(pol=pol, ref=ref, scores=scores.to(dev, e_pol.dtype), mask=mask.to(dev),
                     n=mask.to(dev, e_pol.dtype))
