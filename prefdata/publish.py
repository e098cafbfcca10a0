"""Publish a catalog version to the Hugging Face Hub as a dataset repo.

One function builds the folder (parquet shards per config/split + README.md dataset card) and a
plan of Hub operations; `dry_run=DIR` stops there, otherwise the plan is executed with
`huggingface_hub.HfApi`. Building the folder the same way in both modes is what makes the dry run
trustworthy: what lands in DIR is byte for byte what would be uploaded.

The catalog version becomes a Hub revision tag (`v<version>`), so `load_dataset(repo, revision="v3")`
reproduces `name@3` exactly. The token comes from the argument, `HF_TOKEN`, or `huggingface-cli login`;
it is never printed, logged or written into the plan.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.errors import PrefdataError, SchemaError
from prefdata.schema import validate

# datasets' own push_to_hub splits at 500 MB; smaller shards stream and resume better
DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024
SAMPLE_ROWS = 3
SAMPLE_CHARS = 300


class HubPublishError(PrefdataError):
    """Publishing failed: no token, the Hub refused an operation, or the version is already tagged."""


# ----------------------------------------------------------------------------- resolving the version

def resolve_version(cat, ref: str) -> tuple[str, int, pa.Table, dict]:
    """name@version|tag|None -> (name, concrete version number, table, lineage)."""
    from catalog import parse_ref

    name, want = parse_ref(ref)
    version = cat.resolve(name, want)    # a tag or None -> its number (the Hub tag needs the number)
    table = cat.read(name, version)
    lineage = cat.lineage(name, version) or {}
    return name, version, table, lineage


def table_kind(table: pa.Table) -> str:
    """Which data contract the table follows ('pairs', 'lists', 'responses'), or 'table' for none."""
    for kind in ("pairs", "lists", "responses"):
        try:
            validate(table, kind)
            return kind
        except SchemaError:
            continue
    return "table"


# ----------------------------------------------------------------------------- splits and shards

def split_by_prompt(table: pa.Table, test_size: float) -> dict[str, pa.Table]:
    """Deterministic train/test split by a hash of prompt_id, so a prompt's pairs never straddle splits
    (a leak that inflates eval reward accuracy). Same table -> same split on every machine."""
    if not 0.0 <= test_size < 1.0:
        raise PrefdataError(f"test_size must be in [0, 1), got {test_size}")
    if test_size == 0.0:
        return {"train": table}
    if "prompt_id" not in table.column_names:
        raise SchemaError("a train/test split needs column 'prompt_id' (split by prompt, not by row)",
                          column="prompt_id", expected="string")
    ids = table.column("prompt_id").to_pylist()
    # hash each distinct id once; the per-row lookup is a dict hit
    bucket = {i: int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "big") / 2**64 for i in set(ids)}
    is_test = pa.array([bucket[i] < test_size for i in ids])
    return {"train": table.filter(pa.compute.invert(is_test)), "test": table.filter(is_test)}


def table_splits(table: pa.Table, test_size: float) -> tuple[dict[str, pa.Table], pa.Table]:
    """(splits, the table as published). A table with a `split` column (the `split` builder step) is
    published with exactly those splits, the column left out (the split name carries it); test_size must
    then be 0, since the hash split would silently override the recipe's. Otherwise split_by_prompt."""
    if "split" not in table.column_names:
        return split_by_prompt(table, test_size), table
    if test_size:
        raise PrefdataError(f"the table has a 'split' column (from the split step), which is its train/test "
                            f"split; test_size={test_size} would override it (leave test_size at 0)")
    from catalog.export import split_tables

    return split_tables(table), table.drop_columns(["split"])


def _hf_features(schema: pa.Schema):
    from datasets import Features

    return Features.from_arrow_schema(schema)


def _hf_metadata(features) -> dict[bytes, bytes]:
    # the same key datasets' ArrowWriter stores, so load_dataset restores the exact features
    from datasets.utils.py_utils import asdict

    return {b"huggingface": json.dumps({"info": {"features": asdict(features)}}).encode()}


