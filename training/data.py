"""Training data: open a dataset (catalog `name[@version]` or a parquet/Arrow file), tokenize it into groups,
and hold the per-row numeric columns the losses need as tensors.

Table kinds: pairs (prompt/chosen/rejected), lists (prompt/responses) and unpaired (KTO): TRL's
prompt/completion/label, or a catalog responses table (prompt/response + label or score, which is what
`prefdata ingest --format trl` makes of unpaired data: score 1.0 = desirable, 0.0 = undesirable).

The catalog is imported lazily and only for `name@version` datasets: a parquet path works on a machine that
has only torch/transformers/pyarrow. Rows that cannot be trained on are dropped with a counted reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from prefdata.errors import DatasetNotFound, RecipeError, SchemaError
from training.encode import Group, encode_groups
from training.kto_data import kl_partners, labels_of

FILE_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")
PAIR_REF = ("ref_logp_chosen", "ref_logp_rejected")
PAIR_TOK_REF = ("ref_tok_logp_chosen", "ref_tok_logp_rejected")
LIST_REF = "ref_logps"
UNPAIRED_REF = "ref_logp"                   # unpaired table: the completion's reference log-prob
UNPAIRED_KL_REF = "ref_logp_kl"            # ... and its KL sample's (prompt, another row's completion)
PAIR_KL_REF = ("ref_logp_kl_chosen", "ref_logp_kl_rejected")   # a pairs table trained unpaired (KTO)
SPLIT = "split"                             # written by the `split` builder step: train / test per prompt
TRAIN_SPLIT = "train"                       # the trainer trains only these rows when the column exists


def unpaired_ref_columns(kind: str) -> tuple[str, ...]:
    """Reference columns a KTO run needs on a table of this kind (completions, then their KL samples)."""
    return (UNPAIRED_REF, UNPAIRED_KL_REF) if kind == "unpaired" else (*PAIR_REF, *PAIR_KL_REF)


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
    if unpaired_columns(cols) is not None:
        return "unpaired"
    return "unknown"


def unpaired_columns(columns) -> tuple[str, str] | None:
    """(completion column, label column) of an unpaired table, or None. `label` wins over `score`."""
    cols = set(columns)
    text = "completion" if "completion" in cols else "response" if "response" in cols else None
    label = "label" if "label" in cols else "score" if "score" in cols else None
    return (text, label) if "prompt" in cols and text and label else None


@dataclass(frozen=True)
class DataOptions:
    """How rows become token groups, beyond the table itself (recipe-level choices)."""
    chat_template: str | bool = "auto"   # auto: conversational rows when the tokenizer has a template; True: all
    unpaired: bool = False               # KTO: one example per completion (a pairs table: chosen desirable)
    label_threshold: float | None = None  # unpaired from a `score` column: desirable = score >= threshold
    other_rewards: bool = False          # MODPO: other objectives' rewards from scores_chosen/scores_rejected

    def template(self, tokenizer) -> str | None:
        """The chat template that applies, or None (and the error for `true` without one, at load time)."""
        tpl = getattr(tokenizer, "chat_template", None) if self.chat_template is not False else None
        if self.chat_template is True and not tpl:
            raise RecipeError(f"chat_template: true, but the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} "
                              "has no chat template", path="chat_template")
        return tpl or None


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


def split_counts(dataset: str, catalog_path=None) -> dict[str, int] | None:
    """Rows per value of the `split` column (None when there is none); reads only that column of a parquet."""
    if is_file_ref(dataset) and Path(dataset).suffix == ".parquet" and Path(dataset).exists():
        import pyarrow.parquet as pq
        if SPLIT not in pq.read_schema(dataset).names:
            return None
        table = pq.read_table(dataset, columns=[SPLIT])
    else:
        table = open_dataset(dataset, catalog_path).table
    return value_counts(table, SPLIT) if SPLIT in table.column_names else None


def value_counts(table: pa.Table, column: str) -> dict:
    counts = table.column(column).value_counts().to_pylist()
    return {c["values"]: c["counts"] for c in counts}


def select_split(table: pa.Table, value: str) -> pa.Table:
    """The rows whose `split` is `value` (table order kept)."""
    import pyarrow.compute as pc
    return table.filter(pc.equal(table.column(SPLIT), value).fill_null(False))


@dataclass
class TrainData:
    """Tokenized groups (one per kept row) + row-aligned tensors; `rows` maps group i -> table row."""
    groups: list[Group]
    kind: str                                # pairs | lists | unpaired (a pairs table trained by KTO too)
    rows: list[int]
    stage: torch.Tensor                      # [G] int
    weight: torch.Tensor                     # [G]
    columns: dict[str, torch.Tensor]         # optional numeric columns, [G] or [G, K] / [G, M]
    dropped: Counter = field(default_factory=Counter)
    rows_in: int = 0
    kl_groups: list[Group] | None = None     # unpaired: group i's prompt with its KL samples' completions
    info: dict = field(default_factory=dict)  # chat-template rows, KL samples sharing their prompt


def _col(table: pa.Table, name: str):
    return table.column(name).to_pylist() if name in table.column_names else None


OTHER_REWARDS = ("scores_chosen", "scores_rejected")


def other_reward_fields(table: pa.Table) -> list[str]:
    """MODPO: the other objectives, the fields of `scores_chosen` in struct order (the order of `w_other`)."""
    fields = [[f.name for f in table.schema.field(c).type] if pa.types.is_struct(table.schema.field(c).type)
              else None for c in OTHER_REWARDS]
    if fields[0] is None or fields[1] is None:
        raise SchemaError("MODPO needs struct columns scores_chosen/scores_rejected (one field per other objective)",
                          column=OTHER_REWARDS[fields[0] is not None])
    if fields[0] != fields[1]:
        raise SchemaError(f"scores_chosen fields {fields[0]} differ from scores_rejected fields {fields[1]}",
                          column="scores_rejected")
    if not fields[0]:
        raise SchemaError("scores_chosen has no fields: MODPO needs at least one other objective's reward",
                          column="scores_chosen")
    return fields[0]


def other_reward_nulls(table: pa.Table, fields: list[str]) -> list[str | None]:
    """Per row of `table`: the first null other-objective reward (`scores_chosen.helpful`), else None. Such a row
    (e.g. a judge score kept with `on_unscorable: keep`) cannot be trained with MODPO and is dropped, counted."""
    import numpy as np

    names, masks = [], []
    for c in OTHER_REWARDS:
        flat = table.column(c).combine_chunks().flatten()   # a null struct makes every field null
        for f, arr in zip(fields, flat, strict=True):
            names.append(f"{c}.{f}")
            masks.append(arr.is_null().to_numpy(zero_copy_only=False) | ~np.isfinite(
                arr.fill_null(0.0).cast(pa.float64()).to_numpy(zero_copy_only=False)))
    bad = np.stack(masks, 1) if masks else np.zeros((table.num_rows, 0), bool)
    first = bad.argmax(1)
    return [names[first[i]] if bad[i].any() else None for i in range(table.num_rows)]


def _chat_rows(table: pa.Table, prompts: list, resp: list, keep: list[int], opts: DataOptions,
               tokenizer) -> tuple[list, list[bool]]:
    """Per kept row: the prompt to encode (string or messages) and whether the chat template renders it.

    auto: rows with messages (a `messages` column, or a list-valued prompt) when the tokenizer has a template,
    as TRL does for conversational data; true: every row (a string prompt becomes one user message);
    false: never. A conversational row that no template renders is an error, not a silent str()."""
    tpl = opts.template(tokenizer)
    msgs = _col(table, "messages")
    values, chat = [], []
    for i in keep:
        conv = prompts[i] if isinstance(prompts[i], list) else (msgs[i] if msgs is not None and msgs[i] else None)
        use = bool(tpl) and (conv is not None or opts.chat_template is True)
        if not use and (isinstance(prompts[i], list) or any(isinstance(r, list) for r in resp[i])):
            raise SchemaError("conversational prompt/completion (list of messages) but no chat template applies "
                              f"(chat_template: {opts.chat_template}, tokenizer has "
                              f"{'one' if tpl else 'none'})", column="prompt", row=i)
        values.append(conv if use and conv is not None else prompts[i])
        chat.append(use)
    return values, chat


def _unpaired_responses(table: pa.Table, kind: str, opts: DataOptions, n: int) -> tuple[list, list]:
    """(responses per row, labels per row): an unpaired table's one completion with its label, or a pairs
    table's [chosen, rejected] labelled [True, False] (TRL's unpair_preference_dataset)."""
    if kind == "pairs":
        resp = [[c, r] for c, r in zip(_col(table, "chosen"), _col(table, "rejected"), strict=True)]
        return resp, [[True, False]] * n
    text, label = unpaired_columns(table.column_names)
    labels = labels_of(_col(table, label), label, opts.label_threshold)
    return [[c] for c in _col(table, text)], [None if lab is None else [lab] for lab in labels]


def build_train_data(table: pa.Table, tokenizer, *, max_length: int, required: tuple[str, ...] = (),
                     options: DataOptions | None = None) -> TrainData:
    """Tokenize a pairs, lists or unpaired table; drop (and count) rows with nulls in the text or in `required`
    columns. With `options.unpaired` every group also gets a KL group (its prompt + its partner's completions)."""
    opts = options or DataOptions()
    kind = table_kind(table.schema.names)
    trainable = ("pairs", "unpaired") if opts.unpaired else ("pairs", "lists")
    if kind not in trainable:
        raise SchemaError(f"a {kind} table cannot be trained {'unpaired (KTO)' if opts.unpaired else 'pairwise'}: "
                          "need prompt/chosen/rejected (pairs), prompt/responses (lists) or prompt/completion/label "
                          "(unpaired)", column="prompt")
    n = table.num_rows
    dropped: Counter = Counter()
    prompts = _col(table, "prompt")
    labels = None
    if opts.unpaired:
        resp, labels = _unpaired_responses(table, kind, opts, n)
    elif kind == "pairs":
        resp = [[c, r] for c, r in zip(_col(table, "chosen"), _col(table, "rejected"), strict=True)]
    else:
        resp = _col(table, "responses")
    keep = []
    for i in range(n):
        if prompts[i] is None or resp[i] is None or any(r is None for r in resp[i]):
            dropped["null prompt or response"] += 1
        elif labels is not None and labels[i] is None:
            dropped[f"{unpaired_columns(table.column_names)[1]} is null"] += 1
        elif kind == "lists" and len(resp[i]) < 2:
            dropped["fewer than 2 responses"] += 1
        else:
            keep.append(i)
    info: dict = {}
    partner: dict[int, int] = {}
    if opts.unpaired:
        partner, info["kl_samples_sharing_prompt"] = kl_partners(prompts, keep)
        if not partner:
            raise SchemaError(f"unpaired (KTO) training needs at least 2 usable rows to form KL samples; "
                              f"{len(keep)} of {n} rows are usable", column="prompt")
    values, chat = _chat_rows(table, prompts, resp, keep, opts, tokenizer)
    info["chat_template_rows"] = sum(chat)
    # a KL sample is the row's prompt with its partner's completions, encoded in the same group so both share
    # one prompt tokenization; split off below
    enc = encode_groups(tokenizer, values, [resp[i] + (resp[partner[i]] if partner else []) for i in keep],
                        max_length=max_length, rows=keep, chat=chat)
    dropped.update(enc.dropped)
    kl_groups = None
    if opts.unpaired:
        k = len(resp[keep[0]])
        kl_groups = [Group(g.row, g.prompt_ids, g.response_ids[k:]) for g in enc.groups]
        enc.groups = [Group(g.row, g.prompt_ids, g.response_ids[:k]) for g in enc.groups]
    # required columns are checked after tokenization, so a row the tokenizer drops is counted under that
    # reason (the reference pass leaves exactly those rows null)
    nulls = {c: table.column(c).is_null().to_pylist() for c in required}
    others = other_reward_fields(table) if opts.other_rewards and kind == "pairs" else None
    other_nulls = other_reward_nulls(table, others) if others else None
    groups, kls = [], []
    for j, g in enumerate(enc.groups):
        bad = [c for c in required if nulls[c][g.row]]
        if other_nulls is not None and other_nulls[g.row] is not None:
            bad.append(other_nulls[g.row])
        if bad:
            dropped[f"{bad[0]} is null"] += 1
        else:
            groups.append(g)
            if kl_groups is not None:
                kls.append(kl_groups[j])
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
    for name in ("margin", "pref_alpha", *PAIR_REF, UNPAIRED_REF, UNPAIRED_KL_REF, *PAIR_KL_REF):
        t = vec(name)
        if t is not None:
            columns[name] = t
    for name in PAIR_TOK_REF:
        v = _col(sub, name)
        if v is not None:
            T = max((len(x) for x in v if x), default=1)
            columns[name] = torch.tensor([(x or []) + [0.0] * (T - len(x or [])) for x in v], dtype=torch.float64)
    if others:  # [rows, M] per side, fields in struct order; only the loss that reads them builds them
        for c, name in zip(OTHER_REWARDS, ("other_chosen", "other_rejected"), strict=True):
            flat = sub.column(c).combine_chunks().flatten()
            columns[name] = torch.tensor([a.cast(pa.float64()).to_pylist() for a in flat],
                                         dtype=torch.float64).reshape(len(others), len(rows)).T.contiguous()
    if kind == "lists":
        K = max(len(g.response_ids) for g in enc.groups) if enc.groups else 1
        scores = _col(sub, "scores")
        columns["scores"] = torch.tensor([list(s) + [0.0] * (K - len(s)) for s in scores], dtype=torch.float64)
        columns["list_mask"] = torch.tensor([[k < len(s) for k in range(K)] for s in scores])
        refs = _col(sub, LIST_REF)
        if refs is not None:
            columns[LIST_REF] = torch.tensor([list(r or []) + [0.0] * (K - len(r or [])) for r in refs],
                                             dtype=torch.float64)
    if labels is not None:
        columns["label"] = torch.tensor([labels[r] for r in rows], dtype=torch.bool).reshape(len(rows), -1)
    stage = vec("stage", 0)
    return TrainData(groups=enc.groups, kind="unpaired" if opts.unpaired else kind, rows=rows, stage=stage.long(),
                     weight=vec("weight", 1.0), columns=columns, dropped=dropped, rows_in=n,
                     kl_groups=kls if opts.unpaired else None, info=info)
