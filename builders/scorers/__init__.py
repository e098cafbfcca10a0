"""One module per scorer kind. Each exposes a frozen config (with a `kind` literal and a `name`, the field
it adds to `scores`) and `score(df, cfg, ctx) -> Scored`: one float64 per row, NaN where the row cannot be
scored, with the reason (the score step turns those rows into accounted drops)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scored:
    values: np.ndarray                               # float64 [rows]; NaN = not scorable
    reasons: list[str | None]                        # per row: why it is NaN (None where scored)
    info: dict = field(default_factory=dict)         # scorer-specific report (per-case sandbox outcomes ...)
    extra: dict = field(default_factory=dict)        # extra columns to add (e.g. raw judge text)

    @classmethod
    def complete(cls, values, info: dict | None = None) -> Scored:
        v = np.asarray(values, dtype=np.float64)
        return cls(v, [None] * len(v), info or {})


def need_columns(df, cols: list[str], scorer: str) -> None:
    from prefdata.errors import SchemaError
    for c in cols:
        if c not in df.columns:
            raise SchemaError(f"scorer {scorer!r} needs column {c!r}, which the input lacks", column=c)
