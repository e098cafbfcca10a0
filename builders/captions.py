"""DCPO dual-caption pairs (methods.md §5.3, §6(f)).

A DCPO sample is (p, x^w, c^w, x^l, c^l): the loser image is conditioned on its own, *different* caption.
c^w is the prompt (or a caption of x^w); c^l comes from
- `perturb`: the prompt perturbed at a weak / medium / strong level (rule-based, offline, seeded);
- `caption`: a caption of x^l taken from a column (e.g. written by a captioner beforehand);
- `hybrid`:  that caption of x^l, then perturbed.
Single-image caption data (no loser image) gives caption-variant pairs on the same image: x^l = x^w and
c^l = perturbed caption, so the objective teaches "this image fits its caption better than a corrupted one".

Rule-based perturbation operates on words: drop, adjacent swap, span shuffle and same-category replacement
of attributes (colour, size, number, material) and nouns from a small built-in lexicon. Each op acts on
round(rate × words) positions (at least one); the achieved word-level edit rate is stored per pair
(`perturb_rate`), so what a level really did is measurable rather than assumed. A perturbation that
leaves the caption unchanged is dropped and counted (the paper rejects c^l == c^w).

`perturber: llm` asks an LLM for each (caption, level) instead, through the generation backends
(builders/caption_paraphrase.py); an unusable reply drops that variant, or with `fallback: rules` the rules
make it. `perturbed_by` records which path produced each c^l (rules | llm; null for source `caption`).
Row accounting is per input row (kept when at least one level gave a pair); info["variants"] accounts
per (row, level): requested == made + Σ dropped[reason]."""
from __future__ import annotations

import hashlib
import re
from typing import ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field, model_validator

from builders.base import Built, StepConfig, StepContext
from builders.caption_paraphrase import LlmPerturber, clean, paraphrase, unusable, variant_key
from builders.media import MediaDrop, MediaError, MediaStore, check_media, drop_summary
from prefdata.errors import SchemaError
from prefdata.schema import conform, validate

Level = Literal["weak", "medium", "strong"]
OpName = Literal["drop", "swap", "shuffle", "replace_attribute", "replace_noun"]

# Same-category replacement keeps captions grammatical while changing what they assert.
LEXICON: dict[str, list[str]] = {
    "color": ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray",
              "grey", "golden", "silver", "dark", "bright", "colorful"],
    "size": ["small", "large", "big", "tiny", "huge", "tall", "short", "long", "wide", "narrow", "thin", "thick"],
    "number": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many",
               "few", "single", "double"],
    "material": ["wooden", "metal", "glass", "plastic", "stone", "porcelain", "paper", "leather", "steel"],
    "texture": ["smooth", "coarse", "rough", "soft", "blurred", "sharp", "shiny", "matte", "blurry"],
    "noun": ["cat", "dog", "horse", "man", "woman", "person", "astronaut", "car", "rocket", "cup", "clock", "coin",
             "cell", "tree", "house", "table", "chair", "bird", "boat", "camera", "shuttle", "telescope", "galaxy",
             "flower", "mountain", "river", "city", "street", "bicycle", "train", "plane", "book", "phone",
             "computer", "apple", "banana", "pizza", "sandwich", "ball", "hat", "shirt", "window", "door", "wall",
             "tissue", "gland", "retina", "eye", "face", "hand", "photograph", "image", "picture", "silhouette"],
}
ATTRIBUTE_CATS = ("color", "size", "number", "material", "texture")
_WORD_CAT = {w: cat for cat, ws in LEXICON.items() for w in ws}
_TOKEN = re.compile(r"^(\W*)([\w'-]*?)(\W*)$")


class OpSpec(StepConfig, frozen=True):
    op: OpName
    rate: float = Field(gt=0.0, le=1.0)   # fraction of the caption's words the op touches


DEFAULT_LEVELS: dict[str, list[OpSpec]] = {
    # weak: minor wording / one attribute
    "weak": [OpSpec(op="replace_attribute", rate=0.1), OpSpec(op="swap", rate=0.1)],
    # medium: some objects / attributes / relations change
    "medium": [OpSpec(op="replace_noun", rate=0.2), OpSpec(op="replace_attribute", rate=0.2),
               OpSpec(op="drop", rate=0.1)],
    # strong: substantially different content and order
    "strong": [OpSpec(op="replace_noun", rate=0.5), OpSpec(op="replace_attribute", rate=0.5),
               OpSpec(op="drop", rate=0.2), OpSpec(op="shuffle", rate=0.5)],
}


def _split(word: str) -> tuple[str, str, str]:
    m = _TOKEN.match(word)
    return (m.group(1), m.group(2), m.group(3)) if m else ("", word, "")


