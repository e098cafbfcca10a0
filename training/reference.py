"""Reference pass: compute the frozen reference model's response log-probs once and store them with the data,
so training holds a single model in memory.

Pairs get `ref_logp_chosen` / `ref_logp_rejected` (plus `ref_tok_logp_*` lists for token-level losses), lists
get `ref_logps`. Unpaired (KTO) data also gets its KL samples' values: an unpaired table `ref_logp` +
`ref_logp_kl`, a pairs table trained unpaired `ref_logp_chosen/rejected` + `ref_logp_kl_chosen/rejected`. A catalog dataset gets a NEW version whose lineage records the reference model, its config hash
and the tokenization settings; a file dataset gets a cached parquet next to the run. Either is skipped when the
stored values were made by the same reference under the same settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import torch

from training.data import (
    LIST_REF,
    PAIR_REF,
    PAIR_TOK_REF,
    DataOptions,
    DatasetHandle,
    build_train_data,
    open_catalog,
    unpaired_ref_columns,
)
from training.forward import group_logps
from training.logps import SequenceLogps


def reference_identity(model_id: str, config, tokenizer, max_length: int, with_tokens: bool,
                       options: DataOptions | None = None) -> dict:
    cfg = json.dumps(config.to_dict(), sort_keys=True, default=str)
    ident = {"model": str(model_id), "config_sha256": hashlib.sha256(cfg.encode()).hexdigest(),
             "tokenizer": getattr(tokenizer, "name_or_path", None), "max_length": max_length,
             "eos_appended": True, "token_level": with_tokens}
    opts = options or DataOptions()
    tpl = opts.template(tokenizer)
    if tpl:  # the rendered text differs with the template (and with its mode), so it is part of the key
        ident["chat_template"] = {"mode": opts.chat_template, "sha256": hashlib.sha256(tpl.encode()).hexdigest()}
    if opts.unpaired:  # KL samples follow kto_data.kl_partners; a threshold changes which rows are labelled
        ident["unpaired"] = {"kl_rule": "prompt-block-shift-v1", "label_threshold": opts.label_threshold}
    ident["key"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return ident


@torch.no_grad()
def compute_reference(lm, tokenizer, table: pa.Table, *, max_length: int, device, batch_size: int = 16,
                      token_budget: int = 8192, with_tokens: bool = False, chunk: int | None = None,
                      progress=None, options: DataOptions | None = None, layout: str = "shared"
                      ) -> dict[str, pa.Array]:
    """Reference log-probs as Arrow columns aligned with `table` (null where a row cannot be trained on).
    `layout`: the packing the training run uses, so at step 1 the policy's log-probs equal these bit for bit."""
    # every trainable row gets its reference (MODPO's drop of rows with null other rewards is the trainer's)
    opts = dataclasses.replace(options, other_rewards=False) if options is not None else None
    data = build_train_data(table, tokenizer, max_length=max_length, options=opts)
    was_training = lm.training
    lm.eval()
    model = SequenceLogps(lm, chunk=chunk)
    n = table.num_rows
    seq: list = [None] * n
    kl: list = [None] * n
    tok_c: list = [None] * n
    tok_r: list = [None] * n
    for s in range(0, len(data.groups), batch_size):
        part = data.groups[s:s + batch_size]
        out = group_logps(model, part, pad_id=tokenizer.pad_token_id, device=device, token_budget=token_budget,
                          with_tokens=with_tokens, layout=layout)
        sums = out.sums.double().cpu().tolist()
        if data.kl_groups is not None:  # unpaired: the same rows' KL samples
            kl_out = group_logps(model, data.kl_groups[s:s + batch_size], pad_id=tokenizer.pad_token_id,
                                 device=device, token_budget=token_budget, layout=layout).sums.double().cpu().tolist()
        i = 0
        for g in part:
            k = len(g.response_ids)
            seq[g.row] = sums[i:i + k]
            if data.kl_groups is not None:
                kl[g.row] = kl_out[i:i + k]
            if with_tokens and data.kind == "pairs":
                cnt = out.counts[i:i + 2].tolist()
                tok_c[g.row] = out.tokens[i, :cnt[0]].double().cpu().tolist()
                tok_r[g.row] = out.tokens[i + 1, :cnt[1]].double().cpu().tolist()
            i += k
        if progress is not None:   # progress(n, total): rows done now, rows the pass computes
            progress(len(part), len(data.groups))
    lm.train(was_training)
    if data.kind == "unpaired":
        k = data.columns["label"].shape[1]
        names = unpaired_ref_columns("unpaired" if k == 1 else "pairs")
        vals = [seq] * k + [kl] * k
        return {c: pa.array([None if v is None else v[j % k] for v in vals[j]], pa.float64())
                for j, c in enumerate(names)}
    if data.kind == "pairs":
        cols = {PAIR_REF[0]: pa.array([None if v is None else v[0] for v in seq], pa.float64()),
                PAIR_REF[1]: pa.array([None if v is None else v[1] for v in seq], pa.float64())}
        if with_tokens:
            cols[PAIR_TOK_REF[0]] = pa.array(tok_c, pa.list_(pa.float64()))
            cols[PAIR_TOK_REF[1]] = pa.array(tok_r, pa.list_(pa.float64()))
        return cols
    return {LIST_REF: pa.array(seq, pa.list_(pa.float64()))}


