"""Tokenize prompts with their responses into `Group`s: one prompt's token ids plus each response's ids.

The split follows the convention TRL uses, so both trainers see the same tokens: the prompt and each
`prompt + response + eos` are tokenized as whole strings, and the prompt part is the longest common prefix of
the prompt's ids and every full sequence (BPE merges across the boundary then never corrupt a response).
Truncation keeps the start: `len(prompt) + len(response) <= max_length` for every response. A prompt that
leaves no room for a response is dropped and counted, never silently lost.

Chat rows (`chat[j]` true) are rendered with the tokenizer's chat template, as TRL does for conversational
data: the prompt messages with the generation prompt, and prompt + the response as the assistant turn; the
template's end-of-turn closes the response (no extra eos), and the rendered text is tokenized without adding
special tokens (the template already wrote them, so BOS is never doubled).
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


def as_messages(prompt) -> list[dict]:
    """A conversational prompt (list of {role, content}) as is; a plain string as one user message."""
    return list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def chat_texts(tokenizer, prompt, responses: list) -> tuple[str, list[str]]:
    """(rendered prompt, rendered prompt + each response as the assistant turn). A response may itself be a
    list of messages (TRL's conversational completion)."""
    msgs = as_messages(prompt)
    cont = msgs[-1]["role"] == "assistant"  # TRL: a trailing assistant message is continued, not closed
    p = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=not cont,
                                      continue_final_message=cont)
    fulls = tokenizer.apply_chat_template(
        [msgs + (list(r) if isinstance(r, list) else [{"role": "assistant", "content": r}]) for r in responses],
        tokenize=False)
    return p, list(fulls)


def encode_groups(tokenizer, prompts: list, responses: list[list], *, max_length: int,
                  add_eos: bool = True, rows: list[int] | None = None, chat: list[bool] | None = None) -> Encoded:
    """Tokenize each prompt with its responses (batched through the fast tokenizer; chat rows in a second call
    without special tokens)."""
    eos = tokenizer.eos_token or ""
    chat = chat or [False] * len(prompts)
    plain_texts: list[str] = []
    chat_rendered: list[str] = []
    where: list[tuple[bool, int, int]] = []   # per group: (chat?, first text index, number of texts)
    for p, rs, c in zip(prompts, responses, chat, strict=True):
        if c:
            pt, fulls = chat_texts(tokenizer, p, rs)
            where.append((True, len(chat_rendered), 1 + len(rs)))
            chat_rendered += [pt, *fulls]
        else:
            where.append((False, len(plain_texts), 1 + len(rs)))
            plain_texts.append(p)
            plain_texts += [p + (r if (not add_eos or r.endswith(eos)) else r + eos) for r in rs]
    plain_ids = tokenizer(plain_texts)["input_ids"] if plain_texts else []
    chat_ids = tokenizer(chat_rendered, add_special_tokens=False)["input_ids"] if chat_rendered else []
    out = Encoded(groups=[])
    for j, (is_chat, i, n) in enumerate(where):
        ids = (chat_ids if is_chat else plain_ids)[i:i + n]
        p_ids, fulls = ids[0], ids[1:]
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
