"""publish: the dry-run folder loads with datasets.load_dataset into identical rows and features; the
real upload path runs the real huggingface_hub client against a local stand-in of the Hub API."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prefdata.publish import HubPublishError, publish

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hf_prefdata_test_secret_0123456789"


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_dry_run_loads_back_identical(built_catalog, tmp_path):
    import datasets

    cat, res = built_catalog
    out = tmp_path / "pub"
    info = publish(cat, "arena-curry", "me/arena-curry", dry_run=out)
    assert info["dry_run"] and info["tag"] == f"v{res.version}" and info["ref"] == f"arena-curry@{res.version}"
    assert sorted(info["paths"]) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert [o["op"] for o in info["operations"]] == ["create_repo", "create_commit", "create_tag"]
    assert info["operations"][1]["add"] == info["paths"]
    table = cat.read("arena-curry", res.version)
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert list(ds) == ["train"]
    assert ds["train"].features == datasets.Features.from_arrow_schema(table.schema)
    assert ds["train"].to_list() == table.to_pylist()

    meta, body = _card(out)
    assert meta["license"] == "unknown" and meta["task_categories"] == ["text-generation"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train",
                                                                         "path": "data/train-*"}]}]
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_bytes": table.nbytes,
                                               "num_examples": 2328}]
    names = [f["name"] for f in meta["dataset_info"]["features"]]
    assert names == table.column_names
    # how it was built: recipe, config hash, parent version, row accounting, a sample
    assert res.config_sha256 in body and "examples/recipes/default.yaml" in body
    assert f"`arena-curry-source@{res.inputs[0].split('@')[1]}`" in body
    assert "rows in 1400 = kept 1325 + 51 dropped (pairs: below min_margin)" in body
    assert "| curriculum | 2328 | 2328 |" in body
    assert json.loads(body.split("## Sample")[1].split("```json")[1].split("```")[0])[0]["prompt_id"] == \
        table.column("prompt_id")[0].as_py()


def test_split_by_prompt_and_stage_configs(built_catalog, tmp_path):
    import datasets

    cat, res = built_catalog
    a = publish(cat, "arena-curry", "me/x", dry_run=tmp_path / "a", test_size=0.2, stage_configs=True,
                license="apache-2.0")
    b = publish(cat, "arena-curry", "me/x", dry_run=tmp_path / "b", test_size=0.2, stage_configs=True,
                license="apache-2.0")
    assert a["splits"] == b["splits"] and a["splits"]["train"] + a["splits"]["test"] == 2328
    for p in a["paths"]:   # deterministic bytes: same version -> same upload
        assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() or p == "README.md"
    ds = datasets.load_dataset(str(tmp_path / "a"), cache_dir=str(tmp_path / "cache"))
    train, test = set(ds["train"]["prompt_id"]), set(ds["test"]["prompt_id"])
    assert train and test and not train & test    # no prompt straddles the split
    assert 0.1 < len(test) / (len(train) + len(test)) < 0.3
    stage1 = datasets.load_dataset(str(tmp_path / "a"), "stage_1", cache_dir=str(tmp_path / "cache"))
    assert set(stage1["train"]["stage"]) == {1} and len(stage1["train"]) == res.steps[-1].info["stage_sizes"][1]
    meta, _ = _card(tmp_path / "a")
    assert meta["license"] == "apache-2.0"
    assert [c["config_name"] for c in meta["configs"]] == ["default", "stage_0", "stage_1", "stage_2"]


def test_dry_run_refuses_to_wipe_an_unrelated_folder(built_catalog, tmp_path):
    cat, _ = built_catalog
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty"):
        publish(cat, "arena-curry", "me/x", dry_run=tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=extra.pop("HF_HOME"), **extra)
    return env


def test_missing_token_is_a_one_line_user_error(built_catalog, tmp_path):
    cat, _ = built_catalog
    env = _env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "prefdata", "publish", "arena-curry", "--repo", "me/x",
                        "--catalog", str(cat.root)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "no Hugging Face token" in (r.stderr + r.stdout) and "Traceback" not in r.stderr


UPLOAD = r"""
import json, sys
from catalog import Catalog
from prefdata.publish import publish, HubPublishError
cat = Catalog.open(sys.argv[1])
try:
    info = publish(cat, sys.argv[2], "me/arena-curry", endpoint=sys.argv[3])
    print(json.dumps(info))
except HubPublishError as e:
    print("ERROR", e)
"""


def _upload(cat_root, ref, hub, hf_home):
    env = _env(HF_HOME=hf_home, HF_TOKEN=SECRET, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url,
               HF_HUB_DISABLE_TELEMETRY="1")
    r = subprocess.run([sys.executable, "-c", UPLOAD, str(cat_root), ref, hub.url], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout and SECRET not in r.stderr    # the token is never printed or logged
    return r.stdout.strip().splitlines()[-1]


def test_upload_through_huggingface_hub_to_a_local_hub(built_catalog, tmp_path):
    from tests.ops.hubserver import FakeHub

    cat, res = built_catalog
    dry = tmp_path / "dry"
    publish(cat, "arena-curry", "me/arena-curry", dry_run=dry)
    with FakeHub(SECRET) as hub:
        out = json.loads(_upload(cat.root, "arena-curry", hub, str(tmp_path / "hf")))
        repo = hub.repos["me/arena-curry"]
        # exactly the dry-run files, byte for byte, in one commit, tagged with the catalog version
        assert sorted(repo.files) == out["paths"]
        for p in out["paths"]:
            if p != "README.md":
                assert repo.files[p] == (dry / p).read_bytes()
        assert repo.files["README.md"].decode().split("report generated")[0] == \
            (dry / "README.md").read_text().split("report generated")[0]
        assert len(repo.commits) == 1 and repo.tags == {f"v{res.version}": repo.commits[0]["oid"]}
        assert out["commit"] == repo.commits[0]["oid"] and SECRET not in json.dumps(out)
        assert all(r["auth"] == f"Bearer {SECRET}" for r in hub.requests)
        # the same version again: refused before anything is uploaded
        again = _upload(cat.root, "arena-curry", hub, str(tmp_path / "hf"))
        assert again.startswith("ERROR") and "already has tag" in again and len(repo.commits) == 1
        # a wrong token: the Hub's refusal becomes a typed error, the token stays out of it
        wrong = subprocess.run([sys.executable, "-c", UPLOAD, str(cat.root), "arena-curry", hub.url],
                               env=_env(HF_HOME=str(tmp_path / "hf"), HF_TOKEN="hf_wrong", HF_HUB_OFFLINE="0",
                                        HF_ENDPOINT=hub.url), capture_output=True, text=True, timeout=120)
        assert wrong.stdout.startswith("ERROR") and "hf_wrong" not in wrong.stdout + wrong.stderr


def test_missing_token_in_process(built_catalog, tmp_path, monkeypatch):
    cat, _ = built_catalog
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "token"))
    with pytest.raises(HubPublishError, match="no Hugging Face token"):
        publish(cat, "arena-curry", "me/x")
