"""`pairs` step: K scored responses per prompt -> chosen/rejected pairs (methods.md §6(a), Curry-DPO §6(b)).

A pair (i, j) is formed only when s_i - s_j > max(min_margin, tie_eps): responses within tie_eps are
the same rank and never form a pair. Strategies decide which pairs are *candidates*:
  best_vs_worst  (argmax, argmin)
  best_vs_all    (argmax, j) for every other j
  all_pairs      every (i, j) with s_i > s_j
  adjacent       neighbours after a stable descending sort
  curry          Curry-DPO multi-pair: anchored on the best (R1-R2 .. R1-Rk) and/or the worst
                 (R1-Rk .. Rk-1-Rk), ordered easy -> hard by rating gap (chosen score breaks gap ties)
argmax/argmin ties are broken by input position within the prompt (`tie_break: index`) or by a seeded
random draw over response ids (`tie_break: seeded`); `max_pairs_per_prompt` keeps a seeded random
subset (or the largest margins). Every random draw is a stable hash (builders/stable_hash.py) of
(seed, prompt_id, response_id) for tie-breaks and of (seed, prompt_id, chosen_id, rejected_id) for pair
selection: a prompt's choice depends on the seed and its own rows only, not on other prompts, row order,
partitioning, the process or the polars version.

Margins are rounded to 12 decimals before any comparison, so 0.9 - 0.7 counts as 0.2 (not
0.20000000000000007) and a min_margin of 0.2 behaves as written.

Length control (builders/length_bias.py defines lengths in characters, the ratio and the counts):
  length_balance: {max_ratio: r}  a candidate that passes the margin test is *eligible* only when its
                 chosen/rejected length ratio is <= r; max_pairs_per_prompt then picks among eligible pairs.
  balance_longer: true  makes the pairs whose chosen is longer (L) and those whose chosen is shorter (S) equal in
                 number, as even as the data allows; equal-length pairs are neutral and always kept:
                 1. over all eligible pairs, the smaller of L and S is the minority (none when equal);
                 2. with max_pairs_per_prompt, each prompt takes its pairs in the order (minority first, then
                    equal-length, then majority; inside a class the usual `select` order), so the cap keeps as
                    many minority pairs as it can;
                 3. of the pairs kept so far, the larger class is cut to the size of the smaller: its pairs are
                    ranked by (their rank inside their prompt in the `select` order, the seeded pair key,
                    prompt_id, chosen_id, rejected_id) and the first |smaller| are kept, so every prompt keeps
                    one pair of the larger class before any prompt keeps a second.
                 The result has exactly as many chosen-longer as chosen-shorter pairs (none of either when one
                 class is empty). Step 1 and 3 look at every prompt, so a recipe with balance_longer runs in
                 memory (not by partitions); everything else stays prompt-local.
The step's info has the length-bias counts of its output pairs (chosen_longer, chosen_shorter, equal_length,
length_ratio_sum, length_ratio_pairs; they add up over partitions) and, with the options, the pairs each
one removed (pairs_over_max_ratio, pairs_removed_by_balance).

Accounting is per input response: kept = appears in >= 1 pair; every other response gets exactly one
reason (first that applies): score is null/NaN, duplicate response text, prompt has < 2 responses,
tied with every other response, not selected (<strategy>), not selected (balance_longer), not selected
(max_pairs_per_prompt), chosen/rejected length ratio above max_ratio, below min_margin, tied with its
candidate partners. In a mixture build (a `source` column) the drops are also counted by source."""
from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_serializer

from builders import length_bias
from builders.base import SOURCE, Built, StepConfig, StepContext, drops_by_source
from builders.rank import ROW, count_reasons, missing_reason, prompt_key, run_starts
from builders.stable_hash import combine, seeded_hash, to_unit
from prefdata.errors import SchemaError

