"""Reward model scorer: any `AutoModelForSequenceClassification` checkpoint on a local path.

Input text: the tokenizer's chat template over [user: prompt, assistant: response] when it has one (the
format chat reward models are trained on), else the (prompt, response) text pair (cross-encoder style).
Batched, longest-first so the first batch shows the memory peak, padded per batch."""
from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from builders.base import StepConfig, StepContext
from builders.scorers import Scored, need_columns


class RewardModelScorer(StepConfig, frozen=True):
    kind: Literal["reward_model"]
    name: str
    path: str                                        # local dir or package:<dist>/<path>
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(512, ge=8)
    label_index: int = 0                             # which logit is the reward (num_labels > 1)
    chat_template: Literal["auto", "never"] = "auto"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    def model_path_fields(self) -> dict[str, str]:
        return {"path": "a transformers sequence-classification model folder (config.json, tokenizer, weights)"}


class RewardModel:
    def __init__(self, cfg: RewardModelScorer, ctx: StepContext):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from builders.backends import pick_device, resolve_path, torch_dtype
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        path = resolve_path(cfg.path, ctx.base_dir)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch_dtype(cfg.dtype, self.device)).to(self.device).eval()
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
            self.model.config.pad_token_id = self.tok.pad_token_id
        self.templated = cfg.chat_template == "auto" and getattr(self.tok, "chat_template", None) is not None

    def texts(self, prompts: list[str], responses: list[str]) -> list:
        if self.templated:
            return [self.tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                                 tokenize=False) for p, r in zip(prompts, responses, strict=True)]
        return list(zip(prompts, responses, strict=True))

    def score_batch(self, items: list) -> np.ndarray:
        import torch
        if self.templated:
            enc = self.tok(items, padding=True, truncation=True, max_length=self.cfg.max_length,
                           return_tensors="pt", add_special_tokens=False)
        else:
            enc = self.tok([a for a, _ in items], [b for _, b in items], padding=True,
                           truncation="longest_first", max_length=self.cfg.max_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            logits = self.model(**enc).logits
        return logits[:, self.cfg.label_index].double().cpu().numpy()

    def __call__(self, prompts: list[str], responses: list[str], *, progress: bool = False) -> np.ndarray:
        from builders.backends import progress_bar
        items = self.texts(prompts, responses)
        size = [len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in items]
        order = np.argsort(size, kind="stable")[::-1]
        out = np.empty(len(items), dtype=np.float64)
        bs = self.cfg.batch_size
        with progress_bar(len(items), f"reward {self.cfg.name}", progress) as advance:
            for s in range(0, len(items), bs):
                idx = order[s:s + bs]
                out[idx] = self.score_batch([items[i] for i in idx])
                advance(len(idx))
        return out


def score(df: pl.DataFrame, cfg: RewardModelScorer, ctx: StepContext) -> Scored:
    need_columns(df, ["prompt", "response"], cfg.name)
    rm = RewardModel(cfg, ctx)
    vals = rm(df["prompt"].to_list(), df["response"].to_list(), progress=ctx.progress)
    return Scored.complete(vals, {"chat_template": rm.templated, "batch_size": cfg.batch_size})