def write_shards(table: pa.Table, folder: Path, prefix: str, split: str,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[Path]:
    """`<prefix>/<split>-00000-of-0000N.parquet`, the naming datasets' push_to_hub uses."""
    n = max(1, math.ceil(table.nbytes / max_shard_bytes)) if len(table) else 1
    per = max(1, math.ceil(len(table) / n))
    n = max(1, math.ceil(len(table) / per)) if len(table) else 1
    features = _hf_features(table.schema)
    schema = table.schema.with_metadata(_hf_metadata(features))
    out = []
    (folder / prefix).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / prefix / f"{split}-{i:05d}-of-{n:05d}.parquet"
        pq.write_table(table.slice(i * per, per).cast(schema), path, compression="zstd")
        out.append(path)
    return out


# ----------------------------------------------------------------------------- the dataset card

def _lineage_chain(cat, lineage: dict, depth: int = 8) -> list[dict]:
    """Parent versions, nearest first: [{ref, builder, config_sha256, content_hash, rows_in, rows_kept, source,
    source_sha256}]. Missing parents (deleted datasets, foreign catalogs) are listed as such rather than
    skipped. Fit to leave the machine (catalog.portable): an ingest's source is the file name as the recipe
    that read it wrote it (relative to the recipe) with its sha256, never the absolute path it was read from."""
    from catalog import parse_ref
    from catalog.portable import portable_lineage

    chain, seen = [], set()
    frontier = [(ref, lineage) for ref in lineage.get("inputs") or []]   # (parent ref, the lineage naming it)
    while frontier and len(chain) < 50:
        ref, child = frontier.pop(0)
        if ref in seen:
            continue
        seen.add(ref)
        name, ver = parse_ref(ref)
        try:
            lin = cat.lineage(name, ver) or {}
        except PrefdataError as e:
            chain.append({"ref": ref, "missing": str(e)})
            continue
        out = portable_lineage(lin, child)
        chain.append({"ref": ref, "builder": out.get("builder") or out.get("recipe"),
                      "config_sha256": lin.get("config_sha256"), "content_hash": lin.get("content_hash"),
                      "rows_in": lin.get("rows_in"), "rows_kept": lin.get("rows_kept"),
                      "source": out.get("source"), "source_sha256": out.get("source_sha256")})
        if depth > 1:
            frontier.extend((r, lin) for r in lin.get("inputs") or [])
    return chain


def _find_key(obj: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a nested lineage (step infos nest agreement reports)."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                found.append(v)
            found.extend(_find_key(v, key))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(_find_key(v, key))
    return found


def scorer_agreement(table: pa.Table) -> dict | None:
    """Pairwise direction agreement between scorers over the published pairs: for scorers a, b the share
    of pairs both order the same way (ties on either side excluded). Needs >= 2 fields in
    scores_chosen/scores_rejected; None otherwise."""
    if not {"scores_chosen", "scores_rejected"} <= set(table.column_names):
        return None
    t = table.column("scores_chosen").type
    if not pa.types.is_struct(t) or t.num_fields < 2:
        return None
    import numpy as np

    names = [t.field(i).name for i in range(t.num_fields)]
    ch, rj = table.column("scores_chosen").combine_chunks(), table.column("scores_rejected").combine_chunks()
    sign = {n: np.sign(ch.field(n).to_numpy(zero_copy_only=False).astype(float)
                       - rj.field(n).to_numpy(zero_copy_only=False).astype(float)) for n in names}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ok = (sign[a] != 0) & (sign[b] != 0) & ~np.isnan(sign[a]) & ~np.isnan(sign[b])
            n = int(ok.sum())
            out[f"{a} vs {b}"] = {"pairs": n, "agree": round(float((sign[a][ok] == sign[b][ok]).mean()), 4) if n else None}
    return out


def _task_categories(table: pa.Table) -> list[str]:
    cols = set(table.column_names)
    if {"video", "video_chosen", "video_rejected"} & cols:
        return ["text-to-video"] if "caption" in cols else ["video-text-to-text"]
    if "images" in cols:
        return ["text-to-image"] if "caption" in cols or "chosen" not in cols else ["image-text-to-text"]
    return ["text-generation"]


def _sample(table: pa.Table) -> list[dict]:
    def clip(v):
        if isinstance(v, str) and len(v) > SAMPLE_CHARS:
            return v[:SAMPLE_CHARS] + "…"
        if isinstance(v, list):
            return [clip(x) for x in v[:8]]
        if isinstance(v, dict):
            return {k: clip(x) for k, x in v.items()}
        return v
    return [clip(r) for r in table.slice(0, SAMPLE_ROWS).to_pylist()]


def dataset_card(*, name: str, version: int, table: pa.Table, kind: str, lineage: dict, chain: list[dict],
                 splits: dict[str, pa.Table], shard_bytes: dict[str, int], repo_id: str, tag: str,
                 license: str | None, extra_configs: Iterable[str] = ()) -> str:
    """README.md: the YAML header datasets writes on push_to_hub (configs, dataset_info with features and
    split sizes) plus license/task categories, then how the version was built."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    from catalog.portable import portable_lineage, scrub

    lineage = portable_lineage(lineage)   # a public card: no absolute local paths (recipe, source, messages)
    features = _hf_features(table.schema)
    split_dict = SplitDict({s: SplitInfo(s, num_bytes=t.nbytes, num_examples=len(t)) for s, t in splits.items()})
    info = DatasetInfo(features=features, splits=split_dict, download_size=sum(shard_bytes.values()),
                       dataset_size=sum(t.nbytes for t in splits.values()))
    lic = license or lineage.get("license") or next(iter(_find_key(chain, "license")), None)
    data = DatasetCardData(license=lic or "unknown", task_categories=_task_categories(table),
                           tags=["preference", "dpo", kind, "prefdata"], pretty_name=name)
    configs = {"default": {"data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}}
    for c in extra_configs:
        configs[c] = {"data_files": [{"split": "train", "path": f"{c}/train-*"}]}
    MetadataConfigs(configs).to_dataset_card_data(data)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)

    js = lambda o: json.dumps(o, indent=2, ensure_ascii=False, default=str)  # noqa: E731
    rows = len(table)
    body = [f"# {name} (catalog version {version})", "",
            f"A `{kind}` preference dataset built with prefdata: {rows:,} rows"
            + "".join(f", {s}: {len(t):,}" for s, t in splits.items()) + ".",
            "", "```python", "from datasets import load_dataset",
            f'ds = load_dataset("{repo_id}", revision="{tag}")  # exactly {name}@{version}', "```", ""]
    if not lic:
        body += ["License: not recorded in the catalog lineage; check the licenses of the sources below.", ""]
    body += ["## How it was built", "",
             f"- catalog version: `{name}@{version}`, content hash `{lineage.get('content_hash', '?')}`",
             f"- recipe / builder: `{lineage.get('recipe') or lineage.get('builder') or '?'}`",
             f"- config sha256: `{lineage.get('config_sha256', '?')}`",
             *([f"- source: `{lineage['source']}`" + (f", sha256 `{lineage['source_sha256']}`"
                                                       if lineage.get("source_sha256") else "")]
               if lineage.get("source") else []),
             f"- package: prefdata {lineage.get('package_version', '?')}, created {lineage.get('created_at', '?')}"]
    if lineage.get("message"):
        body.append(f"- message: {lineage['message']}")
    if lineage.get("config") is not None:
        cfg = lineage["config"]
        body += ["", "Config:", "", "```json", cfg if isinstance(cfg, str) else js(cfg), "```"]
    body += ["", "### Parent versions", ""]
    if chain:
        body += ["| input | builder | config sha256 | rows in | rows kept | source | source sha256 |",
                 "|---|---|---|---|---|---|---|"]
        for c in chain:
            if "missing" in c:
                body.append(f"| `{c['ref']}` | (not in this catalog: {scrub(c['missing'])}) | | | | | |")
            else:
                body.append(f"| `{c['ref']}` | {c['builder'] or ''} | `{(c['config_sha256'] or '')[:12]}` | "
                            f"{c['rows_in'] if c['rows_in'] is not None else ''} | "
                            f"{c['rows_kept'] if c['rows_kept'] is not None else ''} | "
                            + (f"`{c['source']}`" if c.get("source") else "") + " | "
                            + (f"`{c['source_sha256']}`" if c.get("source_sha256") else "") + " |")
    else:
        body.append("None recorded (a raw ingest or a direct write).")
    body += ["", "### Row accounting", ""]
    drops = lineage.get("drops") or lineage.get("rows_dropped") or {}
    body.append(f"rows in {lineage.get('rows_in', '?')} = kept {lineage.get('rows_kept', '?')}"
                + "".join(f" + {n} dropped ({reason})" for reason, n in drops.items()))
    steps = lineage.get("steps") or []
    if steps:
        body += ["", "| step | rows in | kept | dropped | rows out |", "|---|---|---|---|---|"]
        for s in steps:
            d = "; ".join(f"{k}: {v}" for k, v in (s.get("drops") or {}).items())
            body.append(f"| {s.get('step', '?')} | {s.get('rows_in', '')} | {s.get('rows_kept', '')} | {d} | "
                        f"{s.get('rows_out', '')} |")
    recorded = _find_key(lineage, "agreement")
    computed = scorer_agreement(table)
    if recorded or computed:
        body += ["", "### Scorer agreement", ""]
        if recorded:
            body += ["Recorded at build time:", "", "```json", js(recorded[0] if len(recorded) == 1 else recorded),
                     "```", ""]
        if computed:
            body += ["Direction agreement over the published pairs:", "", "| scorers | pairs | agree |",
                     "|---|---|---|"] + [f"| {k} | {v['pairs']} | {v['agree']} |" for k, v in computed.items()]
    body += ["", "## Sample", "", "```json", js(_sample(table)), "```", ""]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


# ----------------------------------------------------------------------------- build, plan, execute

def build_folder(cat, ref: str, repo_id: str, out_dir: Path, *, test_size: float = 0.0,
                 stage_configs: bool = False, license: str | None = None,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> dict:
    """Write the repo folder for `ref` into out_dir (emptied first) and return the plan."""
    name, version, table, lineage = resolve_version(cat, ref)
    kind = table_kind(table)
    out_dir = Path(out_dir)
    if out_dir.exists():
        if out_dir.is_file():
            raise PrefdataError(f"{out_dir}: is a file; --dry-run needs a directory")
        # only clear what an earlier publish wrote: refuse to wipe an unrelated folder
        if any(out_dir.iterdir()) and not (out_dir / "README.md").exists():
            raise PrefdataError(f"{out_dir}: not empty and not an earlier publish folder; choose an empty directory")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    held_out = "split" in table.column_names
    splits, table = table_splits(table, test_size)
    shards: list[Path] = []
    for split, t in splits.items():
        shards += write_shards(t, out_dir, "data", split, max_shard_bytes)
    extra = []
    if stage_configs and "stage" in table.column_names:
        # one config per curriculum stage, for users who train stage by stage with a plain DPO trainer; with
        # the table's own held-out split, only its train rows (a stage config is trained on)
        staged = table if not held_out else splits.get("train", table.slice(0, 0))
        for st in sorted(s for s in set(staged.column("stage").to_pylist()) if s is not None):
            c = f"stage_{st}"
            shards += write_shards(staged.filter(pa.compute.equal(staged.column("stage"), st)), out_dir, c,
                                   "train", max_shard_bytes)
            extra.append(c)
    chain = _lineage_chain(cat, lineage)
    tag = f"v{version}"
    card = dataset_card(name=name, version=version, table=table, kind=kind, lineage=lineage, chain=chain,
                        splits=splits, shard_bytes={str(p): p.stat().st_size for p in shards},
                        repo_id=repo_id, tag=tag, license=license, extra_configs=extra)
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    message = f"prefdata: {name}@{version} ({len(table):,} rows, content {str(lineage.get('content_hash', '?'))[:12]})"
    operations = [
        {"op": "create_repo", "repo_id": repo_id, "repo_type": "dataset", "exist_ok": True},
        # shards of an earlier version that this one does not overwrite are deleted in the same commit,
        # or the data/train-* glob would mix versions
        {"op": "create_commit", "repo_id": repo_id, "repo_type": "dataset", "revision": "main",
         "commit_message": message, "add": files, "delete_stale_under": ["data/"] + [f"{c}/" for c in extra]},
        {"op": "create_tag", "repo_id": repo_id, "repo_type": "dataset", "tag": tag,
         "tag_message": f"{name}@{version}"},
    ]
    return {"repo_id": repo_id, "ref": f"{name}@{version}", "tag": tag, "kind": kind, "rows": len(table),
            "splits": {s: len(t) for s, t in splits.items()}, "configs": ["default", *extra],
            "folder": str(out_dir), "files": len(files), "paths": files, "operations": operations}


def resolve_token(token: str | None = None) -> str:
    """Explicit argument, then HF_TOKEN / the login cache (huggingface_hub.get_token). Never echoed."""
    if token:
        return token
    from huggingface_hub import get_token

    found = os.environ.get("HF_TOKEN") or get_token()
    if not found:
        raise HubPublishError("no Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass --dry-run DIR "
                              "to write the repo folder without uploading")
    return found


def execute(plan: dict, folder: Path, token: str, *, private: bool = False, endpoint: str | None = None) -> dict:
    """Run the plan's operations against the Hub. Errors become HubPublishError without the token."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token, endpoint=endpoint)
    repo_id, tag = plan["repo_id"], plan["tag"]
    create, commit, tagop = plan["operations"]
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        if any(t.name == tag for t in refs.tags):
            raise HubPublishError(f"{repo_id} already has tag {tag!r}: {plan['ref']} was published before; "
                                  "nothing uploaded")
        existing = api.list_repo_files(repo_id, repo_type="dataset")
        stale = [f for f in existing if f not in commit["add"]
                 and any(f.startswith(d) for d in commit["delete_stale_under"])]
        ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(Path(folder) / f)) for f in commit["add"]]
        ops += [CommitOperationDelete(path_in_repo=f) for f in stale]
        info = api.create_commit(repo_id, ops, commit_message=commit["commit_message"], repo_type="dataset",
                                 revision=commit["revision"])
        api.create_tag(repo_id, tag=tag, tag_message=tagop["tag_message"], revision=info.oid, repo_type="dataset")
    except HfHubHTTPError as e:
        # the server's message names the refused operation; the request headers (token) are not in it
        raise HubPublishError(f"Hub refused the upload of {plan['ref']} to {repo_id}: {e}") from None
    except OSError as e:  # connection refused, offline mode, DNS
        raise HubPublishError(f"cannot reach the Hub to publish {repo_id}: {type(e).__name__}: {e}") from None
    return {"url": str(url), "commit": info.oid, "deleted_stale": stale}


