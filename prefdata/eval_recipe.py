"""Eval recipes (YAML) -> a validated `EvalRecipe`, for `prefdata eval RECIPE`.

```yaml
name: eval-tiny                       # the eval dataset written to the catalog
model: runs/tiny-dpo/final            # a run (its final/), final/, checkpoints/step-N/, a model folder, a GGUF
gguf_file: null
baseline: null                        # default: the run's starting model (its recipe's `model`)
prompts: {dataset: arena-split, split: test, limit: 32}     # or {path: prompts.jsonl, format: prompts}
generate: {sampling: {temperature: 0.0, max_new_tokens: 64}, seed: 0, shard_size: 16, batch_size: 8}
scorers: [{kind: rules, name: short, rule: length, unit: words, max: 60}]   # the score step's, + pairwise_judge
winner_by: short
tie_eps: 0.0
kl: true
preference: {dataset: arena-split, split: test, loss: dpo_sigmoid, beta: 0.1, max_rows: 256}
bootstrap: {n: 2000, seed: 0}
```
Every problem is a one-line RecipeError naming the recipe file and the YAML path, raised while parsing (the
data-dependent checks — datasets, columns, model paths, tokenizers — follow in prefdata/evaluate.py, still
before any model is loaded). Paths are relative to the current directory, as in a training recipe."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from builders.backends import SamplingSpec
from builders.score import Scorer
from builders.scorers.judge import PairwiseJudge
from prefdata.errors import RecipeError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptsSpec(_Section):
    """The prompts to evaluate: a catalog dataset (any table with `prompt`; one row per distinct prompt_id is
    used) or a prompt file read with the ingest formats."""
    dataset: str | None = Field(None, description="catalog NAME[@VERSION|@TAG]")
    path: str | None = Field(None, description="a file read by `prefdata ingest` (jsonl, parquet, ...)")
    format: str | None = Field(None, description="its ingest format (default: prompts)")
    split: str | None = Field(None, description="only rows whose `split` column has this value (e.g. test)")
    limit: int | None = Field(None, ge=1, description="the first N distinct prompts, in table order")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of prompts.dataset or prompts.path")
        if self.format is not None and self.path is None:
            raise ValueError("prompts.format applies to prompts.path only")
        return self

    def label(self) -> str:
        return self.dataset if self.dataset is not None else str(self.path)


class GenerateSpec(_Section):
    """The generate step's settings, used for the model and for the baseline alike."""
    n: int = Field(1, ge=1, description="samples per prompt and side; the eval table has one row per prompt, so 1")
    sampling: SamplingSpec = SamplingSpec()
    seed: int = 0
    shard_size: int = Field(16, ge=1, description="prompts per committed shard (an interrupted eval resumes)")
    batch_size: int = Field(8, ge=1, description="sequences per decoding batch")
    backend: Literal["transformers", "vllm"] = "transformers"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    chat_template: Literal["auto", "never"] = "auto"
    system_prompt: str | None = None
    prompt_template: str = "{prompt}"
    max_model_len: int | None = None
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_sample(self):
        if self.n != 1:
            raise ValueError("n must be 1: the eval table compares one model response with one baseline response "
                             "per prompt (the bootstrap resamples prompts)")
        if "{prompt}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {prompt}")
        return self


class PreferenceSpec(_Section):
    """Held-out pairs: the trainer's preference metrics of the model, with the baseline as the reference."""
    dataset: str = Field(description="catalog NAME[@VERSION|@TAG] or a parquet/Arrow file of pairs (or lists)")
    split: str | None = Field(None, description="only rows whose `split` column has this value")
    loss: str = "dpo_sigmoid"
    beta: float = Field(0.1, gt=0)
    max_rows: int | None = Field(None, ge=1, description="the first N rows, table order")
    max_length: int = Field(512, ge=8, description="prompt + response tokens per response, as in training")
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _loss(self):
        from training.losses import resolve_loss
        try:
            resolve_loss(self.loss, {"beta": self.beta}, where="preference")
        except RecipeError as e:   # the loss is a plain name here, not a mapping with `name`
            path = "preference.loss" if e.path == "preference.name" else e.path
            raise RecipeError(str(e).removeprefix(f"{e.path}: "), path=path) from None
        return self

    def loss_spec(self):
        from training.losses import resolve_loss
        return resolve_loss(self.loss, {"beta": self.beta}, where="preference")


class BootstrapSpec(_Section):
    n: int = Field(2000, ge=1, description="bootstrap resamples of the prompts")
    seed: int = 0


class EvalRecipe(_Section):
    name: str
    model: str
    gguf_file: str | None = None
    baseline: str | None = Field(None, description="default: the starting model of the run `model` belongs to")
    baseline_gguf_file: str | None = None
    trust_remote_code: bool = False
    prompts: PromptsSpec
    generate: GenerateSpec = GenerateSpec()
    scorers: list[Annotated[Scorer | PairwiseJudge, Field(discriminator="kind")]] = Field(min_length=1)
    winner_by: str | None = Field(None, description="the scorer that decides the winner (default: the first "
                                  "pairwise judge, else the first scorer)")
    tie_eps: float = Field(0.0, ge=0, description="|model - baseline| <= tie_eps is a tie")
    kl: bool = Field(True, description="logratio = log pi - log pi_ref of each model response (baseline = ref)")
    preference: PreferenceSpec | None = None
    bootstrap: BootstrapSpec = BootstrapSpec()

    @model_validator(mode="after")
    def _check(self):
        from catalog.errors import InvalidName
        from catalog.names import validate_name
        try:
            validate_name(self.name)
        except InvalidName as e:
            raise ValueError(str(e)) from None
        names = [s.name for s in self.scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"scorer names must be unique, got {names}")
        if self.winner_by is not None and self.winner_by not in names:
            raise ValueError(f"winner_by {self.winner_by!r} is not a scorer name ({names})")
        return self

    @property
    def decider(self) -> str:
        """The scorer whose values decide each prompt's winner."""
        if self.winner_by is not None:
            return self.winner_by
        pairwise = [s.name for s in self.scorers if s.kind == "pairwise_judge"]
        return pairwise[0] if pairwise else self.scorers[0].name

    def pointwise(self) -> list:
        return [s for s in self.scorers if s.kind != "pairwise_judge"]

    def pairwise(self) -> list:
        return [s for s in self.scorers if s.kind == "pairwise_judge"]

    def canonical(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith("function-"):
            out += f".{part}" if out else str(part)
    return out


def parse_eval_recipe(data: Any, *, file: str | None = None, name: str | None = None) -> EvalRecipe:
    """Validate a parsed YAML mapping (`name` overrides the recipe's `name`, as `--name` does)."""
    if not isinstance(data, dict):
        raise RecipeError("an eval recipe is a YAML mapping", file=file)
    if name is not None:
        data = {**data, "name": name}
    try:
        return EvalRecipe(**data)
    except RecipeError as e:   # raised inside a validator (a loss name): keep its path
        raise RecipeError(str(e).removeprefix(f"{e.path}: ") if e.path else str(e), path=e.path, file=file) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(err["type"], err["msg"])
        raise RecipeError(msg.removeprefix("Value error, "), path=_loc(err["loc"]) or None, file=file) from None


def load_eval_recipe(path: str | Path, *, name: str | None = None) -> EvalRecipe:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {p}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"invalid YAML: {str(e).splitlines()[0]}", file=str(p)) from None
    return parse_eval_recipe(data, file=str(p), name=name)
