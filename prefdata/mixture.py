"""Mixture builds (a recipe's `sources:` list): read every entry, choose its prompts (builders/mixture.py), and
keep the accounting per source through every step.

Each entry is read like a single `source:` (a catalog dataset, or a file ingested and stored as
`<recipe>-<entry>-source` once the build succeeds, or shared with an identical stored ingest), optionally
unpaired, then the mixture chooses prompts. The choice is reported as the build's first step, `mix`
(rows_in = the rows of all entries, kept = the chosen rows, drops by reason), so the build's row accounting
still reads rows_in == rows_kept + sum(dropped) from the raw sources.

Per source, every step's report has `by_source: {name: {rows_in, rows_kept, drops}}`:
- the step gives it (Built.drops_by_source; `pairs`, `near_dedup`, `decontaminate` do), or
- the step is prompt-local (rank, lists, dedup, filter: a prompt's result depends on its own rows, and a prompt
  belongs to one source), and dropped rows: it is run once more on each source's rows for the counts (the
  output is the whole run's; only the accounting comes from the per-source runs, checked to add up), or
- it dropped nothing, or else its drops are listed under "(not attributed)".
The lineage's `sources` section sums them per source as the build's `rows_dropped` does (`step: reason`, at the
source's granularity: through the steps that keep the source's table kind, the pairing step included)."""
from __future__ import annotations

import time
from typing import Any

import polars as pl

from builders.base import SOURCE
from builders.mixture import mix, unpair
from prefdata.errors import RecipeError

UNATTRIBUTED = "(not attributed)"


def load_mixture(recipe, cat):
    """The mixed source of a `sources:` recipe: a build._Source whose table is the chosen rows (with `source`),
    whose `parts` are the entries (each stored on success) and whose `mix` is the choice's step report."""
    from prefdata.build import StepReport, _Source, load_one

    t0 = time.perf_counter()
    file = str(recipe.file) if recipe.file is not None else None
    parts, tables, lines, unpaired = [], [], [], {}
    kind, first = None, None
    for i, entry in enumerate(recipe.sources):
        where = f"sources[{i}]"
        src = load_one(entry, recipe.entry_path(entry), f"{recipe.name}-{entry.name}-source", cat)
        df = pl.from_arrow(src.read())
        this = src.kind
        if entry.unpair:
            if this != "pairs":
                raise RecipeError(f"unpair takes a pairs source; {src.name} holds {this}", path=f"{where}.unpair",
                                  file=file)
            df, binary = unpair(df)
            unpaired[entry.name] = {"pairs": src.rows, "scored_1_0": binary}
            this = "responses"
        if kind is None:
            kind, first = this, where
        elif this != kind:
            raise RecipeError(f"this source gives {this} but {first} gives {kind}: every source of a mixture must "
                              "give the same table kind (unpair: true reads a pairs source as responses)",
                              path=where, file=file)
        if src.version is not None:
            src.table = None                 # stored already: only the frame is needed
        parts.append(src)
        tables.append((entry.take(), df))
        lines.append(f"{entry.name}: {src.line}" + (" · unpaired" if entry.unpair else ""))
    mixed = mix(tables, recipe.seed)
    del tables
    info = {"seed": recipe.seed, "weighted_total_prompts": mixed.weighted_total, "sources": mixed.tallies}
    if unpaired:
        info["unpaired"] = unpaired
    by_source = {name: {"rows_in": t["rows_in"], "rows_kept": t["rows_kept"], "drops": t["drops"]}
                 for name, t in mixed.tallies.items()}
    config = {"seed": recipe.seed, "sources": [e.model_dump(mode="json", exclude_none=True, exclude={"dataset", "path",
              "format", "mapping", "carry"}) for e in recipe.sources]}
    report = StepReport("mix", _label(recipe), config, kind, mixed.rows_in, mixed.frame.height,
                        dict(mixed.drops), mixed.frame.height, info, mixed.summary(),
                        round(time.perf_counter() - t0, 3), by_source)
    table = mixed.frame.to_arrow()
    line = f"mixture of {len(parts)} sources\n" + "\n".join(" " * 14 + x for x in lines)
    return _Source(table, kind, recipe.name, None, line, rows=table.num_rows, parts=parts, mix=report,
                   sources={"tallies": mixed.tallies, "unpaired": unpaired})


