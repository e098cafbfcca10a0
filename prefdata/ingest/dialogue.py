"""Dialogue text helpers: Anthropic-style transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") and the shared
prefix of two completions (the implicit-prompt convention of HH-RLHF and TRL)."""
from __future__ import annotations

import re

ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant|System):")
_ROLE = {"Human": "user", "Assistant": "assistant", "System": "system"}
_LABEL = {v: k for k, v in _ROLE.items()}


def common_prefix_len(a, b) -> int:
    """Length of the longest common prefix of two strings or two lists. Binary search over slice
    comparisons: O(n log n) work done in C instead of a Python loop over every character."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def split_at_last_assistant(chosen: str, rejected: str) -> int | None:
    """End offset of the longest shared prefix that ends at an "\\n\\nAssistant:" turn boundary, or None.

    The marker must lie wholly inside the common prefix, so the split never cuts a turn the two sides
    do not share. prompt = text[:offset]; the completions keep their leading space, so
    prompt + chosen reproduces the source text exactly."""
    shared = common_prefix_len(chosen, rejected)
    i = chosen.rfind(ASSISTANT, 0, shared)
    return None if i < 0 else i + len(ASSISTANT)


def parse_transcript(text: str) -> list[dict[str, str]] | None:
    """Turns of a transcript as [{role, content}], content stripped. A trailing empty Assistant turn (the
    open slot a prompt ends with) is not a message. None when the text is not a transcript (text before
    the first turn marker, or no marker at all)."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    msgs = [{"role": _ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    return msgs


def render_transcript(messages: list[dict[str, str]]) -> str:
    """Messages as an Anthropic-style prompt ending with the open "\\n\\nAssistant:" slot, so a conversational
    prompt has a string form that keeps every turn (used where the contract needs `prompt: string`)."""
    body = "".join(f"\n\n{_LABEL.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages)
    return body + ASSISTANT


def trl_implicit_split(chosen, rejected) -> int:
    """TRL's `extract_prompt` rule for strings and message lists: the prompt is the longest common prefix;
    for strings a space just before the divergence goes to the completions."""
    i = common_prefix_len(chosen, rejected)
    if isinstance(chosen, str) and 0 < i and chosen[i - 1] == " ":
        i -= 1
    return i
