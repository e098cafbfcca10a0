"""Load a causal LM from whatever path a user has: one function for the trainer and for `prefdata eval`.

A path may name
- a Hugging Face model folder (config.json + weights) or, when no such folder exists, a hub id whose files are in
  the local hub cache (nothing is downloaded);
- a GGUF file (`gguf_file=`, or a path ending `.gguf`; `package:<dist>/<file>` finds one inside an installed
  package): transformers de-quantizes it, but the model it returns refuses `save_pretrained`, so the weights are
  moved into a plain model built from the same config — that one trains, checkpoints and saves like any other;
- a training run (a folder with run.json or checkpoints/): its `final/`;
- a run's `final/` (full weights, or a LoRA adapter) or `checkpoints/step-N/` (accelerate's state: the policy's
  weights under `lm.`, LoRA-wrapped when the run trained LoRA), rebuilt on the run's starting model;
- a LoRA adapter folder (adapter_config.json): applied to its base model and merged, so callers get one plain
  model (generation and log-probs need no peft code).

`locate_model` works out what a path is and checks that everything it needs exists (the base of an adapter
included) without loading weights; `load_causal_lm` loads it. Both say what they found in an info dict that
names the run it belongs to: {"path", "kind": hf|gguf|lora|run, "base_model", "base_gguf_file", "run_dir", "step",
"dataset", "config_sha256"} (base_model: the run's starting model, or an adapter's base; the last four are None
outside a run).

Only torch/transformers/peft are imported (lazily): this runs on a GPU machine that has nothing else.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefdata.errors import PrefdataError
from prefdata.model_paths import PACKAGE_PREFIX, candidate_path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
STATE_WEIGHTS = "model.safetensors"        # what accelerate's save_state writes for the one prepared model
STATE_PREFIX = "lm."                       # the trainer's SequenceLogps module holds the causal LM as `.lm`


@dataclass(frozen=True)
class ModelSource:
    """What a model path is, resolved; nothing loaded yet."""
    path: str                               # as the user wrote it
    kind: str                               # hf | gguf | lora | run (the info dict's kind)
    load: str                               # how: pretrained | gguf | hub | adapter | state
    location: Path | str                    # folder (pretrained, adapter, state), gguf folder, or hub id
    gguf_file: str | None = None
    base: ModelSource | None = None         # adapter / state: the model the weights apply to
    lora: dict | None = None                # state of a LoRA run: the recipe's lora section
    tokenizer: str | None = None            # where the tokenizer is, when not beside the weights
    info: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path | None:
        """A plain model folder that `from_pretrained` (and the generate step) can load as is, else None."""
        return Path(self.location) if self.load == "pretrained" else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PrefdataError(f"cannot read {path}: {e}") from None


def is_run_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "run.json").is_file() or (p / "checkpoints").is_dir())


def _latest_checkpoint(run_dir: Path) -> Path | None:
    from training.checkpointing import checkpoint_dirs
    ckpts = checkpoint_dirs(run_dir)
    return ckpts[-1] if ckpts else None


def run_record(run_dir: Path, step_dir: Path | None = None) -> dict:
    """The run's record for a checkpoint: its trainer_state.json (step, dataset, config hash, recipe), else the
    latest checkpoint's (for final/), completed from run.json."""
    state_dir = step_dir or _latest_checkpoint(run_dir)
    state = _read_json(state_dir / "trainer_state.json") if state_dir and (state_dir / "trainer_state.json").is_file() \
        else {}
    run = _read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    recipe = state.get("recipe") or {}
    return {"run_dir": str(run_dir), "step": state.get("step", run.get("steps")),
            "dataset": state.get("dataset", run.get("dataset")),
            "config_sha256": state.get("config_sha256", run.get("config_sha256")),
            "recipe": recipe}


def _info(path: str, kind: str, *, base_model: str | None = None, base_gguf_file: str | None = None,
          record: dict | None = None) -> dict:
    rec = record or {}
    return {"path": path, "kind": kind, "base_model": base_model, "base_gguf_file": base_gguf_file,
            "run_dir": rec.get("run_dir"), "step": rec.get("step"), "dataset": rec.get("dataset"),
            "config_sha256": rec.get("config_sha256")}


def _run_of(p: Path) -> tuple[Path | None, Path | None]:
    """(run dir, checkpoint dir) when `p` is a run's final/ or checkpoints/step-N/, else (None, None)."""
    if p.name == "final" and is_run_dir(p.parent):
        return p.parent, None
    if p.parent.name == "checkpoints" and (p / "trainer_state.json").is_file():
        return p.parent.parent, p
    return None, None