def _label(recipe) -> str:
    def one(e) -> str:
        take = [f"{k} {getattr(e, k):g}" for k in ("weight", "max_prompts", "max_rows") if getattr(e, k) is not None]
        return f"{e.name}" + (f" ({', '.join(take)})" if take else " (all)")
    return "by prompt: " + ", ".join(one(e) for e in recipe.sources)


def step_by_source(step, frame: pl.LazyFrame, built, run) -> dict[str, dict[str, Any]] | None:
    """{source: {rows_in, rows_kept, drops}} of one step (see the module doc); `run(frame)` runs the step
    again on a subset. None when the step's input has no `source` column."""
    from prefdata.build import AccountingError
    from prefdata.partitioned import is_prompt_local

    if SOURCE not in frame.collect_schema():
        return None
    rows = dict(frame.group_by(SOURCE).len().sort(SOURCE).collect().iter_rows())
    dropped = {r: n for r, n in built.drops.items() if n}
    if built.drops_by_source is not None:
        by = built.drops_by_source
    elif not dropped:
        by = {}
    elif is_prompt_local(step.name, step.config):
        by = {}
        for src in rows:
            part = run(frame.filter(pl.col(SOURCE) == src))
            by[src] = {r: n for r, n in part.drops.items() if n}
    else:
        by = {UNATTRIBUTED: dropped}
    total: dict[str, int] = {}
    for drops in by.values():
        for r, n in drops.items():
            total[r] = total.get(r, 0) + n
    if {r: n for r, n in total.items() if n} != dropped:
        raise AccountingError(f"{step.yaml_path}: drops by source {by} do not add up to the step's drops {dropped}")
    out: dict[str, dict[str, Any]] = {}
    for src, n in rows.items():
        d = {r: k for r, k in by.get(src, {}).items() if k}
        out[str(src)] = {"rows_in": int(n), "rows_kept": int(n) - sum(d.values()), "drops": d}
    if UNATTRIBUTED in by:
        out[UNATTRIBUTED] = {"drops": by[UNATTRIBUTED]}
    return out


def add_by_source(a: dict | None, b: dict) -> dict:
    """Two partitions' step_by_source results added up (counts add; a source missing on one side counts 0)."""
    out = {src: {k: (dict(v) if isinstance(v, dict) else v) for k, v in acc.items()} for src, acc in (a or {}).items()}
    for src, acc in b.items():
        mine = out.setdefault(src, {})
        for k, v in acc.items():
            if isinstance(v, dict):
                d = mine.setdefault(k, {})
                for r, n in v.items():
                    d[r] = d.get(r, 0) + n
            else:
                mine[k] = mine.get(k, 0) + v
    return out


def source_lineage(source, reports) -> dict[str, dict[str, Any]]:
    """The lineage's `sources` section: per entry its input version, the mixture's choice, and its drops through
    the steps (`step: reason`, at the source's granularity, as the build's rows_dropped)."""
    tallies, unpaired = source.sources["tallies"], source.sources["unpaired"]
    out: dict[str, dict[str, Any]] = {}
    for part, (name, tally) in zip(source.parts, tallies.items(), strict=True):
        entry = {"input": f"{part.name}@{part.version}", "mix": tally}
        if name in unpaired:
            entry["unpaired"] = unpaired[name]
        out[name] = entry
    names = list(out) + [UNATTRIBUTED]
    totals: dict[str, dict[str, int]] = {n: {} for n in names}
    kind = source.kind
    for r in reports:
        if kind != source.kind:
            break
        for name, acc in (r.by_source or {}).items():
            for reason, n in (acc.get("drops") or {}).items():
                key = f"{r.step}: {reason}"
                totals.setdefault(name, {})[key] = totals.setdefault(name, {}).get(key, 0) + n
        kind = r.kind
    for name, entry in out.items():
        rows_in = entry["mix"]["rows_in"]
        entry |= {"rows_in": rows_in, "rows_kept": rows_in - sum(totals[name].values()),
                  "rows_dropped": totals[name]}
    if totals[UNATTRIBUTED]:
        out[UNATTRIBUTED] = {"rows_dropped": totals[UNATTRIBUTED]}
    return out