Strategy = Literal["best_vs_worst", "best_vs_all", "all_pairs", "adjacent", "curry"]
DECIMALS = 12                                            # margins are rounded (see module doc)
PROMPT_LEVEL = ("prompt_id", "prompt", "messages")       # shared by chosen and rejected
# media that belongs to the prompt when it is the same for every response of a prompt (generate carries the
# prompt's images onto each response): one `images` column then, the pairs contract's (and TRL's VLM) form
PROMPT_MEDIA = ("images", "image", "video")
# prompt-grouping columns (split side, near-duplicate cluster, mixture source): one per prompt by construction,
# so a `split` before `pairs` stays one `split` column (not split_chosen / split_rejected) and later steps and
# the trainer still see it
PROMPT_GROUPING = ("split", "cluster_id", "source")
RENAMED = {"response": ("chosen", "rejected"), "response_id": ("chosen_id", "rejected_id"),
           "score": ("score_chosen", "score_rejected")}


class LengthBalance(StepConfig):
    max_ratio: float = Field(gt=0, allow_inf_nan=False)     # drop pairs whose chosen/rejected length ratio is above


# options added after recipes were hashed: at their defaults they are left out of the dumped config, so the
# config hash (and identical-rebuild detection) of every earlier recipe stays as it was
LATER_OPTIONS = {"length_balance": None, "balance_longer": False}


class PairsConfig(StepConfig):
    output_kind: ClassVar[str | None] = "pairs"
    strategy: Strategy = "all_pairs"
    min_margin: float = Field(0.0, ge=0)
    tie_eps: float = Field(0.0, ge=0)
    max_pairs_per_prompt: int | None = Field(None, ge=1)
    select: Literal["random", "largest_margin"] = "random"    # which pairs survive max_pairs_per_prompt
    tie_break: Literal["index", "seeded"] = "index"           # argmax/argmin ties
    curry_anchor: Literal["best", "worst", "both"] = "best"   # curry only
    drop_duplicate_texts: bool = True                         # identical texts in a prompt: keep the first
    seed: int | None = None                                   # None: the recipe's seed
    length_balance: LengthBalance | None = None               # see the module doc
    balance_longer: bool = False

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        for k, default in LATER_OPTIONS.items():
            if out.get(k, default) == default:
                out.pop(k, None)
        return out

    def label(self) -> str:
        s = self.strategy + (f" ({self.curry_anchor})" if self.strategy == "curry" else "")
        if self.min_margin:
            s += f", min_margin {self.min_margin:g}"
        if self.tie_eps:
            s += f", tie_eps {self.tie_eps:g}"
        if self.max_pairs_per_prompt:
            s += f", max {self.max_pairs_per_prompt}/prompt"
        if self.length_balance:
            s += f", length ratio <= {self.length_balance.max_ratio:g}"
        if self.balance_longer:
            s += ", balance longer"
        return s


def seeded_keys(frame: pl.DataFrame, by: list[str], seed: int) -> pl.Series:
    """A uniform key in [0, 1) per row, a stable hash of (seed, *by): each row's key depends on its own
    ids only, so a prompt's draw never changes when other prompts are added, removed or partitioned."""
    return pl.Series(to_unit(seeded_hash(seed, *(frame[c] for c in by))))


