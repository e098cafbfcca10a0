"""`prefdata eval RECIPE`: a checkpoint against a baseline on held-out prompts, written as one catalog version.

1. Check everything that can be checked without model weights (prefdata/eval_recipe.py, then here): the prompts
   dataset and its split, the model and baseline paths (a LoRA adapter's or a checkpoint's base included), the
   held-out pairs' columns, the two tokenizers when `kl: true`. The baseline defaults to the model's run's
   starting model (its recipe's `model`). Prompts that the model trained on are counted and warned about.
2. Generate one response per prompt with the model and with the baseline through the `generate` step (same
   settings, same per-prompt seeds, so a model evaluated against itself ties everywhere; resumable shards under
   `<catalog>/_work/eval/<name>/`). A LoRA adapter or trainer checkpoint (merged), a GGUF file (de-quantized once)
   or a hub model is first written there as a plain model folder, which the generate backends and the log-prob
   passes load like any model.
3. Score both responses with the score step's scorers (rules, reward_model, judge, code_tests, clip) and/or the
   pairwise judge (both orders). A prompt whose response a scorer cannot score is dropped and counted by reason;
   a scorer that scores no prompt is an error. `winner_by` decides each prompt's winner (ties within tie_eps).
4. KL: log pi(y|x) - log pi_ref(y|x) of the model's response y with the baseline as pi_ref, summed over the
   response tokens exactly as training scores a response (training/encode.py + training/forward.py: the same
   prompt rendering, chat template and end-of-sequence token).
5. Held-out pairs (optional): the trainer's preference metrics (training/evaluation.py) of the model with the
   baseline as the reference.
6. The `eval` table -> prefdata.eval_metrics.summarize -> ONE catalog version (lineage names the checkpoint, its
   run, step, training dataset and config hash, the baseline, the prompts and the summary), and an `eval` event
   on the training dataset so `prefdata log <training dataset>` lists the evaluations of its checkpoints.
Nothing is written to the catalog before every step has succeeded.

Lengths are response token counts from generation (`n_tokens`: sampled tokens, the stop token included)."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from prefdata.errors import DatasetNotFound, PrefdataError, RecipeError, VersionNotFound
from prefdata.eval_recipe import EvalRecipe, GenerateSpec, PreferenceSpec, PromptsSpec, load_eval_recipe

SIDES = ("model", "baseline")
SAMPLER = "sample"     # the generate step's model name for both sides: equal names give equal per-prompt seeds
# columns of pairs / lists / responses tables that describe responses, not the prompt: never carried
NOT_PROMPT_LEVEL = ("chosen", "rejected", "chosen_id", "rejected_id", "score_chosen", "score_rejected", "margin",
                    "weight", "stage", "strategy", "responses", "response_ids", "scores", "ranks", "response",
                    "response_id", "model", "score", "rank", "split", "sample_index", "seed", "gen_params",
                    "finish_reason", "n_tokens", "images_chosen", "images_rejected", "video_chosen",
                    "video_rejected", "caption", "caption_rejected", "segment_pref", "scores_chosen",
                    "scores_rejected", "ref_logps")
REF_PREFIXES = ("ref_logp", "ref_tok_logp")


@dataclass
class Prompts:
    frame: pl.DataFrame            # one row per prompt: prompt_id, prompt, prompt-level columns
    label: str                     # name@version or the file path
    ref: str | None                # catalog name@version (None for a file)
    info: dict = field(default_factory=dict)


@dataclass
class Side:
    """A model or the baseline: where it is, and what the generate step loads."""
    role: str
    source: Any                    # training.models.ModelSource
    tokenizer: Any = None
    folder: Path | None = None     # the plain model folder generation and log-probs load (plain_folder)


def _recipe_error(file: str, path: str, e: Exception) -> RecipeError:
    return RecipeError(str(e).splitlines()[0] if str(e) else type(e).__name__, path=path, file=file)


# -------------------------------------------------------------------------------------------------- prompts
def _catalog_table(cat, ref: str, *, file: str, path: str, columns: list[str] | None = None) -> tuple[pa.Table, str]:
    from catalog import parse_ref
    from catalog.errors import InvalidName
    try:
        name, version = parse_ref(ref)
        if not cat.exists(name):
            raise DatasetNotFound(name, str(cat.root))
        v = cat.resolve(name, version)
        return cat.read(name, v, columns=columns), f"{name}@{v}"
    except (InvalidName, DatasetNotFound, VersionNotFound) as e:
        raise _recipe_error(file, path, e) from None


def _prompt_ids(df: pl.DataFrame) -> pl.DataFrame:
    if "prompt_id" in df.columns:
        return df
    from prefdata.ingest.ids import prompt_ids
    return df.with_columns(pl.Series("prompt_id", prompt_ids(df["prompt"].fill_null("").to_list()), pl.String))


def load_prompts(spec: PromptsSpec, cat, *, file: str) -> Prompts:
    """One row per distinct prompt (first occurrence, table order), the split selected, the first `limit` kept."""
    if spec.dataset is not None:
        table, ref = _catalog_table(cat, spec.dataset, file=file, path="prompts.dataset")
        label = ref
    else:
        from prefdata.ingest import read_source
        try:
            table = read_source(Path(spec.path), format=spec.format or "prompts").table
        except PrefdataError as e:
            raise _recipe_error(file, "prompts.path", e) from None
        ref, label = None, str(spec.path)
    df = pl.from_arrow(table)
    if "prompt" not in df.columns:
        raise RecipeError(f"{label} has no 'prompt' column", path="prompts", file=file)
    rows = df.height
    if spec.split is not None:
        if "split" not in df.columns:
            raise RecipeError(f"{label} has no `split` column (the split builder step writes one)",
                              path="prompts.split", file=file)
        df = df.filter(pl.col("split") == spec.split)
        if df.height == 0:
            raise RecipeError(f"{label} has no rows with split {spec.split!r}", path="prompts.split", file=file)
    df = _prompt_ids(df).unique("prompt_id", keep="first", maintain_order=True)
    distinct = df.height
    if spec.limit is not None:
        df = df.head(spec.limit)
    keep = [c for c in df.columns if c not in NOT_PROMPT_LEVEL and not c.startswith(REF_PREFIXES)]
    df = df.select(["prompt_id", "prompt"] + [c for c in keep if c not in ("prompt_id", "prompt")])
    info = {"source": label, "split": spec.split, "rows": rows, "distinct_prompts": distinct, "limit": spec.limit,
            "prompts": df.height}
    return Prompts(df, label, ref, info)


def _id_columns(dataset: str, cat) -> pa.Table:
    """prompt_id (else prompt) and split of a catalog dataset or a file, reading only those columns."""
    from training.data import is_file_ref, read_file

    def wanted(names) -> list[str]:
        return [c for c in ("prompt_id" if "prompt_id" in names else "prompt", "split") if c in names]

    if is_file_ref(dataset):
        p = Path(dataset)
        if p.suffix == ".parquet" and p.exists():
            import pyarrow.parquet as pq
            return pq.read_table(p, columns=wanted(pq.read_schema(p).names))
        table = read_file(dataset)
        return table.select(wanted(table.column_names))
    from catalog import parse_ref
    name, version = parse_ref(dataset)      # InvalidName / DatasetNotFound are PrefdataErrors: reported, not raised
    return cat.read(name, version, columns=wanted(cat.dataset(name, version).schema.names))


def training_overlap(prompts: Prompts, dataset: str | None, cat) -> dict | None:
    """How many eval prompts the model trained on: prompt_ids of the training dataset's `train` rows (all rows
    when it has no split column). None when the model records no training dataset; a dataset that cannot be
    found is reported, not an error."""
    if not dataset:
        return None
    try:
        table = _id_columns(dataset, cat)
    except PrefdataError as e:
        return {"training_dataset": dataset, "checked": False, "reason": str(e).splitlines()[0]}
    df = pl.from_arrow(table)
    if "split" in df.columns:
        df = df.filter(pl.col("split") == "train")
    if "prompt_id" not in df.columns and "prompt" not in df.columns:
        return {"training_dataset": dataset, "checked": False, "reason": "no prompt_id or prompt column"}
    train_ids = _prompt_ids(df.select([c for c in ("prompt_id", "prompt") if c in df.columns]))["prompt_id"]
    n = int(prompts.frame["prompt_id"].is_in(train_ids.implode()).sum())
    return {"training_dataset": dataset, "checked": True, "rows": "train" if "split" in table.column_names
            else "all", "prompts_in_training": n, "prompts": prompts.frame.height}


# -------------------------------------------------------------------------------------------------- models
def locate_sides(recipe: EvalRecipe, *, file: str) -> tuple[Side, Side]:
    from training.models import locate_model
    try:
        model = locate_model(recipe.model, gguf_file=recipe.gguf_file)
    except PrefdataError as e:
        raise _recipe_error(file, "model", e) from None
    if recipe.baseline is not None:
        base, gguf, where = recipe.baseline, recipe.baseline_gguf_file, "baseline"
    else:
        start = model.info.get("base_model")
        if model.info.get("run_dir") is None or not start:
            raise RecipeError(f"{recipe.model} is not a training run's checkpoint, so there is no starting model to "
                              "compare with: set baseline", path="baseline", file=file)
        base, gguf, where = start, model.info.get("base_gguf_file"), "baseline (the run's starting model)"
    try:
        baseline = locate_model(base, gguf_file=gguf)
    except PrefdataError as e:
        raise _recipe_error(file, "baseline", e if where == "baseline" else PrefdataError(f"{where}: {e}")) from None
    return Side("model", model), Side("baseline", baseline)


def check_tokenizers(recipe: EvalRecipe, model: Side, baseline: Side, *, file: str) -> None:
    """Load both tokenizers. KL and the held-out preference metrics score one token sequence under both models,
    so with either of them the two vocabularies must be the same."""
    from training.models import load_tokenizer
    model.tokenizer = load_tokenizer(model.source, trust_remote_code=recipe.trust_remote_code)
    baseline.tokenizer = load_tokenizer(baseline.source, trust_remote_code=recipe.trust_remote_code)
    if (recipe.kl or recipe.preference is not None) and model.tokenizer.get_vocab() != baseline.tokenizer.get_vocab():
        what, path = ("KL", "kl") if recipe.kl else ("the held-out preference metrics", "preference")
        raise RecipeError(f"the baseline {baseline.source.path!r} has another tokenizer than the model "
                          f"{model.source.path!r} ({len(baseline.tokenizer)} vs {len(model.tokenizer)} tokens): "
                          f"{what} needs both models' log-probs of the same tokens"
                          + ("; set kl: false" if recipe.kl else ""), path=path, file=file)


def _source_key(src) -> str:
    """Identity of the files a source loads from (path, sizes, mtimes): a plain copy is rebuilt when they change."""
    loc = Path(src.location)
    if src.load == "gguf":
        files = [loc / src.gguf_file]
    elif src.load in ("adapter", "state"):
        files = sorted(p for p in loc.iterdir() if p.is_file())
    else:
        files = []
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    base = _source_key(src.base) if src.base is not None else None
    return hashlib.sha256(json.dumps([src.path, str(loc), stats, base]).encode()).hexdigest()[:16]


def plain_folder(side: Side, work: Path, recipe: EvalRecipe) -> Path:
    """A model folder that `from_pretrained` loads as is, for generation and log-probs: the model's own folder, or a
    plain copy written once under `work` (renamed into place when complete) of a GGUF (de-quantized once instead
    of at every load), a LoRA adapter or trainer checkpoint (merged), or a hub model."""
    src = side.source
    if src.load == "pretrained":
        return Path(src.location).resolve()
    from training.models import load_source
    out = work / "models" / f"{side.role}-{_source_key(src)}"
    if not out.is_dir():
        lm, tok = load_source(src, trust_remote_code=recipe.trust_remote_code)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.replace(out)
        del lm
    return out


def load_plain(side: Side, recipe: EvalRecipe):
    """(model, tokenizer) from the side's plain folder."""
    from training.models import ModelSource, load_source
    folder = side.folder
    return load_source(ModelSource(str(folder), "hf", "pretrained", folder), trust_remote_code=recipe.trust_remote_code)


