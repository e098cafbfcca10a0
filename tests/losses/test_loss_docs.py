"""README's loss count and docs/losses.md's registry table are the registry's (training/loss_table.py generates
them: `python -m training.loss_table`), so a loss added, renamed or re-defaulted cannot leave the docs behind."""
from __future__ import annotations

import re

from training.loss_table import ROOT, loss_names, registry_table
from training.losses import ALIASES, LOSSES


def test_readme_count_is_the_registry():
    readme = (ROOT / "README.md").read_text()
    counts = re.findall(r"(\d+) DPO-family losses", readme)
    assert counts == [str(len(loss_names()))]
    assert len(loss_names()) == len(LOSSES) - len(ALIASES) == len({id(s) for s in LOSSES.values()})


def test_losses_md_table_is_the_registry():
    text = (ROOT / "docs" / "losses.md").read_text()
    assert registry_table() in text
    names = re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.M)
    assert names == loss_names()
    # and every alias the docs list resolves to what they say
    for alias, target in re.findall(r"`([a-z_]+)`(?:, `[a-z_]+`)* →\s+`([a-z_0-9]+)`", text):
        assert ALIASES[alias] == target
    assert all(f"`{alias}`" in text for alias in ALIASES)
