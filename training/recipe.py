"""Training recipe (YAML) -> validated `TrainRecipe`. Every problem is a one-line RecipeError naming the YAML
path, raised when the recipe is parsed: unknown loss, bad hyperparameter, or a dataset that lacks the columns
the loss needs (listwise loss on pairs, no reference log-probs and no reference model, MODPO without
scores_chosen/scores_rejected, ...). Nothing is discovered mid-training."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prefdata.errors import PrefdataError, RecipeError
from training.attention import ATTENTION_CHOICES
from training.data import (
    LIST_REF,
    PAIR_REF,
    PAIR_TOK_REF,
    SPLIT,
    TRAIN_SPLIT,
    DataOptions,
    dataset_columns,
    split_counts,
    table_kind,
    unpaired_columns,
    unpaired_ref_columns,
)
from training.losses import LossSpec, resolve_loss


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainSection(_Section):
    batch_size: int = Field(8, ge=1, description="examples (pairs or prompts) per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_length: int = Field(512, ge=8, description="prompt + response tokens, per response (TRL semantics)")
    lr: float = Field(5e-7, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs (curriculum: split evenly over stages)")
    epochs: int = Field(1, ge=1, description="passes over the data (per stage with a curriculum)")
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    grad_checkpointing: bool = False
    layout: Literal["auto", "shared", "rows", "packed"] = Field(
        "auto", description="shared: each prompt encoded once, responses behind a block mask; rows: one causal row "
        "per response (prompt repeated; what fused attention kernels run natively); packed: the rows' sequences "
        "back to back in one row with no padding, attention confined to each (training/attention.py); auto: rows "
        "for pairs on a GPU, shared otherwise (lists, CPU)")
    attention: Literal[ATTENTION_CHOICES] = Field(
        "auto", description="attention implementation: auto = varlen for the packed layout on a GPU (flex "
        "attention where torch has no varlen kernel), otherwise the model's own (SDPA); varlen: torch's fused "
        "varlen FlashAttention (packed layout only); sdpa / eager / flex_attention / flash_attention_2|3: "
        "transformers' implementations")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"   # auto: bf16 on a GPU, fp32 on CPU
    master_weights: Literal["fp32", "bf16"] = Field(
        "fp32", description="fp32: weights, gradients and AdamW moments in fp32 (16 bytes per trained parameter; "
        "bf16 compute under autocast); bf16: all of them in bf16 (8 bytes), the AdamW update written back with "
        "stochastic rounding so small steps are not lost (training/sr_adamw.py)")
    sr_adamw: Literal["auto", "bucketed", "compiled"] = Field(
        "auto", description="the bf16 stochastic-rounding AdamW (master_weights bf16): bucketed = fp32 math on "
        "buckets in ~30 eager kernels; compiled = one torch.compile'd kernel per bucket (needs a C++ compiler); "
        "auto = compiled on a CPU (measured faster), bucketed on a GPU until measured there")
    logp_chunk: int | None = Field(None, ge=1, description="positions per LM-head chunk; None = auto")
    token_budget: int | None = Field(None, ge=64, description="padded tokens per forward(+backward) sub-batch "
                                     "(packed layout: real tokens per packed row); None = auto (GPU: from free "
                                     "memory, usually the whole micro-batch; CPU: 1024)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0 = only at the end)")
    save_total_limit: int | None = Field(None, ge=1, description="checkpoints kept (the newest; None = all); "
                                         "optimizer state is kept in the newest only (what resume needs)")
    optimizer_state: Literal["latest", "all"] = Field(
        "latest", description="latest: only the newest checkpoint keeps the optimizer state (resume starts there; "
        "older ones stay loadable models); all: every checkpoint keeps it (each can be resumed from)")
    log_every: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _attention_fits_layout(self):
        if self.attention == "varlen" and self.layout != "packed":
            raise ValueError("attention varlen takes segment boundaries, not a mask: it runs the packed layout "
                             "only (set layout: packed)")
        if self.layout == "shared" and self.attention not in ("auto", "sdpa", "eager"):
            raise ValueError(f"the shared layout needs a 4-D block mask, which {self.attention} does not take: "
                             "use layout rows or packed")
        return self

    @model_validator(mode="after")
    def _sr_adamw_needs_bf16_weights(self):
        if self.sr_adamw != "auto" and self.master_weights != "bf16":
            raise ValueError("sr_adamw picks the bf16 master weights' optimizer; it needs master_weights: bf16")
        return self

    @model_validator(mode="after")
    def _precision_pair(self):
        if self.master_weights == "bf16" and self.mixed_precision == "fp16":
            raise ValueError("master_weights bf16 computes in bf16: mixed_precision fp16 would cast every bf16 "
                             "weight to fp16 (a narrower range); use mixed_precision bf16 or auto")
        return self

    def weights_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.master_weights == "bf16" else torch.float32


class ReferenceSection(_Section):
    model: str | None = Field(None, description="reference model path/id; its log-probs are precomputed once")
    free: bool = Field(False, description="reference-free: reference log-probs are 0")
    batch_size: int = Field(16, ge=1)


class CurriculumSection(_Section):
    # off: shuffle all rows; fixed: stages in order, one reference; iterative (Curry-DPO): stages in order and
    # the reference for stage k+1 is the policy after stage k
    mode: Literal["off", "fixed", "iterative"] = "off"


class UnpairedSection(_Section):
    """Unpaired (KTO) data choices; only valid with an unpaired loss."""
    from_pairs: bool = Field(False, description="train a pairs table unpaired: chosen = desirable, rejected = "
                             "undesirable (TRL's unpair_preference_dataset); required to run kto on pairs")
    label_threshold: float | None = Field(None, description="unpaired table with a `score` column and no "
                                          "`label`: desirable = score >= threshold (default: scores must be 0/1)")


class EvalSection(_Section):
    """Forward-only preference metrics on held-out rows during training (training/evaluation.py)."""
    dataset: str | None = Field(None, description="catalog name[@version|@tag] or a parquet/Arrow file to evaluate on")
    split: str | None = Field(None, description="evaluate on the training table's rows with this `split` value "
                              "(default, when `dataset` is not given: test)")
    every: int = Field(0, ge=0, description="optimizer steps between evals; 0 = only before training and at the "
                       "end (both always run)")
    max_rows: int | None = Field(None, ge=1, description="evaluate the first max_rows rows of the eval table "
                                 "(table order, no shuffle); None = all")
    batch_size: int | None = Field(None, ge=1, description="rows per eval forward; default: reference.batch_size")

    @model_validator(mode="before")
    @classmethod
    def _default_split(cls, data):
        if isinstance(data, dict) and data.get("dataset") is None and data.get("split") is None:
            return {**data, "split": "test"}
        return data

    @model_validator(mode="after")
    def _one_source(self):
        if self.dataset is not None and self.split is not None:
            raise ValueError("give eval.dataset (another table) or eval.split (rows of the training table), not both")
        return self


class LoraSection(_Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class _LossRecipe(_Section):
    """What every training recipe shares: a `loss` mapping validated against the registry, and its identity."""

    def loss_name(self) -> str:
        """`loss.name`; a missing one is a validation error (raised from the recipe's model validator)."""
        name = self.loss.get("name") if isinstance(self.loss, dict) else None
        if not name:
            raise ValueError("loss.name is required")
        return name

    def loss_spec(self):
        return resolve_loss(self.loss_name(), {k: v for k, v in self.loss.items() if k != "name"}, where="loss")

    def canonical(self) -> dict:
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class TrainRecipe(_LossRecipe):
    model: str
    dataset: str
    loss: dict
    output_dir: str
    train: TrainSection = TrainSection()
    reference: ReferenceSection = ReferenceSection()
    curriculum: CurriculumSection = CurriculumSection()
    lora: LoraSection | None = None
    gguf_file: str | None = Field(None, description="a GGUF file inside `model` (a folder or package:<dist>/<dir>); "
                                  "loaded de-quantized into a plain model (training/models.py)")
    tokenizer: str | None = Field(None, description="tokenizer path/id; default: the model's")
    trust_remote_code: bool = False
    make_tiny_model: bool = Field(False, description="create a random tiny Llama at `model` if it does not exist")
    chat_template: Literal["auto", True, False] = Field(
        "auto", description="auto: render conversational rows (messages) with the tokenizer's chat template when "
        "it has one; true: every row (a string prompt = one user message), error if the tokenizer has none; "
        "false: never")
    unpaired: UnpairedSection = UnpairedSection()
    eval: EvalSection | None = None

    @model_validator(mode="after")
    def _loss_is_valid(self) -> TrainRecipe:
        self.loss_spec()
        return self


SUPPORTED_KINDS = ("pair", "list", "unpaired")


def online_reference(spec: LossSpec) -> bool:
    """TDPO's sequential KL needs the reference's full distributions at every response token: they cannot be
    stored as columns, so the reference runs beside the policy during training (a frozen model, or LoRA off)."""
    return "seq_kl" in spec.needs


def needs_reference(spec: LossSpec, recipe: TrainRecipe) -> bool:
    """Reference log-probs as dataset columns (precomputed by the reference pass, or already present)."""
    return "ref" in spec.needs and not recipe.reference.free and not online_reference(spec)


def reference_columns(spec: LossSpec, recipe: TrainRecipe, columns) -> tuple[str, ...]:
    """The reference log-prob columns a table of these columns must carry for this loss (none if not needed)."""
    if not needs_reference(spec, recipe):
        return ()
    kind = table_kind(columns)
    if spec.kind == "unpaired":
        return unpaired_ref_columns(kind)
    want = PAIR_REF if kind == "pairs" else (LIST_REF,)
    return want + PAIR_TOK_REF if "token_logps" in spec.needs and kind == "pairs" else want


def reference_model(recipe: TrainRecipe, columns) -> str | None:
    """The model whose log-probs the reference pass stores, or None (no pass: the dataset's columns, a
    reference-free loss, or TDPO's online reference). A recipe without `reference` gets the starting policy
    (TRL's convention) unless the dataset already carries the reference columns."""
    spec, _ = recipe.loss_spec()
    if not needs_reference(spec, recipe):
        return None
    if recipe.reference.model:
        return recipe.reference.model
    return None if set(reference_columns(spec, recipe, columns)) <= set(columns) else recipe.model


def check_dataset(recipe: TrainRecipe, columns: list[str], *, file: str | None = None) -> None:
    """The dataset's columns against what the loss and the recipe need."""
    spec, params = recipe.loss_spec()
    kind = table_kind(columns)

    def fail(msg: str, path: str) -> None:
        raise RecipeError(msg, path=path, file=file)

    if spec.kind not in SUPPORTED_KINDS:
        fail(f"loss {recipe.loss['name']!r} is a {spec.kind} loss; `prefdata train` trains pair, list and "
             "unpaired (kto) losses "
             "(diffusion losses use the diffusion trainer)", "loss.name")
    if online_reference(spec):
        name = recipe.loss["name"]
        if recipe.reference.free:
            fail(f"loss {name!r} regularizes with the KL to a reference model: it cannot be reference-free",
                 "reference.free")
        if not recipe.reference.model and recipe.lora is None:
            fail(f"loss {name!r} needs the reference's full distributions at every response token (sequential KL): "
                 "set reference.model (kept in memory beside the policy) or lora (reference = adapters disabled)",
                 "reference.model")
        if recipe.curriculum.mode == "iterative":
            fail(f"an iterative curriculum would replace {name!r}'s online reference model; use mode fixed",
                 "curriculum.mode")
    if spec.kind == "unpaired" or recipe.unpaired != UnpairedSection():
        check_unpaired(recipe, spec, columns, kind, fail)
        return
    if kind == "unknown":
        fail("dataset has neither prompt/chosen/rejected (pairs) nor prompt/responses/scores (lists) columns",
             "dataset")
    if spec.kind == "list" and kind != "lists":
        fail(f"listwise loss {recipe.loss['name']!r} needs a lists table (prompt, responses, scores); "
             f"{recipe.dataset} is a {kind} table", "loss.name")
    if spec.kind == "pair" and kind != "pairs":
        fail(f"pairwise loss {recipe.loss['name']!r} needs a pairs table (prompt, chosen, rejected); "
             f"{recipe.dataset} is a {kind} table", "loss.name")
    if spec.kind == "list" and "scores" not in columns:
        fail("listwise loss needs the 'scores' column", "dataset")
    if "rm_margin" in spec.needs and "margin" not in columns:
        fail(f"loss {recipe.loss['name']!r} needs the reward-model margin column 'margin'", "dataset")
    if "other_rewards" in spec.needs and not {"scores_chosen", "scores_rejected"} <= set(columns):
        fail(f"loss {recipe.loss['name']!r} needs scores_chosen/scores_rejected (other objectives' rewards)",
             "dataset")
    if recipe.loss["name"].startswith("smpo") and getattr(params, "alpha", 0) is None and "pref_alpha" not in columns:
        fail("smpo with alpha unset needs a per-pair 'pref_alpha' column (or set loss.alpha)", "loss.alpha")
    if recipe.curriculum.mode != "off" and "stage" not in columns:
        fail("a curriculum needs the 'stage' column", "curriculum.mode")
    if recipe.curriculum.mode == "iterative" and not needs_reference(spec, recipe):
        fail("an iterative curriculum refreshes the reference; this loss/recipe uses none", "curriculum.mode")


def check_unpaired(recipe: TrainRecipe, spec: LossSpec, columns: list[str], kind: str, fail) -> None:
    """KTO: the table (unpaired, or pairs with unpaired.from_pairs), batch size, reference columns."""
    name = recipe.loss["name"]
    if spec.kind != "unpaired":
        fail(f"the unpaired section is for unpaired losses (kto); {name!r} is a {spec.kind} loss", "unpaired")
    if kind == "pairs" and not recipe.unpaired.from_pairs:
        fail(f"{name!r} trains unpaired examples and {recipe.dataset} is a pairs table: set unpaired.from_pairs: "
             "true to train chosen as desirable and rejected as undesirable", "unpaired.from_pairs")
    if kind == "unpaired" and recipe.unpaired.from_pairs:
        fail(f"unpaired.from_pairs is set but {recipe.dataset} is an unpaired table, not pairs", "unpaired.from_pairs")
    if kind not in ("pairs", "unpaired"):
        have = "prompt" in columns and {"completion", "response"} & set(columns)
        fail(f"{name!r} needs an unpaired table (prompt, completion, label) or a pairs table; {recipe.dataset} "
             + ("has no 'label' (or 'score') column" if have else f"is a {kind} table"), "dataset")
    if kind == "unpaired" and recipe.unpaired.label_threshold is not None and unpaired_columns(columns)[1] == "label":
        fail("label_threshold labels a 'score' column, but the table has 'label'", "unpaired.label_threshold")
    if recipe.train.batch_size < 2:
        fail(f"{name!r} estimates its reference point z0 from the other rows of the micro-batch: batch_size must "
             "be >= 2", "train.batch_size")
    if recipe.curriculum.mode == "iterative":
        fail(f"an iterative curriculum is not supported with {name!r}", "curriculum.mode")
    if recipe.curriculum.mode != "off" and "stage" not in columns:
        fail("a curriculum needs the 'stage' column", "curriculum.mode")


def check_split(recipe, counts: dict[str, int] | None, *, file: str | None = None) -> None:
    """A table with a `split` column trains on its `train` rows: there must be some."""
    if counts is not None and not counts.get(TRAIN_SPLIT):
        raise RecipeError(f"{recipe.dataset} has a `split` column but no {TRAIN_SPLIT!r} rows (it has "
                          f"{_counts(counts)}); training uses only the train rows", path="dataset", file=file)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k!r}" for k, n in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "no rows"


