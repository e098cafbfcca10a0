"""`generate` step: N candidates per prompt from one or several models -> canonical `responses`.

Input: a `prompts` table (a prompt-only source: one row per prompt, its extra columns such as reference
`tests` carried by ingest) or any `responses` table, i.e. anything with `prompt` (and optionally
`prompt_id`, `messages`, per-row parameter columns); one generation per distinct prompt_id (further rows of
the same prompt are an accounted drop). Other prompt-level columns (e.g. `tests`, `caption_long`) are
carried to every candidate; the input's response-level columns (response, score, ...) describe other
responses and are not (info["not_carried"] lists them with the reason).
Media (`images`, `image`, `video`) belong to the prompt in a prompts table (a VLM question's images) and are
carried, so an image dataset goes generate -> score -> pairs with its images. In a responses table they are
carried only where every row of a prompt holds the same value (then they are the prompt's); per-response
media are not. A diffusers model writes its own `images`, so the prompt's `images` are then not carried.
Output per candidate: prompt_id, prompt, messages, response_id, response, model, seed, sample_index,
gen_params struct, finish_reason, n_tokens (and `images` for diffusers models).

Resume: prompts are cut into fixed shards (input order); each finished shard is written to
`<work_dir>/generate-<key>/shard-NNNNN.parquet` atomically and then recorded in `manifest.json`
(also atomically). A killed run restarts, skips the shards the manifest lists, and redoes the rest: no
duplicate and no missing rows. The key hashes the config and the input prompts, so a changed recipe or
input never reuses stale shards. Seeds are per row, so a resumed run yields the same rows as an
uninterrupted one."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from builders.backends import GenRequest, ModelSpec, SamplingSpec, load_backend
from builders.base import Built, StepConfig, StepContext
from prefdata.errors import SchemaError

_ROW_PARAMS = ("temperature", "top_p", "top_k", "max_new_tokens", "seed")
_RESPONSE_LEVEL = ("response_id", "response", "model", "score", "scores", "rank")
_MEDIA = ("images", "image", "video")


class GenerateConfig(StepConfig, frozen=True):
    output_kind: ClassVar[str] = "responses"
    models: list[ModelSpec] = Field(min_length=1)
    n: int = Field(4, ge=1)                          # candidates per prompt per model
    sampling: SamplingSpec = SamplingSpec()
    seed: int = 0
    # input columns that override sampling/seed per row (each must exist; nulls fall back to `sampling`)
    row_params: list[str] = []
    prompt_template: str = "{prompt}"                # applied to the prompt text before the chat template
    shard_size: int = Field(32, ge=1)                # prompts per committed shard
    image_dir: str = "generated_images"              # diffusers output dir (relative to the base dir)

    @model_validator(mode="after")
    def _check(self):
        bad = [c for c in self.row_params if c not in _ROW_PARAMS]
        if bad:
            raise ValueError(f"row_params {bad} not supported; choose from {list(_ROW_PARAMS)}")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if "{prompt}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {prompt}")
        return self


def row_seed(base: int, prompt_id: str, model: str, k: int) -> int:
    h = hashlib.sha256(f"{base}|{prompt_id}|{model}|{k}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def candidate_id(prompt_id: str, model: str, k: int, seed: int) -> str:
    # not sha(prompt_id + text): two samples may produce the same text and must stay distinct rows
    return hashlib.sha256(f"{prompt_id}|{model}|{k}|{seed}".encode()).hexdigest()


def _media_not_carried(df: pl.DataFrame, cfg: GenerateConfig) -> dict[str, str]:
    """Media columns of the input that are not the prompt's (column -> why)."""
    out = {}
    for c in (c for c in _MEDIA if c in df.columns):
        if c == "images" and any(m.backend == "diffusers" for m in cfg.models):
            out[c] = "replaced by the images a diffusers model generates"
        elif "response" in df.columns and df.height and \
                int(df.group_by("prompt_id").agg(pl.col(c).n_unique())[c].max()) > 1:
            out[c] = "differs between rows of one prompt (per-response media)"
    return out


