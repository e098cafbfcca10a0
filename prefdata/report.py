"""Static HTML report for one catalog version: plots of what the data looks like and how it was built.

`write_report(cat, "arena-curry@2", "report/")` writes report/index.html (self-contained: inline SVG,
inline CSS, no JavaScript, nothing fetched) and report/report.json (the numbers behind the plots).
Plots: score distributions per scorer, margin histogram, pairs per prompt, curriculum stage sizes,
rows through each build step, chosen vs rejected length, scorer agreement, training curves of runs
that used the dataset (trainer events in the catalog, read from the run's metrics.jsonl: train and eval/* rows
on one chart per metric), evaluations of checkpoints trained on it (catalog events of kind "eval"), and the
lineage chain back to the raw source.

An `eval` table (lineage kind "eval", or columns winner + baseline_response) gets its own page: win rate with
its bootstrap interval, length-controlled win rate, KL, per-scorer means model vs baseline, score and length
distributions model vs baseline, and the evaluated checkpoint's run curves. `write_run_report(run_dir, out)`
reports one training output directory (metrics.jsonl, run.json) without a catalog."""
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


def _length_bias(df: pl.DataFrame) -> dict[str, Any]:
    """Pairs: the length bias (builders/length_bias.py: characters, share chosen longer, mean ratio), log2 of
    each pair's chosen/rejected length ratio (pairs with both texts non-empty), and the share per source."""
    from builders import length_bias

    lens = df.select(pl.col("chosen").str.len_chars().alias("c"), pl.col("rejected").str.len_chars().alias("r"))
    both = lens.filter((pl.col("c") > 0) & (pl.col("r") > 0))
    out: dict[str, Any] = {"length_bias": length_bias.summarize(length_bias.pairs_counts(df)),
                           "log2_length_ratio": (both["c"] / both["r"]).log(2).to_list()}
    if "source" in df.columns:
        per = (pl.DataFrame({"source": df["source"].cast(pl.String).fill_null("null"),
                             "longer": lens["c"] > lens["r"]})
               .group_by("source").agg(pl.col("longer").mean()).sort("source"))
        out["length_bias_by_source"] = dict(per.iter_rows())
    return out


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
        st.update(_length_bias(df))
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


def read_metrics(path: str | Path | None) -> dict:
    """{"rows": [...], "missing"?: why, "bad_lines"?: [...]} for a metrics.jsonl path. A file that is gone is
    reported with the reason instead of being silently skipped; a line that is not JSON is listed, not fatal."""
    run: dict = {"rows": []}
    if not path or not Path(path).exists():
        run["missing"] = f"metrics file not found: {path}"
        return run
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                run["rows"].append(json.loads(line))
            except json.JSONDecodeError as e:
                run.setdefault("bad_lines", []).append(f"{path}:{i}: {e.msg}")
    return run


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
        runs.append({"run": body.get("run") or body.get("output_dir") or path or "?", "metrics_path": path,
                     **read_metrics(path)})
    return runs


def is_eval_row(row: dict) -> bool:
    """A metrics.jsonl row of an evaluation during training: every key but `step` starts with `eval/`."""
    keys = [k for k in row if k != "step"]
    return bool(keys) and all(k.startswith("eval/") for k in keys)


# chart -> the metrics.jsonl keys plotted on it (train rows' keys, then eval rows' keys)
CURVES = {
    "loss": (["loss"], ["eval/loss"]),
    "reward_accuracy": (["reward_accuracy"], ["eval/reward_accuracy", "eval/accuracy"]),
    "margin": (["margin"], ["eval/margin"]),
    "eval/top1_accuracy": ([], ["eval/top1_accuracy"]),
    "eval/kendall_tau": ([], ["eval/kendall_tau"]),
    "eval log-prob shift from the reference": ([], ["eval/chosen_logp_shift", "eval/rejected_logp_shift"]),
}


def run_curves(rows: list[dict]) -> dict[str, dict[str, dict[str, list]]]:
    """{chart: {metric: {"step": [...], "value": [...]}}} from metrics.jsonl rows: train rows give the train
    series, eval rows (is_eval_row) the eval/* series. Series without a value, and charts without a series, are
    left out."""
    train = [r for r in rows if not is_eval_row(r)]
    evals = [r for r in rows if is_eval_row(r)]
    out: dict[str, dict[str, dict[str, list]]] = {}
    for chart, (train_keys, eval_keys) in CURVES.items():
        series = {}
        for keys, src in ((train_keys, train), (eval_keys, evals)):
            for k in keys:
                pts = [(r.get("step", i), r[k]) for i, r in enumerate(src) if isinstance(r.get(k), int | float)]
                if pts:
                    series[k] = {"step": [p[0] for p in pts], "value": [p[1] for p in pts]}
        if series:
            out[chart] = series
    return out


