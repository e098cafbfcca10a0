"""Tokenize prompts with their responses into `Group`s: one prompt's token ids plus each response's ids.

The split follows the convention TRL uses, so both trainers see the same tokens: the prompt and each
`prompt + response + eos` are tokenized as whole strings, and the prompt part is the longest common prefix of
the prompt's ids and every full sequence (BPE merges across the boundary then never corrupt a response).
Truncation keeps the start: `len(prompt) + len(response) <= max_length` for every response. A prompt that
leaves no room for a response is dropped and counted, never silently lost.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Group:
    row: int                      # row index in the source table
    prompt_ids: list[int]
    response_ids: list[list[int]]  # for pairs: [chosen, rejected]

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + sum(len(r) for r in self.response_ids)


@dataclass
class Encoded:
    groups: list[Group]
    dropped: Counter = field(default_factory=Counter)  # reason -> rows

    @property
    def rows_in(self) -> int:
        return len(self.groups) + sum(self.dropped.values())


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def encode_groups(tokenizer, prompts: list[str], responses: list[list[str]], *, max_length: int,
                  add_eos: bool = True, rows: list[int] | None = None) -> Encoded:
    """Tokenize each prompt with its responses (batched through the fast tokenizer)."""
    eos = tokenizer.eos_token or ""
    texts: list[str] = []
    for p, rs in zip(prompts, responses, strict=True):
        texts.append(p)
        for r in rs:
            r = r if (not add_eos or r.endswith(eos)) else r + eos
            texts.append(p + r)
    ids = tokenizer(texts)["input_ids"]
    out = Encoded(groups=[])
    i = 0
    for j, rs in enumerate(responses):
        p_ids, fulls = ids[i], ids[i + 1:i + 1 + len(rs)]
        i += 1 + len(rs)
        row = rows[j] if rows is not None else j
        plen = min((_common_prefix(p_ids, f) for f in fulls), default=len(p_ids))
        if plen == 0:
            out.dropped["empty prompt (no token to condition on)"] += 1
            continue
        if plen >= max_length:
            out.dropped[f"prompt fills max_length={max_length}"] += 1
            continue
        resp = [f[plen:max_length] for f in fulls]
        if any(len(r) == 0 for r in resp):
            out.dropped["empty response after tokenization"] += 1
            continue
        out.groups.append(Group(row=row, prompt_ids=list(p_ids[:plen]), response_ids=[list(r) for r in resp]))
    return out
