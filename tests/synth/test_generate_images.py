"""`generate` carries the prompt's media: a VLM/image prompts table keeps its `images` (and a string `image`)
on every generated candidate, so it goes generate -> score (CLIP of the prompt image against each generated
caption) -> pairs through the real build runner; per-response media of a responses input are not carried,
and say why."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from builders.base import StepContext
from builders.generate import GenerateConfig, build_generate
from prefdata.schema import validate

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "examples" / "data" / "images"


def _cfg(model: Path, **kw) -> GenerateConfig:
    return GenerateConfig.model_validate({"models": [{"name": "tiny", "path": str(model), "device": "cpu"}],
                                          "n": 2, "sampling": {"temperature": 0.8, "max_new_tokens": 4}, **kw})


def test_prompt_images_are_carried_to_every_candidate(tiny_lm, tmp_path):
    imgs = [["images/chelsea.png"], ["images/horse.png", "images/coins.png"], None]
    frame = pl.LazyFrame({"prompt": ["Describe the cat.", "Compare the two images.", "Say hi."], "images": imgs,
                          "image": ["images/chelsea.png", "images/horse.png", None]})
    built = build_generate(frame, _cfg(tiny_lm), StepContext(base_dir=tmp_path, progress=False))
    out = built.frame.collect()
    validate(out.to_arrow(), "responses")
    assert out.height == 6 and "not_carried" not in built.info
    got = {p: (i, j) for p, i, j in out.select("prompt", "images", "image").unique("prompt").iter_rows()}
    assert got == {"Describe the cat.": (imgs[0], "images/chelsea.png"),
                   "Compare the two images.": (imgs[1], "images/horse.png"), "Say hi.": (None, None)}
    assert out.schema["images"] == pl.List(pl.String)


def test_responses_input_carries_only_prompt_level_media(tiny_lm, tmp_path):
    # prompt p1: both rows show the same image (the prompt's); p2: each response has its own image
    frame = pl.LazyFrame({"prompt_id": ["p1", "p1", "p2", "p2"], "prompt": ["a", "a", "b", "b"],
                          "response_id": ["r1", "r2", "r3", "r4"], "response": ["x", "y", "x", "y"],
                          "images": [["i1.png"], ["i1.png"], ["i2.png"], ["i3.png"]],
                          "video": ["v.mp4", "v.mp4", "v.mp4", "v.mp4"]})
    built = build_generate(frame, _cfg(tiny_lm), StepContext(base_dir=tmp_path, progress=False))
    out = built.frame.collect()
    assert "images" not in out.columns and set(out["video"]) == {"v.mp4"}
    assert built.info["not_carried"] == {"response_id": "response-level", "response": "response-level",
                                         "images": "differs between rows of one prompt (per-response media)"}
    assert built.rows_in == 4 and built.rows_kept == 2
    assert built.drops == {"further row of an already generated prompt": 2}
    same = frame.with_columns(images=pl.lit(["i1.png"], pl.List(pl.String)))
    again = build_generate(same, _cfg(tiny_lm), StepContext(base_dir=tmp_path, progress=False)).frame.collect()
    assert again["images"].to_list() == [["i1.png"]] * 4


def test_image_prompts_generate_score_pairs_build(tiny_chat_lm, tiny_open_clip, tmp_path):
    from catalog import Catalog
    from prefdata.build import run_recipe
    conf, ckpt = tiny_open_clip
    files = ["astronaut.png", "chelsea.png", "coffee.png"]
    src = tmp_path / "vqa.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Describe image {k}.", "images": [str(IMAGES / f)]}) + "\n"
                           for k, f in enumerate(files)))
    recipe = tmp_path / "vlm_pairs.yaml"
    recipe.write_text(json.dumps({
        "name": "vlm-caption-pairs", "seed": 1, "source": {"path": str(src), "format": "prompts"},
        "steps": [
            {"generate": {"models": [{"name": "tiny", "path": str(tiny_chat_lm), "device": "cpu", "batch_size": 6}],
                          "n": 3, "sampling": {"temperature": 1.0, "max_new_tokens": 6}}},
            {"score": {"scorers": [{"kind": "clip", "name": "clip", "arch_config": str(conf), "path": str(ckpt),
                                    "caption_column": "response", "image_column": "images", "device": "cpu"}],
                       "set_score": "clip"}},
            {"pairs": {"strategy": "best_vs_worst"}}]}))
    res = run_recipe(recipe, tmp_path / "cat", progress=False)
    gen, score = res.steps[0], res.steps[1]
    assert gen.rows_out == 9 and score.rows_in == 9 and score.drops == {}    # every candidate had its image
    pairs = pl.from_arrow(Catalog.open(tmp_path / "cat").read("vlm-caption-pairs"))
    assert res.kind == "pairs" and 0 < pairs.height <= 3
    want = {f"Describe image {k}.": [str(IMAGES / f)] for k, f in enumerate(files)}
    # the image is the same for every response of a prompt, so the pairs step keeps it once (prompt level)
    for r in pairs.iter_rows(named=True):
        assert r["images"] == want[r["prompt"]]   # one per prompt: the pairs contract's (and TRL's) column
        assert r["score_chosen"] > r["score_rejected"]
