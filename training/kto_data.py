"""Unpaired (KTO) data rules, as pure functions of the table's values: labels, and the KL samples.

KL samples. KTO's reference point z0 is estimated from mismatched (prompt_i, completion_j) pairs. TRL 1.16
rotates completions by one inside each (sequential, unshuffled) batch. Here the mismatch is fixed once per
dataset instead: row r's KL completion is that of row `partner[r]`, so the reference log-probs of the KL samples
can be precomputed by the reference pass and stored as columns next to the completions' (one model in memory
while training, shuffled batches allowed). The rule: order the rows by prompt (first appearance, then row), and
take the row `m` places earlier (cyclically), where `m` is the largest number of rows sharing one prompt; so a
KL sample never pairs a prompt with one of its own completions unless one prompt holds more than half the rows
(counted in `same_prompt`). With distinct prompts (m = 1) this is TRL's rotation over the whole dataset.
"""
from __future__ import annotations

import json
import math

from prefdata.errors import SchemaError


def prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)


def kl_partners(prompts: list, rows: list[int]) -> tuple[dict[int, int], int]:
    """row -> partner row (whose completion is row's KL sample), over `rows`; + how many partners share the
    row's prompt. Fewer than 2 rows: no partner at all (empty dict)."""
    if len(rows) < 2:
        return {}, 0
    first: dict[str, int] = {}
    keys = [prompt_key(prompts[r]) for r in rows]
    for k in keys:
        first.setdefault(k, len(first))
    order = sorted(range(len(rows)), key=lambda i: (first[keys[i]], rows[i]))
    sizes: dict[str, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    n, m = len(rows), max(sizes.values())
    shift = m if m < n else 1
    partner = {rows[order[i]]: rows[order[(i - shift) % n]] for i in range(n)}
    same = sum(keys[order[i]] == keys[order[(i - shift) % n]] for i in range(n))
    return partner, same


def labels_of(values: list, column: str, threshold: float | None) -> list[bool | None]:
    """Desirable (True) / undesirable (False) / None (null: the row is dropped with that reason).

    A bool `label` is used as is. Numbers (a `score` column, or a 0/1 `label`) must be exactly 0 or 1 (what TRL
    unpaired ingest writes) unless `threshold` is set: then desirable = value >= threshold."""
    out: list[bool | None] = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, bool):
            out.append(v)
        elif threshold is not None:
            out.append(float(v) >= threshold)
        elif v in (0, 1):
            out.append(v == 1)
        else:
            raise SchemaError(f"column {column!r} holds {v!r}; an unpaired label must be true/false or 0/1 "
                              "(set unpaired.label_threshold to label scores by a threshold)",
                              column=column, expected="bool or 0/1", row=i)
    return out