def eval_events(cat, name: str, version: int) -> list[dict]:
    """Evaluations of checkpoints trained on name@version (catalog events of kind 'eval' logged by
    `prefdata eval`), oldest first."""
    return [{"created_at": rec.get("created_at"), **(rec.get("record") or {})}
            for rec in cat.events(name) if rec.get("kind") == "eval" and rec.get("version") == version]


# ----------------------------------------------------------------------------- eval tables

def is_eval_table(table: pa.Table, lineage: dict) -> bool:
    return lineage.get("kind") == "eval" or {"winner", "baseline_response"} <= set(table.column_names)


def eval_stats(table: pa.Table, lineage: dict) -> dict[str, Any]:
    """What the page of an eval table shows: the eval summary (from the lineage when the eval command stored one,
    else computed here with eval_metrics.summarize over every scorer with both columns), per-scorer score and
    length distributions model vs baseline."""
    from prefdata.eval_metrics import summarize, table_scorers

    df = pl.from_arrow(table)
    if isinstance(df, pl.Series):
        df = df.to_frame()
    scorers = table_scorers(table)
    stored = (lineage.get("eval") or {}).get("summary")
    summary = stored if isinstance(stored, dict) else summarize(table, scorers=scorers)
    st: dict[str, Any] = {"rows": df.height, "kind": "eval", "eval": summary,
                          "eval_source": "lineage" if isinstance(stored, dict) else "computed",
                          "eval_lineage": {k: v for k, v in (lineage.get("eval") or {}).items() if k != "summary"},
                          "scores": {s: {"model": df[f"score_{s}"].drop_nulls().to_list(),
                                         "baseline": df[f"baseline_score_{s}"].drop_nulls().to_list()}
                                     for s in scorers},
                          "lengths": {"model": df["length"].drop_nulls().to_list(),
                                      "baseline": df["baseline_length"].drop_nulls().to_list()},
                          "steps": [{"step": s.get("step", "?"), "rows_in": s.get("rows_in"),
                                     "rows_out": s.get("rows_out"), "rows_kept": s.get("rows_kept"),
                                     "drops": s.get("drops") or {}} for s in (lineage.get("steps") or [])]}
    return st


def checkpoint_run(lineage: dict) -> list[dict]:
    """The evaluated checkpoint's training run (its run_dir's metrics.jsonl), when the lineage names one."""
    run_dir = ((lineage.get("eval") or {}).get("checkpoint") or {}).get("run_dir")
    if not run_dir:
        return []
    path = str(Path(run_dir) / "metrics.jsonl")
    return [{"run": run_dir, "metrics_path": path, **read_metrics(path)}]


# ----------------------------------------------------------------------------- rendering

def _run_label(run: dict) -> str:
    return Path(str(run["run"])).name or str(run["run"])


def _run_charts(runs: list[dict]) -> list[tuple[str, str]]:
    """One chart per metric and run, train and eval/* series together (titles '<metric>: <run dir name>')."""
    charts = []
    for r in runs:
        for chart, series in run_curves(r["rows"]).items():
            charts.append(("training", svg.lines({k: (v["step"], v["value"]) for k, v in series.items()},
                                                 f"{chart}: {_run_label(r)}", "step", chart)))
    return charts


