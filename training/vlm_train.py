"""VLM multi-image DPO training from a recipe: `prefdata train RECIPE.yaml` with a top-level `vlm:` section.

The steps run through the text loop itself (`loop.StepLoop`: the step plan from training/plan.py, so a
checkpoint's data position is its step; accelerate for device, DDP and bf16 autocast; AdamW + warmup/cosine;
gradient accumulation and clipping; metrics.jsonl with the same fields; the same checkpoints, exact resume and
refusals; the catalog run events that `prefdata log` shows). This module supplies the hooks. What differs is the
forward: a micro-batch is collated by the model's own
processor (images expanded into image tokens) and its response log-probs come from training/vlm.py.

Reference log-probs, by `reference.source`: `copy` (a frozen copy of the initial model), `adapters` (the
policy with its LoRA adapters disabled: one model in memory), `dataset` (the table's ref_logp_chosen /
ref_logp_rejected columns), `precompute` (one no-grad pass of the initial model over all rows before step 1,
kept in every checkpoint: one model in memory, no per-step reference forward) or `free` (zeros)."""
from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from prefdata.errors import IngestError, PrefdataError, RecipeError
from training.checkpointing import (
    precision,
)
from training.data import (
    PAIR_REF,
    SPLIT,
    TRAIN_SPLIT,
    DatasetHandle,
    open_catalog,
    open_dataset,
    select_split,
    value_counts,
)
from training.diffusion_data import MediaPaths
from training.evaluation import EvalHook, EvalSums, add_pairs, last_eval_row, pair_metrics
from training.loop import StepLoop
from training.losses import PairBatch, RunningMean
from training.plan import make_plan
from training.schedule import cosine_with_warmup
from training.vlm import (
    PLACEHOLDER,
    VlmBatch,
    VlmSequenceLogps,
    adapters_off,
    collate_pairs,
    encode_prompt,
    response_ids,
)
from training.vlm_recipe import VLM_COLUMNS, VlmRecipe, is_video_table, load_vlm_recipe
from training.vlm_video import VIDEO_COLUMNS, video_pair_row

# ---------------------------------------------------------------- data

@dataclass
class VlmData:
    """The trainable rows of a MIA-DPO pairs table and their numeric columns; every other row is a counted drop."""
    rows: list[dict]                     # prompt, images, chosen, rejected (+ prompt_id when present)
    table_rows: list[int]                # table row of each kept row
    stage: torch.Tensor                  # [N] int
    weight: torch.Tensor                 # [N] float64
    columns: dict[str, torch.Tensor]     # margin, pref_alpha, ref_logp_chosen/rejected when present
    rows_in: int
    dropped: Counter = field(default_factory=Counter)
    unreadable: list[dict] = field(default_factory=list)   # {row, column, file, error} per unreadable image


def media_paths(recipe: VlmRecipe, ds: DatasetHandle) -> MediaPaths:
    """Catalog datasets keep their media under the catalog directory; a file's relative URIs are under its folder."""
    v = recipe.vlm
    if v.media_root:
        root = Path(v.media_root)
    elif ds.name is not None:
        root = Path(ds.catalog_path)
    else:
        root = Path(ds.path).parent
    return MediaPaths(root, Path(v.base_dir) if v.base_dir else root)


