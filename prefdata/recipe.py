"""Build recipes: YAML -> validated pydantic models, resolved through builders.registry.STEPS.

```yaml
name: arena-curry                      # output dataset name
description: optional free text
seed: 0                                # seeds every random choice (steps may override with their own seed)
source: {dataset: NAME[@V]}            # or {path: FILE, format: F, mapping: {canonical: source_column}}
# or a mixture (builders/mixture.py): a list of sources, each with a name and weight / max_prompts / max_rows
# sources: [{name: arena, path: a.jsonl, format: arena, weight: 1}, {name: hh, dataset: hh, unpair: true, weight: 2}]
steps:
  - rank: {by: score, aggregate: mean}
  - pairs: {strategy: all_pairs, min_margin: 1}
  - curriculum: {stages: 3, by: margin}
```
Every problem is a RecipeError naming the recipe file and the YAML path
(`x.yaml: steps[1].pairs.min_margin: Input should be a valid number`), raised while parsing, before any
data is read: unknown keys and steps, wrong types, and a step that cannot take the table kind the
previous step produces (e.g. curriculum on responses). A source path is relative to the recipe file."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from builders.base import StepConfig
from builders.registry import STEPS, StepSpec
from prefdata.errors import RecipeError, RecipeProblems
from prefdata.model_paths import model_path_problems

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TOP_KEYS = ("name", "description", "seed", "source", "sources", "steps", "partitions")
# the table kind a file source yields, where the format alone decides it (others: decided by mapping/content)
FORMAT_KIND = {"arena": "responses", "ultrafeedback": "responses", "nectar": "responses", "helpsteer2": "responses",
               "hh-rlhf": "pairs", "pick-a-pic": "pairs", "prompts": "prompts"}
PAIR_COLUMNS = {"chosen", "rejected"}


class SourceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: str | None = None
    path: str | None = None
    format: str | None = None
    mapping: dict[str, str] | None = None
    carry: list[str] | None = None        # extra source columns to keep (e.g. reference tests)


class MixSource(SourceSpec):
    """One entry of `sources:` (a mixture, builders/mixture.py): a source spec plus its name (the value of the
    `source` column) and how much of it to take; an entry with none of weight/max_* takes all its prompts."""
    name: str
    weight: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_prompts: int | None = Field(None, ge=1)
    max_rows: int | None = Field(None, ge=1)
    unpair: bool = False                  # a pairs source read as responses (to mix with responses sources)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid source name (letters, digits, '.', '_', '-')")
        return v

    def take(self):
        from builders.mixture import Take
        return Take(self.name, self.weight, self.max_prompts, self.max_rows)


@dataclass(frozen=True)
class RecipeStep:
    name: str
    config: StepConfig
    spec: StepSpec
    fn: Any                                  # the step function, resolved once at parse time
    yaml_path: str                           # steps[i].name, for errors raised at run time


@dataclass(frozen=True)
class Recipe:
    name: str
    source: SourceSpec | None                # None for a mixture (see `sources`)
    steps: tuple[RecipeStep, ...]
    seed: int = 0
    description: str | None = None
    file: Path | None = None                 # the YAML file (None when parsed from a dict)
    base_dir: Path | None = None             # where a relative source path resolves (the file's folder)
    source_kind: str | None = None           # known at parse time for file sources of fixed format
    kinds: tuple[str | None, ...] = field(default=())   # output kind after each step (None: decided at run time)
    partitions: int | None = None            # out-of-core partitions (None: auto); not part of the config
                                             # hash, since every partition count gives the same rows
    sources: tuple[MixSource, ...] = ()      # a mixture's entries (then `source` is None)

    @property
    def source_path(self) -> Path | None:
        """Absolute path of a file source (relative paths resolve against the recipe's folder)."""
        return _source_path(self.source, self.base_dir) if self.source is not None else None

    def entry_path(self, entry: SourceSpec) -> Path | None:
        """Absolute path of a mixture entry's file (None for a catalog dataset)."""
        return _source_path(entry, self.base_dir)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_problems(e: ValidationError, prefix: str) -> list[tuple[str, str]]:
    found = []
    for err in e.errors():
        where = _loc(err["loc"])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        found.append((f"{prefix}.{where}" if where else prefix, msg))
    return found


def _pydantic_error(e: ValidationError, prefix: str, file: str) -> RecipeError:
    """First error as `path: message`, further ones appended as `; path: message`."""
    (path, msg), *rest = _pydantic_problems(e, prefix)
    return RecipeError(msg + "".join(f"; {p}: {m}" for p, m in rest), path=path, file=file)


def _source_kind(src: SourceSpec) -> str | None:
    if src.format in FORMAT_KIND:
        return FORMAT_KIND[src.format]
    if src.mapping is not None:
        return "pairs" if PAIR_COLUMNS <= set(src.mapping) else "responses"
    return None


def output_kind(config: StepConfig, in_kind: str | None) -> str | None:
    """The kind a step produces: its config's `output_kind` ClassVar, else the kind it was given."""
    declared = getattr(type(config), "output_kind", None)
    return declared if declared is not None else in_kind


def check_kind(step: RecipeStep, kind: str | None, file: str) -> None:
    if kind is not None and kind not in step.spec.inputs:
        raise RecipeError(f"step {step.name!r} takes {' or '.join(step.spec.inputs)}, but its input is {kind}",
                          path=step.yaml_path, file=file)


def parse_recipe(data: Any, *, file: str | Path | None = None, base_dir: Path | None = None,
                 model_placeholders: frozenset[str] = frozenset()) -> Recipe:
    """Validate a recipe already loaded from YAML. `file` names it in errors; a relative source path
    resolves against `base_dir` (default: the file's folder, else the working directory). Every model path
    must exist, except those in `model_placeholders` (e.g. an iterate recipe's `policy`, resolved per round)."""
    fname = str(file) if file is not None else "<recipe>"
    if base_dir is None and file is not None:
        base_dir = Path(file).resolve().parent
    if not isinstance(data, dict):
        raise RecipeError("a recipe is a mapping with keys name, source, steps", file=fname)
    for key in data:
        if key not in TOP_KEYS:
            raise RecipeError(f"unknown key (expected one of {', '.join(TOP_KEYS)})", path=str(key), file=fname)
    if "source" in data and "sources" in data:
        raise RecipeError("give source: (one source) or sources: (a mixture), not both", path="sources", file=fname)
    for key in ("name", "source" if "sources" not in data else "sources", "steps"):
        if key not in data:
            raise RecipeError("missing (required)" + (": source, or sources for a mixture" if key == "source" else ""),
                              path=key, file=fname)
    name = data["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RecipeError(f"{name!r} is not a valid dataset name (letters, digits, '.', '_', '-')",
                          path="name", file=fname)
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecipeError(f"seed must be an integer, got {seed!r}", path="seed", file=fname)
    partitions = data.get("partitions", "auto")
    if partitions == "auto" or partitions is None:
        partitions = None
    elif isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise RecipeError(f"partitions must be a positive integer or auto, got {partitions!r}", path="partitions",
                          file=fname)
    desc = data.get("description")
    if desc is not None and not isinstance(desc, str):
        raise RecipeError("description must be text", path="description", file=fname)

    if "sources" in data:
        source, sources = None, _parse_sources(data["sources"], fname)
    else:
        source, sources = _check_source(SourceSpec, data["source"], "source", fname), ()

    steps_raw = data["steps"]
    if not isinstance(steps_raw, list) or not steps_raw:
        raise RecipeError("steps must be a non-empty list of {step_name: {config}}", path="steps", file=fname)
    steps, problems = [], []                # problems: (YAML path, message), all reported together
    for i, entry in enumerate(steps_raw):
        try:
            step = _parse_step(i, entry)
        except _StepProblems as e:
            problems += e.problems
            continue
        steps.append(step)
        problems += model_path_problems(step.config, step.yaml_path, base_dir, skip=model_placeholders)
    entries = [("source", source)] if source is not None else [(f"sources[{i}]", e) for i, e in enumerate(sources)]
    for where, entry in reversed(entries):
        entry_path = _source_path(entry, base_dir)
        if entry_path is not None and not entry_path.is_file():
            problems.insert(0, (f"{where}.path", f"source file not found: {entry_path}"))
    if problems:
        raise RecipeProblems(problems, file=fname)

    kind = _source_kind(source) if source is not None else _mixture_kind(sources, fname)
    start_kind = kind
    kinds = []
    for step in steps:
        check_kind(step, kind, fname)
        kind = output_kind(step.config, kind)
        kinds.append(kind)
    recipe = Recipe(name=name, source=source, steps=tuple(steps), seed=seed, description=desc,
                    file=Path(file) if file is not None else None, base_dir=base_dir,
                    source_kind=start_kind, kinds=tuple(kinds), partitions=partitions, sources=sources)
    if partitions is not None and partitions > 1:
        from prefdata.partitioned import whole_table_step
        blocker = whole_table_step(steps)
        if blocker is not None:
            raise RecipeError(f"step {blocker.name!r} needs the whole table, so this recipe cannot run by "
                              f"partitions (set partitions: 1 or auto)", path="partitions", file=fname)
    return recipe


def _check_source(cls: type[SourceSpec], raw: Any, where: str, fname: str) -> Any:
    try:
        source = cls.model_validate(raw)
    except ValidationError as e:
        raise _pydantic_error(e, where, fname) from None
    if (source.dataset is None) == (source.path is None):
        raise RecipeError("give exactly one of dataset: NAME[@V] or path: FILE", path=where, file=fname)
    if source.dataset is not None and (source.format or source.mapping):
        raise RecipeError("format/mapping only apply to a path source", path=where, file=fname)
    return source


def _parse_sources(raw: Any, fname: str) -> tuple[MixSource, ...]:
    if not isinstance(raw, list) or not raw:
        raise RecipeError("sources must be a non-empty list of {name, path or dataset, weight | max_prompts | "
                          "max_rows}", path="sources", file=fname)
    entries, names = [], {}
    for i, item in enumerate(raw):
        entry = _check_source(MixSource, item, f"sources[{i}]", fname)
        if entry.name in names:
            raise RecipeError(f"duplicate source name {entry.name!r} (also sources[{names[entry.name]}].name)",
                              path=f"sources[{i}].name", file=fname)
        names[entry.name] = i
        entries.append(entry)
    return tuple(entries)


def entry_kind(entry: MixSource) -> str | None:
    """The table kind a mixture entry gives the steps: responses when unpaired, else as a single source."""
    return "responses" if entry.unpair else _source_kind(entry)


def _mixture_kind(sources: tuple[MixSource, ...], fname: str) -> str | None:
    """The kind every entry gives (known at parse time where the format decides it); a mismatch is an error."""
    first: tuple[int, str] | None = None
    for i, e in enumerate(sources):
        if e.unpair and _source_kind(e) not in (None, "pairs"):
            raise RecipeError(f"unpair takes a pairs source; this one gives {_source_kind(e)}",
                              path=f"sources[{i}].unpair", file=fname)
        kind = entry_kind(e)
        if kind is None:
            continue
        if first is None:
            first = (i, kind)
        elif kind != first[1]:
            raise RecipeError(f"this source gives {kind} but sources[{first[0]}] gives {first[1]}: every source of a "
                              "mixture must give the same table kind (unpair: true reads a pairs source as "
                              "responses)", path=f"sources[{i}]", file=fname)
    return first[1] if first is not None else None


class _StepProblems(Exception):
    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems


def _parse_step(i: int, entry: Any) -> RecipeStep:
    """One `steps[i]` entry -> RecipeStep; _StepProblems with its YAML paths when it is invalid."""
    where = f"steps[{i}]"
    if isinstance(entry, str):          # `- dedup` with no config
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise _StepProblems([(where, "each step is a single-key mapping {step_name: {config}}")])
    (step_name, raw_cfg), = entry.items()
    here = f"{where}.{step_name}"
    if step_name not in STEPS:
        raise _StepProblems([(here, f"unknown step {step_name!r}; known steps: {', '.join(sorted(STEPS))}")])
    spec = STEPS[step_name]
    try:
        cfg_cls, fn = spec.load()
    except ImportError as e:
        raise _StepProblems([(here, f"step {step_name!r} is not available here: {e}")]) from None
    if raw_cfg is None:
        raw_cfg = {}
    if not isinstance(raw_cfg, dict):
        raise _StepProblems([(here, f"config must be a mapping, got {type(raw_cfg).__name__}")])
    try:
        cfg = cfg_cls.model_validate(raw_cfg)
    except ValidationError as e:
        raise _StepProblems(_pydantic_problems(e, here)) from None
    return RecipeStep(step_name, cfg, spec, fn, here)


def _source_path(source: SourceSpec, base_dir: Path | None) -> Path | None:
    if source.path is None:
        return None
    p = Path(source.path).expanduser()
    return p if p.is_absolute() else ((base_dir or Path.cwd()) / p).resolve()


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    fname = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe file not found", file=fname) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe: {e}", file=fname) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(f"invalid YAML: {where}{getattr(e, 'problem', None) or e}", file=fname) from None
    return parse_recipe(data, file=path)


def canonical_config(recipe: Recipe) -> tuple[str, str]:
    """(canonical JSON, sha256) of what determines the output: name, source as written, seed and every
    step's full config (defaults included, so `pairs: {}` and `pairs: {strategy: all_pairs}` hash alike)."""
    doc = {"name": recipe.name, "seed": recipe.seed,
           "steps": [{s.name: s.config.model_dump(mode="json")} for s in recipe.steps]}
    if recipe.source is not None:
        doc["source"] = recipe.source.model_dump(mode="json", exclude_none=True)
    else:
        doc["sources"] = [e.model_dump(mode="json", exclude_none=True) for e in recipe.sources]
    # same canonical form as catalog.hashing.canonical_json (sorted keys, no spaces, UTF-8 kept)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


BUNDLED_RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"


def bundled_recipe_for(dataset: str) -> Path | None:
    """The bundled build recipe whose `name:` is `dataset` (NAME or NAME@V), so a missing dataset's error can
    say which recipe makes it; None when no bundled build recipe does."""
    name = dataset.split("@")[0]
    for p in sorted(BUNDLED_RECIPES.glob("*.yaml")):
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("name") == name and "steps" in data \
                and ("source" in data or "sources" in data):
            return p
    return None
