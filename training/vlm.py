"""Multi-image DPO for vision-language models (MIA-DPO pairs) with any pair loss from `training.losses`.

A pair is (prompt with k `<image>` placeholders, k images, chosen answer, rejected answer). The prompt and the
images are shared; chosen and rejected sequences go through the model in one forward with the images
repeated for each. Response log-probs are summed over response tokens only (prompt and image tokens masked),
computed from the last hidden states with the chunked LM head (no full-vocabulary fp32 logits for the batch).
The reference is a frozen copy, or the policy with LoRA adapters disabled.

The processor is the model's own (`AutoProcessor.from_pretrained(model_dir)` for LLaVA / Qwen2-VL style
checkpoints): it expands each `<image>` into the right number of image tokens, so prompts written by the
MIA-DPO builder work unchanged."""
from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from prefdata.errors import IngestError, SchemaError
from training.diffusion_data import MediaPaths
from training.logps import chunked_token_logps
from training.losses import LOSSES, PairBatch


@dataclass
class VlmBatch:
    input_ids: torch.Tensor        # [2B, L]: chosen sequences, then rejected
    attention_mask: torch.Tensor   # [2B, L]
    response_mask: torch.Tensor    # [2B, L] True where the token is part of the response
    pixel_values: torch.Tensor     # [images of the chosen rows …, images of the rejected rows …]
    extra: dict                    # other processor outputs (e.g. image_grid_thw for Qwen2-VL)


def _load(paths: MediaPaths, uri: str) -> Image.Image:
    p = paths.resolve(uri)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (FileNotFoundError, OSError) as e:
        raise IngestError(str(p), f"cannot read image: {e}") from None


def collate_pairs(processor, rows: list[dict], paths: MediaPaths, *, max_length: int = 1024) -> VlmBatch:
    """Tokenize prompt (with images) once per row and append each response's tokens, so the prompt/response
    boundary is exact (no re-tokenization across it)."""
    tok = processor.tokenizer
    seqs, resp, pix, extra = [], [], [], {}
    for side in ("chosen", "rejected"):
        for r in rows:
            imgs = [_load(paths, u) for u in r["images"]]
            enc = processor(text=[r["prompt"]], images=imgs, return_tensors="pt", add_special_tokens=False)
            p_ids = enc["input_ids"][0].tolist()
            r_ids = tok(" " + r[side], add_special_tokens=False)["input_ids"]
            if tok.eos_token_id is not None:
                r_ids = r_ids + [tok.eos_token_id]
            if len(p_ids) + len(r_ids) > max_length:
                raise SchemaError(f"pair {r.get('prompt_id', '?')}: prompt+response is {len(p_ids) + len(r_ids)} "
                                  f"tokens (image tokens included), above max_length {max_length}")
            seqs.append(p_ids + r_ids)
            resp.append([False] * len(p_ids) + [True] * len(r_ids))
            pix.append(enc["pixel_values"])
            for k, v in enc.items():
                if k not in ("input_ids", "attention_mask", "pixel_values", "token_type_ids"):
                    extra.setdefault(k, []).append(v)
    L = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([s + [pad] * (L - len(s)) for s in seqs])
    att = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
    rm = torch.tensor([m + [False] * (L - len(m)) for m in resp])
    return VlmBatch(ids, att, rm, torch.cat(pix), {k: torch.cat(v) for k, v in extra.items()})


def response_logps(model, b: VlmBatch, *, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of response tokens and their counts, [2B] each."""
    out = model.model(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values=b.pixel_values,
                      **b.extra)
    h = out.last_hidden_state[:, :-1]                 # position i predicts token i+1
    target = b.input_ids[:, 1:]
    m = b.response_mask[:, 1:]
    lp = chunked_token_logps(h[m], model.lm_head, target[m], chunk=chunk)
    row = torch.arange(m.shape[0]).unsqueeze(1).expand_as(m)[m]
    sums = torch.zeros(m.shape[0], dtype=lp.dtype).index_add(0, row, lp)
    return sums, m.sum(1)


def pair_logps(policy, reference, b: VlmBatch) -> PairBatch:
    pol, n = response_logps(policy, b)
    with torch.no_grad():
        if reference is None:
            ctx = policy.disable_adapter() if hasattr(policy, "disable_adapter") else nullcontext()
            with ctx:
                ref, _ = response_logps(policy, b)
        else:
            ref, _ = response_logps(reference, b)
    k = pol.shape[0] // 2
    return PairBatch(pol_chosen=pol[:k], pol_rejected=pol[k:], ref_chosen=ref[:k], ref_rejected=ref[k:],
                     n_chosen=n[:k], n_rejected=n[k:])


def train_vlm_dpo(model, processor, rows: list[dict], paths: MediaPaths, *, loss: str = "dpo_sigmoid",
                  loss_params: dict | None = None, steps: int = 10, batch_size: int = 2, lr: float = 1e-4,
                  seed: int = 0, lora: bool = False, output_dir: str | Path | None = None) -> list[dict]:
    """A compact DPO loop over MIA-DPO rows (dicts with prompt, images, chosen, rejected); returns the metrics
    written to `output_dir/metrics.jsonl` (one JSON object per step)."""
    from training.losses import resolve_loss
    spec, params = resolve_loss(loss, loss_params or {})
    if spec.kind != "pair" or spec.needs - {"ref", "counts"}:
        raise SchemaError(f"loss {loss!r} needs {sorted(spec.needs)}; the VLM loop provides summed log-probs, "
                          "reference log-probs and token counts")
    for c in ("prompt", "images", "chosen", "rejected"):
        if rows and c not in rows[0]:
            raise SchemaError(f"VLM DPO needs column {c!r}", column=c)
    torch.manual_seed(seed)
    if lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        reference = None
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(rows), generator=g) for _ in range(math.ceil(steps * batch_size / len(rows)))])
    log = None
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        log = (Path(output_dir) / "metrics.jsonl").open("w")
    metrics = []
    model.train()
    for step in range(steps):
        t0 = time.perf_counter()
        idx = order[step * batch_size:(step + 1) * batch_size].tolist()
        b = collate_pairs(processor, [rows[i] for i in idx], paths)
        lo = LOSSES[loss].fn(pair_logps(model, reference, b), params)
        loss_v = lo.loss.mean()
        opt.zero_grad(set_to_none=True)
        loss_v.backward()
        opt.step()
        m = {"step": step + 1, "loss": float(loss_v.detach()),
             "reward_accuracy": float((lo.chosen_reward > lo.rejected_reward).float().mean()),
             "margin": float((lo.chosen_reward - lo.rejected_reward).mean()),
             "tokens": int(b.attention_mask.sum()), "step_time_s": time.perf_counter() - t0}
        metrics.append(m)
        if log:
            log.write(json.dumps(m) + "\n")
            log.flush()
    if log:
        log.close()
    return metrics
