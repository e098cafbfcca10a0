"""Reference pass into a new catalog version (skipped the second time), the run logged in the catalog, and
Curry-DPO curriculum training: stages in order, reference refreshed to the policy at each stage start."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import torch
import yaml

from training.run import train_from_recipe


def _subset(arena_pairs_table: pa.Table, per_stage: int) -> pa.Table:
    stages = arena_pairs_table.column("stage").to_pylist()
    take = [i for s in (0, 1, 2) for i in [j for j, x in enumerate(stages) if x == s][:per_stage]]
    return arena_pairs_table.take(take)


def _recipe(tmp: Path, name: str, **kw) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(kw))
    return p


def test_reference_pass_catalog_and_iterative_curriculum(tmp_path, tiny_model_dir):
    import pyarrow.parquet as pq

    from catalog import Catalog

    arena = pq.read_table(Path(__file__).resolve().parents[1] / "data" / "training" / "arena_pairs.parquet")
    cat = Catalog.open(tmp_path / "cat")
    v1 = cat.write("arena-test", _subset(arena, 4), message="test pairs", lineage={"builder": "test"})
    base = {"model": str(tiny_model_dir), "dataset": "arena-test", "loss": {"name": "dpo_sigmoid", "beta": 0.1},
            "reference": {"model": str(tiny_model_dir)},
            "train": {"batch_size": 4, "max_length": 64, "lr": 5e-3, "warmup_ratio": 0.0, "epochs": 2}}
    r = _recipe(tmp_path, "curry", output_dir=str(tmp_path / "curry"), curriculum={"mode": "iterative"}, **base)
    res = train_from_recipe(r, catalog_path=tmp_path / "cat")

    # reference pass: a new version with the columns and the reference identity in its lineage
    assert res["reference"]["status"] == "computed" and res["dataset"] == f"arena-test@{v1 + 1}"
    lin = cat.lineage("arena-test", v1 + 1)
    assert lin["reference"]["model"] == str(tiny_model_dir) and len(lin["reference"]["config_sha256"]) == 64
    assert lin["inputs"] == [f"arena-test@{v1}"] and lin["builder"] == "reference_pass"
    table = cat.read("arena-test", v1 + 1)
    assert {"ref_logp_chosen", "ref_logp_rejected"} <= set(table.column_names)
    # the run is linked to the dataset version it trained on
    events = [e for e in cat.log("arena-test") if e.get("type") != "version"]
    assert any(e.get("kind") == "train" for e in events), events

    # curriculum: stages 0, 1, 2 in order; at each stage start the reference IS the policy, so loss = ln 2
    m = [json.loads(x) for x in (tmp_path / "curry" / "metrics.jsonl").read_text().splitlines()]
    stages = [x["stage"] for x in m]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2}
    firsts = [i for i in range(len(m)) if i == 0 or m[i]["stage"] != m[i - 1]["stage"]]
    for i in firsts:
        assert math.isclose(m[i]["loss"], math.log(2), abs_tol=1e-5), (i, m[i]["loss"])
    assert any(abs(x["loss"] - math.log(2)) > 1e-3 for x in m)  # and training moves away from it
    # the refreshed reference (kept in the checkpoint) differs from the stored one for stages 1 and 2 only
    ckpt = sorted((tmp_path / "curry" / "checkpoints").glob("step-*"))[-1]
    saved = torch.load(ckpt / "trainer_extra.pt", weights_only=False)["ref"]
    ref, rows = saved["seq"], saved["rows"]  # one entry per trained row (long prompts were dropped)
    stored = torch.tensor([[table["ref_logp_chosen"][i].as_py(), table["ref_logp_rejected"][i].as_py()] for i in rows])
    st = torch.tensor([table["stage"][i].as_py() for i in rows])
    assert torch.allclose(ref[st == 0], stored[st == 0].double())
    assert not torch.allclose(ref[st == 2], stored[st == 2].double())

    # second run, fixed curriculum: the reference pass is skipped (same reference model), no new version
    r2 = _recipe(tmp_path, "fixed", output_dir=str(tmp_path / "fixed"), curriculum={"mode": "fixed"}, **base)
    res2 = train_from_recipe(r2, catalog_path=tmp_path / "cat")
    assert res2["reference"]["status"] == "skipped" and res2["dataset"] == f"arena-test@{v1 + 1}"
    assert [v["version"] for v in cat.versions("arena-test")][-1] == v1 + 1
    m2 = [json.loads(x) for x in (tmp_path / "fixed" / "metrics.jsonl").read_text().splitlines()]
    later = [x for i, x in enumerate(m2) if i and x["stage"] != m2[i - 1]["stage"]]
    assert later and all(abs(x["loss"] - math.log(2)) > 1e-6 for x in later)  # fixed: no refresh
