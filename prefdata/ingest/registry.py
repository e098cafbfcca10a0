"""FORMATS: every source format by its canonical name (the `--format` value). One line per format."""
from __future__ import annotations

from prefdata.ingest.formats import arena, helpsteer2, hh_rlhf, mapped, nectar, pick_a_pic, prompts, trl, ultrafeedback
from prefdata.ingest.formats.base import Format

FORMATS: dict[str, Format] = {f.name: f for f in (
    arena.FORMAT, hh_rlhf.FORMAT, ultrafeedback.FORMAT, nectar.FORMAT, helpsteer2.FORMAT, pick_a_pic.FORMAT,
    trl.FORMAT, prompts.FORMAT, *mapped.FORMATS)}