def in_hub_cache(name: str) -> bool:
    """`name` is a hub id whose config is in the local hub cache (nothing is downloaded: the project runs offline)."""
    if not HUB_ID.match(name) or name.startswith(PACKAGE_PREFIX):
        return False
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _missing(path: str, where: Path) -> str:
    also = " and in the local hub cache" if HUB_ID.match(path) and not path.startswith(PACKAGE_PREFIX) else ""
    return f"looked at {where}{also}"


def _base_source(base: str | None, gguf_file: str | None, *, what: str, base_dir: Path | None) -> ModelSource:
    """The model an adapter / a checkpoint's weights apply to; an error naming where it looked when missing."""
    if not base:
        raise PrefdataError(f"{what}: no base model recorded (the run's recipe `model`, or the adapter's "
                            "base_model_name_or_path)")
    where = candidate_path(base, base_dir)
    if not where.exists() and not in_hub_cache(base):
        raise PrefdataError(f"{what}: its base model {base!r} is missing ({_missing(base, where)})")
    return locate_model(base, gguf_file=gguf_file, base_dir=base_dir)


def locate_model(path: str, *, gguf_file: str | None = None, base_dir: Path | None = None) -> ModelSource:
    """What `path` is (see the module doc). PrefdataError, one line, for a missing path, a run without final/,
    an adapter or checkpoint whose base model is missing, or a folder that holds no model."""
    p = candidate_path(str(path), base_dir)
    if not p.exists():
        if gguf_file is None and in_hub_cache(str(path)):
            return ModelSource(str(path), "hf", "hub", str(path), info=_info(str(path), "hf"))
        raise PrefdataError(f"model path {str(path)!r} does not exist ({_missing(str(path), p)})")
    if gguf_file is not None or p.suffix == ".gguf":
        folder, name = (p, gguf_file) if gguf_file is not None else (p.parent, p.name)
        if not (folder / name).is_file():
            raise PrefdataError(f"GGUF file {name!r} not found in {folder}")
        return ModelSource(str(path), "gguf", "gguf", folder, gguf_file=name, info=_info(str(path), "gguf"))
    if not p.is_dir():
        raise PrefdataError(f"{path}: not a model folder or a .gguf file")
    if (p / "config.json").is_file() or (p / "adapter_config.json").is_file() \
            or (p / "trainer_state.json").is_file():
        return _locate_folder(str(path), p, base_dir)
    if is_run_dir(p):
        final = p / "final"
        if not final.is_dir():
            raise PrefdataError(f"run {p} has no final/ (training did not finish); evaluate one of its "
                                "checkpoints/step-N instead")
        return _locate_folder(str(path), final, base_dir)
    raise PrefdataError(f"{p} holds no model (no config.json, adapter_config.json or trainer_state.json)")


def _locate_folder(path: str, p: Path, base_dir: Path | None) -> ModelSource:
    run_dir, step_dir = _run_of(p)
    record = run_record(run_dir, step_dir) if run_dir else None
    recipe = (record or {}).get("recipe") or {}
    start, start_gguf = recipe.get("model"), recipe.get("gguf_file")
    if step_dir is not None:           # accelerate state: the run's starting model + these weights
        if not (p / STATE_WEIGHTS).is_file():
            raise PrefdataError(f"checkpoint {p} has no {STATE_WEIGHTS} (only single-process text runs save "
                                "their weights there)")
        base = _base_source(start, start_gguf, what=f"checkpoint {p}", base_dir=base_dir)
        return ModelSource(path, "lora" if recipe.get("lora") else "run", "state", p, base=base,
                           lora=recipe.get("lora"), tokenizer=recipe.get("tokenizer"),
                           info=_info(path, "lora" if recipe.get("lora") else "run", base_model=start,
                                      base_gguf_file=start_gguf, record=record))
    if (p / "adapter_config.json").is_file():
        cfg = _read_json(p / "adapter_config.json")
        base_name = start or cfg.get("base_model_name_or_path")
        base_gguf = start_gguf if start else None
        base = _base_source(base_name, base_gguf, what=f"LoRA adapter {p}", base_dir=base_dir)
        return ModelSource(path, "lora", "adapter", p, base=base,
                           info=_info(path, "lora", base_model=base_name, base_gguf_file=base_gguf, record=record))
    kind = "run" if run_dir else "hf"
    return ModelSource(path, kind, "pretrained", p, info=_info(path, kind, base_model=start, base_gguf_file=start_gguf,
                                                               record=record))


