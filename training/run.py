"""`prefdata train RECIPE.yaml`: parse and validate the recipe, load model + tokenizer + data, make sure the
reference log-probs exist (reference pass), build the step plan and run the loop."""
from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import torch
from rich.console import Console

from prefdata.errors import PrefdataError, RecipeError
from training.attention import set_attention
from training.batches import RefStore
from training.budget import resolve_token_budget
from training.checkpointing import disk_use
from training.data import (
    LIST_REF,
    PAIR_REF,
    PAIR_TOK_REF,
    SPLIT,
    TRAIN_SPLIT,
    DataOptions,
    DatasetHandle,
    build_train_data,
    open_catalog,
    open_dataset,
    select_split,
    table_kind,
    unpaired_ref_columns,
    value_counts,
)
from training.evaluation import EvalSet, last_eval_row, make_eval_set
from training.logps import ADAPTERS_OFF, attn_implementation
from training.loop import RunSetup, train
from training.packing import resolve_layout
from training.plan import make_plan
from training.progress import counted, phase
from training.recipe import (
    TrainRecipe,
    data_options,
    load_train_recipe,
    needs_reference,
    online_reference,
    reference_model,
)
from training.reference import ensure_reference
from training.summary import rows_line
from training.unpaired import kto_balance
from training.vlm_recipe import is_vlm_recipe


def load_model(path: str, *, trust_remote_code: bool, tokenizer: str | None = None,
               dtype: torch.dtype = torch.float32, gguf_file: str | None = None):
    """Weights in `dtype` (train.master_weights), whatever dtype the checkpoint was saved in. Any path
    training/models.py understands: a model folder, a GGUF file (`gguf_file`, or a path ending .gguf; loaded into
    a plain model, so checkpoints save), a run / its final/ / checkpoints/step-N, a LoRA adapter (merged)."""
    from training.models import load_causal_lm

    try:
        lm, tok, _ = load_causal_lm(path, gguf_file=gguf_file, dtype=dtype, trust_remote_code=trust_remote_code,
                                    tokenizer=tokenizer)
    except PrefdataError as e:
        raise RecipeError(str(e), path="model") from None
    return lm, tok


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def use_attention(lm, recipe: TrainRecipe) -> str:
    """`train.attention` on a loaded model (policy, reference, online reference alike: the reference log-probs
    must come from the same attention as training's)."""
    return set_attention(lm, recipe.train.attention, layout=recipe.train.layout, device=_device())


STARTING_POLICY_NOTE = "the recipe sets no reference: the reference is the starting policy ({model})"


def prepare_reference(recipe: TrainRecipe, spec, ds, lm, tok, out_dir: Path, options: DataOptions | None = None,
                      eval_ds: DatasetHandle | None = None, show: bool = True):
    """Run (or skip) the reference pass over the training dataset and, when given, the eval dataset (one
    reference model load for both); returns (dataset, status, eval dataset) with reference columns."""
    model_id = reference_model(recipe, ds.table.column_names)
    if model_id is None:
        if not needs_reference(spec, recipe):
            return ds, {"status": "not needed"}, eval_ds
        if show:   # said, so a run that skips the pass is not silent about where its reference came from
            Console(stderr=True, soft_wrap=True).print(f"reference pass: not needed, {ds.ref} stores the reference "
                                                       "log-probs", highlight=False)
        return ds, {"status": "from dataset", "ref": ds.ref}, eval_ds
    same = Path(model_id).resolve() == Path(recipe.model).resolve() \
        if Path(recipe.model).exists() else model_id == recipe.model
    if not same:
        with phase(f"loading reference model {model_id}", enabled=show):
            ref_lm = load_model(model_id, trust_remote_code=recipe.trust_remote_code,
                                dtype=recipe.train.weights_dtype())[0]
        use_attention(ref_lm, recipe)
    else:
        ref_lm = lm
    ref_lm.to(_device())
    # no-grad forwards keep one layer's activations at a time: budget as if checkpointed
    budget = resolve_token_budget(recipe.train.token_budget, ref_lm, _device(), grad_checkpointing=True,
                                  mixed_precision=torch.cuda.is_available())

    def run(d: DatasetHandle, cache_dir: Path):
        with counted(f"reference pass over {d.ref}", "rows", enabled=show) as advance, \
                torch.autocast("cuda", torch.bfloat16, enabled=torch.cuda.is_available()):
            out = ensure_reference(d, lm=ref_lm, tokenizer=tok, model_id=model_id, progress=advance,
                                    max_length=recipe.train.max_length, device=_device(),
                                    with_tokens="token_logps" in spec.needs, cache_dir=cache_dir,
                                    batch_size=recipe.reference.batch_size, token_budget=budget, options=options,
                                    chunk=recipe.train.logp_chunk,   # the same head memory bound as training
                                    layout=resolve_layout(recipe.train.layout, device=_device(),
                                                          kind=table_kind(d.table.column_names),
                                                          attn_impl=attn_implementation(ref_lm)))
            if out[1]["status"] == "skipped":
                advance.note = f"already done, reference log-probs found in {out[1]['ref']}"
            return out
    ds, status = run(ds, out_dir / "reference")
    if eval_ds is not None:   # its own cache folder: a file cache is keyed by the reference, not the rows
        key = hashlib.sha256(str(eval_ds.ref).encode()).hexdigest()[:12]
        eval_ds, status["eval"] = run(eval_ds, out_dir / "reference" / f"eval-{key}")
    if not recipe.reference.model:
        status["note"] = STARTING_POLICY_NOTE.format(model=recipe.model)
    if not same:
        del ref_lm
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the reference pass's cached blocks back before training sizes its budget
    return ds, status, eval_ds


