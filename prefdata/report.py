"""Static HTML report for one catalog version: plots of what the data looks like and how it was built.

`write_report(cat, "arena-curry@2", "report/")` writes report/index.html (self-contained: inline SVG,
inline CSS, no JavaScript, nothing fetched) and report/report.json (the numbers behind the plots).
Plots: score distributions per scorer, margin histogram, pairs per prompt, curriculum stage sizes,
rows through each build step, chosen vs rejected length, scorer agreement, training curves of runs
that used the dataset (trainer events in the catalog, read from the run's metrics.jsonl), and the
lineage chain back to the raw source."""
from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from prefdata.errors import PrefdataError
from prefdata.publish import _lineage_chain, resolve_version, scorer_agreement, table_kind
from prefdata.report_assets import svg

CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 12px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:13px} .grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e3e3e3;border-radius:6px;padding:6px;background:#fff}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
code{background:#f4f4f4;padding:0 3px;border-radius:3px;font-size:12px}
.chain{list-style:none;padding-left:0} .chain li{border-left:3px solid #3b6fb6;margin:6px 0;padding:4px 10px;
background:#f7f9fc} .muted{color:#888} details pre{max-height:400px;overflow:auto;background:#f7f7f7;padding:8px}
"""


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


# ----------------------------------------------------------------------------- numbers

def _struct_fields(df: pl.DataFrame, col: str) -> list[str]:
    if col in df.columns and isinstance(df.schema[col], pl.Struct):
        return [f.name for f in df.schema[col].fields]
    return []


def _within_prompt_agreement(df: pl.DataFrame, fields: list[str]) -> dict[str, dict]:
    """Responses table: for each scorer pair, the share of same-prompt response pairs both scorers order the
    same way (ties excluded). A self-join on prompt_id; a Kendall-tau-like agreement without a row loop."""
    cols = [pl.col("scores").struct.field(f).alias(f) for f in fields]
    base = df.select("prompt_id", "response_id", *cols)
    j = base.join(base, on="prompt_id", suffix="_b").filter(pl.col("response_id") < pl.col("response_id_b"))
    out = {}
    for i, a in enumerate(fields):
        for b in fields[i + 1:]:
            da, db = (pl.col(a) - pl.col(f"{a}_b")).sign(), (pl.col(b) - pl.col(f"{b}_b")).sign()
            r = j.select(((da != 0) & (db != 0)).sum().alias("n"),
                         ((da != 0) & (db != 0) & (da == db)).sum().alias("agree")).row(0)
            n = int(r[0] or 0)
            out[f"{a} vs {b}"] = {"pairs": n, "agree": round(int(r[1] or 0) / n, 4) if n else None}
    return out


def _lengths(s: pl.Series) -> list[int]:
    return s.str.len_chars().drop_nulls().to_list()


def dataset_stats(table: pa.Table, kind: str, lineage: dict) -> dict[str, Any]:
    """Everything the plots show, as plain numbers (also written to report.json)."""
    df = pl.from_arrow(table)
    if isinstance(df, pl.Series):
        df = df.to_frame()
    st: dict[str, Any] = {"rows": df.height, "kind": kind, "scores": {}, "lengths": {}}
    if kind == "pairs":
        st["scores"]["overall"] = {"chosen": df["score_chosen"].drop_nulls().to_list(),
                                   "rejected": df["score_rejected"].drop_nulls().to_list()}
        for f in _struct_fields(df, "scores_chosen"):
            st["scores"][f] = {"chosen": df["scores_chosen"].struct.field(f).drop_nulls().to_list(),
                               "rejected": df["scores_rejected"].struct.field(f).drop_nulls().to_list()}
        st["margin"] = df["margin"].drop_nulls().to_list()
        st["per_prompt"] = df.group_by("prompt_id").len()["len"].to_list()
        st["stage_sizes"] = {int(s): int(n) for s, n in
                             df.group_by("stage").len().sort("stage").iter_rows()}
        st["lengths"] = {"chosen": _lengths(df["chosen"]), "rejected": _lengths(df["rejected"])}
        st["agreement"] = scorer_agreement(table) or {}
    elif kind == "responses":
        if "score" in df.columns:
            st["scores"]["score"] = {"all": df["score"].drop_nulls().to_list()}
        fields = _struct_fields(df, "scores")
        for f in fields:
            st["scores"][f] = {"all": df["scores"].struct.field(f).drop_nulls().to_list()}
        st["per_prompt"] = df.group_by("prompt_id").len()["len"].to_list()
        st["lengths"] = {"response": _lengths(df["response"])}
        st["agreement"] = _within_prompt_agreement(df, fields) if len(fields) >= 2 else {}
    elif kind == "lists":
        st["scores"]["list scores"] = {"all": df["scores"].explode().drop_nulls().to_list()}
        st["per_prompt"] = df["responses"].list.len().to_list()
        st["lengths"] = {"response": _lengths(df["responses"].explode())}
        st["agreement"] = {}
    st["steps"] = [{"step": s.get("step", "?"), "rows_in": s.get("rows_in"), "rows_out": s.get("rows_out"),
                    "rows_kept": s.get("rows_kept"), "drops": s.get("drops") or {}}
                   for s in (lineage.get("steps") or [])]
    return st


def training_runs(cat, name: str, version: int) -> list[dict]:
    """Trainer events on name@version (cat.log_event kind 'train*'), each with its metrics.jsonl rows.
    A run whose metrics file is gone is listed with the reason instead of being silently skipped."""
    runs = []
    for rec in cat.events(name):
        if "train" not in str(rec.get("kind", "")) or rec.get("version") != version:
            continue
        body = rec.get("record") or {}
        path = body.get("metrics") or body.get("metrics_path")
        if not path and body.get("output_dir"):
            path = str(Path(body["output_dir"]) / "metrics.jsonl")
        run = {"run": body.get("run") or body.get("output_dir") or path or "?", "metrics_path": path, "rows": []}
        if not path or not Path(path).exists():
            run["missing"] = f"metrics file not found: {path}"
        else:
            for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        run["rows"].append(json.loads(line))
                    except json.JSONDecodeError as e:
                        run.setdefault("bad_lines", []).append(f"{path}:{i}: {e.msg}")
        runs.append(run)
    return runs


# ----------------------------------------------------------------------------- rendering

def _charts(st: dict, runs: list[dict]) -> list[tuple[str, str]]:
    charts: list[tuple[str, str]] = []
    for scorer, series in st["scores"].items():
        charts.append(("scores", svg.histogram(series, f"score distribution: {scorer}", "score")))
    if st["kind"] == "pairs":
        charts.append(("margin", svg.histogram({"margin": st["margin"]}, "margin (score_chosen − score_rejected)",
                                               "margin")))
    unit = {"pairs": "pairs", "responses": "responses", "lists": "responses per list"}.get(st["kind"], "rows")
    if st.get("per_prompt"):
        charts.append(("per_prompt", svg.histogram({unit: st["per_prompt"]}, f"{unit} per prompt",
                                                   f"{unit} per prompt", integer_bins=True)))
    if st.get("stage_sizes"):
        ss = st["stage_sizes"]
        charts.append(("stages", svg.bars([f"stage {k}" for k in ss], list(ss.values()), "curriculum stage sizes",
                                          "stage", "pairs")))
    if st["steps"]:
        labels = [s["step"] for s in st["steps"]]
        charts.append(("steps", svg.bars(labels, [s["rows_out"] or 0 for s in st["steps"]],
                                         "rows out of each build step", "step", "rows")))
    if st["lengths"]:
        title = "chosen vs rejected length" if st["kind"] == "pairs" else "response length"
        charts.append(("lengths", svg.histogram(st["lengths"], title, "characters")))
    if st.get("agreement"):
        names = sorted({n for k in st["agreement"] for n in k.split(" vs ")})
        m = {tuple(k.split(" vs ")): v["agree"] for k, v in st["agreement"].items()}
        charts.append(("agreement", svg.heat_table(names, m, "scorer agreement (share of pairs ordered alike)")))
    for r in runs:
        rows = r["rows"]
        steps = [x.get("step", i) for i, x in enumerate(rows)]
        for metric in ("loss", "reward_accuracy"):
            ys = [x.get(metric) for x in rows]
            if any(y is not None for y in ys):
                pts = [(s, y) for s, y in zip(steps, ys, strict=True) if y is not None]
                charts.append(("training", svg.lines({metric: ([p[0] for p in pts], [p[1] for p in pts])},
                                                     f"{metric}: {Path(str(r['run'])).name}", "step", metric)))
    return charts


def _lineage_html(name: str, version: int, lineage: dict, chain: list[dict]) -> str:
    items = [f"<li><b>{_esc(name)}@{version}</b> · {_esc(lineage.get('recipe') or lineage.get('builder') or '?')}"
             f" · config <code>{_esc(str(lineage.get('config_sha256', '?'))[:12])}</code>"
             f" · rows in {_esc(lineage.get('rows_in', '?'))}, kept {_esc(lineage.get('rows_kept', '?'))}"
             + "".join(f", dropped {_esc(n)} ({_esc(r)})" for r, n in (lineage.get('rows_dropped') or lineage.get('drops') or {}).items())
             + "</li>"]
    for c in chain:
        if "missing" in c:
            items.append(f"<li>← <b>{_esc(c['ref'])}</b> <span class=muted>({_esc(c['missing'])})</span></li>")
        else:
            items.append(f"<li>← <b>{_esc(c['ref'])}</b> · {_esc(c.get('builder') or '?')}"
                         f" · config <code>{_esc(str(c.get('config_sha256') or '')[:12])}</code>"
                         f" · rows in {_esc(c.get('rows_in', '?'))}, kept {_esc(c.get('rows_kept', '?'))}"
                         + (f" · source <code>{_esc(c['source'])}</code>" if c.get("source") else "") + "</li>")
    return "<ul class=chain>" + "".join(items) + "</ul>"


def render_html(name: str, version: int, lineage: dict, chain: list[dict], st: dict, runs: list[dict]) -> str:
    charts = _charts(st, runs)
    sections = {"scores": "Score distributions", "margin": "Margins", "per_prompt": "Per prompt",
                "stages": "Curriculum stages", "steps": "Build steps", "lengths": "Lengths",
                "agreement": "Scorer agreement", "training": "Training runs on this version"}
    body = []
    for key, title in sections.items():
        svgs = [s for k, s in charts if k == key]
        if svgs:
            body.append(f"<h2>{_esc(title)}</h2><div class=grid>"
                        + "".join(f"<div class=card>{s}</div>" for s in svgs) + "</div>")
        if key == "steps" and st["steps"]:
            body.append("<table><tr><th>step</th><th>rows in</th><th>kept</th><th>dropped</th><th>rows out</th></tr>"
                        + "".join(f"<tr><td>{_esc(s['step'])}</td><td>{_esc(s['rows_in'])}</td>"
                                  f"<td>{_esc(s['rows_kept'])}</td><td>"
                                  + _esc("; ".join(f"{k}: {v}" for k, v in s["drops"].items()) or "–")
                                  + f"</td><td>{_esc(s['rows_out'])}</td></tr>" for s in st["steps"]) + "</table>")
        if key == "agreement" and st.get("agreement"):
            body.append("<table><tr><th>scorers</th><th>pairs compared</th><th>agree</th></tr>"
                        + "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v['pairs'])}</td><td>{_esc(v['agree'])}</td></tr>"
                                  for k, v in st["agreement"].items()) + "</table>")
        if key == "training":
            for r in runs:
                if r.get("missing") or r.get("bad_lines"):
                    body.append(f"<p class=muted>run {_esc(r['run'])}: {_esc(r.get('missing') or '')} "
                                f"{_esc('; '.join(r.get('bad_lines', [])))}</p>")
    lengths = st["lengths"]
    means = " · ".join(f"mean {k} length {np.mean(v):,.0f} chars" for k, v in lengths.items() if v)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{_esc(name)}@{version} · prefdata report</title>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            # a data: favicon keeps the browser from requesting /favicon.ico (a console error offline)
            "<link rel=icon href='data:,'>"
            f"<style>{CSS}</style></head><body>"
            f"<h1>{_esc(name)}@{version}</h1><div class=sub>{_esc(st['kind'])} · {st['rows']:,} rows · content "
            f"<code>{_esc(str(lineage.get('content_hash', '?'))[:16])}</code> · created "
            f"{_esc(lineage.get('created_at', '?'))} · report generated {now}</div>"
            f"<p>{_esc(lineage.get('message') or '')}</p><p class=sub>{_esc(means)}</p>"
            "<h2>Lineage</h2>" + _lineage_html(name, version, lineage, chain)
            + "".join(body)
            + "<h2>Full lineage record</h2><details><summary>JSON</summary><pre>"
            + _esc(json.dumps(lineage, indent=2, default=str, ensure_ascii=False)) + "</pre></details>"
            "</body></html>")


def write_report(cat, ref: str, out_dir: Path | str) -> Path:
    """Write out_dir/index.html (+ report.json) for catalog version `ref` (NAME[@VERSION|@TAG])."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PrefdataError(f"{out_dir}: is a file; --out needs a directory")
    name, version, table, lineage = resolve_version(cat, ref)
    kind = table_kind(table)
    if kind == "table":
        raise PrefdataError(f"{name}@{version}: not a responses, pairs or lists table; nothing to plot "
                            f"(columns: {', '.join(table.column_names[:12])})")
    st = dataset_stats(table, kind, lineage)
    runs = training_runs(cat, name, version)
    chain = _lineage_chain(cat, lineage)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(render_html(name, version, lineage, chain, st, runs), encoding="utf-8")
    summary = {"ref": f"{name}@{version}", "kind": kind, "rows": st["rows"],
               "stage_sizes": st.get("stage_sizes"), "agreement": st.get("agreement"), "steps": st["steps"],
               "pairs_per_prompt": _describe(st.get("per_prompt")), "margin": _describe(st.get("margin")),
               "lengths": {k: _describe(v) for k, v in st["lengths"].items()},
               "scores": {s: {k: _describe(v) for k, v in d.items()} for s, d in st["scores"].items()},
               "training_runs": [{"run": r["run"], "steps": len(r["rows"]), "missing": r.get("missing")}
                                 for r in runs],
               "lineage_chain": [c["ref"] for c in chain]}
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return index


def _describe(v: list | None) -> dict | None:
    if not v:
        return None
    a = np.asarray(v, dtype=float)
    return {"n": int(a.size), "mean": round(float(a.mean()), 6), "min": float(a.min()), "max": float(a.max())}