def generate_side(side: Side, prompts: Prompts, recipe: EvalRecipe, work: Path, ctx) -> tuple[pl.DataFrame, dict]:
    from builders.backends import ModelSpec
    from builders.generate import GenerateConfig, build_generate
    g: GenerateSpec = recipe.generate
    side.folder = plain_folder(side, work, recipe)
    spec = ModelSpec(name=SAMPLER, backend=g.backend, path=str(side.folder), dtype=g.dtype, device=g.device,
                     batch_size=g.batch_size, chat_template=g.chat_template, system_prompt=g.system_prompt,
                     trust_remote_code=recipe.trust_remote_code, max_model_len=g.max_model_len,
                     gpu_memory_utilization=g.gpu_memory_utilization)
    cfg = GenerateConfig(models=[spec], n=1, sampling=g.sampling, seed=g.seed, prompt_template=g.prompt_template,
                         shard_size=g.shard_size)
    built = build_generate(prompts.frame.lazy(), cfg, ctx)
    out = built.frame.collect()
    return out, {"drops": dict(built.drops), **{k: built.info[k] for k in ("shards", "shards_resumed",
                                                                            "finish_reasons")}}


# -------------------------------------------------------------------------------------------------- scoring
@dataclass
class Scores:
    model: dict[str, np.ndarray]             # scorer -> float64 per prompt (NaN: not scored)
    baseline: dict[str, np.ndarray]
    reasons: list[pl.Series]                 # per scorer and side: why a prompt is not scored (null where it is)
    extra: dict[str, list]                   # extra columns (judgments, position consistency)
    info: dict


