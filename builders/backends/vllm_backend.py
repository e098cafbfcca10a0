"""vLLM backend (extra `gpu`): written against vLLM's documented offline API — `vllm.LLM(model=...)`,
`vllm.SamplingParams(...)`, `LLM.generate(prompts, sampling_params)` returning `RequestOutput`s whose
`.outputs` are `CompletionOutput`s (`text`, `token_ids`, `finish_reason`). NOT run in this project's
environment (vLLM cannot be installed there); request building and output parsing are unit-tested with
plain objects of the same shape.

One vLLM request per candidate, each with its own `seed`, so a row's output does not depend on the other
rows (the same contract as the transformers backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from builders.backends import GenOutput, GenRequest, ModelSpec, resolve_path
from prefdata.errors import PrefdataError


def sampling_kwargs(req: GenRequest) -> dict[str, Any]:
    p = req.params
    return {
        "n": 1,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k if p.top_k > 0 else -1,      # vLLM: -1 disables top-k
        "max_tokens": p.max_new_tokens,
        "seed": int(req.seed),
    }


def build_requests(requests: list[GenRequest], sampling_cls, render) -> tuple[list[str], list[Any]]:
    """(prompt texts, one SamplingParams per request). `render(req) -> str` applies the chat template."""
    return [render(r) for r in requests], [sampling_cls(**sampling_kwargs(r)) for r in requests]


def parse_outputs(outputs: list[Any], n_requests: int) -> list[GenOutput]:
    """RequestOutput list (input order, as LLM.generate returns it) -> one GenOutput per request."""
    if len(outputs) != n_requests:
        raise PrefdataError(f"vLLM returned {len(outputs)} outputs for {n_requests} requests")
    parsed = []
    for ro in outputs:
        if not ro.outputs:
            raise PrefdataError(f"vLLM request {getattr(ro, 'request_id', '?')} returned no completion")
        c = ro.outputs[0]
        reason = c.finish_reason or "length"
        parsed.append(GenOutput(c.text, len(c.token_ids), "stop" if reason == "stop" else reason))
    return parsed


def model_ref(spec: ModelSpec, base_dir: Path) -> str:
    """A local path when one exists (or `package:`), else the string as given (a hub id vLLM resolves)."""
    local = Path(spec.path) if Path(spec.path).is_absolute() else base_dir / spec.path
    if spec.path.startswith("package:") or local.exists():
        return str(resolve_path(spec.path, base_dir))
    return spec.path


class VLLMBackend:
    def __init__(self, spec: ModelSpec, base_dir: Path):
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise PrefdataError("backend 'vllm' needs the `gpu` extra (pip install 'prefdata[gpu]')") from None
        self.spec, self._sampling = spec, SamplingParams
        model = model_ref(spec, base_dir)
        kw: dict[str, Any] = {"tensor_parallel_size": spec.tensor_parallel_size,
                              "gpu_memory_utilization": spec.gpu_memory_utilization,
                              "trust_remote_code": spec.trust_remote_code,
                              "dtype": spec.dtype}
        if spec.max_model_len:
            kw["max_model_len"] = spec.max_model_len
        if spec.gguf_file:
            model = str(Path(model) / spec.gguf_file)
        self.llm = LLM(model=model, **kw)
        self.tokenizer = self.llm.get_tokenizer()

    def _render(self, req: GenRequest) -> str:
        from builders.backends.transformers_backend import render_prompt
        return render_prompt(self.tokenizer, req, self.spec)[0]

    def generate(self, requests: list[GenRequest], *, progress: bool = False) -> list[GenOutput]:
        prompts, params = build_requests(requests, self._sampling, self._render)
        return parse_outputs(self.llm.generate(prompts, params, use_tqdm=progress), len(requests))
