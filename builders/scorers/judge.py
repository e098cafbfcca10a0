"""LLM-as-judge: a rubric prompt per (prompt, response) sent through a generation backend; the score is
parsed from the judgment. A judgment without a parsable score in [min_score, max_score] makes the row
unscorable (an accounted drop "judge <name>: unparsable judgment"); the raw text is kept in
`judgment_<name>` so it can be inspected.

Pairwise mode (`PairwiseJudge`, used by `prefdata eval`): the judge sees the prompt and two responses A and B and
names the better one. Every prompt is judged twice, model as A and model as B, so a judge that favours a position
cannot manufacture wins: the two order-corrected verdicts must agree, a disagreement counts as a tie, and an
unparsable judgment in either order makes the row unscorable (NaN with its reason)."""
from __future__ import annotations

import re
from dataclasses import dataclass
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


# ----------------------------------------------------------------------------- pairwise

DEFAULT_PAIRWISE_RUBRIC = (
    "You are a strict evaluator. Compare two responses to the user's request for helpfulness, correctness and "
    "clarity, ignoring their length and the order they are shown in.\n\n[Request]\n{prompt}\n\n[Response A]\n{a}\n\n"
    "[Response B]\n{b}\n\nAnswer with one line: 'Winner: A', 'Winner: B' or 'Winner: tie'.")
VERDICTS = ("A", "B", "tie")


class PairwiseJudge(StepConfig, frozen=True):
    kind: Literal["pairwise_judge"]
    name: str
    model: ModelSpec
    rubric: str = DEFAULT_PAIRWISE_RUBRIC        # placeholders: {prompt} {a} {b}
    pattern: str = r"(?i)winner\s*[:=]?\s*\**\s*(A|B|tie)\b"   # first group = A | B | tie (any case)
    sampling: SamplingSpec = SamplingSpec(temperature=0.0, max_new_tokens=32)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        for slot in ("{prompt}", "{a}", "{b}"):
            if slot not in self.rubric:
                raise ValueError(f"rubric must contain {slot}")
        try:
            self.rubric.format(prompt="", a="", b="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"rubric has a placeholder other than {{prompt}} {{a}} {{b}} ({e}); "
                             "write a literal brace as {{ or }}") from None
        if re.compile(self.pattern).groups < 1:
            raise ValueError("pattern needs one capture group (the verdict: A, B or tie)")
        return self


@dataclass
class PairwiseResult:
    pref: np.ndarray                  # per row: 1.0 model better, 0.0 baseline better, 0.5 tie; NaN unparsable
    reasons: list[str | None]         # why NaN (None where judged)
    consistent: np.ndarray            # bool: both orders gave the same order-corrected verdict
    texts: list[tuple[str, str]]      # raw judgments (model shown as A, model shown as B)
    info: dict                        # judged, judgments, unparsable, position_consistency, first_position_rate


def parse_verdict(text: str, pattern: str) -> str | None:
    """'A' | 'B' | 'tie' from the first match of `pattern` (its first group, any case), or None."""
    m = re.search(pattern, text or "")
    if not m or m.group(1) is None:
        return None
    g = m.group(1).strip()
    return {"a": "A", "b": "B", "tie": "tie"}.get(g.lower())


# the model's preference implied by a verdict, for each order the pair was shown in
_PREF_MODEL_AS_A = {"A": 1.0, "B": 0.0, "tie": 0.5}
_PREF_MODEL_AS_B = {"A": 0.0, "B": 1.0, "tie": 0.5}


def combine_orders(verdict_ab: str | None, verdict_ba: str | None) -> tuple[float, bool]:
    """Combine the verdict with the model shown as A (`verdict_ab`) and with the model shown as B (`verdict_ba`)
    into (preference for the model, consistent). Same order-corrected verdict -> it, consistent; different
    (position bias, or a tie against a win) -> 0.5, not consistent; either unparsable (None) -> (NaN, False)."""
    if verdict_ab is None or verdict_ba is None:
        return float("nan"), False
    p_ab, p_ba = _PREF_MODEL_AS_A[verdict_ab], _PREF_MODEL_AS_B[verdict_ba]
    return (p_ab, True) if p_ab == p_ba else (0.5, False)


def judge_pairwise(prompts: list[str], model_texts: list[str], baseline_texts: list[str], cfg: PairwiseJudge,
                   ctx: StepContext) -> PairwiseResult:
    """Judge every (prompt, model response, baseline response) in both orders through one batched generation call.
    info: judged (rows), judgments (2 x rows), unparsable (rows with NaN), position_consistency (share of rows
    with both orders parsed whose verdicts agree), first_position_rate (share of the parsed A-or-B verdicts, both
    orders, that picked the response shown first: 0.5 for a judge without position bias); either is None when
    there is nothing to count."""
    n = len(prompts)
    if not (len(model_texts) == len(baseline_texts) == n):
        raise ValueError(f"pairwise judge {cfg.name}: {n} prompts, {len(model_texts)} model and "
                         f"{len(baseline_texts)} baseline responses")
    for what, col in (("prompt", prompts), ("model response", model_texts), ("baseline response", baseline_texts)):
        missing = [i for i, t in enumerate(col) if not isinstance(t, str)]
        if missing:
            raise ValueError(f"pairwise judge {cfg.name}: {what} at row {missing[0]} is not a string "
                             f"({len(missing)} rows); drop those rows first")
    backend = load_backend(cfg.model, ctx.base_dir, path=f"scorers[{cfg.name}].model")
    reqs = []
    for i, (p, m, b) in enumerate(zip(prompts, model_texts, baseline_texts, strict=True)):
        reqs.append(GenRequest(f"{i}:model_as_A", cfg.rubric.format(prompt=p, a=m, b=b), None, cfg.sampling, cfg.seed))
        reqs.append(GenRequest(f"{i}:model_as_B", cfg.rubric.format(prompt=p, a=b, b=m), None, cfg.sampling, cfg.seed))
    outs = [o.text for o in backend.generate(reqs, progress=ctx.progress)]
    texts = list(zip(outs[0::2], outs[1::2], strict=True))
    verdicts = [(parse_verdict(ab, cfg.pattern), parse_verdict(ba, cfg.pattern)) for ab, ba in texts]
    combined = [combine_orders(ab, ba) for ab, ba in verdicts]
    pref = np.array([c[0] for c in combined], dtype=np.float64)
    consistent = np.array([c[1] for c in combined], dtype=bool)
    reasons = [None if ab is not None and ba is not None else
               f"pairwise_judge {cfg.name}: unparsable judgment ("
               + ("both orders" if ab is None and ba is None else "model as A" if ab is None else "model as B") + ")"
               for ab, ba in verdicts]
    both = ~np.isnan(pref)
    shown = [v for pair in verdicts for v in pair if v in ("A", "B")]
    info = {"judged": n, "judgments": 2 * n, "unparsable": int((~both).sum()),
            "position_consistency": float(consistent[both].mean()) if both.any() else None,
            "first_position_rate": shown.count("A") / len(shown) if shown else None}
    return PairwiseResult(pref, reasons, consistent, texts, info)