def score_prompts(both: pl.DataFrame, n: int, recipe: EvalRecipe, ctx) -> Scores:
    """`both`: the model's n responses, then the baseline's n (same prompt order). Each pointwise scorer runs
    once over all 2n rows through the score step's scorer modules (called per row set rather than through
    build_score, which drops unscorable rows: the eval needs each row's reason to drop the whole prompt)."""
    import importlib

    from builders.scorers.judge import judge_pairwise
    model, baseline, reasons, extra, info = {}, {}, [], {}, {}
    for sc in recipe.scorers:
        if sc.kind == "pairwise_judge":
            res = judge_pairwise(both["prompt"][:n].to_list(), both["response"][:n].to_list(),
                                 both["response"][n:].to_list(), sc, ctx)
            model[sc.name], baseline[sc.name] = res.pref, 1.0 - res.pref
            reasons.append(pl.Series(res.reasons, dtype=pl.String))
            extra[f"judgment_{sc.name}"] = [t[0] for t in res.texts]
            extra[f"judgment_swapped_{sc.name}"] = [t[1] for t in res.texts]
            extra[f"position_consistent_{sc.name}"] = res.consistent.tolist()
            info[sc.name] = {"kind": sc.kind, **res.info}
        else:
            res = importlib.import_module(f"builders.scorers.{sc.kind}").score(both, sc, ctx)
            values = np.asarray(res.values, dtype=np.float64)
            model[sc.name], baseline[sc.name] = values[:n], values[n:]
            r = pl.Series(res.reasons, dtype=pl.String)
            reasons += [r[:n] + " (model response)", r[n:] + " (baseline response)"]
            for col, vals in res.extra.items():
                extra[col], extra[f"baseline_{col}"] = list(vals[:n]), list(vals[n:])
            info[sc.name] = {"kind": sc.kind, **res.info}
        ok = np.isfinite(model[sc.name]) & np.isfinite(baseline[sc.name])
        if not ok.any():
            why = pl.Series(res.reasons, dtype=pl.String).drop_nulls()
            reason = why.mode().sort()[0] if why.len() else "no prompt scored on both sides"
            raise PrefdataError(f"scorer {sc.name!r} could not score any row ({reason})")
        info[sc.name]["prompts_scored"] = int(ok.sum())
    return Scores(model, baseline, reasons, extra, info)