def pair_keys(resp_keys: np.ndarray, c: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Key of the pair (c, r) from its responses' seeded hashes: combine(h(seed, prompt, chosen),
    h(seed, prompt, rejected)), order-sensitive, a function of (seed, prompt_id, chosen_id, rejected_id)."""
    return to_unit(combine(resp_keys[c], resp_keys[r]))


def _extreme(valid: pl.DataFrame, best: bool) -> pl.DataFrame:
    """Per prompt the argmax (best) or argmin response row; ties go to the lowest tie-break key."""
    return valid.group_by("_g").agg(
        pl.col(ROW).sort_by(["score", "_tb"], descending=[best, False]).first().alias("b" if best else "w"))


def _structural(valid: pl.DataFrame, cfg: PairsConfig) -> pl.DataFrame | None:
    """Candidate pairs (_g, c, r) before the margin test; None for all_pairs (every response is a
    candidate, so only the pairs that pass are materialized — K(K-1)/2 per prompt can be large)."""
    s = cfg.strategy
    others = valid.select("_g", ROW)
    if s == "best_vs_worst":
        return _extreme(valid, True).join(_extreme(valid, False), on="_g").filter(pl.col("b") != pl.col("w")) \
            .select("_g", pl.col("b").alias("c"), pl.col("w").alias("r"))
    if s == "adjacent":
        ordered = valid.sort(["_g", "score", "_tb"], descending=[False, True, False])
        return ordered.select("_g", pl.col(ROW).alias("c"), pl.col(ROW).shift(-1).alias("r"),
                              (pl.col("_g").shift(-1) == pl.col("_g")).alias("same")) \
            .filter(pl.col("same")).drop("same")
    parts = []
    if s == "best_vs_all" or (s == "curry" and cfg.curry_anchor in ("best", "both")):
        parts.append(_extreme(valid, True).join(others, on="_g").filter(pl.col("b") != pl.col(ROW))
                     .select("_g", pl.col("b").alias("c"), pl.col(ROW).alias("r")))
    if s == "curry" and cfg.curry_anchor in ("worst", "both"):
        parts.append(_extreme(valid, False).join(others, on="_g").filter(pl.col("w") != pl.col(ROW))
                     .select("_g", pl.col(ROW).alias("c"), pl.col("w").alias("r")))
    if parts:
        return pl.concat(parts).unique(["c", "r"], keep="first", maintain_order=True)
    return None


def _with_margins(pairs: pl.DataFrame, valid: pl.DataFrame) -> pl.DataFrame:
    sc = valid.select(pl.col(ROW).alias("c"), pl.col("score").alias("s_c"), pl.col("_pos").alias("c_pos"))
    sr = valid.select(pl.col(ROW).alias("r"), pl.col("score").alias("s_r"), pl.col("_pos").alias("r_pos"))
    return pairs.join(sc, on="c").join(sr, on="r").with_columns(
        (pl.col("s_c") - pl.col("s_r")).round(DECIMALS).alias("margin"))


PAIR_COLS = ["_g", "c", "r", "s_c", "s_r", "c_pos", "r_pos", "margin"]
SHIFT_MAX_GROUP = 32     # up to this many responses per prompt, all_pairs uses shifted copies, not a join


def _all_pairs(valid: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Every (i, j) of a prompt with round(s_i - s_j) > threshold. `valid` is sorted by prompt, so the
    partners of a row are the rows 1..n-1 further down: one shifted copy per offset is a linear pass,
    far cheaper than a self-join when prompts are small (the usual 2..16 responses); larger prompts
    use the join."""
    v = valid.lazy().select("_g", ROW, "score", "_pos")
    biggest = int(valid["_n"].max() or 0)
    if biggest > SHIFT_MAX_GROUP:
        both = v.join(v, on="_g", suffix="_d")
        d = (pl.col("score") - pl.col("score_d")).round(DECIMALS)
        parts = [both.filter(d > threshold).select(
            "_g", pl.col(ROW).alias("c"), pl.col(f"{ROW}_d").alias("r"), pl.col("score").alias("s_c"),
            pl.col("score_d").alias("s_r"), pl.col("_pos").alias("c_pos"), pl.col("_pos_d").alias("r_pos"),
            d.alias("margin"))]
    else:
        # eager, one offset at a time: the two halves are zero-copy slices, so memory stays at the
        # size of the pairs found rather than of shifted copies of the whole table
        parts = []
        base = valid.select("_g", ROW, "score", "_pos")
        n = base.height
        for off in range(1, biggest):
            top = base.slice(0, n - off)
            down_rows = base.slice(off).rename(lambda c: f"{c}_d")
            both = pl.concat([top, down_rows], how="horizontal")
            same = both["_g"] == both["_g_d"]
            down = (both["score"] - both["score_d"]).round(DECIMALS)     # this row chosen
            up = (both["score_d"] - both["score"]).round(DECIMALS)       # the row `off` below chosen
            fwd = both.filter(same & (down > threshold))
            parts.append(pl.DataFrame({"_g": fwd["_g"], "c": fwd[ROW], "r": fwd[f"{ROW}_d"], "s_c": fwd["score"],
                                       "s_r": fwd["score_d"], "c_pos": fwd["_pos"], "r_pos": fwd["_pos_d"],
                                       "margin": down.filter(same & (down > threshold))}))
            bwd = both.filter(same & (up > threshold))
            parts.append(pl.DataFrame({"_g": bwd["_g"], "c": bwd[f"{ROW}_d"], "r": bwd[ROW], "s_c": bwd["score_d"],
                                       "s_r": bwd["score"], "c_pos": bwd["_pos_d"], "r_pos": bwd["_pos"],
                                       "margin": up.filter(same & (up > threshold))}))
            del both, same, down, up, fwd, bwd
        if parts:
            out = pl.concat(parts)
            del parts
            return out[sort_order(out, ["_g", "c_pos", "r_pos"], max(biggest, 1))]
    if not parts:
        return pl.DataFrame(schema={c: t for c, t in zip(PAIR_COLS, [pl.UInt32, pl.UInt32, pl.UInt32, pl.Float64,
                                    pl.Float64, pl.Int64, pl.Int64, pl.Float64], strict=True)})
    out = pl.concat(pl.collect_all(parts))
    return out[sort_order(out, ["_g", "c_pos", "r_pos"], max(biggest, 1))]