def _prompts(frame: pl.LazyFrame, cfg: GenerateConfig) -> tuple[pl.DataFrame, int, dict[str, int], dict[str, str]]:
    """One row per prompt to generate for, with its prompt-level columns; (rows, rows_in, drops, not carried)."""
    df = frame.collect()
    if "prompt" not in df.columns:
        raise SchemaError("generate needs a 'prompt' column", column="prompt", expected="string")
    missing = [c for c in cfg.row_params if c not in df.columns]
    if missing:
        raise SchemaError(f"row_params names column(s) {missing} that the input lacks", column=missing[0])
    rows_in = df.height
    if "prompt_id" not in df.columns:
        from prefdata.ingest.ids import prompt_ids
        df = df.with_columns(pl.Series("prompt_id", prompt_ids(df["prompt"].fill_null("").to_list())))
    drops: dict[str, int] = {}
    not_carried = {c: "response-level" for c in _RESPONSE_LEVEL if c in df.columns} | _media_not_carried(df, cfg)
    empty = df["prompt"].is_null() | (df["prompt"].str.strip_chars() == "")
    if empty.any():
        drops["empty prompt"] = int(empty.sum())
        df = df.filter(~empty)
    uniq = df.unique("prompt_id", keep="first", maintain_order=True)
    if uniq.height < df.height:
        drops["further row of an already generated prompt"] = df.height - uniq.height
    return uniq.drop(list(not_carried)), rows_in, drops, not_carried


def _requests(shard: pl.DataFrame, cfg: GenerateConfig, model: ModelSpec) -> tuple[list[GenRequest], list[dict]]:
    reqs, meta = [], []
    has_msgs = "messages" in shard.columns
    for row in shard.iter_rows(named=True):
        over = {c: row[c] for c in cfg.row_params if c != "seed" and row[c] is not None}
        params = cfg.sampling.model_copy(update=over) if over else cfg.sampling
        msgs = row["messages"] if has_msgs and row["messages"] else None
        prompt = cfg.prompt_template.format(prompt=row["prompt"])
        for k in range(cfg.n):
            if "seed" in cfg.row_params and row["seed"] is not None:
                seed = int(row["seed"]) + k
            else:
                seed = row_seed(cfg.seed, row["prompt_id"], model.name, k)
            rid = candidate_id(row["prompt_id"], model.name, k, seed)
            reqs.append(GenRequest(rid, prompt, msgs, params, seed))
            meta.append({"prompt_id": row["prompt_id"], "response_id": rid, "model": model.name, "seed": seed,
                         "sample_index": k, "gen_params": {"temperature": params.temperature,
                                                           "top_p": params.top_p, "top_k": params.top_k,
                                                           "max_new_tokens": params.max_new_tokens}})
    return reqs, meta


