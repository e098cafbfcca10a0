"""`prefdata train RECIPE.yaml`: parse and validate the recipe, load model + tokenizer + data, make sure the
reference log-probs exist (reference pass), build the step plan and run the loop."""
from __future__ import annotations

import gc
import json
from pathlib import Path

import torch

from prefdata.errors import PrefdataError, RecipeError
from training.batches import RefStore
from training.budget import resolve_token_budget
from training.data import (
    LIST_REF,
    PAIR_REF,
    PAIR_TOK_REF,
    DataOptions,
    build_train_data,
    open_catalog,
    open_dataset,
    table_kind,
    unpaired_ref_columns,
)
from training.logps import ADAPTERS_OFF, attn_implementation
from training.loop import RunSetup, train
from training.packing import resolve_layout
from training.plan import make_plan
from training.recipe import TrainRecipe, data_options, load_train_recipe, needs_reference, online_reference
from training.reference import ensure_reference
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


def prepare_reference(recipe: TrainRecipe, spec, ds, lm, tok, out_dir: Path, options: DataOptions | None = None):
    """Run (or skip) the reference pass; returns the dataset carrying reference columns + a status dict."""
    if not needs_reference(spec, recipe) or not recipe.reference.model:
        return ds, {"status": "from dataset" if needs_reference(spec, recipe) else "not needed"}
    same = Path(recipe.reference.model).resolve() == Path(recipe.model).resolve() \
        if Path(recipe.model).exists() else recipe.reference.model == recipe.model
    ref_lm = lm if same else load_model(recipe.reference.model, trust_remote_code=recipe.trust_remote_code,
                                        dtype=recipe.train.weights_dtype())[0]
    ref_lm.to(_device())
    # no-grad forwards keep one layer's activations at a time: budget as if checkpointed
    budget = resolve_token_budget(recipe.train.token_budget, ref_lm, _device(), grad_checkpointing=True,
                                  mixed_precision=torch.cuda.is_available())
    with torch.autocast("cuda", torch.bfloat16, enabled=torch.cuda.is_available()):
        ds, status = ensure_reference(ds, lm=ref_lm, tokenizer=tok, model_id=recipe.reference.model,
                                      max_length=recipe.train.max_length, device=_device(),
                                      with_tokens="token_logps" in spec.needs, cache_dir=out_dir / "reference",
                                      batch_size=recipe.reference.batch_size, token_budget=budget,
                                      options=options,
                                      layout=resolve_layout(recipe.train.layout, device=_device(),
                                                            kind=table_kind(ds.table.column_names),
                                                            attn_impl=attn_implementation(ref_lm)))
    if not same:
        del ref_lm
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the reference pass's cached blocks back before training sizes its budget
    return ds, status


def online_reference_model(recipe: TrainRecipe, spec, lm):
    """TDPO's reference, kept beside the policy: a frozen copy of reference.model, or (with LoRA and no
    reference.model) the policy itself with its adapters disabled."""
    if not online_reference(spec):
        return None
    if not recipe.reference.model:
        return ADAPTERS_OFF
    ref = load_model(recipe.reference.model, trust_remote_code=recipe.trust_remote_code,
                     dtype=recipe.train.weights_dtype())[0]
    return ref.to(_device()).eval().requires_grad_(False)


def _prepare(recipe: TrainRecipe, spec, ds, out_dir: Path):
    """Model + tokenizer (a tiny one created when asked), data options, and the reference pass."""
    if recipe.make_tiny_model and not Path(recipe.model).exists():
        from training.tiny import make_tiny_model, texts_of_table
        completions = [c for col in ("completion", "response") if col in ds.table.column_names  # unpaired tables
                       for c in ds.table.column(col).to_pylist() if isinstance(c, str)]
        make_tiny_model(recipe.model, texts_of_table(ds.table) + completions)
    lm, tok = load_model(recipe.model, trust_remote_code=recipe.trust_remote_code, tokenizer=recipe.tokenizer,
                         dtype=recipe.train.weights_dtype(), gguf_file=recipe.gguf_file)
    options = data_options(recipe)
    options.template(tok)  # chat_template: true without a template fails here, before any reference pass
    ds, ref_status = prepare_reference(recipe, spec, ds, lm, tok, out_dir, options)
    return lm, tok, ds, ref_status, options


def train_from_recipe(recipe_path: str | Path, *, catalog_path: str | Path | None = None,
                      resume: bool = False) -> dict:
    if is_vlm_recipe(recipe_path):  # a top-level `vlm:` section: multi-image VLM DPO (training/vlm_train.py)
        from training.vlm_train import train_vlm_from_recipe
        return train_vlm_from_recipe(recipe_path, catalog_path=catalog_path, resume=resume)
    recipe = load_train_recipe(recipe_path, catalog_path=catalog_path)
    spec, params = recipe.loss_spec()
    out_dir = Path(recipe.output_dir)
    ds = open_dataset(recipe.dataset, catalog_path)
    # under DDP the main process creates the tiny model and runs the reference pass first (one catalog version,
    # one cache file); the others then find both and skip
    from accelerate import PartialState
    state = PartialState(cpu=not torch.cuda.is_available())
    with state.main_process_first():
        lm, tok, ds, ref_status, options = _prepare(recipe, spec, ds, out_dir)

    required: tuple[str, ...] = ()
    if needs_reference(spec, recipe):
        required = unpaired_ref_columns(ds.kind) if options.unpaired else PAIR_REF if ds.kind == "pairs" \
            else (LIST_REF,)
        if "token_logps" in spec.needs:
            required += PAIR_TOK_REF
    if "rm_margin" in spec.needs:
        required += ("margin",)
    data = build_train_data(ds.table, tok, max_length=recipe.train.max_length, required=required, options=options)
    if not data.groups:
        raise PrefdataError(f"{recipe.dataset}: no trainable rows ({dict(data.dropped)})")
    if options.unpaired:
        data.info["kto_balance"] = kto_balance(data, params)
    if recipe.lora is not None:
        from peft import LoraConfig, get_peft_model
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
    online_ref = online_reference_model(recipe, spec, lm)
    if online_ref is not None:
        info["reference"] = {"status": "online", "model": recipe.reference.model or "policy with LoRA adapters off"}
    setup = RunSetup(recipe=recipe, spec=spec, params=params, lm=lm, tokenizer=tok, data=data,
                     ref=RefStore(data, free=not needs_reference(spec, recipe)), plan=plan, out_dir=out_dir,
                     dataset_ref=ds.ref, resume=resume, log_event=log_event, info=info, online_ref=online_ref)
    result = train(setup)
    (out_dir / "run.json").write_text(json.dumps(result, indent=2, default=str))
    return result