def load_vlm_data(ds: DatasetHandle, recipe: VlmRecipe, processor, paths: MediaPaths, *,
                  required: tuple[str, ...] = ()) -> VlmData:
    """Check every row once (values present, `required` numeric columns not null, one `<image>` per image,
    images readable, fits max_length) so no batch fails mid-training; the prompt is encoded with its images
    exactly as training will encode it."""
    t = ds.table
    extra = [c for c in ("prompt_id", "stage", "weight", "margin", "pref_alpha", *PAIR_REF) if c in t.column_names]
    video = is_video_table(t.column_names)
    table = t.select(list(VIDEO_COLUMNS if video else VLM_COLUMNS) + extra).to_pylist()
    if video:   # PaMi-VDPO: frames sampled from each clip become the images of one conversation (vlm_video.py)
        table = [video_pair_row(r, recipe.vlm.num_frames) for r in table]
    tok, max_len = processor.tokenizer, recipe.train.max_length
    keep: list[int] = []
    dropped: Counter = Counter()
    unreadable: list[dict] = []
    for i, r in enumerate(table):
        if any(r[c] is None for c in VLM_COLUMNS) or not r["images"]:
            dropped["missing prompt/images/chosen/rejected"] += 1
            continue
        null = next((c for c in required if r.get(c) is None), None)
        if null:
            dropped[f"{null} is null"] += 1
            continue
        if r["prompt"].count(PLACEHOLDER) != len(r["images"]):
            dropped[f"{PLACEHOLDER} count != number of images"] += 1
            continue
        try:
            n_prompt = encode_prompt(processor, r, paths, recipe.vlm.image_text)["input_ids"].shape[1]
            if video:
                encode_prompt(processor, r, paths, recipe.vlm.image_text, "images_rejected")
        except IngestError as e:
            dropped["unreadable image"] += 1
            unreadable.append({"row": i, "column": "images", "file": e.path, "error": str(e).split(": ", 1)[-1]})
            continue
        if n_prompt + max(len(response_ids(tok, r["chosen"])), len(response_ids(tok, r["rejected"]))) > max_len:
            dropped[f"longer than max_length={max_len}"] += 1
            continue
        keep.append(i)

    def vec(name: str, default: float | None = None) -> torch.Tensor | None:
        if name not in extra:
            return None if default is None else torch.full((len(keep),), default, dtype=torch.float64)
        return torch.tensor([float("nan") if table[i][name] is None else float(table[i][name]) for i in keep],
                            dtype=torch.float64)

    columns = {c: vec(c) for c in ("margin", "pref_alpha", *PAIR_REF) if c in extra}
    return VlmData(rows=[table[i] for i in keep], table_rows=keep, stage=vec("stage", 0.0).long(),
                   weight=vec("weight", 1.0), columns=columns, rows_in=len(table), dropped=dropped,
                   unreadable=unreadable)