# -------------------------------------------------------------------------------------------------- log-probs
def _kl_rows(prompts: pl.DataFrame, tok, g: GenerateSpec) -> tuple[list, list[bool]]:
    """Each prompt as training encodes it, rendered as the generate step rendered it (prompt_template, system
    prompt, chat template when the tokenizer has one and chat_template is auto)."""
    from builders.backends import GenRequest, ModelSpec
    from builders.backends.transformers_backend import render_prompt
    plain = ModelSpec(name=SAMPLER, path=".", chat_template="never")
    has_msgs = "messages" in prompts.columns
    texts = [g.prompt_template.format(prompt=p) for p in prompts["prompt"].to_list()]
    msgs = prompts["messages"].to_list() if has_msgs else [None] * len(texts)
    chat = g.chat_template == "auto" and getattr(tok, "chat_template", None) is not None
    out = []
    for text, m in zip(texts, msgs, strict=True):
        if chat:
            conv = list(m) if m else [{"role": "user", "content": text}]
            if g.system_prompt and not any(x["role"] == "system" for x in conv):
                conv.insert(0, {"role": "system", "content": g.system_prompt})
            out.append(conv)
        else:
            out.append(render_prompt(tok, GenRequest("", text, list(m) if m else None, g.sampling, 0), plain)[0])
    return out, [chat] * len(out)


