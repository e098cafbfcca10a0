"""The GPU machine has torch/transformers/accelerate/peft/pyarrow but no polars, duckdb, lance, datasets or trl:
`prefdata train` on a parquet file must run there. A real subprocess with those imports blocked trains DPO, KTO
and TDPO recipes one step each."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from training_kit import shortest_prompt_pairs

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("polars", "duckdb", "lance", "datasets", "trl", "pandas", "ray", "diffusers", "open_clip")

SCRIPT = f"""
import sys, json
class NotInstalled:  # every finder answers "no such module" for the blocked names, as on a machine without them
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [NotInstalled(f) for f in sys.meta_path]
import importlib.util
assert importlib.util.find_spec("polars") is None and importlib.util.find_spec("lance") is None
from training.run import train_from_recipe
out = [train_from_recipe(p)["last"]["loss"] for p in sys.argv[1:]]
print(json.dumps({{"losses": out, "blocked_loaded": [m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}]}}))
"""


def test_trains_from_parquet_without_catalog_libraries(tmp_path, tiny_model_dir, hh_pairs):
    data = shortest_prompt_pairs(hh_pairs, 8, tmp_path / "pairs.parquet")
    base = {"model": str(tiny_model_dir), "dataset": str(data),
            "train": {"batch_size": 4, "max_length": 128, "max_steps": 1, "seed": 0}}
    recipes = []
    for name, extra in {"dpo": {"loss": {"name": "dpo_sigmoid"}, "reference": {"model": str(tiny_model_dir)}},
                        "kto": {"loss": {"name": "kto"}, "reference": {"model": str(tiny_model_dir)},
                                "unpaired": {"from_pairs": True}},
                        "tdpo": {"loss": {"name": "tdpo1"}, "lora": {"r": 4}}}.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({**base, **extra, "output_dir": str(tmp_path / name)}))
        recipes.append(str(p))
    r = subprocess.run([sys.executable, "-c", SCRIPT, *recipes], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["blocked_loaded"] == [] and len(res["losses"]) == 3
    assert abs(res["losses"][0] - 0.693147) < 1e-4      # DPO, policy == reference
    assert abs(res["losses"][1] - 0.5) < 1e-4          # KTO, policy == reference: 1 - s(0)
    assert abs(res["losses"][2] - 0.693147) < 1e-4      # TDPO, LoRA-off reference == policy at step 1