def sort_order(df: pl.DataFrame, keys: list[str], width: int) -> np.ndarray:
    """Row order by non-negative integer keys: the last keys are < width, so one uint64
    g*width^2 + a*width + b sorts with numpy's radix sort (several times faster than a multi-key sort)."""
    if (int(df[keys[0]].max() or 0) + 1) * width ** (len(keys) - 1) >= 2 ** 63:
        return df.select(pl.arg_sort_by(keys)).to_series().to_numpy()
    key = df[keys[0]].to_numpy().astype(np.uint64)
    for k in keys[1:]:
        key = key * np.uint64(width) + df[k].to_numpy().astype(np.uint64)
    return np.argsort(key, kind="stable")


def _orient(pairs: pl.DataFrame) -> pl.DataFrame:
    # a candidate with s_c < s_r (e.g. adjacent neighbours are already oriented, but ties are not)
    # becomes (r, c) so margins are >= 0; ties stay as they are and fail the margin test anyway
    flip = pl.col("margin") < 0
    swap = {a: pl.when(flip).then(pl.col(b)).otherwise(pl.col(a)) for a, b in
            (("c", "r"), ("r", "c"), ("s_c", "s_r"), ("s_r", "s_c"), ("c_pos", "r_pos"), ("r_pos", "c_pos"))}
    return pairs.with_columns(**swap, margin=pl.col("margin").abs())


def _random_key(cand: pl.DataFrame, df: pl.DataFrame, seed: int) -> pl.Series:
    """The seeded pair key in [0, 1) of each candidate."""
    # one hash per response, then a cheap mix per candidate pair (pairs outnumber responses)
    resp = seeded_hash(seed, df["prompt_id"], df["response_id"])
    return pl.Series(pair_keys(resp, cand["c"].to_numpy(), cand["r"].to_numpy()))


def _with_key(cand: pl.DataFrame, df: pl.DataFrame, cfg: PairsConfig, seed: int) -> pl.DataFrame:
    """cand with `_key`, the within-prompt order of `select`: a seeded random key (drawn over pairs sorted by
    ids) or the largest margin."""
    if cfg.select == "random":
        # ids break the (2^-53-likely) tie of two equal keys, so the choice never depends on row order
        return cand.with_columns(_key=pl.struct(_k=_random_key(cand, df, seed), _c=df["response_id"].gather(cand["c"]),
                                                _r=df["response_id"].gather(cand["r"])))
    return cand.with_columns(_key=pl.struct(-pl.col("margin"), -pl.col("s_c"), "c_pos", "r_pos"))


def _select(cand: pl.DataFrame, df: pl.DataFrame, cfg: PairsConfig, seed: int, among: str = "pass",
            first: pl.Expr | None = None) -> pl.Series:
    """Which candidates flagged `among` are kept: all, or per prompt the first max_pairs_per_prompt by
    (`first`, then the `select` order)."""
    if cfg.max_pairs_per_prompt is None:
        return cand[among]
    cand = _with_key(cand, df, cfg, seed)
    key = pl.col("_key") if first is None else pl.struct(first.alias("_first"), "_key")
    order = pl.when(pl.col(among)).then(key).rank("ordinal").over("_g")
    return cand.select(pl.col(among) & (order <= cfg.max_pairs_per_prompt).fill_null(False)).to_series()


