"""VLM training recipe (YAML with a top-level `vlm:` section) -> validated `VlmRecipe`.

    vlm: {model: runs/tiny-llava, make_tiny_model: true}     # LLaVA / Qwen2-VL style folder (model + processor)
    dataset: mm-mia-dpo            # catalog name[@version|@tag], or a parquet/Arrow file as the MIA-DPO builder writes it
    loss: {name: dpo_sigmoid, beta: 0.1}
    reference: {source: auto}      # auto | copy | adapters | dataset | precompute | free
    train: {batch_size: 2, grad_accum: 1, lr: 1.0e-4, max_steps: 20, save_every: 5, seed: 0}
    lora: {r: 8, alpha: 16}        # optional
    output_dir: runs/vlm-dpo

The train/lora/curriculum sections are the text recipe's (training/recipe.py), so the keys mean the same.
Every problem is a one-line RecipeError naming the YAML path, raised at parse time: an unknown loss, a loss
that needs something the VLM path cannot provide, a dataset without prompt/images/chosen/rejected, a
reference source the recipe or the dataset cannot back."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from prefdata.errors import RecipeError
from training.data import PAIR_REF, SPLIT, split_counts
from training.recipe import (
    CurriculumSection,
    EvalSection,
    LoraSection,
    TrainSection,
    _LossRecipe,
    _Section,
    check_eval_split,
    check_split,
    read_recipe_yaml,
    recipe_dataset_columns,
    validate_recipe,
)

VLM_COLUMNS = ("prompt", "images", "chosen", "rejected")
# what the VLM path computes for a pair loss: reference log-probs, token counts, the chosen NLL, per-token
# log-probs (not with stored reference log-probs) and the dataset's reward-model margin
PROVIDED = frozenset({"ref", "counts", "nll", "token_logps", "rm_margin"})
WHY_NOT = {"seq_kl": "the sequential KL against an online reference model (TDPO)",
           "other_rewards": "other objectives' rewards (MODPO)"}


class VlmSection(_Section):
    model: str = Field(description="folder (or hub id) with the model and its processor; loaded with "
                                   "AutoModelForImageTextToText + AutoProcessor")
    make_tiny_model: bool = Field(False, description="build a random tiny LLaVA at `model` if it does not exist")
    image_text: str | None = Field(None, description="text each `<image>` in a prompt becomes (default: kept as "
                                                     "is, the LLaVA placeholder)")
    media_root: str | None = Field(None, description="where media/<sha256> URIs live (default: the catalog "
                                                     "directory, or the dataset file's folder)")
    base_dir: str | None = Field(None, description="other relative image URIs (default: media_root)")
    num_frames: int = Field(8, ge=1, description="video pairs (video_chosen/video_rejected): frames sampled "
                                                 "uniformly from each clip, the images of the conversation")
    trust_remote_code: bool = False


class VlmTrainSection(TrainSection):
    @model_validator(mode="after")
    def _text_only_keys(self):
        if self.token_budget is not None:
            raise ValueError("token_budget is a text-packing option; the VLM trainer forwards whole micro-batches "
                             "(lower batch_size instead)")
        if self.master_weights != "fp32":
            raise ValueError("master_weights bf16 is a text-trainer option; the VLM trainer keeps fp32 weights "
                             "(LoRA keeps its trainable state small)")
        if self.layout == "packed" or self.attention != "auto":
            raise ValueError("layout packed and attention are text-trainer options; the VLM trainer forwards "
                             "padded conversations with the model's own attention")
        return self


class VlmReferenceSection(_Section):
    # auto: the dataset's ref_logp_* columns if present, else adapters with lora, else a frozen copy
    source: Literal["auto", "copy", "adapters", "dataset", "precompute", "free"] = "auto"
    batch_size: int = Field(4, ge=1, description="rows per forward of the precompute pass")


class VlmRecipe(_LossRecipe):
    vlm: VlmSection
    dataset: str
    loss: dict
    output_dir: str
    train: VlmTrainSection = VlmTrainSection()
    reference: VlmReferenceSection = VlmReferenceSection()
    curriculum: CurriculumSection = CurriculumSection()
    lora: LoraSection | None = None
    eval: EvalSection | None = None

    @model_validator(mode="after")
    def _check(self) -> VlmRecipe:
        name = self.loss_name()
        spec, _ = self.loss_spec()
        if spec.kind != "pair":
            raise RecipeError(f"loss {name!r} is a {spec.kind} loss; VLM training trains pair losses "
                              "(MIA-DPO pairs)", path="loss.name")
        missing = sorted(spec.needs - PROVIDED)
        if missing:
            what = "; ".join(WHY_NOT.get(m, m) for m in missing)
            raise RecipeError(f"loss {name!r} needs {what}, which the VLM trainer does not compute", path="loss.name")
        src = self.reference.source
        if src == "adapters" and self.lora is None:
            raise RecipeError("reference.source adapters needs a lora section (the reference is the policy with "
                              "its adapters disabled)", path="reference.source")
        if "token_logps" in spec.needs and src in ("dataset", "precompute"):
            raise RecipeError(f"loss {name!r} needs per-token reference log-probs; use reference.source copy, "
                              "adapters or free", path="reference.source")
        if self.curriculum.mode == "iterative":
            raise RecipeError("the VLM trainer runs curriculum off or fixed (iterative reference refresh is "
                              "text-only)", path="curriculum.mode")
        return self

    def reference_source(self, columns) -> str:
        """The concrete reference source for a dataset with these columns ('free' for reference-free losses)."""
        spec, _ = self.loss_spec()
        if "ref" not in spec.needs:
            return "none"
        if self.reference.source != "auto":
            return self.reference.source
        if set(PAIR_REF) <= set(columns):
            return "dataset"
        return "adapters" if self.lora is not None else "copy"



def is_vlm_recipe(path: str | Path) -> bool:
    """A recipe with a top-level `vlm:` section goes to the VLM trainer (unreadable YAML: False, so the text
    recipe parser reports it)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "vlm" in data


