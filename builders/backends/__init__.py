"""Generation backends behind one interface.

A backend turns a list of `GenRequest` (one candidate each: prompt or chat messages, sampling parameters,
its own seed) into one `GenOutput` per request, in order. Text backends: transformers (CPU default) and
vLLM (extra `gpu`, imported only when chosen); image backend: diffusers (N images per caption).
`load_backend(spec)` imports the chosen backend module lazily, so a recipe without generation never
imports torch, and one without vLLM never imports vllm."""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prefdata.errors import RecipeError
from prefdata.model_paths import resolve_model_path


class SamplingSpec(BaseModel):
    """Sampling parameters (one set per row; columns of the input may override them per row)."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    temperature: float = Field(0.8, ge=0.0)      # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)                   # 0 = off
    max_new_tokens: int = Field(128, ge=1)
    # diffusers only
    num_inference_steps: int = Field(30, ge=1)
    guidance_scale: float = Field(7.5, ge=0.0)
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)


class ModelSpec(BaseModel):
    """One generator. `path` is a local directory/file (relative to the recipe dir) or
    `package:<distribution>/<path inside it>` for weights shipped in an installed package."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str                                      # recorded in the `model` column
    backend: Literal["transformers", "vllm", "diffusers"] = "transformers"
    path: str
    gguf_file: str | None = None                   # transformers: load a GGUF checkpoint from `path`
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"                           # auto: cuda when available, else cpu
    batch_size: int = Field(8, ge=1)
    chat_template: Literal["auto", "never"] = "auto"   # auto: use the tokenizer's template when it has one
    system_prompt: str | None = None
    trust_remote_code: bool = False
    # vLLM engine options (ignored elsewhere)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_model_len: int | None = None

    def model_path_fields(self) -> dict[str, str]:
        """Model paths checked when the recipe is parsed (prefdata.model_paths.model_path_problems)."""
        what = {"diffusers": "a diffusers pipeline folder (model_index.json and its parts)",
                "vllm": "a model folder vLLM can load (config.json, tokenizer, safetensors)"}
        return {"path": what.get(self.backend, "a transformers model folder (config.json, tokenizer files and "
                                               "weights) or a .gguf file")}


@dataclass(frozen=True)
class GenRequest:
    key: str                                       # response_id the output will get
    prompt: str
    messages: list[dict] | None                    # chat prompt; wins over `prompt` when present
    params: SamplingSpec
    seed: int


@dataclass(frozen=True)
class GenOutput:
    text: str                                      # generated text, or the image's relative path
    n_tokens: int
    finish_reason: str                             # stop | length | image


def resolve_path(path: str, base_dir: Path) -> Path:
    """A local path (relative to `base_dir`) or `package:<dist>/<path>`: one resolver for builders and training."""
    return resolve_model_path(path, base_dir)


def torch_dtype(name: str, device: str):
    import torch
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (or a no-op when disabled) yielding `advance(n)`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as p:
        task = p.add_task(description, total=total)
        yield lambda n: p.advance(task, n)


_BACKENDS = {
    "transformers": ("builders.backends.transformers_backend", "TransformersBackend"),
    "vllm": ("builders.backends.vllm_backend", "VLLMBackend"),
    "diffusers": ("builders.backends.diffusers_backend", "DiffusersBackend"),
}


_LOADED: dict[tuple[str, str], object] = {}
_KEEP = 2          # models kept loaded (a judge and a generator, or one model reused by several steps)


def load_backend(spec: ModelSpec, base_dir: Path, *, path: str = "models"):
    """Instantiate the backend `spec.backend` (module imported only now). The last few loaded backends are
    kept, so steps of one build (generate, then judge with the same model) load a model once."""
    if spec.backend not in _BACKENDS:
        raise RecipeError(f"unknown backend {spec.backend!r}; known: {sorted(_BACKENDS)}", path=path)
    key = (spec.model_dump_json(), str(Path(base_dir).resolve()))
    if key in _LOADED:
        return _LOADED[key]
    module, cls = _BACKENDS[spec.backend]
    backend = getattr(importlib.import_module(module), cls)(spec, base_dir)
    while len(_LOADED) >= _KEEP:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = backend
    return backend
