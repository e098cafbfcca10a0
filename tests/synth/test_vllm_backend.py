"""vLLM backend request building and output parsing, with plain objects shaped like vLLM's
SamplingParams / RequestOutput / CompletionOutput (vLLM itself cannot be installed here)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from builders.backends import GenRequest, ModelSpec, SamplingSpec
from builders.backends.vllm_backend import build_requests, parse_outputs, sampling_kwargs
from prefdata.errors import PrefdataError


@dataclass
class SamplingParams:            # the fields of vllm.SamplingParams this backend sets
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    seed: int | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


def test_one_request_per_candidate_with_its_own_seed_and_params():
    reqs = [GenRequest("a", "hi", None, SamplingSpec(temperature=0.7, top_k=0, top_p=0.9, max_new_tokens=32), 11),
            GenRequest("b", "yo", [{"role": "user", "content": "yo"}], SamplingSpec(temperature=0.0, top_k=5), 12)]
    prompts, params = build_requests(reqs, SamplingParams, lambda r: f"<user>{r.prompt}<assistant>")
    assert prompts == ["<user>hi<assistant>", "<user>yo<assistant>"]
    assert params[0] == SamplingParams(n=1, temperature=0.7, top_p=0.9, top_k=-1, max_tokens=32, seed=11)
    assert params[1] == SamplingParams(n=1, temperature=0.0, top_p=1.0, top_k=5, max_tokens=128, seed=12)
    assert sampling_kwargs(reqs[0])["top_k"] == -1         # vLLM's "off"


def test_outputs_are_parsed_in_order():
    outs = [RequestOutput("0", "p0", [1], [CompletionOutput(0, "Paris.", [5, 6, 2], finish_reason="stop")]),
            RequestOutput("1", "p1", [1], [CompletionOutput(0, "long answer", [7] * 16, finish_reason="length")])]
    parsed = parse_outputs(outs, 2)
    assert [(p.text, p.n_tokens, p.finish_reason) for p in parsed] == [("Paris.", 3, "stop"),
                                                                       ("long answer", 16, "length")]


def test_output_count_mismatch_and_empty_output_are_errors():
    with pytest.raises(PrefdataError, match="2 outputs for 3 requests"):
        parse_outputs([RequestOutput("0", "", [], [CompletionOutput(0, "", [])])] * 2, 3)
    with pytest.raises(PrefdataError, match="no completion"):
        parse_outputs([RequestOutput("7", "", [], [])], 1)


def test_backend_without_vllm_installed_is_a_clear_user_error(tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    from builders.backends import load_backend
    with pytest.raises(PrefdataError, match="gpu"):
        load_backend(ModelSpec(name="v", backend="vllm", path="some/model"), tmp_path)