class _Shards:
    """Atomic shard files + manifest under one directory."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.manifest_path = root / "manifest.json"
        self.done: dict[str, dict] = {}
        if self.manifest_path.exists():
            self.done = json.loads(self.manifest_path.read_text())["shards"]
            # a shard the manifest lists but whose file is gone is redone
            self.done = {k: v for k, v in self.done.items() if (root / v["file"]).exists()}

    def commit(self, idx: int, table: pa.Table) -> None:
        name = f"shard-{idx:05d}.parquet"
        tmp = self.root / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.root / name)
        self.done[str(idx)] = {"file": name, "rows": table.num_rows}
        mtmp = self.root / ".manifest.json.tmp"
        mtmp.write_text(json.dumps({"shards": self.done}, indent=1, sort_keys=True))
        os.replace(mtmp, self.manifest_path)

    def read(self, idx: int) -> pa.Table:
        return pq.read_table(self.root / self.done[str(idx)]["file"])


def _key(cfg: GenerateConfig, prompts: pl.DataFrame) -> str:
    h = hashlib.sha256(cfg.model_dump_json().encode())
    for pid in prompts["prompt_id"].to_list():
        h.update(pid.encode())
    return h.hexdigest()[:16]


def build_generate(frame: pl.LazyFrame, cfg: GenerateConfig, ctx: StepContext) -> Built:
    prompts, rows_in, drops, not_carried = _prompts(frame, cfg)
    carried = prompts.drop([c for c in cfg.row_params if c in prompts.columns and c != "prompt_id"])
    scratch = ctx.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="prefdata-gen-")) if scratch else Path(ctx.work_dir)
    shards = _Shards(work / f"generate-{_key(cfg, prompts)}")
    n_shards = (prompts.height + cfg.shard_size - 1) // cfg.shard_size
    resumed = len([i for i in range(n_shards) if str(i) in shards.done])
    backends = {}
    try:
        for i in range(n_shards):
            if str(i) in shards.done:
                continue
            shard = prompts.slice(i * cfg.shard_size, cfg.shard_size)
            parts = []
            for m in cfg.models:
                if m.name not in backends:    # load lazily: a fully resumed run loads no model
                    backends[m.name] = load_backend(m, ctx.base_dir, path="generate.models")
                    if m.backend == "diffusers":
                        backends[m.name].image_dir = ctx.base_dir / cfg.image_dir
                reqs, meta = _requests(shard, cfg, m)
                outs = backends[m.name].generate(reqs, progress=ctx.progress)
                for d, o in zip(meta, outs, strict=True):
                    d.update(response=o.text, finish_reason=o.finish_reason, n_tokens=o.n_tokens)
                    if m.backend == "diffusers":
                        d["images"] = [o.text]
                parts.append(pl.DataFrame(meta))
            shards.commit(i, pl.concat(parts, how="diagonal_relaxed").to_arrow())
        gen = pl.concat([pl.from_arrow(shards.read(i)) for i in range(n_shards)], how="diagonal_relaxed") \
            if n_shards else pl.DataFrame(schema={"prompt_id": pl.String})
    finally:
        if scratch:
            shutil.rmtree(work, ignore_errors=True)
    out = _assemble(gen, carried)
    info = {"prompts": prompts.height, "candidates": out.height, "shards": n_shards,
            **({"not_carried": not_carried} if not_carried else {}),
            "shards_resumed": resumed, "models": [m.name for m in cfg.models], "n": cfg.n,
            "finish_reasons": dict(out.group_by("finish_reason").len().iter_rows()) if out.height else {}}
    summary = (f"{out.height:,} candidates for {prompts.height:,} prompts × {len(cfg.models)} model(s) × n={cfg.n}"
               + (f" · {resumed}/{n_shards} shards resumed" if resumed else ""))
    return Built(out.lazy(), "responses", drops=drops, rows_in=rows_in, rows_kept=prompts.height, info=info,
                 summary=summary)


def _assemble(gen: pl.DataFrame, carried: pl.DataFrame) -> pl.DataFrame:
    if gen.height == 0:
        return carried.with_columns(pl.lit("").alias("response_id"), pl.lit("").alias("response"),
                                    pl.lit(None, pl.String).alias("model")).clear()
    # generation columns win over same-named input columns (e.g. an input `seed` not used as row_params)
    carried = carried.drop([c for c in gen.columns if c != "prompt_id" and c in carried.columns])
    out = gen.join(carried, on="prompt_id", how="left", maintain_order="left")
    out = out.with_columns(pl.col("seed").cast(pl.Int64), pl.col("sample_index").cast(pl.Int32),
                           pl.col("n_tokens").cast(pl.Int32))
    first = ["prompt_id", "prompt"] + (["messages"] if "messages" in out.columns else []) + \
        ["response_id", "response", "model"]
    return out.select(first + [c for c in out.columns if c not in first])
