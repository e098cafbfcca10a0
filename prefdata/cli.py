"""The `prefdata` command line. Each command is a thin typed function: parse, call one library
function, print. Heavy modules are imported inside the commands so `prefdata --help` stays instant.

User errors (prefdata.errors.PrefdataError) print one line naming what was wrong and exit 2, never a
traceback; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from prefdata.errors import PrefdataError

app = typer.Typer(
    name="prefdata",
    help="Build preference datasets, keep them versioned, train DPO-family models on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_CATALOG = "prefdata_catalog"

CatalogOpt = Annotated[
    Path | None,
    typer.Option("--catalog", "-c", help="Catalog directory (env PREFDATA_CATALOG; default ./prefdata_catalog)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _catalog_path(catalog: Path | None) -> Path:
    return Path(catalog or os.environ.get("PREFDATA_CATALOG") or DEFAULT_CATALOG)


def _open_catalog(catalog: Path | None, *, must_exist: bool = True):
    from catalog import Catalog

    path = _catalog_path(catalog)
    if must_exist and not path.exists():
        raise PrefdataError(f"catalog {path} does not exist (run `prefdata build` or `prefdata ingest` first, "
                            "or pass --catalog DIR)")
    return Catalog.open(path)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code=2)


def user_errors(fn):
    """Turn user errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PrefdataError as e:
            # a recipe's problems are reported all at once, one line each; other errors are one line
            many = len(getattr(e, "problems", ())) > 1
            _fail(str(e) if many else (str(e).splitlines()[0] if str(e) else type(e).__name__))
        except FileNotFoundError as e:
            _fail(f"no such file: {e.filename or e}")
        except KeyboardInterrupt:
            _fail("interrupted")

    return wrapper


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "__dataclass_fields__"):
        return _jsonable({k: getattr(obj, k) for k in obj.__dataclass_fields__ if k != "frame"})
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), ensure_ascii=False, indent=None) + "\n")


def _print_table(table, *, title: str | None = None, max_width: int = 60) -> None:
    """Render a pyarrow table with rich, truncating long cells (full values are in --json)."""
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for name in table.column_names:
        t.add_column(name, overflow="fold", max_width=max_width)
    for row in table.to_pylist():
        cells = []
        for name in table.column_names:
            v = row[name]
            s = v if isinstance(v, str) else json.dumps(_jsonable(v), ensure_ascii=False)
            if len(s) > max_width * 2:
                s = s[: max_width * 2 - 1] + "…"
            cells.append(s)
        t.add_row(*cells)
    _console().print(t)


def _recipe_keys(path: Path) -> set[str]:
    """Top-level keys of a YAML recipe (to pick the trainer), with a one-line error for unreadable YAML."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PrefdataError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise PrefdataError(f"{path}: a recipe must be a YAML mapping")
    return set(data)


def _parse_mapping(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise PrefdataError(f"--map {item!r}: expected CANONICAL=SOURCE, e.g. --map prompt=question")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@app.command()
@user_errors
def ingest(
    path: Annotated[Path, typer.Argument(help="Input file or folder.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Catalog dataset name to write.")],
    format: Annotated[str | None, typer.Option("--format", "-f", help="Input format (auto-detected when omitted).")] = None,
    map: Annotated[list[str] | None, typer.Option("--map", help="Column mapping CANONICAL=SOURCE (repeatable).")] = None,
    carry: Annotated[list[str] | None, typer.Option("--carry", help="Keep this extra source column (repeatable).")] = None,
    on_error: Annotated[str, typer.Option("--on-error", help="raise: stop at the first bad row; drop: drop it and account for it.")] = "raise",
    message: Annotated[str | None, typer.Option("--message", "-m")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Ingest a known format (arena, ultrafeedback, hh-rlhf, nectar, helpsteer2, pick-a-pic, trl, prompts, jsonl, parquet, hf)."""
    from prefdata.ingest import ingest_to_catalog

    if on_error not in ("raise", "drop"):
        raise PrefdataError(f"--on-error must be 'raise' or 'drop', got {on_error!r}")
    cat = _open_catalog(catalog, must_exist=False)
    info = ingest_to_catalog(cat, path, format=format, name=name, mapping=_parse_mapping(map),
                             on_error=on_error, message=message, carry=carry)
    if as_json:
        _print_json(info)
        return
    drops = info.get("drops") or {}
    dropped = " · ".join(f"{n} {r}" for r, n in drops.items()) or "none dropped"
    _console().print(f"ingested [bold]{path}[/] as {info.get('format')} → "
                     f"[bold]{name}@{info.get('version')}[/] ({info.get('rows_kept', '?')} rows, {dropped})")