def response_logps(lm, tok, prompts: list, responses: list[str], chat: list[bool], *, device,
                   max_length: int = 1 << 30) -> np.ndarray:
    """Summed log-probs of each response given its prompt (training's tokenization, masking and forward), in the
    model's own precision (fp32 here: no bf16 autocast, whose rounding would swamp small log-ratios); NaN where
    training's encoding drops the row."""
    import torch

    from training.budget import resolve_token_budget
    from training.encode import encode_groups
    from training.forward import group_logps
    from training.logps import SequenceLogps, attn_implementation
    from training.packing import resolve_layout

    enc = encode_groups(tok, prompts, [[r] for r in responses], max_length=max_length, chat=chat)
    out = np.full(len(responses), np.nan)
    if not enc.groups:
        return out
    lm.to(device).eval()
    budget = resolve_token_budget(None, lm, device, grad_checkpointing=True, mixed_precision=False)
    layout = resolve_layout("auto", device=device, kind="pairs", attn_impl=attn_implementation(lm))
    with torch.no_grad():
        res = group_logps(SequenceLogps(lm), enc.groups, pad_id=tok.pad_token_id, device=device,
                          token_budget=budget, layout=layout)
    out[[g.row for g in enc.groups]] = res.sums.double().cpu().numpy()
    return out


# -------------------------------------------------------------------------------------------------- preference
PREF_KINDS = {"pair": ("pairs",), "list": ("lists",), "unpaired": ("pairs", "unpaired")}


def preference_table(spec: PreferenceSpec, cat, *, file: str) -> tuple[pa.Table, str]:
    """The held-out rows, checked against what the loss needs; the stored reference columns are dropped (the
    reference here is the baseline, whose log-probs are computed)."""
    from training.data import is_file_ref, open_dataset, table_kind
    if is_file_ref(spec.dataset):
        try:
            h = open_dataset(spec.dataset)
        except PrefdataError as e:
            raise _recipe_error(file, "preference.dataset", e) from None
        table, ref = h.table, h.ref
    else:
        table, ref = _catalog_table(cat, spec.dataset, file=file, path="preference.dataset")
    lspec, _ = spec.loss_spec()
    cols = table.column_names
    kind = table_kind(cols)
    want = PREF_KINDS.get(lspec.kind)
    if want is None:
        raise RecipeError(f"loss {spec.loss!r} is a {lspec.kind} loss; preference metrics cover pair, list and "
                          "unpaired losses", path="preference.loss", file=file)
    need = {"pairs": "prompt, chosen, rejected", "lists": "prompt, responses, scores",
            "unpaired": "prompt, completion, label"}
    if kind not in want:
        raise RecipeError(f"{ref} lacks the columns loss {spec.loss!r} needs: a {' or '.join(want)} table "
                          f"({'; '.join(need[k] for k in want)}); its columns are {', '.join(cols[:12])}",
                          path="preference.dataset", file=file)
    for needs, col in (("rm_margin", ("margin",)), ("other_rewards", ("scores_chosen", "scores_rejected"))):
        missing = [c for c in col if needs in lspec.needs and c not in cols]
        if missing:
            raise RecipeError(f"{ref} lacks column {missing[0]!r}, which loss {spec.loss!r} needs",
                              path="preference.dataset", file=file)
    if spec.split is not None:
        if "split" not in cols:
            raise RecipeError(f"{ref} has no `split` column", path="preference.split", file=file)
        import pyarrow.compute as pc
        table = table.filter(pc.equal(table.column("split"), spec.split).fill_null(False))
        if table.num_rows == 0:
            raise RecipeError(f"{ref} has no rows with split {spec.split!r}", path="preference.split", file=file)
    if spec.max_rows is not None:
        table = table.slice(0, spec.max_rows)
    table = table.drop_columns([c for c in table.column_names if c.startswith(REF_PREFIXES) or c == "ref_logps"])
    return table, ref


def table_kind_of(table: pa.Table) -> str:
    from training.data import table_kind
    return table_kind(table.column_names)