def online_reference_model(recipe: TrainRecipe, spec, lm):
    """TDPO's reference, kept beside the policy: a frozen copy of reference.model, or (with LoRA and no
    reference.model) the policy itself with its adapters disabled."""
    if not online_reference(spec):
        return None
    if not recipe.reference.model:
        return ADAPTERS_OFF
    ref = load_model(recipe.reference.model, trust_remote_code=recipe.trust_remote_code,
                     dtype=recipe.train.weights_dtype())[0]
    use_attention(ref, recipe)
    return ref.to(_device()).eval().requires_grad_(False)


def _prepare(recipe: TrainRecipe, spec, ds, out_dir: Path, eval_ds: DatasetHandle | None, show: bool = True):
    """Model + tokenizer (a tiny one created when asked), data options, and the reference pass (each phase
    shown on stderr when `show`)."""
    if recipe.make_tiny_model and not Path(recipe.model).exists():
        from training.tiny import make_tiny_model, texts_of_table
        completions = [c for col in ("completion", "response") if col in ds.table.column_names  # unpaired tables
                       for c in ds.table.column(col).to_pylist() if isinstance(c, str)]
        with phase(f"making the tiny model {recipe.model}", enabled=show):
            make_tiny_model(recipe.model, texts_of_table(ds.table) + completions)
    with phase(f"loading model {recipe.model}", enabled=show):
        lm, tok = load_model(recipe.model, trust_remote_code=recipe.trust_remote_code, tokenizer=recipe.tokenizer,
                             dtype=recipe.train.weights_dtype(), gguf_file=recipe.gguf_file)
    use_attention(lm, recipe)   # before the reference pass, which must run the attention training runs
    options = data_options(recipe)
    options.template(tok)  # chat_template: true without a template fails here, before any reference pass
    ds, ref_status, eval_ds = prepare_reference(recipe, spec, ds, lm, tok, out_dir, options, eval_ds, show=show)
    return lm, tok, ds, ref_status, options, eval_ds


def eval_rows(recipe: TrainRecipe, ds: DatasetHandle, eval_ds: DatasetHandle | None) -> tuple[pa.Table, str]:
    """The eval table (the training table's `eval.split` rows, or the eval dataset) cut to its first
    `eval.max_rows` rows, and where it came from."""
    ev = recipe.eval
    table, source = (select_split(ds.table, ev.split), f"{ds.ref} split={ev.split}") if ev.split is not None \
        else (eval_ds.table, eval_ds.ref)
    return (table.slice(0, ev.max_rows) if ev.max_rows else table), source


def build_eval_set(recipe: TrainRecipe, spec, ds: DatasetHandle, eval_ds: DatasetHandle | None, tok,
                   options: DataOptions) -> EvalSet:
    """The eval rows tokenized like training's, with the reference log-probs of the same reference (stored
    columns; zeros for a reference-free loss; TDPO's online reference runs in the eval forward)."""
    table, source = eval_rows(recipe, ds, eval_ds)
    stored = needs_reference(spec, recipe)
    return make_eval_set(table, tok, max_length=recipe.train.max_length, options=options, source=source,
                         required=required_columns(spec, recipe, table_kind(table.column_names), options),
                         has_reference=stored or online_reference(spec), free=not stored)


def required_columns(spec, recipe: TrainRecipe, kind: str, options: DataOptions) -> tuple[str, ...]:
    """Numeric columns a row of a table of this kind cannot be trained (or evaluated) without."""
    required: tuple[str, ...] = ()
    if needs_reference(spec, recipe):
        required = unpaired_ref_columns(kind) if options.unpaired else PAIR_REF if kind == "pairs" else (LIST_REF,)
        if "token_logps" in spec.needs:
            required += PAIR_TOK_REF
    if "rm_margin" in spec.needs:
        required += ("margin",)
    return required