def _fmt(v: object, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _eval_charts(st: dict) -> list[tuple[str, str]]:
    ev = st["eval"]
    charts = []
    lo, hi = ev["win_rate_ci"]
    level = ev.get("level", 0.95)
    charts.append(("eval", svg.points(
        ["win rate", "LC win rate"], {"estimate": [ev["win_rate"], ev.get("lc_win_rate")]},
        f"win rate vs baseline ({level:.0%} bootstrap interval)", "share of prompts won (ties half)",
        intervals={"estimate": [(lo, hi), None]}, ref=0.5, x_range=(0.0, 1.0))))
    sc = ev.get("scorers") or {}
    if sc:
        names = list(sc)
        charts.append(("eval", svg.points(names, {"model": [sc[n].get("model_mean") for n in names],
                                                  "baseline": [sc[n].get("baseline_mean") for n in names]},
                                          "mean score per scorer", "mean score")))
    for scorer, series in st["scores"].items():
        charts.append(("scores", svg.histogram(series, f"score distribution: {scorer}", "score")))
    if st["lengths"]:
        charts.append(("lengths", svg.histogram(st["lengths"], "response length: model vs baseline", "length")))
    return charts


def _charts(st: dict, runs: list[dict]) -> list[tuple[str, str]]:
    if st["kind"] == "eval":
        return _eval_charts(st) + _run_charts(runs)
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
    if st.get("length_bias"):
        lb = st["length_bias"]
        title = "length ratio" + (f": chosen longer in {lb['chosen_longer_share'] * 100:.1f} %" if lb.get("pairs")
                                  else "")
        charts.append(("length_bias", svg.histogram({"pairs": st["log2_length_ratio"]}, title,
                                                    "log2(chosen / rejected characters); > 0: chosen longer")))
        if st.get("length_bias_by_source"):
            by = st["length_bias_by_source"]
            charts.append(("length_bias", svg.bars(list(by), [round(v * 100, 1) for v in by.values()],
                                                             "share of pairs whose chosen is longer, by source",
                                                             "source", "% of pairs")))
    if st.get("agreement"):
        names = sorted({n for k in st["agreement"] for n in k.split(" vs ")})
        m = {tuple(k.split(" vs ")): v["agree"] for k, v in st["agreement"].items()}
        charts.append(("agreement", svg.heat_table(names, m, "scorer agreement (share of pairs ordered alike)")))
    return charts + _run_charts(runs)


def _eval_table_html(st: dict) -> str:
    ev, where = st["eval"], st.get("eval_lineage") or {}
    lo, hi = ev["win_rate_ci"]
    kl = ev.get("kl")
    rows = [("prompts", ev["n"]),
            ("win rate (ties half)", f"{ev['win_rate']:.4f}  [{lo:.4f}, {hi:.4f}]  ({ev.get('level', 0.95):.0%} "
                                     f"percentile bootstrap over prompts, {ev.get('n_boot')} resamples, seed "
                                     f"{ev.get('seed')})"),
            ("length-controlled win rate", _fmt(ev.get("lc_win_rate"))),
            ("wins / ties / losses", f"{ev.get('wins')} / {ev.get('ties')} / {ev.get('losses')}"),
            ("winner decided by", ev.get("winner_by")),
            ("KL(policy ‖ reference)", "–" if not kl else f"{kl['mean']:.4g} ± {_fmt(kl.get('se'))} (n = {kl['n']})")]
    for side in ("model", "baseline"):
        ln = (ev.get("length") or {}).get(side) or {}
        rows.append((f"{side} length mean / median", f"{_fmt(ln.get('mean'))} / {_fmt(ln.get('median'))}"))
    for s, m in (ev.get("scorers") or {}).items():
        rows.append((f"{s}: model / baseline mean", f"{_fmt(m.get('model_mean'))} / {_fmt(m.get('baseline_mean'))}"))
    ck = where.get("checkpoint") or {}
    if ck:
        rows.append(("checkpoint", f"{ck.get('path', '?')} (step {ck.get('step', '?')}, trained on "
                                   f"{ck.get('dataset', '?')}, config {str(ck.get('config_sha256') or '?')[:12]})"))
    if where.get("baseline"):
        rows.append(("baseline", json.dumps(where["baseline"], default=str)))
    if where.get("prompts"):
        rows.append(("prompts", where["prompts"]))
    rows.append(("summary from", "the eval's lineage" if st.get("eval_source") == "lineage"
                 else "this table (eval_metrics.summarize)"))
    return "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows) + "</table>"


def _evaluations_html(evaluations: list[dict]) -> tuple[str, str]:
    """(chart, table) of the evaluations of checkpoints trained on this version."""
    labels = [f"{e.get('eval_dataset', '?')} · step {e.get('step', '?')}" for e in evaluations]
    chart = svg.points(labels, {"win rate": [e.get("win_rate") for e in evaluations],
                                "LC win rate": [e.get("lc_win_rate") for e in evaluations]},
                       "evaluations of checkpoints trained on this version", "win rate vs baseline",
                       intervals={"win rate": [tuple(e["win_rate_ci"]) if e.get("win_rate_ci") else None
                                               for e in evaluations]}, ref=0.5, x_range=(0.0, 1.0))
    table = ("<table><tr><th>eval dataset</th><th>checkpoint</th><th>step</th><th>win rate [interval]</th>"
             "<th>LC win rate</th><th>KL</th></tr>"
             + "".join(f"<tr><td>{_esc(e.get('eval_dataset', '?'))}</td><td><code>{_esc(e.get('checkpoint', '?'))}"
                       f"</code></td><td>{_esc(e.get('step', '?'))}</td><td>{_esc(_fmt(e.get('win_rate')))} "
                       + (_esc(f"[{e['win_rate_ci'][0]:.4g}, {e['win_rate_ci'][1]:.4g}]") if e.get("win_rate_ci")
                          else "") + f"</td><td>{_esc(_fmt(e.get('lc_win_rate')))}</td>"
                       f"<td>{_esc(_fmt(e.get('kl')))}</td></tr>" for e in evaluations) + "</table>")
    return chart, table


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


def _run_notes(runs: list[dict]) -> str:
    return "".join(f"<p class=muted>run {_esc(r['run'])}: {_esc(r.get('missing') or '')} "
                   f"{_esc('; '.join(r.get('bad_lines', [])))}</p>"
                   for r in runs if r.get("missing") or r.get("bad_lines"))


def _page(title: str, sub: str, body: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{_esc(title)} · prefdata report</title>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            # a data: favicon keeps the browser from requesting /favicon.ico (a console error offline)
            "<link rel=icon href='data:,'>"
            f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1><div class=sub>{sub}</div>{body}</body></html>")


def render_html(name: str, version: int, lineage: dict, chain: list[dict], st: dict, runs: list[dict],
                evaluations: list[dict] | None = None) -> str:
    charts = _charts(st, runs)
    training_title = ("Training run of the evaluated checkpoint" if st["kind"] == "eval"
                      else "Training runs on this version")
    sections = {"eval": "Evaluation: model vs baseline", "scores": "Score distributions", "margin": "Margins",
                "per_prompt": "Per prompt", "stages": "Curriculum stages", "steps": "Build steps", "lengths": "Lengths",
                "length_bias": "Length bias",
                "agreement": "Scorer agreement", "training": training_title}
    body = []
    for key, title in sections.items():
        svgs = [s for k, s in charts if k == key]
        if svgs:
            body.append(f"<h2>{_esc(title)}</h2><div class=grid>"
                        + "".join(f"<div class=card>{s}</div>" for s in svgs) + "</div>")
        if key == "eval" and st["kind"] == "eval":
            body.append(_eval_table_html(st))
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
            body.append(_run_notes(runs))
    if evaluations:
        chart, table = _evaluations_html(evaluations)
        body.append(f"<h2>Evaluations of checkpoints trained on this version</h2><div class=grid><div class=card>{chart}"
                    f"</div></div>{table}")
    unit = "" if st["kind"] == "eval" else " chars"
    means = " · ".join(f"mean {k} length {np.mean(v):,.0f}{unit}" for k, v in st["lengths"].items() if v)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = (f"{_esc(st['kind'])} · {st['rows']:,} rows · content "
           f"<code>{_esc(str(lineage.get('content_hash', '?'))[:16])}</code> · created "
           f"{_esc(lineage.get('created_at', '?'))} · report generated {now}")
    return _page(f"{name}@{version}", sub,
                 f"<p>{_esc(lineage.get('message') or '')}</p><p class=sub>{_esc(means)}</p>"
                 "<h2>Lineage</h2>" + _lineage_html(name, version, lineage, chain)
                 + "".join(body)
                 + "<h2>Full lineage record</h2><details><summary>JSON</summary><pre>"
                 + _esc(json.dumps(lineage, indent=2, default=str, ensure_ascii=False)) + "</pre></details>")


def _runs_json(runs: list[dict]) -> list[dict]:
    return [{"run": r["run"], "steps": sum(not is_eval_row(x) for x in r["rows"]),
             "eval_rows": sum(is_eval_row(x) for x in r["rows"]), "missing": r.get("missing"),
             "curves": run_curves(r["rows"])} for r in runs]


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise PrefdataError(f"{out_dir}: is a file; --out needs a directory")


def write_report(cat, ref: str, out_dir: Path | str) -> Path:
    """Write out_dir/index.html (+ report.json) for catalog version `ref` (NAME[@VERSION|@TAG])."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    name, version, table, lineage = resolve_version(cat, ref)
    from catalog.portable import portable_lineage, scrub
    from prefdata.iterate_report import is_rounds_table, write_rounds_report
    if is_rounds_table(lineage):      # `prefdata iterate`'s rounds table: per-round curves (its own page)
        return write_rounds_report(name, version, table, portable_lineage(lineage), out_dir)
    if is_eval_table(table, lineage):
        kind = "eval"
        st = eval_stats(table, lineage)
    else:
        kind = table_kind(table)
        if kind == "table":
            raise PrefdataError(f"{name}@{version}: not a responses, pairs, lists or eval table; nothing to plot "
                                f"(columns: {', '.join(table.column_names[:12])})")
        st = dataset_stats(table, kind, lineage)
    runs = training_runs(cat, name, version) + (checkpoint_run(lineage) if kind == "eval" else [])
    evaluations = eval_events(cat, name, version)
    chain = _lineage_chain(cat, lineage)
    # what the report shows may leave the machine: run dirs, checkpoint paths, recipe and source paths are
    # elided (catalog/portable.py); the files were read above from their real paths
    lineage, st, runs, evaluations = portable_lineage(lineage), scrub(st), scrub(runs), scrub(evaluations)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(render_html(name, version, lineage, chain, st, runs, evaluations), encoding="utf-8")
    summary = {"ref": f"{name}@{version}", "kind": kind, "rows": st["rows"],
               "stage_sizes": st.get("stage_sizes"), "agreement": st.get("agreement"), "steps": st["steps"],
               "pairs_per_prompt": _describe(st.get("per_prompt")), "margin": _describe(st.get("margin")),
               "lengths": {k: _describe(v) for k, v in st["lengths"].items()},
               "length_bias": st.get("length_bias"), "length_bias_by_source": st.get("length_bias_by_source"),
               "scores": {s: {k: _describe(v) for k, v in d.items()} for s, d in st["scores"].items()},
               "training_runs": _runs_json(runs), "evaluations": evaluations,
               "lineage_chain": [c["ref"] for c in chain]}
    if kind == "eval":
        summary["eval"] = st["eval"]
        summary["eval_source"] = st["eval_source"]
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return index


def is_run_dir(path: Path | str) -> bool:
    """A training output directory: a folder holding metrics.jsonl or run.json."""
    p = Path(path)
    return p.is_dir() and ((p / "metrics.jsonl").is_file() or (p / "run.json").is_file())


def write_run_report(run_dir: Path | str, out_dir: Path | str) -> Path:
    """Write out_dir/index.html (+ report.json) with one training run's curves (train and eval/* rows of its
    metrics.jsonl) and its run.json; no catalog needed."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_out_dir(out_dir)
    if not is_run_dir(run_dir):
        raise PrefdataError(f"{run_dir}: not a training output directory (no metrics.jsonl or run.json)")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise PrefdataError(f"{run_dir}: has run.json but no metrics.jsonl; nothing to plot")
    run = {"run": str(run_dir), "metrics_path": str(metrics), **read_metrics(metrics)}
    record = None
    if (run_dir / "run.json").is_file():
        try:
            record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PrefdataError(f"{run_dir / 'run.json'}:{e.lineno}: not JSON ({e.msg})") from None
    charts = _run_charts([run])
    keys = ("dataset", "config_sha256", "steps", "final_model", "checkpoint", "seconds")
    facts = {k: record.get(k) for k in keys if isinstance(record, dict) and k in record}
    rows_json = _runs_json([run])[0]
    body = ("<h2>Training curves (train and eval rows of metrics.jsonl)</h2><div class=grid>"
            + "".join(f"<div class=card>{s}</div>" for _, s in charts) + "</div>" + _run_notes([run])
            + ("<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts.items())
               + "</table>" if facts else "")
            + ("<h2>run.json</h2><details><summary>JSON</summary><pre>"
               + _esc(json.dumps(record, indent=2, default=str, ensure_ascii=False)) + "</pre></details>"
               if record is not None else ""))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = (f"training run · {rows_json['steps']} train rows, {rows_json['eval_rows']} eval rows · "
           f"<code>{_esc(run_dir)}</code> · report generated {now}")
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(_page(f"run {run_dir.name}", sub, body), encoding="utf-8")
    summary = {"run": str(run_dir), "kind": "run", **{k: rows_json[k] for k in ("steps", "eval_rows", "curves")},
               "bad_lines": run.get("bad_lines", []), "run_json": facts or None,
               "last_eval": record.get("eval") if isinstance(record, dict) else None}   # the trainer's last eval row
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return index


def _describe(v: list | None) -> dict | None:
    if not v:
        return None
    a = np.asarray(v, dtype=float)
    return {"n": int(a.size), "mean": round(float(a.mean()), 6), "min": float(a.min()), "max": float(a.max())}
