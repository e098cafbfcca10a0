"""Prompts for iterative rounds: the training pool, the held-out evaluation prompts, and which prompts each
round generates for.

A pool is one row per prompt (prompt_id, prompt, messages when present, and every other column that is the
same for all rows of a prompt, e.g. a reference answer or tests), sorted by prompt_id so that sampling does not
depend on the source's row order. Sampling per round (`round_indices`):

- `per_round: None`: every round uses the whole pool;
- `fresh: false`: every round uses the same `per_round` prompts (the first ones of the seeded order);
- `fresh: true`: the rounds walk through a sequence of seeded permutations of the pool, `per_round` at a
  time, so no prompt is used a second time before every prompt has been used once. When a round straddles
  two permutations, the prompts it already took are moved to the end of the next permutation (used again
  later in that pass), so a round never holds a prompt twice.

Held-out prompts come from another source or are carved out of the pool (`holdout: N`: the N prompts with the
smallest seeded hash); either way `check_disjoint` refuses an evaluation set that shares a prompt with the
training pool (same prompt_id, or the same text after whitespace normalization)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefdata.errors import PrefdataError, RecipeError

# columns that describe one response, never the prompt (a responses source repeats the prompt per response)
RESPONSE_LEVEL = ("response_id", "response", "model", "score", "scores", "rank", "split", "source", "cluster_id")


class PromptSource(BaseModel):
    """Where prompts come from: a catalog dataset or a file read like `prefdata ingest` reads it."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: str | None = None                 # catalog NAME[@VERSION|@TAG]
    path: str | None = None                    # a file (relative to the recipe's folder)
    format: str | None = None                  # ingest format (auto-detected when omitted)
    mapping: dict[str, str] | None = None
    carry: list[str] | None = None
    max_chars: int | None = Field(None, ge=1)  # leave out prompts longer than this (characters)
    limit: int | None = Field(None, ge=1)      # then the first `limit` prompts in source order

    @model_validator(mode="after")
    def _one(self):
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of dataset: NAME[@V] or path: FILE")
        if self.dataset is not None and (self.format or self.mapping or self.carry):
            raise ValueError("format/mapping/carry only apply to a path source")
        return self


def prompt_table(frame: pl.DataFrame, *, where: str) -> pl.DataFrame:
    """One row per prompt_id (first appearance), keeping the columns that are constant within every prompt
    and are not response-level; sorted by prompt_id."""
    if "prompt" not in frame.columns:
        raise PrefdataError(f"{where}: no 'prompt' column")
    if "prompt_id" not in frame.columns:
        from prefdata.ingest.ids import prompt_ids
        frame = frame.with_columns(pl.Series("prompt_id", prompt_ids(frame["prompt"].fill_null("").to_list())))
    frame = frame.filter(pl.col("prompt").is_not_null() & (pl.col("prompt").str.strip_chars() != ""))
    others = [c for c in frame.columns if c not in ("prompt_id", "prompt", *RESPONSE_LEVEL)]
    if others and frame.height:
        # n_unique over list/struct columns works in polars; a column that differs inside a prompt is per-response
        varying = frame.group_by("prompt_id").agg([pl.col(c).n_unique().alias(c) for c in others])
        keep = [c for c in others if int(varying[c].max()) <= 1]
    else:
        keep = others
    return (frame.select(["prompt_id", "prompt", *keep]).unique("prompt_id", keep="first", maintain_order=True)
            .sort("prompt_id"))