def publish(cat, ref: str, repo_id: str, *, dry_run: Path | None = None, token: str | None = None,
            private: bool = False, test_size: float = 0.0, stage_configs: bool = False,
            license: str | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
            endpoint: str | None = None) -> dict:
    """Publish catalog version `ref` (NAME[@VERSION|@TAG]) as Hub dataset repo `repo_id`.

    dry_run=DIR writes exactly the files that would be uploaded and returns the plan without touching the
    network. Otherwise the folder is built in a temporary directory and uploaded in one commit, then tagged
    `v<version>`. Returns {repo_id, ref, tag, rows, splits, configs, files, paths, operations, ...}."""
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PrefdataError(f"--repo must look like OWNER/NAME, got {repo_id!r}")
    if dry_run is not None:
        plan = build_folder(cat, ref, repo_id, Path(dry_run), test_size=test_size, stage_configs=stage_configs,
                            license=license, max_shard_bytes=max_shard_bytes)
        return {**plan, "dry_run": True}
    tok = resolve_token(token)  # before any work: a missing token is the commonest failure
    import tempfile

    with tempfile.TemporaryDirectory(prefix="prefdata-publish-") as tmp:
        folder = Path(tmp) / "repo"
        plan = build_folder(cat, ref, repo_id, folder, test_size=test_size, stage_configs=stage_configs,
                            license=license, max_shard_bytes=max_shard_bytes)
        result = execute(plan, folder, tok, private=private, endpoint=endpoint)
    return {**plan, **result, "dry_run": False, "folder": None}