def _directions(pairs: pl.DataFrame) -> tuple[int, int]:
    """(chosen-longer, chosen-shorter) counts."""
    return tuple(pairs.select((pl.col("_dir") > 0).sum().alias("l"), (pl.col("_dir") < 0).sum().alias("s")).row(0))


def _length_control(cand: pl.DataFrame, df: pl.DataFrame, cfg: PairsConfig, seed: int) -> pl.DataFrame:
    """cand with `elig` (passes and within max_ratio), `capsel` (picked by the cap) and `sel` (after
    balance_longer); the algorithm is in the module doc."""
    lens = df["response"].str.len_chars().fill_null(0)
    cand = cand.with_columns(_lc=lens.gather(cand["c"]), _lr=lens.gather(cand["r"]))
    elig = pl.col("pass")
    if cfg.length_balance is not None:
        elig = elig & (length_bias.ratio(pl.col("_lc"), pl.col("_lr")) <= cfg.length_balance.max_ratio)
    cand = cand.with_columns(elig=elig, _dir=(pl.col("_lc").cast(pl.Int64) - pl.col("_lr").cast(pl.Int64)).sign())
    if not cfg.balance_longer:
        picked = _select(cand, df, cfg, seed, among="elig")
        return cand.with_columns(capsel=picked, sel=picked)
    n_longer, n_shorter = _directions(cand.filter("elig"))
    minority = 1 if n_longer < n_shorter else -1 if n_shorter < n_longer else 0
    prio = (pl.when(pl.col("_dir") == minority).then(0).when(pl.col("_dir") == 0).then(1).otherwise(2)
            if minority else pl.lit(0))
    cand = cand.with_columns(capsel=_select(cand, df, cfg, seed, among="elig", first=prio))
    k_longer, k_shorter = _directions(cand.filter("capsel"))
    if k_longer == k_shorter:
        return cand.with_columns(sel=pl.col("capsel"))
    major, keep = (1 if k_longer > k_shorter else -1), min(k_longer, k_shorter)
    major_rows = (_with_key(cand, df, cfg, seed).with_row_index("__i")
                  .with_columns(_rk=_random_key(cand, df, seed))
                  .filter(pl.col("capsel") & (pl.col("_dir") == major))
                  .with_columns(_in_prompt=pl.col("_key").rank("ordinal").over("_g")))
    c, r = major_rows["c"], major_rows["r"]
    major_rows = major_rows.with_columns(_p=df["prompt_id"].gather(c), _ci=df["response_id"].gather(c),
                                         _ri=df["response_id"].gather(r))
    over = major_rows.sort("_in_prompt", "_rk", "_p", "_ci", "_ri").slice(keep)["__i"]
    cut = np.zeros(cand.height, dtype=bool)
    cut[over.to_numpy()] = True
    return cand.with_columns(sel=pl.col("capsel") & ~pl.Series(cut))


def duplicate_texts(df: pl.DataFrame, g: pl.Series) -> pl.Series:
    """True for a scored response whose exact text already appeared, scored, earlier in its prompt.
    A 64-bit hash of the text finds the suspects cheaply; only those are compared as strings, so a
    hash collision can never drop a response."""
    ok = df["__drop"].is_null()
    # one uint64 per row mixing prompt and text hash (collisions only add suspects, never drops)
    key = df["response"].hash(7) ^ (g.cast(pl.UInt64) * 0x9E3779B97F4A7C15)
    biggest = int(g.rle().struct.field("len").max()) if len(g) and g.is_sorted() else None
    if biggest is not None and biggest <= SHIFT_MAX_GROUP:
        # contiguous small prompts: a row's prompt mates are the rows 1..biggest-1 away, so comparing
        # shifted copies is a few linear passes instead of a hash table over every key
        near = [(pl.col("g") == pl.col("g").shift(sh)) & (pl.col("k") == pl.col("k").shift(sh)) & pl.col("ok").shift(sh)
                for off in range(1, biggest) for sh in (off, -off)]
        suspect = pl.DataFrame({"g": g, "k": key, "ok": ok}).select(
            pl.col("ok") & pl.any_horizontal(near or [pl.lit(False)]).fill_null(False)).to_series()
    else:
        suspect = pl.DataFrame({"k": key, "ok": ok}).select(
            pl.col("ok") & pl.when(pl.col("ok")).then(pl.col("k")).is_duplicated()).to_series()
    dup = pl.Series(np.zeros(df.height, dtype=bool))
    if suspect.any():
        rows = df.filter(suspect).select(ROW, "prompt_id", "response")
        exact = rows.select(~pl.struct("prompt_id", "response").is_first_distinct()).to_series()
        dup = dup.scatter(rows[ROW].filter(exact), True)
    return dup