def train_from_recipe(recipe_path: str | Path, *, catalog_path: str | Path | None = None,
                      resume: bool = False) -> dict:
    if is_vlm_recipe(recipe_path):  # a top-level `vlm:` section: multi-image VLM DPO (training/vlm_train.py)
        from training.vlm_train import train_vlm_from_recipe
        return train_vlm_from_recipe(recipe_path, catalog_path=catalog_path, resume=resume)
    recipe = load_train_recipe(recipe_path, catalog_path=catalog_path)
    spec, params = recipe.loss_spec()
    out_dir = Path(recipe.output_dir)
    ds = open_dataset(recipe.dataset, catalog_path)
    ev = recipe.eval
    eval_ds = open_dataset(ev.dataset, catalog_path) if ev is not None and ev.dataset else None
    # under DDP the main process creates the tiny model and runs the reference pass first (one catalog version,
    # one cache file); the others then find both and skip
    from accelerate import PartialState
    state = PartialState(cpu=not torch.cuda.is_available())
    with state.main_process_first():
        lm, tok, ds, ref_status, options, eval_ds = _prepare(recipe, spec, ds, out_dir, eval_ds,
                                                             show=state.is_main_process)
    if state.is_main_process and "note" in ref_status:   # said once, on stderr (stdout may be --json)
        Console(stderr=True, soft_wrap=True).print(f"reference: {ref_status['note']}", highlight=False)

    required = required_columns(spec, recipe, ds.kind, options)
    # a split table trains on its `train` rows only; the reference pass above covered every row, so the held-out
    # rows have their reference log-probs too (one catalog version for the whole table)
    by_split = value_counts(ds.table, SPLIT) if SPLIT in ds.table.column_names else None
    table = select_split(ds.table, TRAIN_SPLIT) if by_split is not None else ds.table
    data = build_train_data(table, tok, max_length=recipe.train.max_length, required=required, options=options)
    if not data.groups:
        raise PrefdataError(f"{recipe.dataset}: no trainable rows ({dict(data.dropped)})")
    if state.is_main_process:   # every drop and its reason, where training decides it (also in the summary)
        Console(stderr=True, soft_wrap=True).print(rows_line(len(data.groups), data.rows_in, data.dropped),
                                                   highlight=False)
    eval_set = build_eval_set(recipe, spec, ds, eval_ds, tok, options) if ev is not None else None
    if options.unpaired:
        data.info["kto_balance"] = kto_balance(data, params)
    if recipe.lora is not None:
        from peft import LoraConfig

        from training.peft_compat import get_peft_model
        lm = get_peft_model(lm, LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha,
                                           lora_dropout=recipe.lora.dropout,
                                           target_modules=list(recipe.lora.target_modules), task_type="CAUSAL_LM"))
    t = recipe.train
    plan = make_plan(data.stage, batch_size=t.batch_size, grad_accum=t.grad_accum, epochs=t.epochs, seed=t.seed,
                     curriculum=recipe.curriculum.mode, max_steps=t.max_steps)
    log_event = None
    if ds.name is not None:
        cat = open_catalog(ds.catalog_path)

        def log_event(kind: str, record: dict, _cat=cat, _ds=ds) -> None:
            _cat.log_event(_ds.name, _ds.version, kind, {"dataset": _ds.ref, **record})

    info = {"reference": ref_status, "rows_in": data.rows_in, "rows_trained": len(data.groups),
            "rows_dropped": dict(data.dropped), **data.info}
    if by_split is not None:   # rows_in counts the train rows; the others are held out, not dropped
        info["rows_by_split"] = {str(k): n for k, n in by_split.items()}
    if eval_set is not None:
        info["eval_rows"] = eval_set.info
    online_ref = online_reference_model(recipe, spec, lm)
    if online_ref is not None:
        info["reference"] = {"status": "online", "model": recipe.reference.model or "policy with LoRA adapters off"}
    setup = RunSetup(recipe=recipe, spec=spec, params=params, lm=lm, tokenizer=tok, data=data,
                     ref=RefStore(data, free=not needs_reference(spec, recipe)), plan=plan, out_dir=out_dir,
                     dataset_ref=ds.ref, resume=resume, log_event=log_event, info=info, online_ref=online_ref,
                     eval_set=eval_set)
    result = train(setup)
    if eval_set is not None:   # read back: a resumed run's last eval may predate the resume
        result["eval"] = last_eval_row(out_dir / "metrics.jsonl")
    (out_dir / "run.json").write_text(json.dumps(result, indent=2, default=str))
    result["disk"] = disk_use(out_dir)   # after run.json, so it counts everything the run wrote
    return result