def with_columns(table: pa.Table, cols: dict[str, pa.Array]) -> pa.Table:
    for name, arr in cols.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


def ensure_reference(ds: DatasetHandle, *, lm, tokenizer, model_id: str, max_length: int, device,
                     with_tokens: bool, cache_dir: Path, batch_size: int = 16, token_budget: int = 8192,
                     progress=None, options: DataOptions | None = None,
                     layout: str = "shared", chunk: int | None = None) -> tuple[DatasetHandle, dict]:
    """Make sure `ds` carries reference log-probs of `model_id`; returns the (possibly new) dataset and a
    status dict {"status": "computed"|"skipped", "ref": name@version or cache path, "reference": identity}."""
    ident = reference_identity(model_id, lm.config, tokenizer, max_length, with_tokens, options)
    if ds.name is not None:
        cat = open_catalog(ds.catalog_path)
        # this version, or a later one made from it by the same reference pass, already has the columns
        for v in sorted((int(x["version"]) for x in cat.versions(ds.name)), reverse=True):
            if v < ds.version:
                break
            lin = cat.lineage(ds.name, v)
            if (lin.get("reference") or {}).get("key") == ident["key"] and (v == ds.version
                                                                           or ds.ref in lin.get("inputs", [])):
                found = ds if v == ds.version else DatasetHandle(cat.read(ds.name, v), ref=f"{ds.name}@{v}",
                                                                   name=ds.name, version=v,
                                                                   catalog_path=ds.catalog_path)
                return found, {"status": "skipped", "ref": found.ref, "reference": ident}
        cols = compute_reference(lm, tokenizer, ds.table, max_length=max_length, device=device,
                                 batch_size=batch_size, token_budget=token_budget, with_tokens=with_tokens,
                                 layout=layout, chunk=chunk,
                                 progress=progress, options=options)
        table = with_columns(ds.table, cols)
        rows_kept = sum(v is not None for v in next(iter(cols.values())).to_pylist())
        lineage = {"builder": "reference_pass", "recipe": "training.reference",
                   "config": {k: v for k, v in ident.items() if k != "key"}, "inputs": [ds.ref],
                   "reference": ident, "rows_in": table.num_rows, "rows_kept": table.num_rows,
                   "rows_dropped": {}, "rows_with_reference": rows_kept}
        v = cat.write(ds.name, table, message=f"reference log-probs of {model_id}", lineage=lineage,
                      mode="overwrite")
        new = DatasetHandle(table, ref=f"{ds.name}@{v}", name=ds.name, version=int(v),
                            catalog_path=ds.catalog_path)
        return new, {"status": "computed", "ref": new.ref, "reference": ident}
    cache = Path(cache_dir) / f"reference-{ident['key'][:16]}.parquet"
    import pyarrow.parquet as pq
    if cache.exists():
        table = pq.read_table(cache)
        return DatasetHandle(table, ref=ds.ref, path=ds.path), {"status": "skipped", "ref": str(cache),
                                                               "reference": ident}
    cols = compute_reference(lm, tokenizer, ds.table, max_length=max_length, device=device, batch_size=batch_size,
                             token_budget=token_budget, with_tokens=with_tokens, progress=progress, layout=layout,
                             options=options, chunk=chunk)
    table = with_columns(ds.table, cols)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"prefdata.reference": json.dumps(ident).encode()})
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(cache)
    return DatasetHandle(table, ref=ds.ref, path=ds.path), {"status": "computed", "ref": str(cache),
                                                           "reference": ident}
