"""Stable identifiers for prompts and responses when a source has none.

prompt_id = sha256 (hex) of the *normalized* prompt: Unicode NFC, every run of whitespace (as Python's
`str.split()` defines it, so also non-breaking and other Unicode spaces) collapsed to one ASCII space, then
stripped. Two prompts that differ only in spacing or Unicode composition therefore share an id, and the id is
the same on every machine and run (no salt, no process-dependent hashing).

response_id = sha256 (hex) of prompt_id + response text (exact text, not normalized: two responses that differ
in one space are different responses). The prompt_id is 64 hex characters, so the concatenation is
unambiguous."""
from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable


def normalize_prompt(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def prompt_id(text: str) -> str:
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()


def prompt_ids(texts: Iterable[str]) -> list[str]:
    """prompt_id for each text; each distinct prompt is hashed once (sources repeat prompts per response)."""
    cache: dict[str, str] = {}
    out = []
    for t in texts:
        pid = cache.get(t)
        if pid is None:
            pid = cache[t] = prompt_id(t)
        out.append(pid)
    return out


def response_id(pid: str, response: str) -> str:
    return hashlib.sha256((pid + response).encode("utf-8")).hexdigest()


def response_ids(pids: Iterable[str], responses: Iterable[str]) -> list[str]:
    return [response_id(p, r) for p, r in zip(pids, responses, strict=True)]
