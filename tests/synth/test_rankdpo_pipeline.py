"""The RankDPO example recipe end to end: captions -> images from the diffusers backend -> two CLIP-family
scorers -> averaged ranks -> `lists`, built by the real build runner into a real catalog. Only the model
paths (and sizes) of examples/recipes/synth_rankdpo.yaml are swapped for tiny random models."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "recipes" / "synth_rankdpo.yaml"


def test_rankdpo_recipe_builds_ranked_lists(tiny_diffusion, tiny_open_clip, tiny_hf_clip, tmp_path):
    catalog = pytest.importorskip("catalog")
    from prefdata.build import run_recipe
    data = yaml.safe_load(RECIPE.read_text())
    conf, ckpt = tiny_open_clip
    gen = data["steps"][0]["generate"]
    gen["models"][0].update(path=str(tiny_diffusion), batch_size=6)
    gen.update(n=3, sampling={"num_inference_steps": 2, "guidance_scale": 2.0, "height": 16, "width": 16})
    scorers = data["steps"][1]["score"]["scorers"]
    scorers[0].update(path=str(ckpt), arch=None, arch_config=str(conf))
    scorers[1].update(path=str(tiny_hf_clip))
    data["steps"][3]["lists"]["k"] = 3
    data["source"]["path"] = str(RECIPE.parent / data["source"]["path"])
    recipe = tmp_path / "synth_rankdpo.yaml"
    recipe.write_text(yaml.safe_dump(data))
    cat = catalog.Catalog.open(tmp_path / "cat")
    res = run_recipe(recipe, cat, progress=False)
    lists = cat.read("synth-rankdpo").to_pylist()
    assert res.kind == "lists" and len(lists) == 12                    # 12 real captions, 3 images each
    for row in lists:
        assert len(row["responses"]) == 3 and row["ranks"][0] == 1
        assert row["scores"] == sorted(row["scores"], reverse=True)
        for uri in row["responses"]:                                   # responses are the generated PNGs
            assert (tmp_path / uri).exists() and uri.endswith(".png")
    gen_report, score_report, ens_report = res.steps[:3]
    assert gen_report.rows_in == 12 and gen_report.drops == {}         # prompt-only source: one row per caption
    assert gen_report.rows_out == 36 and score_report.rows_out == 36
    src = cat.read("synth-rankdpo-source")                             # the ingested prompts, extra columns kept
    assert src.num_rows == 12 and {"prompt_id", "prompt", "file", "caption_long"} <= set(src.column_names)
    assert set(ens_report.info["agreement"]["scorer_pairs"]) == {"clip_b32~pickscore"}
