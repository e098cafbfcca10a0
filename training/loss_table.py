"""The registry table of docs/losses.md and the loss count in README.md, generated from `LOSSES`, so the docs
cannot drift from the code: `python -m training.loss_table` rewrites both; tests/losses/test_loss_docs.py checks
they are current.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from training.losses import ALIASES, LOSSES

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| name | kind | needs | hyperparameters (defaults) | paper: formula |\n| --- | --- | --- | --- | --- |\n"
COUNT = re.compile(r"\d+ DPO-family losses")


def loss_names() -> list[str]:
    """Registered losses in registry order, aliases left out."""
    return [n for n in LOSSES if n not in ALIASES]


def _key(name: str, field) -> str:
    """The recipe key: the alias, or the first validation alias choice (IPO's `beta(tau)`)."""
    va = field.validation_alias
    first = getattr(va, "choices", [va])[0] if va is not None else None
    return field.alias or (first if isinstance(first, str) else name)


def _defaults(params) -> str:
    return ", ".join(f"{_key(k, f)}={f.default!r}" for k, f in params.model_fields.items())


def registry_table() -> str:
    rows = []
    for name in loss_names():
        s = LOSSES[name]
        rows.append(f"| `{name}` | {s.kind} | {', '.join(sorted(s.needs))} | {_defaults(s.params)} | "
                    f"{s.doc.replace('|', chr(92) + '|')} |\n")
    return HEADER + "".join(rows)


def replace_table(text: str) -> str:
    start = text.index(HEADER)
    end = text.index("\n\n", start) + 1
    return text[:start] + registry_table() + text[end:]


def write_docs(root: Path = ROOT) -> None:
    losses = root / "docs" / "losses.md"
    losses.write_text(replace_table(losses.read_text()))
    readme = root / "README.md"
    readme.write_text(COUNT.sub(f"{len(loss_names())} DPO-family losses", readme.read_text(), count=1))


if __name__ == "__main__":
    write_docs(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
