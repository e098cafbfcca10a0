"""Multi-image DPO for vision-language models (MIA-DPO pairs): the batch and the log-prob math.

A pair is (prompt with k `<image>` placeholders, k images, chosen answer, rejected answer). The prompt and the
images are shared; chosen and rejected sequences go through the model in one forward with the images
repeated for each. Response log-probs are summed over response tokens only (prompt and image tokens masked),
computed from the last hidden states with the chunked LM head (no full-vocabulary fp32 logits for the batch).
The reference is a frozen copy, the policy with LoRA adapters disabled, or precomputed log-probs.

The processor is the model's own (`AutoProcessor.from_pretrained(model_dir)` for LLaVA / Qwen2-VL style
checkpoints): it expands each image placeholder into the right number of image tokens, so prompts written by
the MIA-DPO builder work unchanged (`image_text` rewrites `<image>` for models whose placeholder differs,
e.g. Qwen2-VL's `<|vision_start|><|image_pad|><|vision_end|>`). The loop is `training/vlm_train.py`."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from prefdata.errors import IngestError, SchemaError
from training.diffusion_data import MediaPaths
from training.logps import chunked_token_logps
from training.losses import PairBatch

PLACEHOLDER = "<image>"   # what the MIA-DPO builder writes, one per image


@dataclass
class VlmBatch:
    input_ids: torch.Tensor        # [2B, L]: chosen sequences, then rejected
    attention_mask: torch.Tensor   # [2B, L]
    response_mask: torch.Tensor    # [2B, L] True where the token is part of the response
    pixel_values: torch.Tensor     # [images of the chosen rows …, images of the rejected rows …]
    extra: dict = field(default_factory=dict)   # other processor outputs (e.g. image_grid_thw for Qwen2-VL)

    def to(self, device) -> VlmBatch:
        return VlmBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device),
                        self.pixel_values.to(device), {k: v.to(device) for k, v in self.extra.items()})

    @property
    def n_tokens(self) -> int:
        """Non-padding tokens forwarded (both sides, image tokens included)."""
        return int(self.attention_mask.sum())


def load_image(paths: MediaPaths, uri: str) -> Image.Image:
    from training.vlm_video import is_frame_uri, load_frame
    if is_frame_uri(uri):   # a frame sampled from a video pair's clip (vlm_video.py)
        return load_frame(paths, uri)
    p = paths.resolve(uri)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (FileNotFoundError, OSError) as e:
        raise IngestError(str(p), f"cannot read image: {e}") from None


def encode_prompt(processor, row: dict, paths: MediaPaths, image_text: str | None = None,
                  images: str = "images") -> dict:
    """The processor's output for one row's prompt and images (image placeholders expanded). `images`: the
    column of images, `images_rejected` for the rejected side of a video pair (vlm_video.py)."""
    prompt = row["prompt"] if image_text is None else row["prompt"].replace(PLACEHOLDER, image_text)
    imgs = [load_image(paths, u) for u in row[images]]
    return processor(text=[prompt], images=imgs, return_tensors="pt", add_special_tokens=False)


def response_ids(tok, text: str) -> list[int]:
    ids = tok(" " + text, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if tok.eos_token_id is not None else ids


def collate_pairs(processor, rows: list[dict], paths: MediaPaths, *, max_length: int = 1024,
                  image_text: str | None = None) -> VlmBatch:
    """Encode each row's prompt (with its images) once and append each response's tokens, so the
    prompt/response boundary is exact (no re-tokenization across it)."""
    tok = processor.tokenizer
    encs = [encode_prompt(processor, r, paths, image_text) for r in rows]
    # video pairs: the rejected side sees the rejected clip's frames (same prompt, same number of images)
    encs_r = [encode_prompt(processor, r, paths, image_text, "images_rejected") if r.get("images_rejected") else e
              for r, e in zip(rows, encs, strict=True)]
    seqs, resp = [], []
    for side, side_encs in (("chosen", encs), ("rejected", encs_r)):
        for r, enc in zip(rows, side_encs, strict=True):
            p_ids, r_ids = enc["input_ids"][0].tolist(), response_ids(tok, r[side])
            if len(p_ids) + len(r_ids) > max_length:
                raise SchemaError(f"pair {r.get('prompt_id', '?')}: prompt+response is {len(p_ids) + len(r_ids)} "
                                  f"tokens (image tokens included), above max_length {max_length}")
            seqs.append(p_ids + r_ids)
            resp.append([False] * len(p_ids) + [True] * len(r_ids))
    L = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([s + [pad] * (L - len(s)) for s in seqs])
    att = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
    rm = torch.tensor([m + [False] * (L - len(m)) for m in resp])
    # the images of the chosen rows, then those of the rejected rows (the same ones, but for video pairs)
    both = encs + encs_r
    pix = torch.cat([e["pixel_values"] for e in both])
    extra = {}
    for k in encs[0]:
        if k in ("input_ids", "attention_mask", "pixel_values", "token_type_ids"):
            continue
        if all(e[k].dim() == 2 and e[k].shape == e["input_ids"].shape for e in both):
            # per-token (e.g. Qwen2-VL's mm_token_type_ids): response and padding tokens are text, 0
            extra[k] = torch.stack([torch.nn.functional.pad(e[k][0], (0, L - e[k].shape[1])) for e in both])
        else:   # per-image (e.g. image_grid_thw)
            extra[k] = torch.cat([e[k] for e in both])
    return VlmBatch(ids, att, rm, pix, extra)


def _base(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (LoRA layers are injected in place, so they still run)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class VlmLogps:
    sums: torch.Tensor                  # [2B] summed response log-probs (chosen rows, then rejected)
    counts: torch.Tensor                # [2B] response tokens
    tokens: torch.Tensor | None = None  # [2B, T] per-token log-probs, left-aligned, 0 past the response
    tok_mask: torch.Tensor | None = None


class VlmSequenceLogps(nn.Module):
    """Policy wrapper: one forward = VlmBatch -> per-sequence log-probs, so accelerate wraps (autocast, DDP)
    exactly the computation that needs gradients."""

    def __init__(self, model: nn.Module, *, chunk: int = 1024, compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.model, self.chunk, self.compute_dtype = model, chunk, compute_dtype

    def forward(self, b: VlmBatch, with_tokens: bool = False) -> VlmLogps:
        base = _base(self.model)
        out = base.model(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values=b.pixel_values,
                         **b.extra)
        h = out.last_hidden_state[:, :-1]                 # position i predicts token i+1
        target = b.input_ids[:, 1:]
        m = b.response_mask[:, 1:]
        lp = chunked_token_logps(h[m], base.lm_head, target[m], chunk=self.chunk, compute_dtype=self.compute_dtype)
        row = torch.arange(m.shape[0], device=m.device).unsqueeze(1).expand_as(m)[m]
        sums = torch.zeros(m.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, row, lp)
        counts = m.sum(1)
        if not with_tokens:
            return VlmLogps(sums, counts)
        pos = (m.cumsum(1) - 1)[m]                        # index of each response token within its response
        T = int(counts.max())
        tokens = torch.zeros(m.shape[0], T, dtype=lp.dtype, device=lp.device).index_put((row, pos), lp)
        tok_mask = torch.arange(T, device=m.device)[None, :] < counts[:, None]
        return VlmLogps(sums, counts, tokens, tok_mask)


def response_logps(model, b: VlmBatch, *, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of response tokens and their counts, [2B] each."""
    out = VlmSequenceLogps(model, chunk=chunk)(b)
    return out.sums, out.counts


def adapters_off(model: nn.Module):
    """Context in which a peft model computes as its base model (the LoRA reference)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def pair_logps(policy, reference, b: VlmBatch) -> PairBatch:
    """Policy and reference log-probs of one batch; `reference=None` = the policy with adapters disabled."""
    pol, n = response_logps(policy, b)
    with torch.no_grad():
        if reference is None:
            with adapters_off(policy):
                ref, _ = response_logps(policy, b)
        else:
            ref, _ = response_logps(reference, b)
    k = pol.shape[0] // 2
    return PairBatch(pol_chosen=pol[:k], pol_rejected=pol[k:], ref_chosen=ref[:k], ref_rejected=ref[k:],
                     n_chosen=n[:k], n_rejected=n[k:])