def check_eval_split(recipe, split_counts: dict[str, int] | None, *, file: str | None = None) -> None:
    """`eval.split` (text and VLM recipes) needs the training table's `split` column with rows of that value."""
    ev = recipe.eval
    if ev is None or ev.split is None:
        return
    if split_counts is None:
        raise RecipeError(f"{recipe.dataset} has no `split` column (the `split` builder step writes one); split "
                          "it, or set eval.dataset to evaluate on another table", path="eval.split", file=file)
    if not split_counts.get(ev.split):
        raise RecipeError(f"{recipe.dataset} has no rows with split {ev.split!r} (it has {_counts(split_counts)})",
                          path="eval.split", file=file)


def check_eval(recipe: TrainRecipe, columns: list[str], *, eval_columns: list[str] | None = None,
               split_counts: dict[str, int] | None = None, file: str | None = None) -> None:
    """The `eval` section against the data: `split` needs the training table's `split` column with rows of that
    value; another `dataset` must have what the loss needs (the training table's checks), and when the training
    reference comes from the training table's columns (no reference model to run on the eval rows), those
    columns too."""
    ev = recipe.eval
    if ev is None or ev.split is not None:
        check_eval_split(recipe, split_counts, file=file)
        return
    spec, _ = recipe.loss_spec()

    def fail(msg: str) -> None:
        raise RecipeError(f"eval dataset {ev.dataset}: {msg}", path="eval.dataset", file=file)

    try:   # the training table's checks, on the eval table (no curriculum: eval rows need no stage)
        check_dataset(recipe.model_copy(update={"dataset": ev.dataset, "curriculum": CurriculumSection()}),
                      eval_columns)
    except RecipeError as e:
        fail(str(e).removeprefix(f"{e.path}: ") if e.path else str(e))
    if needs_reference(spec, recipe) and reference_model(recipe, columns) is None:
        missing = [c for c in reference_columns(spec, recipe, eval_columns) if c not in eval_columns]
        if missing:
            fail(f"no {', '.join(missing)} column(s), and the training reference log-probs are {recipe.dataset}'s "
                 "own columns, so no reference model can compute them; set reference.model (one reference pass "
                 "then covers both tables)")