def _category(core: str) -> tuple[str | None, str, bool]:
    """(lexicon category, base word, plural) of a word; plural nouns map to their singular."""
    low = core.lower()
    cat = _WORD_CAT.get(low)
    if cat is None and low.endswith("s") and _WORD_CAT.get(low[:-1]) == "noun":
        return "noun", low[:-1], True
    return cat, low, False


def _replacement(core: str, cats: tuple[str, ...], rng: np.random.Generator) -> str | None:
    cat, low, plural = _category(core)
    if cat is None or cat not in cats:
        return None
    choices = [w for w in LEXICON[cat] if w != low]
    new = choices[int(rng.integers(len(choices)))] + ("s" if plural else "")
    return new.capitalize() if core[:1].isupper() else new


def _n(rate: float, n_words: int) -> int:
    return max(1, int(round(rate * n_words)))


def apply_op(words: list[str], spec: OpSpec, rng: np.random.Generator) -> list[str]:
    """One op on a word list (pure given the generator). Touches round(rate × len) positions, at least one."""
    n = len(words)
    if n == 0:
        return words
    w = list(words)
    if spec.op == "drop":
        if n == 1:
            return w
        k = min(_n(spec.rate, n), n - 1)            # never drop every word
        gone = set(rng.choice(n, size=k, replace=False).tolist())
        return [x for i, x in enumerate(w) if i not in gone]
    if spec.op == "swap":
        if n < 2:
            return w
        k = min(max(1, int(round(spec.rate * n / 2))), n // 2)   # each swap touches two words
        starts = rng.choice(n - 1, size=min(k, n - 1), replace=False)
        for s in sorted(starts.tolist()):
            w[s], w[s + 1] = w[s + 1], w[s]
        return w
    if spec.op == "shuffle":
        k = min(max(2, _n(spec.rate, n)), n)
        if k < 2:
            return w
        start = int(rng.integers(n - k + 1))
        span = w[start:start + k]
        perm = rng.permutation(k)
        if k > 1 and np.array_equal(perm, np.arange(k)):
            perm = np.roll(perm, 1)                  # a shuffle must move something
        w[start:start + k] = [span[i] for i in perm]
        return w
    cats = ATTRIBUTE_CATS if spec.op == "replace_attribute" else ("noun",)
    candidates = [i for i, x in enumerate(w) if _category(_split(x)[1])[0] in cats]
    if not candidates:
        return w
    k = min(_n(spec.rate, n), len(candidates))
    for i in sorted(rng.choice(candidates, size=k, replace=False).tolist()):
        pre, core, post = _split(w[i])
        w[i] = pre + _replacement(core, cats, rng) + post
    return w


def perturb(caption: str, ops: list[OpSpec], rng: np.random.Generator) -> str:
    words = caption.split()
    for spec in ops:
        words = apply_op(words, spec, rng)
    return " ".join(words)


def word_edit_rate(a: str, b: str) -> float:
    """Word-level Levenshtein distance / words in `a` (how much of the caption changed)."""
    x, y = a.split(), b.split()
    prev = list(range(len(y) + 1))
    for i, xi in enumerate(x, 1):
        cur = [i] + [0] * len(y)
        for j, yj in enumerate(y, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (xi != yj))
        prev = cur
    return prev[-1] / max(1, len(x))


def _rng(seed: int, *parts: str) -> np.random.Generator:
    key = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:15]
    return np.random.default_rng([seed, int(key, 16)])


class DcpoConfig(StepConfig, frozen=True):
    output_kind: ClassVar[str] = "pairs"
    image_column: str = "image"                   # x^w (string URI)
    rejected_image_column: str | None = None      # x^l for pair data; None: caption-variant pairs on x^w
    caption_column: str = "caption"               # c^w: the prompt or a caption of x^w
    loser_caption_column: str | None = None       # caption of x^l (source caption / hybrid)
    source: Literal["perturb", "caption", "hybrid"] = "perturb"
    levels: list[Level] = Field(default_factory=lambda: ["weak", "medium", "strong"])
    level_ops: dict[Level, list[OpSpec]] = Field(default_factory=lambda: dict(DEFAULT_LEVELS))
    perturber: Literal["rules", "llm"] = "rules"  # how perturb / hybrid make c^l
    llm: LlmPerturber | None = None               # the paraphraser (perturber: llm)
    fallback: Literal["drop", "rules"] = "drop"   # an unusable LLM reply: drop the variant, or use the rules
    check_media: bool = True                      # decode each image once; unreadable rows are dropped
    seed: int | None = None

    @model_validator(mode="after")
    def _perturber(self):
        if self.perturber == "llm":
            if self.source == "caption":
                raise ValueError("perturber 'llm' perturbs captions: use source perturb or hybrid, not caption")
            if self.llm is None:
                raise ValueError("perturber 'llm' needs an `llm` section (model, sampling, prompts)")
            missing = [lv for lv in self.levels if lv not in self.llm.prompts]
            if missing:
                raise ValueError(f"llm.prompts has no instruction for level(s) {missing}")
        elif self.llm is not None or self.fallback != "drop":
            raise ValueError("`llm` and `fallback` apply only with perturber: llm")
        return self


