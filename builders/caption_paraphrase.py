"""LLM paraphraser for DCPO's perturbed captions (`dcpo: {perturber: llm}`), the option next to the rule-based
perturbation in builders/captions.py.

The paper perturbs the prompt with an LLM at three levels; the default instructions follow them:
weak = change one attribute, medium = change about a third of the content words (some objects, attributes,
relations), strong = replace the main object and most details. Requests go through the `generate` step
itself (one backend call per batch, per-row seeds, shards committed under the build's work dir so an
interrupted build resumes), so every generation backend works here: transformers on CPU, vLLM on GPU.

An LLM's reply is cleaned to one caption line (quotes, "Caption:"-style prefixes, list markers and markdown
removed). A reply that is empty, the caption itself, a repeat of the instruction, a refusal, far longer than
the caption, or cut off by `max_new_tokens` is unusable; the step then drops that variant (counted by reason) or, with
`fallback: rules`, perturbs the caption with the rules instead and records that in `perturbed_by`."""
from __future__ import annotations

import hashlib
import re
import string

import polars as pl
from pydantic import Field, model_validator

from builders.backends import ModelSpec, SamplingSpec
from builders.base import StepConfig, StepContext

# {caption}: the caption to perturb; {pct}: percent of content words to change; {n_change}: that many words
# (at least one); {n_words}: content words in the caption
DEFAULT_PROMPTS: dict[str, str] = {
    "weak": ("Rewrite this image caption with exactly one small change: replace one attribute of one object "
             "(a colour, size, number, material or texture) with a different one. Keep every other word. "
             "Reply with the new caption only, on one line.\nCaption: {caption}"),
    "medium": ("Rewrite this image caption so that about {pct}% of its content words change (about {n_change} "
               "of {n_words}): swap one or two objects, attributes or relations for different ones and keep the "
               "sentence structure. Reply with the new caption only, on one line.\nCaption: {caption}"),
    "strong": ("Write the caption of a different picture: replace the main object and most details of this "
               "caption (about {pct}% of its content words), keeping a similar length and style. Reply with the "
               "new caption only, on one line.\nCaption: {caption}"),
}
DEFAULT_CHANGE: dict[str, float] = {"weak": 0.1, "medium": 0.3, "strong": 0.6}
_FIELDS = {"caption", "pct", "n_change", "n_words"}
_STOP = frozenset("a an the of in on at to by for with and or but is are was were be been this that these those "
                  "it its as from into over under near while his her their there here".split())


class LlmPerturber(StepConfig, frozen=True):
    model: ModelSpec                               # the generation backend config `generate` uses
    sampling: SamplingSpec = SamplingSpec(temperature=0.7, top_p=0.9, max_new_tokens=96)
    prompts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PROMPTS))   # level -> instruction
    change: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_CHANGE))   # level -> fraction asked
    max_length_ratio: float = Field(3.0, gt=1.0)   # a reply with more words than ratio × caption words is unusable
    allow_truncated: bool = False                  # keep a one-line reply that hit max_new_tokens
    shard_size: int = Field(64, ge=1)              # variants per committed shard (resume granularity)

    @model_validator(mode="after")
    def _check(self):
        for level, text in self.prompts.items():
            names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            if "caption" not in names:
                raise ValueError(f"prompts.{level} must contain {{caption}}")
            if names - _FIELDS:
                raise ValueError(f"prompts.{level} uses unknown field(s) {sorted(names - _FIELDS)}; "
                                 f"known: {sorted(_FIELDS)}")
            if level not in self.change:
                raise ValueError(f"change has no fraction for level {level!r}")
        return self


def content_words(caption: str) -> int:
    return sum(1 for w in caption.split() if w.strip(string.punctuation).lower() not in _STOP)


def instruction(cfg: LlmPerturber, level: str, caption: str) -> str:
    n = content_words(caption)
    frac = cfg.change[level]
    return cfg.prompts[level].format(caption=caption, pct=round(100 * frac), n_words=n,
                                     n_change=max(1, round(frac * n)))


_PREFIX = re.compile(r"^(?:here(?:'s| is| are)\b[^:]*:|(?:the\s+)?(?:new|rewritten|perturbed|modified|changed|"
                     r"revised|updated)?\s*(?:image\s+)?caption\s*(?:\d+\s*)?(?:is\s*)?[:\-–]|output\s*:|"
                     r"answer\s*:|assistant\s*:)\s*", re.IGNORECASE)
_MARKER = re.compile(r"^(?:[-*•]\s+|\d+[.)]\s+)")
_QUOTES = "\"'`“”‘’«»"
_REFUSAL = re.compile(r"^(?:i'?m sorry|sorry,|i cannot|i can't|i can not|as an ai\b|i am unable|i'm unable)",
                      re.IGNORECASE)


def clean(text: str) -> str:
    """The first non-empty line of a reply, without prefixes, list markers, markdown emphasis and quotes."""
    for line in text.splitlines():
        s = line.strip()
        for _ in range(3):                         # "1. Caption: "..."" needs several passes
            before = s
            s = _MARKER.sub("", _PREFIX.sub("", s.replace("**", "").strip())).strip().strip(_QUOTES).strip()
            if s == before:
                break
        s = " ".join(s.split())
        if s:
            return s
    return ""


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def unusable(caption: str, raw: str, cleaned: str, finish_reason: str, cfg: LlmPerturber,
             prompt: str = "") -> str | None:
    """Why a cleaned reply cannot be a perturbed caption (a drop reason), or None when it can. `prompt`: the
    instruction sent, so a reply that merely repeats it is caught."""
    if not cleaned:
        return "llm output empty"
    if _norm(cleaned) == _norm(caption):
        return "llm output identical to caption"
    if prompt and _norm(cleaned) in _norm(prompt.replace(caption, " ")):
        return "llm output repeats the instruction"
    if _REFUSAL.match(cleaned):
        return "llm output is a refusal"
    if len(cleaned.split()) > cfg.max_length_ratio * max(1, len(caption.split())):
        return "llm output too long"
    # cut off inside its first line: the caption is unfinished
    if finish_reason == "length" and not cfg.allow_truncated and "\n" not in raw.strip():
        return "llm output truncated (max_new_tokens)"
    return None


def variant_key(seed: int, row: int, image: str, caption: str, level: str) -> str:
    return hashlib.sha256(f"dcpo-llm|{seed}|{row}|{image}|{caption}|{level}".encode()).hexdigest()


def paraphrase(jobs: list[tuple[str, str, str]], cfg: LlmPerturber, seed: int,
               ctx: StepContext) -> tuple[dict[str, tuple[str, str, str]], dict]:
    """jobs: (key, caption, level). Returns {key: (raw reply, finish_reason, instruction)} and the generate
    step's info. One request per variant through `build_generate` (its batching, seeds and resumable shards)."""
    from builders.generate import GenerateConfig, build_generate
    if not jobs:
        return {}, {}
    asks = {k: instruction(cfg, lv, c) for k, c, lv in jobs}
    frame = pl.LazyFrame({"prompt_id": list(asks), "prompt": list(asks.values())})
    gen = GenerateConfig(models=[cfg.model], n=1, sampling=cfg.sampling, seed=seed, shard_size=cfg.shard_size)
    built = build_generate(frame, gen, ctx)
    out = built.frame.select("prompt_id", "response", "finish_reason").collect()
    replies = {k: (r or "", f, asks[k]) for k, r, f in out.iter_rows()}
    info = {k: built.info[k] for k in ("shards", "shards_resumed", "finish_reasons")}
    return replies, info
