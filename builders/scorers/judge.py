"""LLM-as-judge: a rubric prompt per (prompt, response) sent through a generation backend; the score is
parsed from the judgment. A judgment without a parsable score in [min_score, max_score] makes the row
unscorable (an accounted drop "judge <name>: unparsable judgment"); the raw text is kept in
`judgment_<name>` so it can be inspected."""
from __future__ import annotations

import re
from typing import Literal

import numpy as np
import polars as pl
from pydantic import model_validator

from builders.backends import GenRequest, ModelSpec, SamplingSpec, load_backend
from builders.base import StepConfig, StepContext
from builders.scorers import Scored, need_columns

DEFAULT_RUBRIC = (
    "You are a strict evaluator. Rate the response to the user's request for helpfulness, correctness and "
    "clarity on a scale of {min_score} to {max_score}.\n\n[Request]\n{prompt}\n\n[Response]\n{response}\n\n"
    "Answer with one line in the form 'Score: <number>'.")


class JudgeScorer(StepConfig, frozen=True):
    kind: Literal["judge"]
    name: str
    model: ModelSpec
    rubric: str = DEFAULT_RUBRIC                 # placeholders: {prompt} {response} {min_score} {max_score}
    pattern: str = r"(?i)score\s*[:=]?\s*(-?\d+(?:\.\d+)?)"   # first group = the score
    min_score: float = 1.0
    max_score: float = 10.0
    sampling: SamplingSpec = SamplingSpec(temperature=0.0, max_new_tokens=64)
    seed: int = 0
    keep_text: bool = True

    @model_validator(mode="after")
    def _check(self):
        for slot in ("{prompt}", "{response}"):
            if slot not in self.rubric:
                raise ValueError(f"rubric must contain {slot}")
        if re.compile(self.pattern).groups < 1:
            raise ValueError("pattern needs one capture group (the score)")
        if self.max_score <= self.min_score:
            raise ValueError("max_score must exceed min_score")
        return self


def parse_judgment(text: str, pattern: str, lo: float, hi: float) -> float | None:
    m = re.search(pattern, text or "")
    if not m:
        return None
    try:
        v = float(m.group(1))
    except ValueError:
        return None
    return v if lo <= v <= hi else None


def score(df: pl.DataFrame, cfg: JudgeScorer, ctx: StepContext) -> Scored:
    need_columns(df, ["prompt", "response"], cfg.name)
    backend = load_backend(cfg.model, ctx.base_dir, path=f"score.scorers[{cfg.name}].model")
    reqs = [GenRequest(str(i), cfg.rubric.format(prompt=p, response=r, min_score=_fmt(cfg.min_score),
                                                 max_score=_fmt(cfg.max_score)), None, cfg.sampling, cfg.seed)
            for i, (p, r) in enumerate(zip(df["prompt"].to_list(), df["response"].to_list(), strict=True))]
    texts = [o.text for o in backend.generate(reqs, progress=ctx.progress)]
    parsed = [parse_judgment(t, cfg.pattern, cfg.min_score, cfg.max_score) for t in texts]
    values = np.array([np.nan if v is None else v for v in parsed], dtype=np.float64)
    reasons = [None if v is not None else f"judge {cfg.name}: unparsable judgment" for v in parsed]
    extra = {f"judgment_{cfg.name}": texts} if cfg.keep_text else {}
    return Scored(values, reasons, {"unparsable": int(np.isnan(values).sum()), "judged": len(texts)}, extra)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