@app.command()
@user_errors
def build(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML (default: the bundled examples/recipes/default.yaml).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (polars) or ray (Ray Data).")] = "local",
    partitions: Annotated[int | None, typer.Option(
        "--partitions", min=1, help="Prompt partitions for an out-of-core build (default: the recipe's, auto).")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Build a dataset from a recipe into the catalog (no argument: the bundled default on bundled real data)."""
    from prefdata.build import run_recipe

    # the catalog path, not an opened Catalog: run_recipe parses the recipe first, so a recipe with problems
    # creates no catalog folder
    path = _catalog_path(catalog)
    existed, had_marker = path.exists(), (path / "catalog.json").exists()
    try:
        result = run_recipe(recipe, path, engine=engine, progress=not as_json, partitions=partitions,
                            console=_console(stderr=True) if as_json else _console())
    except PrefdataError:
        _undo_new_catalog(path, existed, had_marker)
        raise
    if as_json:
        _print_json(result)


@app.command("ls")
@user_errors
def ls_(catalog: CatalogOpt = None, as_json: JsonOpt = False):
    """List datasets with their latest version and row count."""
    cat = _open_catalog(catalog)
    rows = []
    for name in cat.names():
        versions = cat.versions(name)
        last = versions[-1] if versions else {}
        rows.append({"name": name, "versions": len(versions), "latest": last.get("version"),
                     "rows": last.get("rows"), "tags": last.get("tags"), "created_at": last.get("created_at"),
                     "message": last.get("message")})
    if as_json:
        _print_json(rows)
        return
    import pyarrow as pa

    if not rows:
        _console().print(f"catalog {_catalog_path(catalog)} is empty")
        return
    def cell(key: str, value: Any) -> str:
        if value is None:
            return ""
        if key == "created_at":
            return str(value)[:16].replace("T", " ")   # minutes are enough in a listing; --json has all
        if key == "tags":
            return ", ".join(value)
        return str(value)

    if not sys.stdout.isatty():
        # a pipe or a file: one dataset per line, tab-separated, values whole (a table folds them at 80 columns)
        keys = list(rows[0])
        sys.stdout.write("\t".join(keys) + "\n" + "".join(
            "\t".join(cell(k, r[k]).replace("\t", " ").replace("\r", " ").replace("\n", " ") for k in keys) + "\n"
            for r in rows))
        return
    _print_table(pa.Table.from_pylist([{k: cell(k, v) for k, v in r.items()} for r in rows]), max_width=40)


@app.command()
@user_errors
def log(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Show a dataset's versions with lineage: recipe, config hash, inputs, row accounting, runs."""
    cat = _open_catalog(catalog)
    records = cat.log(name)
    if as_json:
        _print_json(records)
        return
    con = _console()
    # into a pipe or a file rich would wrap at 80 columns, splitting hashes and messages: print lines whole
    con.soft_wrap = not sys.stdout.isatty()
    for rec in records:
        _render_log_record(con, name, rec)


def _event_summary(record: Any) -> str:
    """One line for a run/checkpoint event (the full record is in `prefdata log --json`)."""
    if not isinstance(record, dict):
        return json.dumps(_jsonable(record), ensure_ascii=False)
    if record.get("eval_dataset"):   # `prefdata eval` of a checkpoint trained on this dataset
        ci = record.get("win_rate_ci") or [None, None]
        parts = [f"{record['eval_dataset']}", f"checkpoint {record.get('checkpoint')}"]
        parts += [f"step {record['step']}"] if record.get("step") is not None else []
        parts += [f"win rate {record['win_rate']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"] if None not in ci else []
        parts += [f"LC {record['lc_win_rate']:.3f}"] if record.get("lc_win_rate") is not None else []
        parts += [f"KL {record['kl']:.4g}"] if record.get("kl") is not None else []
        return " · ".join(parts)
    parts = [f"{k} {record[k]}" for k in ("round", "output_dir", "checkpoint", "parent", "step", "steps")
             if record.get(k) is not None]
    last = record.get("last") if isinstance(record.get("last"), dict) else {}
    parts += [f"{k} {last[k]:.4g}" for k in ("loss", "reward_accuracy") if isinstance(last.get(k), (int, float))]
    if record.get("config_sha256"):
        parts.append(f"config {str(record['config_sha256'])[:12]}…")
    return " · ".join(parts) or json.dumps(_jsonable(record), ensure_ascii=False)


def _render_sources(con, rec: dict) -> None:
    """A mixture build's sources (lineage `sources`, prefdata/mixture.py): input, what the mixture chose, and
    every drop through the steps by reason."""
    for src, acc in (rec.get("sources") or {}).items():
        mix = acc.get("mix") or {}
        take = ", ".join(f"{k} {mix[k]}" for k in ("weight", "max_prompts", "max_rows") if k in mix) or "all"
        head = f"    source {src:<10} {acc.get('input', '')} ({take})" if "input" in acc else f"    source {src}"
        if mix:
            head += (f" · chose {mix.get('prompts_kept')} of {mix.get('prompts_in')} prompts"
                     f" ({mix.get('rows_kept')} of {mix.get('rows_in')} rows)")
        if "rows_kept" in acc:
            head += f" · kept {acc['rows_kept']} of {acc['rows_in']} rows"
        con.print(head, highlight=False)
        drops = acc.get("rows_dropped") or {}
        if drops:
            con.print("      dropped " + ", ".join(f"{n} {r}" for r, n in drops.items()), highlight=False)


def _render_log_record(con, name: str, rec: dict) -> None:
    kind = rec.get("kind") or rec.get("event") or "version"
    if kind not in ("version", None) and "version" in rec and rec.get("builder") is None and rec.get("recipe") is None \
            and rec.get("record") is not None:
        con.print(f"[magenta]{kind}[/] on {name}@{rec.get('version')}: {_event_summary(rec.get('record'))}")
        return
    head = f"[bold]{name}@{rec.get('version')}[/]"
    tags = rec.get("tags")
    if tags:
        head += f" ({', '.join(tags)})"
    con.print(f"{head}  {rec.get('created_at', '')}  {rec.get('message') or ''}")
    for key in ("builder", "recipe", "config_sha256", "content_hash", "inputs", "rows_in", "rows_kept", "drops",
                "reference_model", "package_version", "iterate", "parent"):
        if rec.get(key) not in (None, "", [], {}):
            con.print(f"    {key:<16} {json.dumps(_jsonable(rec[key]), ensure_ascii=False)}")
    ev = rec.get("eval") if isinstance(rec.get("eval"), dict) else None
    if ev and isinstance(ev.get("summary"), dict):   # an eval version: what was compared, and the outcome
        s, ckpt = ev["summary"], ev.get("checkpoint") or {}
        lo, hi = s.get("win_rate_ci") or (float("nan"), float("nan"))
        kl = (s.get("kl") or {}).get("mean")
        con.print(f"    {'eval':<16} {ckpt.get('path')} vs {(ev.get('baseline') or {}).get('path')} on "
                  f"{ev.get('prompts')} · win rate {s.get('win_rate', float('nan')):.3f} [{lo:.3f}, {hi:.3f}] · "
                  f"LC {s.get('lc_win_rate', float('nan')):.3f}" + (f" · KL {kl:.4g}" if kl is not None else ""))
    _render_sources(con, rec)
    for step in rec.get("steps") or []:
        drops = ", ".join(f"{n} {r}" for r, n in (step.get("drops") or {}).items())
        con.print(f"    step {step.get('step', '?'):<12} in {step.get('rows_in')} · kept {step.get('rows_kept')}"
                  f" · out {step.get('rows_out')}" + (f" · dropped {drops}" if drops else ""))
        for src, acc in (step.get("by_source") or {}).items():   # a mixture build: the same per source
            if acc.get("drops"):
                con.print(f"      {src:<14} in {acc.get('rows_in')} · kept {acc.get('rows_kept')} · dropped "
                          + ", ".join(f"{n} {r}" for r, n in acc["drops"].items()), highlight=False)
    for ev in rec.get("events") or []:
        con.print(f"    [magenta]{ev.get('kind', 'event')}[/] {json.dumps(_jsonable(ev.get('record', ev)), ensure_ascii=False)}")


@app.command()
@user_errors
def show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION or NAME@TAG.")],
    limit: Annotated[int, typer.Option("--limit", "-k", min=0, help="Rows to show.")] = 5,
    columns: Annotated[str | None, typer.Option("--columns", help="Comma-separated columns to show.")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Show the first rows of a dataset version."""
    from catalog import parse_ref

    cat = _open_catalog(catalog)
    name, version = parse_ref(ref)
    frame = cat.scan(name, version)
    if columns:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        missing = [c for c in wanted if c not in frame.collect_schema().names()]
        if missing:
            raise PrefdataError(f"{ref}: no column(s) {', '.join(missing)}")
        frame = frame.select(wanted)
    table = frame.head(limit).collect().to_arrow()
    if as_json:
        _print_json(table.to_pylist())
        return
    _print_table(table, title=ref)


@app.command()
@user_errors
def sql(
    query: Annotated[str, typer.Argument(help='Read-only SQL; datasets are tables by name, a version as "name@3".')],
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", help="Rows to print (table output).")] = 50,
):
    """Query any dataset version with DuckDB SQL (read-only)."""
    cat = _open_catalog(catalog)
    table = cat.sql(query)
    if as_json:
        _print_json(table.to_pylist())
        return
    _print_table(table.slice(0, limit))
    if table.num_rows > limit:
        _console().print(f"… {table.num_rows - limit} more rows (use --limit or --json)")


@app.command()
@user_errors
def tag(
    name: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument(help="Version number, or an existing tag.")],
    tag_name: Annotated[str, typer.Argument(metavar="TAG")],
    force: Annotated[bool, typer.Option("--force", help="Move the tag if it already points elsewhere.")] = False,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Tag a dataset version (then refer to it as NAME@TAG)."""
    cat = _open_catalog(catalog)
    resolved = cat.tag(name, int(version) if version.isdigit() else version, tag_name, force=force)
    if as_json:
        _print_json({"name": name, "version": resolved, "tag": tag_name})
    else:
        _console().print(f"tagged {name}@{resolved} as {tag_name}")


@app.command()
@user_errors
def verify(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG].")],
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Recompute a version's content hash from its data and compare it with the stored one."""
    from catalog import parse_ref

    cat = _open_catalog(catalog)
    name, version = parse_ref(ref)
    res = cat.verify(name, version)
    if as_json:
        _print_json(res)
    else:
        _console().print(f"{res['ref']}: {'ok' if res['ok'] else 'MISMATCH'} (stored {res['stored'][:12]}…, "
                         f"computed {res['computed'][:12]}…)")
    if not res["ok"]:
        raise typer.Exit(code=1)


@app.command()
@user_errors
def export(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG].")],
    out: Annotated[Path, typer.Argument(help="Output directory.")],
    to: Annotated[str, typer.Option("--to", help="parquet | jsonl | hf")] = "parquet",
    shard_rows: Annotated[int | None, typer.Option("--shard-rows", min=1, help="Rows per parquet shard.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing export in DIR.")] = False,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Export a dataset version to parquet, jsonl or a HF `datasets` folder (pairs load in TRL unchanged)."""
    if to not in ("parquet", "jsonl", "hf"):
        raise PrefdataError(f"--to must be parquet, jsonl or hf, got {to!r}")
    cat = _open_catalog(catalog)
    info = cat.export(ref, to=to, out_dir=out, shard_rows=shard_rows, overwrite=overwrite)
    if as_json:
        _print_json(info)
    else:
        _console().print(f"exported {ref} ({info.get('rows')} rows) as {to} to {out}")


@app.command()
@user_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Training recipe YAML.")],
    resume: Annotated[bool, typer.Option("--resume", help="Resume from the last checkpoint in output_dir.")] = False,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Train a model with a DPO-family loss on a catalog dataset or a parquet file.

    A recipe with a top-level `denoiser:` section trains a diffusion model (Diffusion-DPO family); one with a
    top-level `vlm:` section trains a vision-language model on multi-image pairs (MIA-DPO)."""
    from prefdata.extras import require_train

    require_train("prefdata train")
    from training.progress import quiet_library_bars

    quiet_library_bars()
    path = _catalog_path(catalog)
    existed, had_marker = path.exists(), (path / "catalog.json").exists()
    try:
        if _recipe_keys(recipe) & {"denoiser"}:
            from training.diffusion import train_diffusion_from_recipe

            # the diffusion recipe reads `catalog:` from the YAML; --catalog / env fill it in when absent
            os.environ.setdefault("PREFDATA_CATALOG", str(path))
            result = train_diffusion_from_recipe(recipe, resume=resume)
        else:
            from training.run import train_from_recipe

            # always the catalog the command names (None fell back to ./prefdata_catalog, not --catalog's)
            result = train_from_recipe(recipe, catalog_path=path, resume=resume)
    except PrefdataError as e:
        _undo_new_catalog(path, existed, had_marker)
        raise _with_build_hint(e, recipe, path) from None
    from training.summary import summary_lines, train_summary

    result["summary"] = train_summary(result)   # progress went to stderr; the summary is stdout's only output
    if as_json:
        _print_json(result)
    else:
        print("\n".join(summary_lines(result["summary"])), flush=True)


def _undo_new_catalog(path: Path, existed: bool, had_marker: bool) -> None:
    """A failed command leaves no catalog it created: the marker opening it wrote, and the folder if it made
    it (only while nothing else is in them)."""
    marker = path / "catalog.json"
    if not had_marker and marker.exists() and not any(p != marker for p in path.iterdir()):
        marker.unlink()
    if not existed and path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def _with_build_hint(e: PrefdataError, recipe: Path, catalog: Path) -> PrefdataError:
    """A missing dataset that a bundled build recipe makes: say which recipe and the command that builds it."""
    import yaml

    from prefdata.recipe import bundled_recipe_for

    if "not found" not in str(e):
        return e
    try:
        dataset = (yaml.safe_load(Path(recipe).read_text(encoding="utf-8")) or {}).get("dataset")
    except (OSError, yaml.YAMLError, AttributeError):
        return e
    builder = bundled_recipe_for(dataset) if isinstance(dataset, str) else None
    if builder is None or f"{dataset.split('@')[0]!r}" not in str(e):
        return e
    return PrefdataError(f"{e}; it is made by the bundled recipe {builder.name}: prefdata build {builder} "
                         f"--catalog {catalog}")


@app.command("eval")
@user_errors
def eval_(
    recipe: Annotated[Path, typer.Argument(help="Eval recipe YAML (model, baseline, prompts, generate, scorers).")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Eval dataset name (overrides the recipe's).")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Evaluate a checkpoint against a baseline: win rate with its interval, length-controlled win rate, KL,
    per-scorer means, held-out preference metrics; the per-prompt table becomes a catalog version."""
    from prefdata.extras import require_train

    require_train("prefdata eval")
    from prefdata.evaluate import result_dict, run_eval, summary_table

    cat = _open_catalog(catalog, must_exist=False)
    err = _console(stderr=True)
    res = run_eval(recipe, cat, name=name, progress=not as_json,
                   warn=lambda msg: err.print(f"[yellow]warning:[/] {msg}"))
    if as_json:
        _print_json(result_dict(res))
        return
    con = _console()
    con.print(summary_table(res))
    dropped = " · ".join(f"{n} {r}" for r, n in res.rows_dropped.items())
    con.print(f"wrote [bold]{res.ref}[/] ({res.rows} prompts" + (f"; dropped {dropped}" if dropped else "") + ")"
              + (f"; logged on {res.checkpoint.get('dataset')}" if res.event else ""))


@app.command()
@user_errors
def report(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG], or a training output dir (metrics.jsonl/run.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for index.html.")] = Path("report"),
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Write a static HTML report (plots + lineage) for a dataset version, or a training run's curves."""
    from prefdata.report import is_run_dir, write_report, write_run_report

    if is_run_dir(ref):   # a run's output dir needs no catalog
        index = write_run_report(ref, out)
    else:
        index = write_report(_open_catalog(catalog), ref, out)
    if as_json:
        _print_json({"index": index})
    else:
        _console().print(f"wrote {index}")


@app.command()
@user_errors
def publish(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG].")],
    repo: Annotated[str, typer.Option("--repo", help="Hub dataset repo id, e.g. me/arena-curry.")],
    dry_run: Annotated[Path | None, typer.Option("--dry-run", help="Write what would be uploaded to DIR; upload nothing.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Publish a dataset version to the Hub (parquet shards + dataset card; version becomes a revision tag)."""
    from prefdata.publish import publish as do_publish

    cat = _open_catalog(catalog)
    info = do_publish(cat, ref, repo, dry_run=dry_run, private=private)
    if as_json:
        _print_json(info)
    elif dry_run:
        _console().print(f"dry run: wrote {info.get('files', '?')} files for {repo} to {dry_run}")
    else:
        _console().print(f"published {ref} to {repo} (revision tag {info.get('tag')})")


@app.command()
@user_errors
def iterate(
    recipe: Annotated[Path, typer.Argument(help="Rounds recipe YAML (examples/recipes/iterate_*.yaml).")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last finished phase.")] = False,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
):
    """Rounds of generate -> build -> train -> eval from the current policy; every round in the catalog."""
    from prefdata.extras import require_train

    require_train("prefdata iterate")
    from prefdata.iterate import iterate as run_rounds

    summary = run_rounds(recipe, catalog=_open_catalog(catalog, must_exist=False), resume=resume)
    if as_json:
        _print_json(summary)
        return
    for r in summary["rounds"]:
        ci = r.get("win_rate_vs_start_ci")
        win = f" · win vs start {r['win_rate_vs_start']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        _console().print(f"round {r['round']}: {r['pairs']} pairs{win} · checkpoint {r['checkpoint']}")
    if summary.get("stopped"):
        _console().print(f"stopped: {summary['stopped']['reason']}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