def data_options(recipe: TrainRecipe) -> DataOptions:
    spec, _ = recipe.loss_spec()
    return DataOptions(chat_template=recipe.chat_template, unpaired=spec.kind == "unpaired",
                       label_threshold=recipe.unpaired.label_threshold, other_rewards="other_rewards" in spec.needs)


def _location(err: dict) -> str:
    return ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))


def validate_recipe(model: type[_Section], data: dict, *, file: str | None = None):
    """`model(**data)` with every problem as a one-line RecipeError naming the YAML path (shared by the text, VLM
    recipes)."""
    if not isinstance(data, dict):
        raise RecipeError("a training recipe is a YAML mapping", file=file)
    try:
        return model(**data)
    except RecipeError as e:
        raise RecipeError(str(e).split(": ", 1)[-1] if e.path else str(e), path=e.path, file=file) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(err["type"], err["msg"])
        raise RecipeError(msg.removeprefix("Value error, "), path=_location(err) or None, file=file) from None


def parse_train_recipe(data: dict, *, file: str | None = None) -> TrainRecipe:
    return validate_recipe(TrainRecipe, data, file=file)


def read_recipe_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {p}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"invalid YAML: {e}".replace("\n", " "), file=str(p)) from None


def recipe_dataset_columns(dataset: str, catalog_path, *, file: str, path: str = "dataset") -> list[str]:
    """The dataset's column names; a missing or unreadable dataset is a RecipeError at `path`."""
    try:
        return dataset_columns(dataset, catalog_path)
    except PrefdataError as e:   # DatasetNotFound included
        raise RecipeError(str(e), path=path, file=file) from None


def load_train_recipe(path: str | Path, *, catalog_path: str | Path | None = None,
                      check_data: bool = True) -> TrainRecipe:
    """Parse and validate a training recipe; with `check_data`, also open the dataset's schema (and its `split`
    column, the eval dataset's schema) and check them."""
    recipe = parse_train_recipe(read_recipe_yaml(path), file=str(path))
    if check_data:
        file = str(path)
        columns = recipe_dataset_columns(recipe.dataset, catalog_path, file=file)
        check_dataset(recipe, columns, file=file)
        counts = split_counts(recipe.dataset, catalog_path) if SPLIT in columns else None
        check_split(recipe, counts, file=file)
        ev = recipe.eval
        eval_columns = recipe_dataset_columns(ev.dataset, catalog_path, file=file, path="eval.dataset") \
            if ev is not None and ev.dataset else None
        check_eval(recipe, columns, eval_columns=eval_columns, split_counts=counts, file=file)
    return recipe