# -------------------------------------------------------------------------------------------------- the table
def eval_table(prompts: pl.DataFrame, gen: dict[str, pl.DataFrame], scores: Scores, logratio: np.ndarray | None,
               recipe: EvalRecipe, keep: np.ndarray) -> pa.Table:
    from prefdata.eval_metrics import winners_from_scores
    m, b = gen["model"], gen["baseline"]
    cols: dict[str, pl.Series] = {
        "prompt_id": prompts["prompt_id"], "prompt": prompts["prompt"].cast(pl.String),
        "response": m["response"].cast(pl.String), "baseline_response": b["response"].cast(pl.String)}
    d = recipe.decider
    cols["winner"] = pl.Series(["?"] * prompts.height, dtype=pl.String)
    for sc in recipe.scorers:
        cols[f"score_{sc.name}"] = pl.Series(scores.model[sc.name], dtype=pl.Float64)
        cols[f"baseline_score_{sc.name}"] = pl.Series(scores.baseline[sc.name], dtype=pl.Float64)
    cols["length"] = m["n_tokens"].cast(pl.Int64)
    cols["baseline_length"] = b["n_tokens"].cast(pl.Int64)
    cols["logratio"] = pl.Series(logratio if logratio is not None else np.full(prompts.height, np.nan),
                                 dtype=pl.Float64)
    cols["finish_reason"] = m["finish_reason"].cast(pl.String)
    cols["baseline_finish_reason"] = b["finish_reason"].cast(pl.String)
    for name, vals in scores.extra.items():
        cols[name] = pl.Series(name, vals)
    df = pl.DataFrame(cols).filter(pl.Series(keep))
    df = df.with_columns(pl.Series("winner", winners_from_scores(df[f"score_{d}"].to_numpy(),
                                                                 df[f"baseline_score_{d}"].to_numpy(),
                                                                 tie_eps=recipe.tie_eps), dtype=pl.String),
                         pl.col("logratio").fill_nan(None))
    table = df.to_arrow()
    # the contract's plain `string` (polars writes large_string)
    return table.cast(pa.schema([f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f
                                 for f in table.schema]))


def _drops(reasons: list[pl.Series], n: int) -> tuple[np.ndarray, dict[str, int]]:
    """Prompts every scorer scored on both sides (keep mask) and the others counted by their first reason."""
    if not reasons:
        return np.ones(n, dtype=bool), {}
    first = pl.DataFrame({f"r{i}": r for i, r in enumerate(reasons)}).select(
        pl.coalesce(pl.all()).alias("reason"))["reason"]
    counts = first.drop_nulls().value_counts()
    return first.is_null().to_numpy(), {r: int(c) for r, c in counts.iter_rows()}


# -------------------------------------------------------------------------------------------------- the run
@dataclass
class EvalResult:
    name: str
    version: int
    ref: str
    summary: dict
    rows: int
    rows_dropped: dict[str, int]
    warnings: list[str]
    checkpoint: dict
    baseline: dict
    prompts: str
    event: dict | None


def work_dir(cat, name: str) -> Path:
    """Generation shards and merged model copies of an eval in progress (removed once its version is written)."""
    return Path(cat.root) / "_work" / "eval" / name


def _device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Plan:
    """What an eval will do, checked without model weights (phase 1)."""
    recipe: EvalRecipe
    file: str
    prompts: Prompts
    model: Side
    baseline: Side
    preference: tuple[pa.Table, str] | None     # (held-out rows, their name@version or file)
    overlap: dict | None


def plan_eval(recipe_path: str | Path, cat, *, name: str | None = None) -> Plan:
    """Parse and check everything that needs no model weights: recipe, prompts, model and baseline paths (an
    adapter's base included), held-out pairs' columns, tokenizers; count the prompts the model trained on."""
    file = str(recipe_path)
    recipe = load_eval_recipe(recipe_path, name=name)
    prompts = load_prompts(recipe.prompts, cat, file=file)
    model, baseline = locate_sides(recipe, file=file)
    pref = preference_table(recipe.preference, cat, file=file) if recipe.preference is not None else None
    check_tokenizers(recipe, model, baseline, file=file)
    overlap = training_overlap(prompts, model.source.info.get("dataset"), cat)
    return Plan(recipe, file, prompts, model, baseline, pref, overlap)


def overlap_warning(overlap: dict | None) -> str | None:
    if overlap and overlap.get("prompts_in_training"):
        return (f"{overlap['prompts_in_training']} of {overlap['prompts']} eval prompts are in the model's training "
                f"data ({overlap['training_dataset']}, {overlap['rows']} rows): those win rates are not held-out")
    if overlap and not overlap.get("checked"):
        return f"could not check the eval prompts against the training data: {overlap['reason']}"
    return None