def is_video_table(columns) -> bool:
    """PaMi-VDPO video pairs (video_chosen/video_rejected, no images): trained on frames (vlm_video.py)."""
    return {"video_chosen", "video_rejected"} <= set(columns) and "images" not in columns


def check_vlm_dataset(recipe: VlmRecipe, columns: list[str], *, file: str | None = None) -> None:
    from training.vlm_video import VIDEO_COLUMNS
    spec, params = recipe.loss_spec()
    need = VIDEO_COLUMNS if is_video_table(columns) else VLM_COLUMNS
    missing = [c for c in need if c not in columns]
    if missing:
        raise RecipeError(f"{recipe.dataset} lacks column(s) {', '.join(missing)}; VLM training needs "
                          f"{', '.join(VLM_COLUMNS)} (as the mia_dpo builder writes them) or "
                          f"{', '.join(VIDEO_COLUMNS)} (video pairs, as video_augment writes them)", path="dataset",
                          file=file)
    if recipe.reference_source(columns) == "dataset" and not set(PAIR_REF) <= set(columns):
        raise RecipeError(f"reference.source dataset needs the {', '.join(PAIR_REF)} columns; {recipe.dataset} has "
                          "none (use copy, adapters or precompute)", path="reference.source", file=file)
    if "rm_margin" in spec.needs and "margin" not in columns:
        raise RecipeError(f"loss {recipe.loss['name']!r} needs the reward-model margin column 'margin'",
                          path="dataset", file=file)
    if getattr(params, "alpha", 0) is None and recipe.loss["name"].startswith("smpo") and "pref_alpha" not in columns:
        raise RecipeError("smpo with alpha unset needs a per-pair 'pref_alpha' column (or set loss.alpha)",
                          path="loss.alpha", file=file)
    if recipe.curriculum.mode != "off" and "stage" not in columns:
        raise RecipeError("a curriculum needs the 'stage' column", path="curriculum.mode", file=file)


def check_vlm_eval(recipe: VlmRecipe, columns: list[str], eval_columns: list[str] | None, *,
                   file: str | None = None) -> None:
    """`eval.dataset` must be a MIA-DPO pairs table with what the loss needs, and carry reference columns when the
    training reference is the training table's columns."""
    ev = recipe.eval
    if ev is None or ev.dataset is None:
        return
    try:
        check_vlm_dataset(recipe.model_copy(update={"dataset": ev.dataset, "curriculum": CurriculumSection()}),
                          eval_columns)
    except RecipeError as e:
        msg = str(e).removeprefix(f"{e.path}: ") if e.path else str(e)
        raise RecipeError(f"eval dataset {ev.dataset}: {msg}", path="eval.dataset", file=file) from None
    if recipe.reference_source(columns) == "dataset" and not set(PAIR_REF) <= set(eval_columns):
        raise RecipeError(f"eval dataset {ev.dataset}: no {', '.join(PAIR_REF)} columns, and the training "
                          f"reference is {recipe.dataset}'s own columns (reference.source dataset); use another "
                          "reference source", path="eval.dataset", file=file)


def parse_vlm_recipe(data: dict, *, file: str | None = None) -> VlmRecipe:
    return validate_recipe(VlmRecipe, data, file=file)


def load_vlm_recipe(path: str | Path, *, catalog_path: str | Path | None = None,
                    check_data: bool = True) -> VlmRecipe:
    """Parse and validate a VLM recipe; with `check_data`, also check the dataset's columns."""
    recipe = parse_vlm_recipe(read_recipe_yaml(path), file=str(path))
    if check_data:
        file = str(path)
        columns = recipe_dataset_columns(recipe.dataset, catalog_path, file=file)
        check_vlm_dataset(recipe, columns, file=file)
        counts = split_counts(recipe.dataset, catalog_path) if SPLIT in columns else None
        check_split(recipe, counts, file=file)
        check_eval_split(recipe, counts, file=file)
        ev = recipe.eval
        if ev is not None and ev.dataset:
            check_vlm_eval(recipe, columns, recipe_dataset_columns(ev.dataset, catalog_path, file=file,
                                                                   path="eval.dataset"), file=file)
    return recipe