def build_dcpo(frame: pl.LazyFrame, cfg: DcpoConfig, ctx: StepContext) -> Built:
    df = frame.collect()
    need = [cfg.image_column, cfg.caption_column]
    if cfg.rejected_image_column:
        need.append(cfg.rejected_image_column)
    if cfg.source in ("caption", "hybrid"):
        if not cfg.loser_caption_column:
            raise SchemaError(f"dcpo: source {cfg.source!r} needs loser_caption_column (a caption of x^l)")
        need.append(cfg.loser_caption_column)
    for c in need:
        if c not in df.columns:
            raise SchemaError(f"dcpo: input has no column {c!r} (have {df.columns})", column=c)
    rules_needed = cfg.source != "caption" and (cfg.perturber == "rules" or cfg.fallback == "rules")
    for lv in cfg.levels:
        if rules_needed and lv not in cfg.level_ops:
            raise SchemaError(f"dcpo: level {lv!r} has no ops in level_ops")
    seed = ctx.seed if cfg.seed is None else cfg.seed
    store = MediaStore.for_context(ctx)
    def uris(col: str) -> list:
        s = df.get_column(col)
        return (s.list.first() if isinstance(s.dtype, pl.List) else s).to_list()   # list column: first image

    img_w = uris(cfg.image_column)
    img_l = uris(cfg.rejected_image_column) if cfg.rejected_image_column else img_w
    cap_w = df.get_column(cfg.caption_column).to_list()
    cap_l_src = df.get_column(cfg.loser_caption_column).to_list() if cfg.loser_caption_column else cap_w

    stored: dict[str, str | str] = {}
    unreadable: dict[str, str] = {}

    def store_uri(u: str, row: int) -> str | None:
        if u in stored:
            return stored[u]
        if u in unreadable:
            return None
        try:
            if cfg.check_media:
                check_media(store, u, row=row)
            stored[u] = store.put_file(store.resolve(u))
            return stored[u]
        except MediaError as e:
            unreadable[u] = str(e)
            return None

    bad: list[MediaDrop] = []
    drops: dict[str, int] = {}

    def drop(reason: str, into: dict[str, int] = drops):
        into[reason] = into.get(reason, 0) + 1

    # pass 1: rows with readable media and captions
    good: list[tuple[int, str, str]] = []
    for i in range(df.height):
        if img_w[i] is None or img_l[i] is None or not cap_w[i] or (cfg.source != "perturb" and not cap_l_src[i]):
            drop("missing image or caption")
            continue
        uw, ul = store_uri(img_w[i], i), store_uri(img_l[i], i)
        if uw is None or ul is None:
            f = img_w[i] if uw is None else img_l[i]
            col = cfg.image_column if uw is None else cfg.rejected_image_column
            bad.append(MediaDrop(i, col, str(store.resolve(f)), unreadable[f]))
            drop("unreadable media")
            continue
        good.append((i, uw, ul))

    # pass 2: one c^l per (row, level); LLM requests go out together, in batches
    levels = ["caption"] if cfg.source == "caption" else cfg.levels   # `caption`: one variant, no levels
    base = {i: cap_w[i] if cfg.source == "perturb" else cap_l_src[i] for i, _, _ in good}
    keys = {(i, lv): variant_key(seed, i, img_w[i], base[i], lv) for i, _, _ in good for lv in levels}
    replies, llm_info = ({}, {})
    if cfg.perturber == "llm" and cfg.source != "caption":
        jobs = [(keys[i, lv], base[i], lv) for i, _, _ in good for lv in levels]
        replies, llm_info = paraphrase(jobs, cfg.llm, seed, ctx)

    def rules(i: int, lv: str) -> str:
        return perturb(base[i], cfg.level_ops[lv], _rng(seed, img_w[i], cap_w[i], lv, str(i)))

    rows: list[dict] = []
    variant_drops: dict[str, int] = {}
    rejects: list[dict] = []
    kept = 0
    for i, uw, ul in good:
        reasons = []
        for stage, lv in enumerate(levels):
            by: str | None = "rules"
            if cfg.source == "caption":
                c_l, by = base[i], None
            elif cfg.perturber == "rules":
                c_l = rules(i, lv)
            else:
                raw, finish, asked = replies[keys[i, lv]]
                c_l, by = clean(raw), "llm"
                why = unusable(base[i], raw, c_l, finish, cfg.llm, asked)
                if why is not None:
                    if len(rejects) < 20:
                        rejects.append({"row": i, "level": lv, "reason": why, "output": raw[:300]})
                    if cfg.fallback == "drop":
                        reasons.append(why)
                        drop(why, variant_drops)
                        continue
                    c_l, by = rules(i, lv), "rules"
            if c_l.strip() == cap_w[i].strip():
                reasons.append("perturbation left caption unchanged")
                drop(reasons[-1], variant_drops)
                continue
            rows.append({"prompt": cap_w[i], "chosen": uw, "rejected": ul, "images": [uw, ul],
                         "caption": cap_w[i], "caption_rejected": c_l, "perturb_level": lv,
                         "perturb_rate": word_edit_rate(cap_w[i], c_l), "perturbed_by": by, "stage": stage,
                         "strategy": f"dcpo:{cfg.source}" + ("" if cfg.source == "caption" else f":{lv}")})
        if len(reasons) < len(levels):
            kept += 1
        else:   # no variant survived: the row is dropped for its variants' reason (one name when they agree)
            drop(reasons[0] if len(set(reasons)) == 1 else "no usable perturbation at any level")
    table = _table(rows)
    validate(table, "pairs")
    per_level = {lv: sum(r["perturb_level"] == lv for r in rows) for lv in levels}
    mean_rate = {lv: float(np.mean([r["perturb_rate"] for r in rows if r["perturb_level"] == lv]))
                 for lv in levels if per_level[lv]}
    by_counts = {k: sum(r["perturbed_by"] == k for r in rows) for k in ("rules", "llm")}
    summary = f"{len(rows)} dual-caption pairs (" + ", ".join(
        f"{lv} {per_level[lv]}, edit {mean_rate.get(lv, 0):.2f}" for lv in levels) + ")"
    if cfg.perturber == "llm":
        summary += f" · llm {by_counts['llm']}, rules fallback {by_counts['rules']}, " \
                   f"variants dropped {sum(variant_drops.values())}"
    if bad:
        summary += f" · {drop_summary(bad)}"
    info = {"per_level": per_level, "mean_edit_rate": mean_rate, "seed": seed,
            "variants": {"requested": len(good) * len(levels), "made": len(rows), "dropped": variant_drops},
            "perturbed_by": by_counts, "unreadable": [d.as_dict() for d in bad]}
    if cfg.perturber == "llm":
        info["llm"] = {**llm_info, "rejected_samples": rejects,
                       "mean_edit_rate_llm": {lv: float(np.mean(v)) for lv in levels if (v := [
                           r["perturb_rate"] for r in rows if r["perturb_level"] == lv and r["perturbed_by"] == "llm"])}}
    return Built(pl.from_arrow(table).lazy(), "pairs", drops=drops, rows_in=df.height, rows_kept=kept,
                 info=info, summary=summary)


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _table(rows: list[dict]) -> pa.Table:
    n = len(rows)
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    t = pa.table({
        "prompt_id": pa.array([_sha(p) for p in col("prompt")], pa.string()),
        "prompt": pa.array(col("prompt"), pa.string()),
        "chosen": pa.array(col("chosen"), pa.string()), "rejected": pa.array(col("rejected"), pa.string()),
        "chosen_id": pa.array([_sha(u + "\x00" + c) for u, c in zip(col("chosen"), col("caption"), strict=True)], pa.string()),
        "rejected_id": pa.array([_sha(u + "\x00" + c) for u, c in zip(col("rejected"), col("caption_rejected"), strict=True)],
                                pa.string()),
        "score_chosen": pa.nulls(n, pa.float64()), "score_rejected": pa.nulls(n, pa.float64()),
        "margin": pa.nulls(n, pa.float64()), "weight": pa.array([1.0] * n, pa.float64()),
        "stage": pa.array(col("stage"), pa.int32()), "strategy": pa.array(col("strategy"), pa.string()),
        "images": pa.array(col("images"), pa.list_(pa.string())),
        "caption": pa.array(col("caption"), pa.string()),
        "caption_rejected": pa.array(col("caption_rejected"), pa.string()),
        "perturb_level": pa.array(col("perturb_level"), pa.string()),
        "perturb_rate": pa.array(col("perturb_rate"), pa.float64()),
        "perturbed_by": pa.array(col("perturbed_by"), pa.string()),
    })
    return conform(t, "pairs")