def log_probs(plan: Plan, frame: pl.DataFrame, responses: pl.Series, keep: np.ndarray
              ) -> tuple[np.ndarray | None, dict, dict | None]:
    """(logratio per prompt or None, KL info, held-out preference metrics or None): phases 4 and 5, the model and
    then the baseline loaded from their plain folders, both kept for the preference metrics."""
    recipe, device = plan.recipe, _device()
    kl_info: dict = {"computed": recipe.kl}
    if not recipe.kl and plan.preference is None:
        return None, kl_info, None
    lm, tok = load_plain(plan.model, recipe)
    ref_lm, _ = load_plain(plan.baseline, recipe)
    logratio = None
    if recipe.kl:
        rows, chat = _kl_rows(frame.filter(pl.Series(keep)), tok, recipe.generate)
        resp = responses.filter(pl.Series(keep)).to_list()
        pol = response_logps(lm, tok, rows, resp, chat, device=device)
        ref = response_logps(ref_lm, tok, rows, resp, chat, device=device)
        logratio = np.full(frame.height, np.nan)
        logratio[keep] = pol - ref
        kl_info.update(chat_template=bool(chat and chat[0]), responses_without_logratio=int(np.isnan(pol).sum()))
    pref_metrics = None
    if plan.preference is not None:
        from training.budget import resolve_token_budget
        from training.evaluation import preference_metrics
        from training.logps import attn_implementation
        from training.packing import resolve_layout
        p, (table, ref_name) = recipe.preference, plan.preference
        lm.to(device)
        budget = resolve_token_budget(None, lm, device, grad_checkpointing=True, mixed_precision=device == "cuda")
        layout = resolve_layout("auto", device=device, kind=table_kind_of(table), attn_impl=attn_implementation(lm))
        pref_metrics = {"dataset": ref_name, "split": p.split, "loss": p.loss, "beta": p.beta,
                        "reference": plan.baseline.source.path,
                        **preference_metrics(lm, tok, table, loss=p.loss, loss_params={"beta": p.beta},
                                             max_length=p.max_length, batch_size=p.batch_size, device=device,
                                             reference_lm=ref_lm.to(device), token_budget=budget, layout=layout)}
    return logratio, kl_info, pref_metrics


def run_eval(recipe_path: str | Path, cat, *, name: str | None = None, progress: bool = True,
             warn=None) -> EvalResult:
    """Run an eval recipe against catalog `cat` (the phases of the module doc); `warn(message)` is called for each
    warning (they are also returned)."""
    from builders.base import StepContext
    from prefdata.eval_metrics import summarize

    plan = plan_eval(recipe_path, cat, name=name)                                     # 1
    recipe, prompts, model, baseline = plan.recipe, plan.prompts, plan.model, plan.baseline
    warnings = [w for w in (overlap_warning(plan.overlap),) if w]
    for w in warnings:
        if warn is not None:
            warn(w)

    work = work_dir(cat, recipe.name)                                                 # 2
    ctx = StepContext(base_dir=Path.cwd(), work_dir=work / "generate", catalog=cat, seed=recipe.generate.seed,
                      progress=progress)
    gen, gen_info = {}, {}
    for side in (model, baseline):
        gen[side.role], gen_info[side.role] = generate_side(side, prompts, recipe, work, ctx)
    # both sides saw the same prompts (generate drops only empty prompts, per prompt): align on the model's order
    order = gen["model"].select("prompt_id")
    gen["baseline"] = order.join(gen["baseline"], on="prompt_id", how="left", maintain_order="left")
    frame = order.join(prompts.frame, on="prompt_id", how="left", maintain_order="left")
    if frame.height == 0:
        raise PrefdataError(f"no prompt to evaluate in {prompts.label} ({gen_info['model']['drops']})")

    both = pl.concat([frame.with_columns(gen[s]["response"]) for s in SIDES], how="vertical_relaxed")
    scores = score_prompts(both, frame.height, recipe, ctx)                           # 3
    keep, drops = _drops(scores.reasons, frame.height)
    if not keep.any():
        raise PrefdataError(f"no prompt was scored by every scorer on both sides ({drops})")

    logratio, kl_info, pref_metrics = log_probs(plan, frame, gen["model"]["response"], keep)   # 4, 5

    table = eval_table(frame, gen, scores, logratio, recipe, keep)                    # 6
    summary = summarize(table, scorers=[s.name for s in recipe.scorers], n_boot=recipe.bootstrap.n,
                        seed=recipe.bootstrap.seed, winner_by=recipe.decider)
    summary["preference"] = pref_metrics
    dropped = {**gen_info["model"]["drops"], **drops}
    checkpoint, base_info = dict(model.source.info), dict(baseline.source.info)
    record = {"checkpoint": checkpoint, "baseline": base_info, "prompts": prompts.label,
              "prompt_selection": prompts.info, "scorers": [s.name for s in recipe.scorers],
              "winner_by": recipe.decider, "tie_eps": recipe.tie_eps,
              "generate": recipe.generate.model_dump(mode="json"), "generation": gen_info,
              "scorer_info": scores.info, "kl": kl_info, "overlap": plan.overlap, "summary": summary}
    lineage = {"builder": "eval", "kind": "eval", "recipe": plan.file, "config": recipe.canonical(),
               "inputs": list(dict.fromkeys(r for r in (prompts.ref or prompts.label,
                                                        plan.preference[1] if plan.preference else None) if r)),
               "rows_in": frame.height + sum(gen_info["model"]["drops"].values()), "rows_kept": table.num_rows,
               "rows_dropped": dropped, "eval": _finite(record)}
    version = cat.write(recipe.name, table, message=f"eval of {recipe.model} vs {baseline.source.path} on "
                        f"{prompts.label}", lineage=lineage)
    ref = f"{recipe.name}@{version}"
    event = _log_event(cat, checkpoint, ref, summary)
    shutil.rmtree(work, ignore_errors=True)
    return EvalResult(recipe.name, version, ref, summary, table.num_rows, dropped, warnings, checkpoint, base_info,
                      prompts.label, event)