def _from_pretrained(location, *, dtype, trust_remote_code: bool, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoModelForCausalLM.from_pretrained(location, dtype=dtype, trust_remote_code=trust_remote_code, **kw)


def plain_copy(lm: torch.nn.Module, *, name_or_path: str | None = None) -> torch.nn.Module:
    """The same weights in a model built from the same config, without the GGUF loader's state (transformers
    refuses to save a GGUF-loaded model; the copy saves, trains and checkpoints as any model)."""
    from transformers import AutoModelForCausalLM
    # the GGUF loader's quantization_config is what makes save_pretrained refuse: the copy is a plain model
    cfg = lm.config.__class__.from_dict({k: v for k, v in lm.config.to_dict().items() if k != "quantization_config"})
    dtype = next(lm.parameters()).dtype
    plain = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    plain.load_state_dict(lm.state_dict())
    plain.tie_weights()
    if name_or_path is not None:   # what a LoRA adapter trained on the copy records as its base
        plain.config._name_or_path = name_or_path
        plain.name_or_path = name_or_path
    if lm.generation_config is not None:
        plain.generation_config = lm.generation_config
    return plain.eval()


def _load_state(lm: torch.nn.Module, src: ModelSource) -> torch.nn.Module:
    """A trainer checkpoint's weights (keys `lm.…`) into the starting model, LoRA-wrapped first when the run
    trained LoRA, then merged."""
    from safetensors.torch import load_file
    state = load_file(str(Path(src.location) / STATE_WEIGHTS))
    state = {k[len(STATE_PREFIX):]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
    if src.lora:
        from peft import LoraConfig

        from training.peft_compat import get_peft_model
        lo = src.lora
        lm = get_peft_model(lm, LoraConfig(r=lo["r"], lora_alpha=lo["alpha"], lora_dropout=lo.get("dropout", 0.0),
                                           target_modules=list(lo["target_modules"]), task_type="CAUSAL_LM"))
    missing, unexpected = lm.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k} if getattr(lm.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        bad = (unexpected or sorted(set(missing) - tied))[0]
        raise PrefdataError(f"checkpoint {src.location} does not fit its base model {src.base.path!r} "
                            f"({'unexpected' if unexpected else 'missing'} weight {bad!r})")
    if src.lora:
        lm = lm.merge_and_unload()
    lm.tie_weights()
    return lm


def _load_model(src: ModelSource, *, dtype, trust_remote_code: bool) -> torch.nn.Module:
    if src.load in ("pretrained", "hub"):
        return _from_pretrained(src.location, dtype=dtype, trust_remote_code=trust_remote_code)
    if src.load == "gguf":
        lm = _from_pretrained(src.location, dtype=dtype, trust_remote_code=trust_remote_code, gguf_file=src.gguf_file)
        return plain_copy(lm, name_or_path=str(Path(src.location) / src.gguf_file))
    base = _load_model(src.base, dtype=dtype, trust_remote_code=trust_remote_code)
    if src.load == "state":
        return _load_state(base, src)
    from peft import PeftModel  # adapter folder: apply and merge
    return PeftModel.from_pretrained(base, str(src.location)).merge_and_unload()


def _tokenizer_source(src: ModelSource, override: str | None) -> tuple[str | Path, str | None]:
    """(where, gguf_file) of the tokenizer: the override, the weights' folder when it holds one, else the base's."""
    if override:
        return str(candidate_path(override)) if Path(override).exists() or override.startswith(PACKAGE_PREFIX) \
            else override, None
    if src.load == "gguf":
        return src.location, src.gguf_file
    if src.load in ("pretrained", "hub"):
        return src.location, None
    if src.load == "adapter" and (Path(src.location) / "tokenizer_config.json").is_file():
        return src.location, None
    if src.tokenizer:
        return _tokenizer_source(src, src.tokenizer)
    return _tokenizer_source(src.base, None)


def load_tokenizer(src: ModelSource, *, tokenizer: str | None = None, trust_remote_code: bool = False):
    """The tokenizer that goes with `src` (pad = eos when it has no pad token, as TRL does)."""
    from transformers import AutoTokenizer
    where, gguf = _tokenizer_source(src, tokenizer)
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code,
                                            **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError) as e:
        raise PrefdataError(f"cannot load the tokenizer of {src.path!r} from {where}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    if tok.pad_token is None:   # padding never reaches a loss or a log-prob
        tok.pad_token = tok.eos_token
    return tok


def load_source(src: ModelSource, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                tokenizer: str | None = None):
    """(model in eval mode, tokenizer) for a located source; weights in `dtype` whatever they were saved in."""
    tok = load_tokenizer(src, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    try:
        lm = _load_model(src, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrefdataError(f"cannot load {src.path!r}: {msg}") from None
    return lm.eval(), tok


def load_causal_lm(path: str, *, gguf_file: str | None = None, dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False, tokenizer: str | None = None, base_dir: Path | None = None):
    """(model, tokenizer, info) for any path `locate_model` understands; see the module doc."""
    src = locate_model(path, gguf_file=gguf_file, base_dir=base_dir)
    lm, tok = load_source(src, dtype=dtype, trust_remote_code=trust_remote_code, tokenizer=tokenizer)
    return lm, tok, dict(src.info)