def _mark(n: int, where: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
    """Boolean per valid response: appears in one of the given candidate pairs (vectorized scatter)."""
    flag = np.zeros(n, dtype=bool)
    for r in rows:
        flag[where[r]] = True
    return flag


def prompt_media(df: pl.DataFrame) -> list[str]:
    """PROMPT_MEDIA and PROMPT_GROUPING columns whose value is one per prompt (so chosen and rejected always
    share it); one that varies within a prompt stays per response (X_chosen / X_rejected)."""
    cols = [c for c in PROMPT_MEDIA + PROMPT_GROUPING if c in df.columns]
    if not cols or "prompt_id" not in df.columns:
        return []
    n = df.group_by("prompt_id").agg(pl.col(c).n_unique() for c in cols).select(pl.col(cols).max()).row(0)
    return [c for c, k in zip(cols, n, strict=True) if k is not None and k <= 1]


def pair_output(df: pl.DataFrame, sel: pl.DataFrame, strategy: str) -> pl.DataFrame:
    """Gather chosen/rejected rows into the pairs contract; per-response extras become X_chosen / X_rejected."""
    base = df.drop(ROW, "__drop", strict=False)
    shared = [c for c in PROMPT_LEVEL if c in base.columns] + prompt_media(base)
    chosen = base[sel["c"]]
    rejected = base.drop(shared)[sel["r"]]   # prompt columns: once
    cols: dict[str, pl.Series] = {c: chosen[c] for c in shared}
    for col in base.columns:
        if col in shared:
            continue
        a, b = RENAMED.get(col, (f"{col}_chosen", f"{col}_rejected"))
        cols[a], cols[b] = chosen[col], rejected[col]
    out = pl.DataFrame(cols).with_columns(
        margin=sel["margin"], weight=pl.lit(1.0, pl.Float64), stage=pl.lit(0, pl.Int32),
        strategy=pl.lit(strategy, pl.String))
    first = ["prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id", "score_chosen",
             "score_rejected", "margin", "weight", "stage", "strategy"]
    return out.select(first + [c for c in out.columns if c not in first])


def build_pairs(frame: pl.LazyFrame, cfg: PairsConfig, ctx: StepContext) -> Built:
    schema = frame.collect_schema()
    for col, typ in (("prompt_id", "string"), ("prompt", "string"), ("response_id", "string"),
                     ("response", "string"), ("score", "float64")):
        if col not in schema:
            hint = " (run a rank step first, or map the source's rating to score)" if col == "score" else ""
            raise SchemaError(f"pairs: input has no column {col!r}{hint}", column=col, expected=typ)
    seed = ctx.seed if cfg.seed is None else cfg.seed
    t = max(cfg.min_margin, cfg.tie_eps)

    df = frame.with_columns(pl.col("score").cast(pl.Float64)).with_row_index(ROW).with_columns(
        missing_reason({"score": pl.col("score")}).alias("__drop")).collect()
    g_all = prompt_key(df)
    if cfg.drop_duplicate_texts:
        df = df.with_columns(__drop=pl.when(pl.col("__drop").is_null() & duplicate_texts(df, g_all))
                             .then(pl.lit("duplicate response text")).otherwise(pl.col("__drop")))
    drops = count_reasons(df, "__drop")

    # narrow per-response table, sorted by prompt (then input order): all pairing works on it
    ok = df["__drop"].is_null()
    valid = df.filter(ok).select(ROW, "prompt_id", "response_id", "score")
    g = g_all.filter(ok)
    if g.is_sorted():
        valid = valid.with_columns(_g=g.rle_id().cast(pl.UInt32))    # dense again after the drops
    else:
        valid = valid.with_columns(_g=prompt_key(valid))
        valid = valid[sort_order(valid, ["_g", ROW], df.height + 1)]
    # valid is sorted by the dense key _g: per-prompt extremes by reduceat over the run starts (no hashing)
    starts = run_starts(valid["_g"])
    sc = valid["score"].to_numpy()
    stats = pl.DataFrame({"_g": pl.Series(np.arange(len(starts)), dtype=pl.UInt32),
                          "_max": np.maximum.reduceat(sc, starts) if len(starts) else sc,
                          "_min": np.minimum.reduceat(sc, starts) if len(starts) else sc})
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    new = pl.col("_g").ne_missing(pl.col("_g").shift())
    last = pl.col("_g").ne_missing(pl.col("_g").shift(-1))
    valid = valid.with_columns(_start=pl.when(new).then(idx).forward_fill(),
                               _end=pl.when(last).then(idx).backward_fill()).with_columns(
        _pos=idx - pl.col("_start"), _n=pl.col("_end") - pl.col("_start") + 1,
        _max=stats["_max"].gather(valid["_g"]), _min=stats["_min"].gather(valid["_g"]))
    lonely = int((valid["_n"] < 2).sum())
    if lonely:
        drops["prompt has < 2 responses"] = lonely
    lonely_rows = valid.filter(pl.col("_n") < 2)[ROW] if lonely and SOURCE in df.columns else None
    valid = valid.filter(pl.col("_n") >= 2).drop("_start", "_end")
    if cfg.tie_break == "seeded":
        valid = valid.with_columns(_tb=seeded_keys(valid, ["prompt_id", "response_id"], seed))
    else:
        valid = valid.with_columns(_tb=pl.col("_pos").cast(pl.Float64))

    structural = _structural(valid, cfg)
    if structural is None:
        cand = _all_pairs(valid, t).with_columns(pl.lit(True).alias("pass"))
    else:
        cand = _orient(_with_margins(structural, valid)).with_columns((pl.col("margin") > t).alias("pass"))
    controlled = cfg.length_balance is not None or cfg.balance_longer
    if controlled:
        cand = _length_control(cand, df, cfg, seed)
    else:
        cand = cand.with_columns(sel=_select(cand, df, cfg, seed))

    if cfg.strategy == "curry":   # easy (large gap) first; the chosen score breaks gap ties
        order = ["_g", "margin", "s_c", "c_pos", "r_pos"], [False, True, True, False, False]
    else:
        order = ["_g", "c_pos", "r_pos"], [False, False, False]
    sel = cand if cand["sel"].all() else cand.filter(pl.col("sel"))
    if cfg.strategy == "curry":
        sel = sel.sort(order[0], descending=order[1])
    elif structural is not None:      # all_pairs comes out of _all_pairs in this order already
        sel = sel[sort_order(sel, order[0], int(valid["_n"].max() or 1))]
    out = pair_output(df, sel, cfg.strategy)

    # ---- accounting: one reason per input response (scatter pair membership onto the valid rows)
    where = np.full(df.height, -1, dtype=np.int64)
    where[valid[ROW].to_numpy()] = np.arange(valid.height)

    def member(mask: pl.Series | None) -> np.ndarray:
        part = cand if mask is None else cand.filter(mask)
        return _mark(valid.height, where, [part["c"].to_numpy(), part["r"].to_numpy()])

    # a mask that holds for every candidate gives the same flags as no mask: each distinct one scattered once
    in_cand = member(None)

    def flag(mask: pl.Series) -> pl.Series:      # a null is not a yes, as in a filter
        return pl.Series(in_cand if mask.all(ignore_nulls=False) is True else member(mask))

    flags = {"sel": flag(cand["sel"]), "pass": flag(cand["pass"])}
    if controlled:
        flags |= {"capsel": flag(cand["capsel"]), "elig": flag(cand["elig"])}
    else:
        flags |= {"capsel": flags["sel"], "elig": flags["pass"]}
    tied_all = (((pl.col("_max") - pl.col("score")).round(DECIMALS) <= cfg.tie_eps)
                & ((pl.col("score") - pl.col("_min")).round(DECIMALS) <= cfg.tie_eps))
    per = valid.select(tied_all.alias("tied_all"))
    if structural is None:   # all_pairs: every response is a candidate; a non-tied one has a non-tied pair
        per = per.with_columns(**flags, cand=pl.lit(True), nontie=~pl.col("tied_all"))
    else:
        per = per.with_columns(**flags, nontie=flag(cand["margin"] > cfg.tie_eps), cand=pl.Series(in_cand))
    why = (pl.when(pl.col("sel")).then(pl.lit(None, pl.String))
           .when(pl.col("tied_all")).then(pl.lit("tied with every other response"))
           .when(~pl.col("cand")).then(pl.lit(f"not selected ({cfg.strategy})"))
           .when(pl.col("capsel")).then(pl.lit("not selected (balance_longer)"))
           .when(pl.col("elig")).then(pl.lit("not selected (max_pairs_per_prompt)"))
           .when(pl.col("pass")).then(pl.lit("chosen/rejected length ratio above max_ratio"))
           .when(pl.col("nontie")).then(pl.lit("below min_margin"))
           .otherwise(pl.lit("tied with its candidate partners")))
    whys = per.select(why.alias("why"))
    drops = dict(sorted({**drops, **count_reasons(whys, "why")}.items()))
    rows_kept = df.height - sum(drops.values())
    by_source = None
    if SOURCE in df.columns:   # a mixture build: the same reasons, per source
        reason = df["__drop"]
        if lonely_rows is not None:
            reason = reason.scatter(lonely_rows, "prompt has < 2 responses")
        reason = reason.scatter(valid[ROW], whys["why"])
        by_source = drops_by_source(df.select(SOURCE).with_columns(__why=reason), "__why")

    prompts = int(g_all.max() + 1) if df.height else 0
    # sel is sorted by _g (every strategy's order starts with it): one run per prompt with pairs
    runs = sel["_g"].rle().struct.field("len") if sel.height else pl.Series([], dtype=pl.UInt32)
    with_pair = len(runs)
    spread = (stats["_max"] - stats["_min"]).round(DECIMALS)
    all_tied = int(stats.filter(pl.Series(spread <= cfg.tie_eps)).join(
        valid.select("_g").unique(), on="_g", how="semi").height)
    info = {"pairs": out.height, "prompts": prompts, "prompts_with_pairs": with_pair,
            "prompts_without_pair": prompts - with_pair, "prompts_all_tied": all_tied,
            "responses_in_pairs": rows_kept,
            "margin_mean": float(out["margin"].mean()) if out.height else None,
            "max_pairs_in_a_prompt": int(runs.max()) if out.height else 0}
    resp_len = df["response"].str.len_chars().fill_null(0).to_numpy()
    lengths = length_bias.counts(resp_len[sel["c"].to_numpy()], resp_len[sel["r"].to_numpy()])
    info |= {k: v for k, v in lengths.items() if k != "pairs"}
    if controlled:
        info["pairs_over_max_ratio"] = int((cand["pass"] & ~cand["elig"]).sum())
        info["pairs_removed_by_balance"] = int((cand["capsel"] & ~cand["sel"]).sum())
    summary = f"{out.height:,} pairs from {with_pair:,} prompts"
    if prompts - with_pair:
        summary += f" · {prompts - with_pair:,} prompts without a pair ({all_tied:,} all tied)"
    if controlled:
        summary += (f" · length control removed {info['pairs_over_max_ratio']:,} pairs over max_ratio, "
                    f"{info['pairs_removed_by_balance']:,} by balance_longer")
    return Built(out.lazy(), "pairs", drops=drops, rows_in=df.height, rows_kept=rows_kept, info=info,
                 summary=summary, drops_by_source=by_source)
