"""Training data: open a dataset (catalog `name[@version]` or a parquet/Arrow file), tokenize it into groups,
and hold the per-row numeric columns the losses need as tensors.

The catalog is imported lazily and only for `name@version` datasets: a parquet path works on a machine that
has only torch/transformers/pyarrow. Rows that cannot be trained on are dropped with a counted reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from prefdata.errors import DatasetNotFound, SchemaError
from training.encode import Group, encode_groups

FILE_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")
PAIR_REF = ("ref_logp_chosen", "ref_logp_rejected")
PAIR_TOK_REF = ("ref_tok_logp_chosen", "ref_tok_logp_rejected")
LIST_REF = "ref_logps"


@dataclass
class DatasetHandle:
    table: pa.Table
    ref: str                      # "name@version" or the file path: recorded with every checkpoint
    name: str | None = None       # catalog name (None for a file)
    version: int | None = None
    catalog_path: str | None = None
    path: str | None = None

    @property
    def kind(self) -> str:
        return table_kind(self.table.schema.names)


def is_file_ref(dataset: str) -> bool:
    return dataset.endswith(FILE_SUFFIXES) or "/" in dataset or Path(dataset).exists()


def table_kind(columns) -> str:
    cols = set(columns)
    if {"prompt", "responses"} <= cols:
        return "lists"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "pairs"
    return "unknown"


def read_file(path: str) -> pa.Table:
    p = Path(path)
    if not p.exists():
        raise DatasetNotFound(path)
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_table(p)
        import pyarrow.ipc as ipc
        with pa.memory_map(str(p)) as src:
            try:
                return ipc.open_file(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                return ipc.open_stream(src).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise SchemaError(f"cannot read {path} as parquet/Arrow: {e}", source=str(path)) from None


def open_catalog(catalog_path: str | Path | None):
    import os

    from catalog import Catalog  # lazy: GPU machines without lance never get here for file datasets
    path = catalog_path or os.environ.get("PREFDATA_CATALOG") or "prefdata_catalog"
    return Catalog.open(str(path))


def open_dataset(dataset: str, catalog_path: str | Path | None = None) -> DatasetHandle:
    if is_file_ref(dataset):
        return DatasetHandle(read_file(dataset), ref=str(dataset), path=str(dataset))
    from catalog import parse_ref
    cat = open_catalog(catalog_path)
    name, version = parse_ref(dataset)
    resolved = cat.resolve(name, version)  # tag / latest -> the int version recorded with checkpoints
    table = cat.read(name, resolved)
    return DatasetHandle(table, ref=f"{name}@{resolved}", name=name, version=resolved, catalog_path=str(cat.root))


def dataset_columns(dataset: str, catalog_path=None) -> list[str]:
    """Column names only (parse-time validation)."""
    if is_file_ref(dataset):
        p = Path(dataset)
        if not p.exists():
            raise DatasetNotFound(dataset)
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_schema(p).names
        return read_file(dataset).schema.names
    return open_dataset(dataset, catalog_path).table.schema.names


@dataclass
class TrainData:
    """Tokenized groups (one per kept row) + row-aligned tensors; `rows` maps group i -> table row."""
    groups: list[Group]
    kind: str
    rows: list[int]
    stage: torch.Tensor                      # [G] int
    weight: torch.Tensor                     # [G]
    columns: dict[str, torch.Tensor]         # optional numeric columns, [G] or [G, K] / [G, M]
    dropped: Counter = field(default_factory=Counter)
    rows_in: int = 0


def _col(table: pa.Table, name: str):
    return table.column(name).to_pylist() if name in table.column_names else None


def _struct_matrix(values: list, column: str) -> tuple[list[list[float]], list[str]]:
    keys = sorted({k for v in values if v for k in v})
    return [[(v or {}).get(k) for k in keys] for v in values], keys


def build_train_data(table: pa.Table, tokenizer, *, max_length: int, required: tuple[str, ...] = ()) -> TrainData:
    """Tokenize a pairs or lists table; drop (and count) rows with nulls in the text or in `required` columns."""
    kind = table_kind(table.schema.names)
    if kind == "unknown":
        raise SchemaError("dataset has neither prompt/chosen/rejected (pairs) nor prompt/responses (lists) columns",
                          column="prompt")
    n = table.num_rows
    dropped: Counter = Counter()
    prompts = _col(table, "prompt")
    if kind == "pairs":
        resp = [[c, r] for c, r in zip(_col(table, "chosen"), _col(table, "rejected"), strict=True)]
    else:
        resp = _col(table, "responses")
    keep = []
    for i in range(n):
        if prompts[i] is None or resp[i] is None or any(r is None for r in resp[i]):
            dropped["null prompt or response"] += 1
            continue
        if kind == "lists" and len(resp[i]) < 2:
            dropped["fewer than 2 responses"] += 1
            continue
        keep.append(i)
    enc = encode_groups(tokenizer, [prompts[i] for i in keep], [resp[i] for i in keep], max_length=max_length,
                        rows=keep)
    dropped.update(enc.dropped)
    # required columns are checked after tokenization, so a row the tokenizer drops is counted under that
    # reason (the reference pass leaves exactly those rows null)
    nulls = {c: table.column(c).is_null().to_pylist() for c in required}
    groups = []
    for g in enc.groups:
        bad = [c for c in required if nulls[c][g.row]]
        if bad:
            dropped[f"{bad[0]} is null"] += 1
        else:
            groups.append(g)
    enc.groups = groups
    rows = [g.row for g in enc.groups]
    idx = pa.array(rows, pa.int64())
    sub = table.take(idx)

    def vec(name, default=None):
        v = _col(sub, name)
        if v is None:
            return None if default is None else torch.full((len(rows),), float(default), dtype=torch.float64)
        return torch.tensor([float(x) if x is not None else float("nan") for x in v], dtype=torch.float64)

    columns: dict[str, torch.Tensor] = {}
    for name in ("margin", "pref_alpha", *PAIR_REF):
        t = vec(name)
        if t is not None:
            columns[name] = t
    for name in PAIR_TOK_REF:
        v = _col(sub, name)
        if v is not None:
            T = max((len(x) for x in v if x), default=1)
            columns[name] = torch.tensor([(x or []) + [0.0] * (T - len(x or [])) for x in v], dtype=torch.float64)
    if kind == "pairs" and "scores_chosen" in sub.column_names and "scores_rejected" in sub.column_names:
        oc, keys_c = _struct_matrix(_col(sub, "scores_chosen"), "scores_chosen")
        orj, keys_r = _struct_matrix(_col(sub, "scores_rejected"), "scores_rejected")
        if keys_c != keys_r:
            raise SchemaError(f"scores_chosen fields {keys_c} differ from scores_rejected fields {keys_r}",
                              column="scores_rejected")
        columns["other_chosen"] = torch.tensor(oc, dtype=torch.float64)
        columns["other_rejected"] = torch.tensor(orj, dtype=torch.float64)
    if kind == "lists":
        K = max(len(g.response_ids) for g in enc.groups) if enc.groups else 1
        scores = _col(sub, "scores")
        columns["scores"] = torch.tensor([list(s) + [0.0] * (K - len(s)) for s in scores], dtype=torch.float64)
        columns["list_mask"] = torch.tensor([[k < len(s) for k in range(K)] for s in scores])
        refs = _col(sub, LIST_REF)
        if refs is not None:
            columns[LIST_REF] = torch.tensor([list(r or []) + [0.0] * (K - len(r or [])) for r in refs],
                                             dtype=torch.float64)
    stage = vec("stage", 0)
    return TrainData(groups=enc.groups, kind=kind, rows=rows, stage=stage.long(), weight=vec("weight", 1.0),
                     columns=columns, dropped=dropped, rows_in=n)