def load_vlm(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    try:
        proc = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                            dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise RecipeError(f"cannot load {path!r}: {str(e).splitlines()[0]}", path="vlm.model") from None
    if proc.tokenizer.pad_token is None:   # as TRL: pad with eos (padding never reaches the loss)
        proc.tokenizer.pad_token = proc.tokenizer.eos_token
    return model, proc


# ---------------------------------------------------------------- the loop

class VlmTrainer(StepLoop):
    label = "train vlm"
    event_extra = {"trainer": "vlm"}

    def __init__(self, recipe: VlmRecipe, model, processor, data: VlmData, paths: MediaPaths, *, ref_source: str,
                 dataset_ref: str, out_dir: Path, log_event=None, info: dict | None = None,
                 eval_data: VlmData | None = None, eval_paths: MediaPaths | None = None):
        t = recipe.train
        self.r, self.proc, self.data, self.paths, self.out_dir = recipe, processor, data, paths, out_dir
        self.recipe = recipe
        self.spec, self.params = recipe.loss_spec()
        self.ref_source, self.dataset_ref, self.log_event, self.info = ref_source, dataset_ref, log_event, info or {}
        self.acc = Accelerator(mixed_precision=precision(t.mixed_precision), cpu=not torch.cuda.is_available())
        set_seed(t.seed)
        if t.grad_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        head_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.acc.mixed_precision)
        chunk = t.logp_chunk or 1024
        # the frozen copy is taken before LoRA/training touch the weights: it IS the initial policy
        self.ref_model = None
        if ref_source == "copy":
            frozen = copy.deepcopy(model).eval().requires_grad_(False)
            self.ref_model = VlmSequenceLogps(frozen, chunk=chunk, compute_dtype=head_dtype).to(self.acc.device)
        if recipe.lora is not None:
            from peft import LoraConfig

            from training.peft_compat import get_peft_model
            lo = recipe.lora
            model = get_peft_model(model, LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                                                     target_modules=list(lo.target_modules)))
        policy = VlmSequenceLogps(model, chunk=chunk, compute_dtype=head_dtype)
        params = [p for p in policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay,
                                fused=all(p.is_floating_point() for p in params))
        self.plan = make_plan(data.stage, batch_size=t.batch_size, grad_accum=t.grad_accum, epochs=t.epochs,
                              seed=t.seed, curriculum=recipe.curriculum.mode, max_steps=t.max_steps)
        self.sched = cosine_with_warmup(opt, int(round(t.warmup_ratio * len(self.plan))), max(1, len(self.plan)))
        self.model, self.opt = self.acc.prepare(policy, opt)
        self.acc.register_for_checkpointing(self.sched)
        self.bco = RunningMean(self.params.delta_window) \
            if getattr(self.params, "delta", None) == "running_mean" else None
        self.ref = torch.stack([data.columns[c] for c in PAIR_REF], 1) if ref_source == "dataset" else None
        self.with_tokens = "token_logps" in self.spec.needs
        self.metrics_path = out_dir / "metrics.jsonl"
        # held-out rows (the recipe's eval section): their reference is the training rows' source
        self.eval_data, self.eval_paths = eval_data, eval_paths
        self.eval_ref = torch.stack([eval_data.columns[c] for c in PAIR_REF], 1) \
            if eval_data is not None and ref_source == "dataset" else None
        if eval_data is not None:
            self.eval_hook = EvalHook(self.evaluate, recipe.eval.every)

    def batch(self, idx, data: VlmData | None = None, paths: MediaPaths | None = None) -> tuple[VlmBatch, int]:
        """The micro-batch on the device, and its non-padding token count (counted on the host: no GPU sync)."""
        rows = [(data or self.data).rows[i] for i in idx]
        b = collate_pairs(self.proc, rows, paths or self.paths, max_length=self.r.train.max_length,
                          image_text=self.r.vlm.image_text)
        return b.to(self.acc.device), b.n_tokens

    # -- reference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _reference_forward(self, b: VlmBatch):
        if self.ref_model is not None:
            with self.acc.autocast():
                return self.ref_model(b, self.with_tokens)
        inner = self.acc.unwrap_model(self.model)
        with self.acc.autocast(), adapters_off(inner.model):
            return inner(b, self.with_tokens)

    @torch.no_grad()
    def precompute_reference(self, data: VlmData | None = None, paths: MediaPaths | None = None) -> torch.Tensor:
        """One pass of the initial model (adapters off) over every row; [N, 2] float64."""
        data = data or self.data
        n, bs = len(data.rows), self.r.reference.batch_size
        ref = torch.zeros(n, 2, dtype=torch.float64)
        was_training = self.model.training
        self.model.eval()
        for s in range(0, n, bs):
            idx = list(range(s, min(n, s + bs)))
            out = self._reference_forward(self.batch(idx, data, paths)[0])
            k = len(idx)
            ref[s:s + k] = torch.stack([out.sums[:k], out.sums[k:]], 1).double().cpu()
        self.model.train(was_training)
        return ref

    def pair_batch(self, b: VlmBatch, idx: tuple[int, ...], *, data: VlmData | None = None,
                   ref: torch.Tensor | None = None, policy=None) -> PairBatch:
        """The loss's batch; `data`/`ref`/`policy` default to the training rows, their reference, the DDP model."""
        k, dev, spec = len(idx), self.acc.device, self.spec
        data = data or self.data
        ref_rows = self.ref if ref is None else ref
        pol = (policy or self.model)(b, self.with_tokens)
        dt = pol.sums.dtype
        pb = PairBatch(pol_chosen=pol.sums[:k], pol_rejected=pol.sums[k:])
        n = pol.counts.to(dt)
        pb.n_chosen, pb.n_rejected = n[:k], n[k:]
        if "nll" in spec.needs:   # token-mean CE over the micro-batch's chosen tokens (spec §0.3), as the text loop
            pb.nll_chosen = -pb.pol_chosen.sum() / pb.n_chosen.sum()
        if self.with_tokens:
            pb.tok_pol_chosen, pb.tok_pol_rejected = pol.tokens[:k], pol.tokens[k:]
            pb.tok_mask_chosen, pb.tok_mask_rejected = pol.tok_mask[:k], pol.tok_mask[k:]
        if "ref" in spec.needs:
            if self.ref_source in ("dataset", "precompute"):
                r = ref_rows[list(idx)].to(device=dev, dtype=dt)
                pb.ref_chosen, pb.ref_rejected = r[:, 0], r[:, 1]
            elif self.ref_source == "free":
                pb.ref_chosen, pb.ref_rejected = torch.zeros_like(pb.pol_chosen), torch.zeros_like(pb.pol_rejected)
                if self.with_tokens:
                    pb.tok_ref_chosen = torch.zeros_like(pb.tok_pol_chosen)
                    pb.tok_ref_rejected = torch.zeros_like(pb.tok_pol_rejected)
            else:
                ref = self._reference_forward(b)
                pb.ref_chosen, pb.ref_rejected = ref.sums[:k].to(dt), ref.sums[k:].to(dt)
                if self.with_tokens:
                    pb.tok_ref_chosen, pb.tok_ref_rejected = ref.tokens[:k].to(dt), ref.tokens[k:].to(dt)
        col = {c: v[list(idx)].to(device=dev, dtype=dt) for c, v in data.columns.items()}
        if "rm_margin" in spec.needs:
            pb.rm_margin = col["margin"]
        if "pref_alpha" in col:
            pb.pref_alpha = col["pref_alpha"]
        pb.weight = data.weight[list(idx)].to(device=dev, dtype=dt)
        pb.bco_delta = self.bco.value if self.bco is not None else None
        return pb

    # -- StepLoop hooks (the text loop runs the steps, metrics, checkpoints and resume) ---------------
    def step_loss(self, idx: tuple[int, ...]):
        b, n_tok = self.batch(idx)
        pb = self.pair_batch(b, idx)
        lo = self.spec.fn(pb, self.params)
        if self.bco is not None:  # one running mean for all processes
            self.bco.update(self.acc.reduce(lo.metrics["bco_reward_mean"], "mean") if self.acc.num_processes > 1
                            else lo.metrics["bco_reward_mean"])
        # the text loop's layout for logps/chosen|rejected: chosen, rejected interleaved per pair
        sums = torch.stack([pb.pol_chosen, pb.pol_rejected], 1).flatten().detach()
        return (lo.loss * pb.weight).sum(), lo, n_tok, sums

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The pair eval metrics (training/evaluation.py) on the eval rows: training's collation, loss and
        reference source, the policy unwrapped from DDP (only the main process evaluates)."""
        data, bs = self.eval_data, self.r.eval.batch_size or self.r.reference.batch_size
        has_ref = self.ref_source not in ("free", "none")
        policy = self.acc.unwrap_model(self.model)
        was_training = policy.training
        policy.eval()
        sums = EvalSums()
        try:
            for s in range(0, len(data.rows), bs):
                idx = tuple(range(s, min(len(data.rows), s + bs)))
                with self.acc.autocast():
                    pb = self.pair_batch(self.batch(idx, data, self.eval_paths)[0], idx, data=data,
                                         ref=self.eval_ref, policy=policy)
                    lo = self.spec.fn(pb, self.params)
                add_pairs(sums, lo, pb.pol_chosen, pb.pol_rejected, pb.ref_chosen if has_ref else None,
                          pb.ref_rejected if has_ref else None)
        finally:
            policy.train(was_training)
        return pair_metrics(sums.read(), has_ref)

    def before_run(self) -> None:
        if self.ref_source == "precompute" and self.ref is None:
            self.ref = self.precompute_reference()
        if self.ref_source == "precompute" and self.eval_data is not None and self.eval_ref is None:
            self.eval_ref = self.precompute_reference(self.eval_data, self.eval_paths)

    def extra_state(self) -> dict:
        pre = self.ref_source == "precompute"
        return {"ref": self.ref if pre else None, "eval_ref": self.eval_ref if pre else None,
                **super().extra_state()}

    def load_extra(self, extra: dict) -> None:
        if extra.get("ref") is not None:
            self.ref = extra["ref"]
        if extra.get("eval_ref") is not None:
            self.eval_ref = extra["eval_ref"]
        super().load_extra(extra)

    def save_final(self, final: Path) -> None:
        self.acc.unwrap_model(self.model).model.save_pretrained(final)   # LoRA: the adapters
        self.proc.save_pretrained(final)


def train_vlm_from_recipe(recipe_path: str | Path, *, catalog_path: str | Path | None = None,
                          resume: bool = False) -> dict:
    """`prefdata train RECIPE` for recipes with a top-level `vlm:` section; returns the run summary (also
    written to output_dir/run.json)."""
    recipe = load_vlm_recipe(recipe_path, catalog_path=catalog_path)
    ds = open_dataset(recipe.dataset, catalog_path)
    if recipe.vlm.make_tiny_model and not Path(recipe.vlm.model).exists():
        from training.vlm_tiny import make_tiny_vlm, texts_of_rows
        make_tiny_vlm(recipe.vlm.model, texts_of_rows(ds.table.select(["prompt", "chosen", "rejected"]).to_pylist()))
    model, proc = load_vlm(recipe.vlm.model, trust_remote_code=recipe.vlm.trust_remote_code)
    paths = media_paths(recipe, ds)
    ref_source = recipe.reference_source(ds.table.column_names)
    required = (PAIR_REF if ref_source == "dataset" else ()) + \
        (("margin",) if "rm_margin" in recipe.loss_spec()[0].needs else ())
    by_split = value_counts(ds.table, SPLIT) if SPLIT in ds.table.column_names else None
    # a split table trains on its `train` rows only
    data = load_vlm_data(replace(ds, table=select_split(ds.table, TRAIN_SPLIT)) if by_split else ds, recipe, proc,
                         paths, required=required)
    if not data.rows:
        raise PrefdataError(f"{ds.ref}: no trainable rows ({dict(data.dropped)})")
    eval_data = eval_paths = None
    ev = recipe.eval
    if ev is not None:
        eval_ds = replace(ds, table=select_split(ds.table, ev.split)) if ev.split is not None \
            else open_dataset(ev.dataset, catalog_path)
        eval_paths = paths if ev.split is not None else media_paths(recipe, eval_ds)
        if ev.max_rows:
            eval_ds = replace(eval_ds, table=eval_ds.table.slice(0, ev.max_rows))
        eval_data = load_vlm_data(eval_ds, recipe, proc, eval_paths, required=required)
        if not eval_data.rows:
            raise PrefdataError(f"eval rows of {eval_ds.ref}: none can be evaluated ({dict(eval_data.dropped)})")
    log_event = None
    if ds.name is not None:
        cat = open_catalog(ds.catalog_path)

        def log_event(kind: str, record: dict, _cat=cat, _ds=ds) -> None:
            _cat.log_event(_ds.name, _ds.version, kind, {"dataset": _ds.ref, **record})

    info = {"reference": {"source": ref_source}, "rows_in": data.rows_in, "rows_trained": len(data.rows),
            "rows_dropped": dict(data.dropped), "unreadable": data.unreadable}
    if by_split is not None:   # rows_in counts the train rows; the others are held out, not dropped
        info["rows_by_split"] = {str(k): n for k, n in by_split.items()}
    if eval_data is not None:
        info["eval_rows"] = {"source": f"{ds.ref} split={ev.split}" if ev.split is not None else ev.dataset,
                             "rows_in": eval_data.rows_in, "rows": len(eval_data.rows),
                             "rows_dropped": dict(eval_data.dropped), "unreadable": eval_data.unreadable}
    out_dir = Path(recipe.output_dir)
    trainer = VlmTrainer(recipe, model, proc, data, paths, ref_source=ref_source, dataset_ref=ds.ref,
                         out_dir=out_dir, log_event=log_event, info=info, eval_data=eval_data,
                         eval_paths=eval_paths)
    result = trainer.run(resume=resume)
    if eval_data is not None:   # read back: a resumed run's last eval may predate the resume
        result["eval"] = last_eval_row(out_dir / "metrics.jsonl")
    (out_dir / "run.json").write_text(json.dumps(result, indent=2, default=str))
    return result