def load_pool(src: PromptSource, *, base_dir: Path, catalog, where: str) -> tuple[pl.DataFrame, str]:
    """(one row per prompt, the input reference for lineage: name@version or the file path)."""
    if src.dataset is not None:
        from catalog import parse_ref
        name, ref = parse_ref(src.dataset)
        ds = catalog.dataset(name, ref)
        frame, input_ref = pl.from_arrow(ds.to_table()), f"{name}@{ds.version}"
    else:
        from prefdata.ingest import read_source
        path = Path(src.path).expanduser()
        path = path if path.is_absolute() else (base_dir / path).resolve()
        if not path.exists():
            raise RecipeError(f"prompt file not found: {path}", path=f"{where}.path")
        frame, input_ref = pl.from_arrow(read_source(path, format=src.format, mapping=src.mapping,
                                                     carry=src.carry).table), str(path)
    if src.max_chars is not None:
        frame = frame.filter(pl.col("prompt").str.len_chars() <= src.max_chars)
    if src.limit is not None:
        if "prompt_id" not in frame.columns:
            from prefdata.ingest.ids import prompt_ids
            frame = frame.with_columns(pl.Series("prompt_id", prompt_ids(frame["prompt"].fill_null("").to_list())))
        first = frame["prompt_id"].unique(maintain_order=True).head(src.limit)
        frame = frame.filter(pl.col("prompt_id").is_in(first.implode()))
    pool = prompt_table(frame, where=where)
    if pool.height == 0:
        raise PrefdataError(f"{where}: {input_ref} holds no prompts")
    return pool, input_ref


def _rank_hash(seed: int, tag: str, ids: list[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}|{tag}|{i}".encode()).digest()[:8], "little")
                     for i in ids], dtype=np.uint64)


def holdout(pool: pl.DataFrame, n: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training pool, held-out prompts): the n prompts with the smallest seeded hash of their prompt_id are
    held out (independent of the pool's order and of the other prompts)."""
    if n >= pool.height:
        raise PrefdataError(f"holdout {n} leaves no training prompts (the pool has {pool.height})")
    order = np.argsort(_rank_hash(seed, "holdout", pool["prompt_id"].to_list()), kind="stable")
    held = np.zeros(pool.height, dtype=bool)
    held[order[:n]] = True
    mask = pl.Series(held)
    return pool.filter(~mask), pool.filter(mask)


def check_disjoint(train: pl.DataFrame, held_out: pl.DataFrame, *, path: str, file: str | None = None) -> None:
    """RecipeError when a held-out prompt is also a training prompt (by prompt_id or by normalized text)."""
    from prefdata.ingest.ids import prompt_ids

    same_id = set(train["prompt_id"].to_list()) & set(held_out["prompt_id"].to_list())
    text_ids = prompt_ids(held_out["prompt"].to_list())
    same_text = set(prompt_ids(train["prompt"].to_list())) & set(text_ids)
    n = len(same_id | {pid for pid, t in zip(held_out["prompt_id"].to_list(), text_ids, strict=True)
                       if t in same_text})
    if n:
        example = held_out.filter(pl.col("prompt_id").is_in(list(same_id)) |
                                  pl.Series([t in same_text for t in text_ids]))["prompt"][0]
        raise RecipeError(f"{n} held-out evaluation prompt(s) are also in the training pool (e.g. "
                          f"{example[:60]!r}); the evaluation prompts must never be trained on", path=path, file=file)


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n).tolist()


def round_indices(n_pool: int, *, per_round: int | None, fresh: bool, seed: int, round_: int) -> list[int]:
    """Row indices of the pool that round `round_` (0-based) generates for (see the module doc)."""
    if per_round is None:
        return list(range(n_pool))
    if per_round > n_pool:
        raise PrefdataError(f"per_round {per_round} exceeds the {n_pool} prompts of the training pool")
    if not fresh:
        return _permutation(n_pool, seed, 0)[:per_round]
    remaining: list[int] = []
    epoch = 0
    take: list[int] = []
    for _ in range(round_ + 1):      # replay the rounds before this one: the sequence is a pure function
        take = []
        while len(take) < per_round:
            if not remaining:
                perm = _permutation(n_pool, seed, epoch)
                epoch += 1
                taken = set(take)
                remaining = [i for i in perm if i not in taken] + [i for i in perm if i in taken]
            need = per_round - len(take)
            take += remaining[:need]
            remaining = remaining[need:]
    return take


def round_prompts(pool: pl.DataFrame, *, per_round: int | None, fresh: bool, seed: int, round_: int) -> pl.DataFrame:
    idx = round_indices(pool.height, per_round=per_round, fresh=fresh, seed=seed, round_=round_)
    return pool[idx]
