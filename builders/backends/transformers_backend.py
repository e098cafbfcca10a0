"""transformers backend: batched, left-padded decoding with a KV cache and one RNG per row.

Why our own decode loop instead of `model.generate`: generate() takes one set of sampling parameters and
one global RNG per call, so a row's output would depend on which rows share its batch — and a resumed run
batches differently. Here every row has its own torch.Generator seeded from the row's seed and its own
temperature / top-k / top-p, so the same row gives the same text in any batch (up to float rounding of
padded matmuls)."""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from builders.backends import GenOutput, GenRequest, ModelSpec, pick_device, progress_bar, resolve_path, torch_dtype
from prefdata.errors import PrefdataError


def render_prompt(tokenizer, req: GenRequest, spec: ModelSpec) -> tuple[str, bool]:
    """Prompt text, and whether a chat template produced it (then it already holds BOS etc.)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if spec.chat_template == "auto" and has_template:
        msgs = list(req.messages) if req.messages else [{"role": "user", "content": req.prompt}]
        if spec.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": spec.system_prompt})
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), True
    if req.messages:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in req.messages) + "\nassistant:"
        return text, False
    return req.prompt, False


def filter_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor) -> torch.Tensor:
    """Per-row temperature, top-k (0 = off) and top-p (1 = off) applied to [B, V] logits; returns probs.
    Rows with temperature 0 are handled by the caller (argmax)."""
    logits = logits.float() / temperature.clamp(min=1e-6)[:, None]
    if bool((top_k == 0).all()) and bool((top_p >= 1.0).all()):
        return torch.softmax(logits, dim=-1)          # plain temperature sampling: no sort needed
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = (top_k[:, None] > 0) & (rank >= top_k[:, None])
    probs_sorted = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    # keep the smallest prefix whose mass reaches top_p (the first token always stays)
    before = probs_sorted.cumsum(-1) - probs_sorted
    drop |= before >= top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    filtered = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.softmax(filtered, dim=-1)


def _cache(res):
    c = getattr(res, "cache", None)
    return c if c is not None else res.past_key_values


class TransformersBackend:
    def __init__(self, spec: ModelSpec, base_dir: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.spec = spec
        self.device = pick_device(spec.device)
        path = resolve_path(spec.path, base_dir)
        kw = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
        if path.is_file() and spec.gguf_file is None and path.suffix == ".gguf":
            path, kw = path.parent, {"gguf_file": path.name}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code, **kw)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype(spec.dtype, self.device), trust_remote_code=spec.trust_remote_code, **kw)
        except (OSError, ValueError) as e:
            raise PrefdataError(f"model {spec.name!r}: cannot load {path}: {e}") from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        params = inspect.signature(self.model.forward).parameters
        # transformers renamed `past_key_values` to `cache`; support both spellings
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.eos_ids = torch.tensor(sorted(set(eos if isinstance(eos, list) else [eos])), device=self.device)

    def generate(self, requests: list[GenRequest], *, progress: bool = False) -> list[GenOutput]:
        out: list[GenOutput | None] = [None] * len(requests)
        rendered = [render_prompt(self.tokenizer, r, self.spec) for r in requests]
        # shortest-first batches waste less compute on padding; results go back to their input slots
        order = sorted(range(len(requests)), key=lambda i: len(rendered[i][0]))
        bs = self.spec.batch_size
        with progress_bar(len(requests), f"generate {self.spec.name}", progress) as advance:
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                for i, o in zip(idx, self._batch([requests[i] for i in idx], [rendered[i] for i in idx]), strict=True):
                    out[i] = o
                advance(len(idx))
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _batch(self, reqs: list[GenRequest], rendered: list[tuple[str, bool]]) -> list[GenOutput]:
        tok, dev = self.tokenizer, self.device
        templated = {t for _, t in rendered}
        enc = tok([text for text, _ in rendered], return_tensors="pt", padding=True,
                  add_special_tokens=not (templated == {True}))
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        B = ids.shape[0]
        temp = torch.tensor([r.params.temperature for r in reqs], device=dev)
        top_k = torch.tensor([r.params.top_k for r in reqs], device=dev)
        top_p = torch.tensor([r.params.top_p for r in reqs], device=dev)
        max_new = torch.tensor([r.params.max_new_tokens for r in reqs], device=dev)
        gens = [torch.Generator(device=dev).manual_seed(int(r.seed)) for r in reqs]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        res = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **self._keep)
        past, logits = _cache(res), res.logits[:, -1, :]
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        hit_eos = torch.zeros(B, dtype=torch.bool, device=dev)
        n_gen = torch.zeros(B, dtype=torch.long, device=dev)
        steps: list[torch.Tensor] = []
        pad = tok.pad_token_id
        for _ in range(int(max_new.max())):
            nxt = logits.argmax(-1)
            sample = temp > 0
            if sample.any():
                probs = filter_logits(logits[sample], temp[sample], top_k[sample], top_p[sample])
                rows = sample.nonzero().flatten().tolist()
                drawn = [torch.multinomial(probs[j], 1, generator=gens[i]) for j, i in enumerate(rows)]
                nxt[sample] = torch.cat(drawn)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            steps.append(nxt)
            n_gen += (~done).long()
            is_eos = torch.isin(nxt, self.eos_ids) & ~done
            hit_eos |= is_eos
            done |= is_eos | (n_gen >= max_new)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=dev)], dim=1)
            pos = pos[:, -1:] + 1
            res = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                             use_cache=True, **{self._cache_kw: past})
            past, logits = _cache(res), res.logits[:, -1, :]
        gen = torch.stack(steps, dim=1).cpu()
        outs = []
        for b in range(B):
            n = int(n_gen[b])
            toks = gen[b, :n].tolist()
            if hit_eos[b]:
                toks = toks[:-1]              # the EOS token itself is not part of the text
            outs.append(GenOutput(tok.decode(toks, skip_special_tokens=True), n,
                                  "stop" if bool(hit_eos[b]) else "length"))
        return outs