def _finite(obj):
    """NaN/inf -> None (lineage is canonical JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def _log_event(cat, checkpoint: dict, eval_ref: str, summary: dict) -> dict | None:
    """An `eval` event on the dataset version the checkpoint trained on, when it is in this catalog."""
    from catalog import parse_ref
    from catalog.errors import InvalidName
    dataset = checkpoint.get("dataset")
    if not dataset:
        return None
    try:
        name, version = parse_ref(dataset)
    except InvalidName:
        return None            # trained on a file
    if not cat.exists(name):
        return None
    kl = summary.get("kl")
    record = {"eval_dataset": eval_ref, "checkpoint": checkpoint.get("path"), "step": checkpoint.get("step"),
              "run_dir": checkpoint.get("run_dir"), "config_sha256": checkpoint.get("config_sha256"),
              "win_rate": summary["win_rate"], "win_rate_ci": summary["win_rate_ci"],
              "lc_win_rate": summary["lc_win_rate"], "kl": kl["mean"] if kl else None}
    return cat.log_event(name, version, "eval", _finite(record))


def result_dict(res: EvalResult) -> dict:
    return {"dataset": res.ref, "name": res.name, "version": res.version, "rows": res.rows,
            "rows_dropped": res.rows_dropped, "warnings": res.warnings, "checkpoint": res.checkpoint,
            "baseline": res.baseline, "prompts": res.prompts, "event": res.event is not None,
            "summary": _finite(res.summary)}


def _fmt(x, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def summary_table(res: EvalResult):
    """A rich table of the summary (the full dict is `prefdata eval --json`)."""
    from rich.table import Table
    s = res.summary
    t = Table(title=f"{res.ref}: {res.checkpoint.get('path')} vs {res.baseline.get('path')}", show_header=True)
    t.add_column("metric")
    t.add_column("model", justify="right")
    t.add_column("baseline", justify="right")
    lo, hi = s["win_rate_ci"]
    t.add_row(f"win rate (by {s['winner_by']}, ties half)",
              f"{s['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]", f"{int(s['level'] * 100)}% bootstrap, n={s['n']}")
    t.add_row("length-controlled win rate", f"{s['lc_win_rate']:.3f}", "")
    t.add_row("wins / ties / losses", f"{s['wins']} / {s['ties']} / {s['losses']}", "")
    for stat in ("mean", "median"):
        t.add_row(f"length ({stat}, tokens)", f"{s['length']['model'][stat]:.1f}",
                  f"{s['length']['baseline'][stat]:.1f}")
    kl = s.get("kl")
    if kl:
        t.add_row("KL(model ‖ baseline) per response", f"{kl['mean']:.4g} ± {_fmt(kl['se'], '.2g')}", f"n={kl['n']}")
    for name, v in s["scorers"].items():
        t.add_row(f"score {name} (mean)", _fmt(v["model_mean"]), _fmt(v["baseline_mean"]))
    pref = s.get("preference")
    if pref:
        t.add_row("held-out pairs (baseline = reference)",
                  f"{pref['dataset']}" + (f" {pref['split']}" if pref.get("split") else ""),
                  f"{pref['loss']}, beta {pref['beta']}")
        for k, v in pref.items():
            if k.startswith("eval/") and isinstance(v, (int, float)) and not isinstance(v, bool):
                t.add_row(f"  {k.removeprefix('eval/')}", _fmt(v, ".4g"), "")
    return t


